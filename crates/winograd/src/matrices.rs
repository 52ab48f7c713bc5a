//! Cook-Toom construction of the Winograd F(m, 3) matrices from interpolation points.
//!
//! Following Lavin & Gray (2016, Sec. 4), the 1-D correlation of an `alpha = m + 2` input
//! `d` with a 3-tap filter `g` is
//!
//! ```text
//! y = A^T [ (G g) . (B^T d) ]
//! ```
//!
//! It is the transpose of a Toom-Cook linear convolution of `g` (3 taps) with an m-tap
//! sequence. Pick `alpha - 1` distinct finite points `p_j` plus the point at infinity.
//!
//! - `A^T[i][j] = p_j^i`, and the infinity column is `e_{m-1}`. This evaluates the m-tap
//!   sequence, so it is a Vandermonde matrix.
//! - `G[j][k] = p_j^k / f_j` with `f_j = prod_{l != j} (p_j - p_l)`, and the infinity row
//!   is `e_2`. It evaluates the filter and carries the Lagrange denominators ("fractions
//!   in G", so they cost nothing at run time: G is applied once, at load).
//! - `B^T[j][i]` is the coefficient of `x^i` in `M_j(x) = prod_{l != j} (x - p_l)`. The
//!   infinity row holds the coefficients of `N(x) = prod_l (x - p_l)`. These are the
//!   transposed Lagrange interpolation with the infinity point.
//!
//! Points come in the order `0, +p1, -p1, +p2, -p2, ..., inf`. With such a symmetric set
//! the row of `-p` in `B^T` equals the row of `+p` with odd coefficients negated, and the
//! same holds for the columns of `A^T`. The SIMD kernels exploit this: each pair costs one
//! even and one odd partial sum, plus their sum and difference.

use crate::Error;

/// An interpolation point: finite or the point at infinity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    Finite(f64),
    Infinity,
}

/// The three Winograd matrices in f64, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrices {
    /// Output tile size m.
    pub m: usize,
    /// Input tile size alpha = m + 2.
    pub alpha: usize,
    /// `m x alpha`.
    pub at: Vec<Vec<f64>>,
    /// `alpha x 3`.
    pub g: Vec<Vec<f64>>,
    /// `alpha x alpha`.
    pub bt: Vec<Vec<f64>>,
}

/// Coefficients (lowest degree first) of `prod (x - r)` over `roots`.
fn poly_from_roots(roots: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut coeffs = vec![1.0];
    for r in roots {
        let mut next = vec![0.0; coeffs.len() + 1];
        for (i, c) in coeffs.iter().enumerate() {
            next[i + 1] += c;
            next[i] -= r * c;
        }
        coeffs = next;
    }
    coeffs
}

/// Builds A^T, G and B^T for F(m, 3) from `m + 1` finite points and infinity (last).
pub fn cook_toom(points: &[Point]) -> Result<Matrices, Error> {
    cook_toom_taps(points, 3)
}

/// F(m, r) for an `r`-tap filter from `m + r - 2` finite points and infinity (last): the
/// construction above with `G` of `r` columns (`alpha = m + r - 1`).
fn cook_toom_taps(points: &[Point], taps: usize) -> Result<Matrices, Error> {
    let alpha = points.len();
    if alpha < taps {
        return Err(Error::InvalidPoints(format!("need at least {taps} points for a {taps}-tap filter, got {alpha}")));
    }
    let m = alpha + 1 - taps;
    if points[alpha - 1] != Point::Infinity {
        return Err(Error::InvalidPoints("the last point must be infinity".into()));
    }
    let finite: Vec<f64> = points[..alpha - 1]
        .iter()
        .map(|p| match p {
            Point::Finite(x) if x.is_finite() => Ok(*x),
            _ => Err(Error::InvalidPoints("only the last point may be infinite".into())),
        })
        .collect::<Result<_, _>>()?;
    for (i, a) in finite.iter().enumerate() {
        if finite[..i].contains(a) {
            return Err(Error::InvalidPoints(format!("point {a} appears twice")));
        }
    }
    let n = finite.len();
    let mut at = vec![vec![0.0; alpha]; m];
    let mut g = vec![vec![0.0; taps]; alpha];
    let mut bt = vec![vec![0.0; alpha]; alpha];
    for (j, &p) in finite.iter().enumerate() {
        for i in 0..m {
            at[i][j] = p.powi(i as i32);
        }
        let f: f64 = finite.iter().enumerate().filter(|&(l, _)| l != j).map(|(_, &q)| p - q).product();
        for k in 0..taps {
            g[j][k] = p.powi(k as i32) / f;
        }
        let mj = poly_from_roots(finite.iter().enumerate().filter(|&(l, _)| l != j).map(|(_, &q)| q));
        bt[j][..mj.len()].copy_from_slice(&mj);
    }
    at[m - 1][n] = 1.0;
    g[n][taps - 1] = 1.0;
    let big_n = poly_from_roots(finite.iter().copied());
    bt[n][..big_n.len()].copy_from_slice(&big_n);
    Ok(Matrices { m, alpha, at, g, bt })
}

/// The polyphase matrices of a stride-2 3x3 correlation with `m x m` output tiles, from
/// the `m` finite points and infinity of F(m, 2).
///
/// In one dimension `y_i = sum_k d_(2i+k) g_k` splits by the parity of the input sample:
/// the even samples `e_j = d_(2j)` meet the 2-tap filter `(g_0, g_2)` at stride 1, an
/// F(m, 2) correlation, and the odd samples `o_j = d_(2j+1)` meet the 1-tap filter `g_1`,
/// a plain product. So over an input tile of `alpha = 2m + 1` samples there are
/// `(m + 1) + m = alpha` products: positions `0..=m` are F(m, 2)'s (`B^T` and `G` read
/// the even samples and `(g_0, g_2)`), positions `m + 1 + j` pass `o_j` and `g_1`
/// through, and `A^T` adds F(m, 2)'s output to the odd products. The 2-D stride-2
/// correlation is the tensor product of this 1-D one, as for stride 1, so the layer runs
/// as a Winograd layer with `alpha^2 / m^2` multiplies per output (6.25 for m = 2, 5.44
/// for m = 3) instead of 9, the tiles `2m` input pixels apart.
pub fn polyphase(points: &[Point]) -> Result<Matrices, Error> {
    let even = cook_toom_taps(points, 2)?;
    let (m, e) = (even.m, even.alpha);
    let alpha = 2 * m + 1;
    let mut at = vec![vec![0.0; alpha]; m];
    let mut g = vec![vec![0.0; 3]; alpha];
    let mut bt = vec![vec![0.0; alpha]; alpha];
    for j in 0..e {
        for i in 0..e {
            bt[j][2 * i] = even.bt[j][i];
        }
        (g[j][0], g[j][2]) = (even.g[j][0], even.g[j][1]);
        for i in 0..m {
            at[i][j] = even.at[i][j];
        }
    }
    for j in 0..m {
        bt[e + j][2 * j + 1] = 1.0;
        g[e + j][1] = 1.0;
        at[j][e + j] = 1.0;
    }
    Ok(Matrices { m, alpha, at, g, bt })
}

impl Matrices {
    /// Transforms a 3x3 filter: `G g G^T` (alpha x alpha), in f64.
    pub fn filter(&self, g3: &[[f64; 3]; 3]) -> Vec<Vec<f64>> {
        let a = self.alpha;
        let mut tmp = vec![[0.0; 3]; a];
        for i in 0..a {
            for k in 0..3 {
                tmp[i][k] = (0..3).map(|l| self.g[i][l] * g3[l][k]).sum();
            }
        }
        (0..a).map(|i| (0..a).map(|j| (0..3).map(|k| tmp[i][k] * self.g[j][k]).sum()).collect()).collect()
    }

    /// Transforms an input tile: `B^T d B` (alpha x alpha), in f64.
    pub fn input(&self, d: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let a = self.alpha;
        let tmp: Vec<Vec<f64>> =
            (0..a).map(|i| (0..a).map(|x| (0..a).map(|j| self.bt[i][j] * d[j][x]).sum()).collect()).collect();
        (0..a).map(|i| (0..a).map(|j| (0..a).map(|x| tmp[i][x] * self.bt[j][x]).sum()).collect()).collect()
    }

    /// Inverse transform of an alpha x alpha product: `A^T M A` (m x m), in f64.
    pub fn output(&self, mm: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let (a, m) = (self.alpha, self.m);
        let tmp: Vec<Vec<f64>> =
            (0..m).map(|i| (0..a).map(|x| (0..a).map(|j| self.at[i][j] * mm[j][x]).sum()).collect()).collect();
        (0..m).map(|i| (0..m).map(|j| (0..a).map(|x| tmp[i][x] * self.at[j][x]).sum()).collect()).collect()
    }

    /// The full Winograd 2-D correlation of an alpha x alpha tile with a 3x3 filter.
    pub fn correlate(&self, d: &[Vec<f64>], g3: &[[f64; 3]; 3]) -> Vec<Vec<f64>> {
        let u = self.filter(g3);
        let v = self.input(d);
        let prod: Vec<Vec<f64>> =
            u.iter().zip(&v).map(|(ur, vr)| ur.iter().zip(vr).map(|(a, b)| a * b).collect()).collect();
        self.output(&prod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Variant;

    fn direct(d: &[Vec<f64>], g: &[[f64; 3]; 3], m: usize, stride: usize) -> Vec<Vec<f64>> {
        (0..m)
            .map(|y| {
                (0..m)
                    .map(|x| {
                        (0..3)
                            .flat_map(|i| (0..3).map(move |j| (i, j)))
                            .map(|(i, j)| d[stride * y + i][stride * x + j] * g[i][j])
                            .sum()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_variant_computes_the_correlation_in_f64() {
        let mut seed = 0x1234_5678u64;
        let mut rand = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        for variant in Variant::ALL {
            let mats = variant.matrices();
            for _ in 0..20 {
                let a = mats.alpha;
                let d: Vec<Vec<f64>> = (0..a).map(|_| (0..a).map(|_| rand()).collect()).collect();
                let g = [[rand(), rand(), rand()], [rand(), rand(), rand()], [rand(), rand(), rand()]];
                let w = mats.correlate(&d, &g);
                let r = direct(&d, &g, mats.m, variant.stride());
                for (wr, rr) in w.iter().zip(&r) {
                    for (x, y) in wr.iter().zip(rr) {
                        assert!((x - y).abs() < 1e-12, "{variant:?}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn lavin_f2_is_reproduced_up_to_row_signs() {
        // Lavin & Gray's F(2,3): B^T rows [1,0,-1,0], [0,1,1,0], [0,-1,1,0], [0,1,0,-1].
        let m = Variant::F2.matrices();
        let lavin = [[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]];
        for (ours, theirs) in m.bt.iter().zip(lavin) {
            let same = ours.iter().zip(theirs).all(|(a, b)| a == &b);
            let flipped = ours.iter().zip(theirs).all(|(a, b)| *a == -b);
            assert!(same || flipped, "{ours:?} vs {theirs:?}");
        }
    }

    #[test]
    fn bad_point_sets_are_refused() {
        use Point::*;
        assert!(cook_toom(&[Finite(0.0), Finite(1.0), Finite(1.0), Infinity]).is_err());
        assert!(cook_toom(&[Finite(0.0), Infinity, Finite(1.0), Infinity]).is_err());
        assert!(cook_toom(&[Finite(0.0), Finite(1.0), Finite(-1.0), Finite(2.0)]).is_err());
        assert!(cook_toom(&[Finite(0.0), Infinity]).is_err());
        assert!(polyphase(&[Infinity]).is_err());
        assert!(polyphase(&[Finite(1.0), Finite(1.0), Infinity]).is_err());
    }
}
