//! Input and output tile transforms, vectorized across a block of 16 channels.
//!
//! Activations are channel-blocked (`NCHWc16`): a plane of one channel block stores pixel
//! `(y, x)` as 16 consecutive floats, one per channel, at `y * row_stride + x * 16`. Every
//! arithmetic operation of a transform is then a 16-wide vector operation, with no
//! shuffles. The transform of one tile reads or writes `alpha^2` such vectors, each at
//! `position * pos_stride` in the transformed buffer, so the caller chooses the layout that
//! its batched GEMM reads.
//!
//! The SIMD kernels take the constant tables at compile time. Zero coefficients vanish
//! and +-1 coefficients become plain adds. The symmetric points pair the rows of `B^T`
//! and the columns of `A^T` (see [`crate::matrices`]), so each pair costs one even and one
//! odd partial sum. [`scalar`] holds the twins: dense, lane-by-lane, same signatures.

use wide::f32x16;

use crate::Variant;
use crate::tables;

/// Channels per block of the channel-blocked layout (one AVX-512 vector of f32).
pub const LANES: usize = 16;

type V = f32x16;

#[inline(always)]
fn load(src: &[f32], offset: usize) -> V {
    debug_assert!(offset + LANES <= src.len());
    // SAFETY: every caller passes an offset inside the range validated by
    // `check_input_args` / `check_output_args` on entry to the public kernel.
    unsafe { std::ptr::read_unaligned(src.as_ptr().add(offset) as *const V) }
}

#[inline(always)]
fn store(dst: &mut [f32], offset: usize, v: V) {
    debug_assert!(offset + LANES <= dst.len());
    // SAFETY: as for `load`, the range was validated on entry to the public kernel.
    unsafe { std::ptr::write_unaligned(dst.as_mut_ptr().add(offset) as *mut V, v) }
}

/// The 1-D transforms of one variant, written out by hand from its tables.
///
/// The formulas fix which table entries are zero or +-1 (asserted at compile time below)
/// and use the `+-p` pair structure: the rows of a pair share an even and an odd partial
/// sum, `r_(+p) = even + odd`, `r_(-p) = even - odd`, and in `A^T` even rows see pair sums
/// while odd rows see pair differences. The remaining coefficients are read from the
/// tables, so the kernels compute exactly the matrices the tests check against the generator.
trait OneD<const M: usize, const A: usize> {
    /// `B^T d` for a column (or row) of `alpha` vectors.
    fn input(d: [V; A]) -> [V; A];
    /// `A^T x` for a column (or row) of `alpha` vectors.
    fn output(x: [V; A]) -> [V; M];
}

#[inline(always)]
fn c(v: f32) -> V {
    V::splat(v)
}

struct F2;
impl OneD<2, 4> for F2 {
    #[inline(always)]
    fn input(d: [V; 4]) -> [V; 4] {
        [d[2] - d[0], d[1] + d[2], d[2] - d[1], d[3] - d[1]]
    }
    #[inline(always)]
    fn output(x: [V; 4]) -> [V; 2] {
        [x[0] + x[1] + x[2], x[1] - x[2] + x[3]]
    }
}
const _: () = {
    let (bt, at) = (tables::f2::BT, tables::f2::AT);
    assert!(bt[0][0] == -1.0 && bt[0][2] == 1.0 && bt[1][1] == 1.0 && bt[1][2] == 1.0 && bt[3][1] == -1.0);
    assert!(bt[3][3] == 1.0 && at[0][1] == 1.0 && at[1][1] == 1.0 && at[1][3] == 1.0);
};

/// F(4,3) for either point set: both share one sparsity pattern.
struct F4<const TEXTBOOK: bool>;
impl<const TEXTBOOK: bool> F4<TEXTBOOK> {
    const BT: [[f32; 6]; 6] = if TEXTBOOK { tables::f4_textbook::BT } else { tables::f4::BT };
    const AT: [[f32; 6]; 4] = if TEXTBOOK { tables::f4_textbook::AT } else { tables::f4::AT };
}
impl<const TEXTBOOK: bool> OneD<4, 6> for F4<TEXTBOOK> {
    #[inline(always)]
    fn input(d: [V; 6]) -> [V; 6] {
        let b = Self::BT;
        let r0 = d[0].mul_add(c(b[0][0]), d[2].mul_add(c(b[0][2]), d[4]));
        let e1 = d[2].mul_add(c(b[1][2]), d[4]);
        let o1 = d[1].mul_add(c(b[1][1]), d[3] * c(b[1][3]));
        let e2 = d[2].mul_add(c(b[3][2]), d[4]);
        let o2 = d[1].mul_add(c(b[3][1]), d[3] * c(b[3][3]));
        let r5 = d[1].mul_add(c(b[5][1]), d[3].mul_add(c(b[5][3]), d[5]));
        [r0, e1 + o1, e1 - o1, e2 + o2, e2 - o2, r5]
    }
    #[inline(always)]
    fn output(x: [V; 6]) -> [V; 4] {
        let a = Self::AT;
        let (s1, d1) = (x[1] + x[2], x[1] - x[2]);
        let (s2, d2) = (x[3] + x[4], x[3] - x[4]);
        [
            x[0] + s1 + s2,
            d1.mul_add(c(a[1][1]), d2 * c(a[1][3])),
            s1.mul_add(c(a[2][1]), s2 * c(a[2][3])),
            d1.mul_add(c(a[3][1]), d2.mul_add(c(a[3][3]), x[5])),
        ]
    }
}
const _: () = {
    let mut t = 0;
    while t < 2 {
        let (bt, at) =
            if t == 0 { (tables::f4::BT, tables::f4::AT) } else { (tables::f4_textbook::BT, tables::f4_textbook::AT) };
        assert!(bt[0][1] == 0.0 && bt[0][3] == 0.0 && bt[0][4] == 1.0 && bt[0][5] == 0.0);
        assert!(bt[1][0] == 0.0 && bt[1][4] == 1.0 && bt[1][5] == 0.0 && bt[3][0] == 0.0 && bt[3][4] == 1.0);
        assert!(bt[3][5] == 0.0 && bt[5][0] == 0.0 && bt[5][2] == 0.0 && bt[5][4] == 0.0 && bt[5][5] == 1.0);
        assert!(at[0][0] == 1.0 && at[0][1] == 1.0 && at[0][3] == 1.0 && at[0][5] == 0.0 && at[1][0] == 0.0);
        assert!(at[1][5] == 0.0 && at[2][0] == 0.0 && at[2][5] == 0.0 && at[3][0] == 0.0 && at[3][5] == 1.0);
        t += 1;
    }
};

struct F6;
impl OneD<6, 8> for F6 {
    #[inline(always)]
    fn input(d: [V; 8]) -> [V; 8] {
        let b = tables::f6::BT;
        // Rows 0 and 7 share the coefficient 5.25 on their inner terms.
        let r0 = (d[2] - d[4]).mul_add(c(b[0][2]), d[6] - d[0]);
        let r7 = (d[3] - d[5]).mul_add(c(b[7][3]), d[7] - d[1]);
        let pair = |k: usize| {
            let even = d[2].mul_add(c(b[k][2]), d[4].mul_add(c(b[k][4]), d[6]));
            let odd = d[1].mul_add(c(b[k][1]), d[3].mul_add(c(b[k][3]), d[5] * c(b[k][5])));
            (even + odd, even - odd)
        };
        let (r1, r2) = pair(1);
        let (r3, r4) = pair(3);
        let (r5, r6) = pair(5);
        [r0, r1, r2, r3, r4, r5, r6, r7]
    }
    #[inline(always)]
    fn output(x: [V; 8]) -> [V; 6] {
        let a = tables::f6::AT;
        let (s1, d1) = (x[1] + x[2], x[1] - x[2]);
        let (s2, d2) = (x[3] + x[4], x[3] - x[4]);
        let (s3, d3) = (x[5] + x[6], x[5] - x[6]);
        let even = |i: usize| s2.mul_add(c(a[i][3]), s3.mul_add(c(a[i][5]), s1));
        let odd = |i: usize| d2.mul_add(c(a[i][3]), d3.mul_add(c(a[i][5]), d1));
        [x[0] + s1 + s2 + s3, odd(1), even(2), odd(3), even(4), odd(5) + x[7]]
    }
}
const _: () = {
    let (bt, at) = (tables::f6::BT, tables::f6::AT);
    assert!(bt[0][0] == -1.0 && bt[0][4] == -bt[0][2] && bt[0][6] == 1.0 && bt[0][1] == 0.0 && bt[0][3] == 0.0);
    assert!(bt[7][1] == -1.0 && bt[7][5] == -bt[7][3] && bt[7][7] == 1.0 && bt[7][2] == 0.0 && bt[7][4] == 0.0);
    let mut k = 1;
    while k < 7 {
        assert!(bt[k][0] == 0.0 && bt[k][6] == 1.0 && bt[k][7] == 0.0);
        k += 2;
    }
    let mut i = 0;
    while i < 6 {
        assert!(at[i][1] == 1.0 && at[i][2] == if i % 2 == 0 { 1.0 } else { -1.0 });
        assert!(at[i][0] == if i == 0 { 1.0 } else { 0.0 } && at[i][7] == if i == 5 { 1.0 } else { 0.0 });
        i += 1;
    }
    assert!(at[0][3] == 1.0 && at[0][5] == 1.0);
};

/// Reads pixel `(y, x)` of the tile, relative to its top-left corner.
trait TileReader {
    fn get(&self, y: usize, x: usize) -> V;
}

/// A tile entirely inside the map: plain loads.
struct Interior<'a> {
    src: &'a [f32],
    base: usize,
    row_stride: usize,
}

impl TileReader for Interior<'_> {
    #[inline(always)]
    fn get(&self, y: usize, x: usize) -> V {
        load(self.src, self.base + y * self.row_stride + x * LANES)
    }
}

/// A tile crossing the map's edge: every load reads a clamped, valid address and is
/// ANDed with an all-ones or all-zeros mask, so outside pixels read as exact zeros
/// (the convolution's padding) without branches and without a padded copy.
struct Border<'a, const A: usize> {
    src: &'a [f32],
    row_stride: usize,
    rows: [usize; A],
    cols: [usize; A],
    row_mask: [V; A],
    col_mask: [V; A],
}

impl<'a, const A: usize> Border<'a, A> {
    fn new(src: &'a [f32], row_stride: usize, h: usize, w: usize, y0: isize, x0: isize) -> Self {
        let ones = V::from_bits(wide::u32x16::splat(u32::MAX));
        let axis = |start: isize, len: usize| -> ([usize; A], [V; A]) {
            let pos = std::array::from_fn(|i| (start + i as isize).clamp(0, len.max(1) as isize - 1) as usize);
            let mask = std::array::from_fn(|i| {
                let p = start + i as isize;
                if p >= 0 && p < len as isize { ones } else { V::ZERO }
            });
            (pos, mask)
        };
        let (rows, row_mask) = axis(y0, h);
        let (cols, col_mask) = axis(x0, w);
        Border { src, row_stride, rows, cols, row_mask, col_mask }
    }
}

impl<const A: usize> TileReader for Border<'_, A> {
    #[inline(always)]
    fn get(&self, y: usize, x: usize) -> V {
        let v = load(self.src, self.rows[y] * self.row_stride + self.cols[x] * LANES);
        v & (self.row_mask[y] & self.col_mask[x])
    }
}

/// `V = B^T d B`: columns first into a small stack tile, then rows straight to `dst`.
#[inline(always)]
fn input_2d<const M: usize, const A: usize, T: OneD<M, A>, R: TileReader>(d: &R, dst: &mut [f32], pos_stride: usize) {
    let mut t = [[V::ZERO; A]; A];
    for x in 0..A {
        let col = T::input(std::array::from_fn(|y| d.get(y, x)));
        for y in 0..A {
            t[y][x] = col[y];
        }
    }
    for (i, row) in t.iter().enumerate() {
        for (j, v) in T::input(*row).iter().enumerate() {
            store(dst, (i * A + j) * pos_stride, *v);
        }
    }
}

#[inline(always)]
fn input_tile_impl<const M: usize, const A: usize, T: OneD<M, A>>(
    src: &[f32],
    row_stride: usize,
    h: usize,
    w: usize,
    y0: isize,
    x0: isize,
    dst: &mut [f32],
    pos_stride: usize,
) {
    let interior = y0 >= 0 && x0 >= 0 && y0 as usize + A <= h && x0 as usize + A <= w;
    if interior {
        let reader = Interior { src, base: y0 as usize * row_stride + x0 as usize * LANES, row_stride };
        input_2d::<M, A, T, _>(&reader, dst, pos_stride);
    } else {
        input_2d::<M, A, T, _>(&Border::<A>::new(src, row_stride, h, w, y0, x0), dst, pos_stride);
    }
}

/// `Y = A^T M A` + bias, then ReLU, for the valid `rows x cols` part.
///
/// # Safety
///
/// `src` must hold `alpha^2` vectors at `pos_stride`, and `dst` must be valid for writes of
/// `rows x cols` vectors at `row_stride`.
#[inline(always)]
unsafe fn output_tile_impl<const M: usize, const A: usize, T: OneD<M, A>>(
    src: &[f32],
    pos_stride: usize,
    bias: &[f32; LANES],
    relu: bool,
    dst: *mut f32,
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    let mut t = [[V::ZERO; A]; M];
    for x in 0..A {
        let col = T::output(std::array::from_fn(|y| load(src, (y * A + x) * pos_stride)));
        for i in 0..M {
            t[i][x] = col[i];
        }
    }
    let bias = V::from(*bias);
    for (i, row) in t.iter().enumerate().take(rows) {
        for (j, v) in T::output(*row).iter().enumerate().take(cols) {
            let v = *v + bias;
            let v = if relu { v.max(V::ZERO) } else { v };
            // SAFETY: (i, j) is inside the rows x cols block the caller vouches for.
            unsafe { std::ptr::write_unaligned(dst.add(i * row_stride + j * LANES) as *mut V, v) };
        }
    }
}

/// Checks the bounds every kernel relies on, so that an out-of-range call panics with a
/// message here instead of deep in a slice index.
#[inline(always)]
fn check_input_args(v: Variant, src: &[f32], row_stride: usize, h: usize, w: usize, dst: &[f32], pos_stride: usize) {
    let a = v.alpha();
    assert!(row_stride >= w * LANES, "row stride {row_stride} shorter than {w} pixels");
    assert!(h == 0 || src.len() >= (h - 1) * row_stride + w * LANES, "source plane too short");
    assert!(pos_stride >= LANES && dst.len() >= (a * a - 1) * pos_stride + LANES, "destination too short");
}

#[inline(always)]
fn check_output_args(
    v: Variant,
    src: &[f32],
    pos_stride: usize,
    dst: &[f32],
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    let (a, m) = (v.alpha(), v.m());
    assert!(rows <= m && cols <= m, "{rows}x{cols} exceeds the {m}x{m} output tile");
    assert!(pos_stride >= LANES && src.len() >= (a * a - 1) * pos_stride + LANES, "source too short");
    assert!(rows == 0 || cols == 0 || dst.len() >= (rows - 1) * row_stride + cols * LANES, "destination too short");
}

/// Transforms one input tile, `V = B^T d B`, for 16 channels.
///
/// The tile's top-left pixel is `(y0, x0)` (negative at the top/left border, the
/// convolution's padding). `src` is the channel block's plane of `h x w` pixels with
/// `row_stride` floats per row. Pixels outside it read as zero, so no padded copy of the
/// input is needed. Position `p = i * alpha + j` of the result goes to
/// `dst[p * pos_stride..][..16]`.
pub fn input_tile(
    variant: Variant,
    src: &[f32],
    row_stride: usize,
    h: usize,
    w: usize,
    y0: isize,
    x0: isize,
    dst: &mut [f32],
    pos_stride: usize,
) {
    check_input_args(variant, src, row_stride, h, w, dst, pos_stride);
    let (s, rs, p) = (src, row_stride, pos_stride);
    match variant {
        Variant::F2 => input_tile_impl::<2, 4, F2>(s, rs, h, w, y0, x0, dst, p),
        Variant::F4 => input_tile_impl::<4, 6, F4<false>>(s, rs, h, w, y0, x0, dst, p),
        Variant::F4Textbook => input_tile_impl::<4, 6, F4<true>>(s, rs, h, w, y0, x0, dst, p),
        Variant::F6 => input_tile_impl::<6, 8, F6>(s, rs, h, w, y0, x0, dst, p),
    }
}

/// Inverse-transforms one tile, `Y = A^T M A`, adds `bias`, optionally applies ReLU, and
/// stores the top-left `rows x cols` pixels (a partial tile at the right or bottom edge
/// stores only its valid part).
///
/// Position `p` of `M` is read from `src[p * pos_stride..][..16]`; output pixel `(i, j)`
/// goes to `dst[i * row_stride + j * 16..][..16]`.
pub fn output_tile(
    variant: Variant,
    src: &[f32],
    pos_stride: usize,
    bias: &[f32; LANES],
    relu: bool,
    dst: &mut [f32],
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    check_output_args(variant, src, pos_stride, dst, row_stride, rows, cols);
    // SAFETY: `check_output_args` verified that `dst` holds the rows x cols block.
    unsafe { output_tile_raw(variant, src, pos_stride, bias, relu, dst.as_mut_ptr(), row_stride, rows, cols) }
}

/// [`output_tile`] writing through a raw pointer, for callers whose concurrent tiles
/// interleave in one buffer (tiles of one row of a map share its rows, so they cannot be
/// handed out as disjoint slices).
///
/// # Safety
///
/// `dst` must be valid for writes of the `rows x cols` pixels (16 floats each) at
/// `i * row_stride + j * 16`, and no other thread may access those floats concurrently.
pub unsafe fn output_tile_raw(
    variant: Variant,
    src: &[f32],
    pos_stride: usize,
    bias: &[f32; LANES],
    relu: bool,
    dst: *mut f32,
    row_stride: usize,
    rows: usize,
    cols: usize,
) {
    let (a, m) = (variant.alpha(), variant.m());
    assert!(rows <= m && cols <= m, "{rows}x{cols} exceeds the {m}x{m} output tile");
    assert!(pos_stride >= LANES && src.len() >= (a * a - 1) * pos_stride + LANES, "source too short");
    let (s, p, rs) = (src, pos_stride, row_stride);
    // SAFETY: forwarded contract of this function.
    unsafe {
        match variant {
            Variant::F2 => output_tile_impl::<2, 4, F2>(s, p, bias, relu, dst, rs, rows, cols),
            Variant::F4 => output_tile_impl::<4, 6, F4<false>>(s, p, bias, relu, dst, rs, rows, cols),
            Variant::F4Textbook => output_tile_impl::<4, 6, F4<true>>(s, p, bias, relu, dst, rs, rows, cols),
            Variant::F6 => output_tile_impl::<6, 8, F6>(s, p, bias, relu, dst, rs, rows, cols),
        }
    }
}

/// Scalar twins of the SIMD kernels: the same signatures, computed lane by lane with the
/// dense matrices (no pairing, no skipped zeros). They exist to test the SIMD kernels
/// against an implementation whose correctness is evident from reading it.
pub mod scalar {
    use super::*;

    /// Dense `mat * x` for one lane.
    fn apply(mat: &[Vec<f32>], x: &[f32]) -> Vec<f32> {
        mat.iter().map(|row| row.iter().zip(x).fold(0f32, |acc, (c, v)| c.mul_add(*v, acc))).collect()
    }

    fn f32_rows(rows: &[&[f32]]) -> Vec<Vec<f32>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    /// Scalar twin of [`super::input_tile`].
    pub fn input_tile(
        variant: Variant,
        src: &[f32],
        row_stride: usize,
        h: usize,
        w: usize,
        y0: isize,
        x0: isize,
        dst: &mut [f32],
        pos_stride: usize,
    ) {
        check_input_args(variant, src, row_stride, h, w, dst, pos_stride);
        let a = variant.alpha();
        let bt = f32_rows(&variant.bt_rows());
        for lane in 0..LANES {
            let pixel = |y: isize, x: isize| {
                if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                    0.0
                } else {
                    src[y as usize * row_stride + x as usize * LANES + lane]
                }
            };
            let d: Vec<Vec<f32>> =
                (0..a).map(|i| (0..a).map(|j| pixel(y0 + i as isize, x0 + j as isize)).collect()).collect();
            // t = B^T d, column by column; v = t B, row by row.
            let cols: Vec<Vec<f32>> =
                (0..a).map(|x| apply(&bt, &(0..a).map(|y| d[y][x]).collect::<Vec<_>>())).collect();
            for i in 0..a {
                let trow: Vec<f32> = (0..a).map(|x| cols[x][i]).collect();
                for (j, v) in apply(&bt, &trow).into_iter().enumerate() {
                    dst[(i * a + j) * pos_stride + lane] = v;
                }
            }
        }
    }

    /// Scalar twin of [`super::output_tile`].
    pub fn output_tile(
        variant: Variant,
        src: &[f32],
        pos_stride: usize,
        bias: &[f32; LANES],
        relu: bool,
        dst: &mut [f32],
        row_stride: usize,
        rows: usize,
        cols: usize,
    ) {
        check_output_args(variant, src, pos_stride, dst, row_stride, rows, cols);
        let a = variant.alpha();
        let at = f32_rows(&variant.at_rows());
        for lane in 0..LANES {
            let mm = |i: usize, j: usize| src[(i * a + j) * pos_stride + lane];
            let tcols: Vec<Vec<f32>> =
                (0..a).map(|x| apply(&at, &(0..a).map(|y| mm(y, x)).collect::<Vec<_>>())).collect();
            for i in 0..rows {
                let trow: Vec<f32> = (0..a).map(|x| tcols[x][i]).collect();
                for (j, v) in apply(&at, &trow).into_iter().enumerate().take(cols) {
                    let v = v + bias[lane];
                    dst[i * row_stride + j * LANES + lane] = if relu { v.max(0.0) } else { v };
                }
            }
        }
    }
}

impl Variant {
    /// Rows of the shipped f32 `B^T`.
    pub fn bt_rows(self) -> Vec<&'static [f32]> {
        match self {
            Variant::F2 => tables::f2::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4 => tables::f4::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4Textbook => tables::f4_textbook::BT.iter().map(|r| r.as_slice()).collect(),
            Variant::F6 => tables::f6::BT.iter().map(|r| r.as_slice()).collect(),
        }
    }

    /// Rows of the shipped f32 `A^T`.
    pub fn at_rows(self) -> Vec<&'static [f32]> {
        match self {
            Variant::F2 => tables::f2::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4 => tables::f4::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::F4Textbook => tables::f4_textbook::AT.iter().map(|r| r.as_slice()).collect(),
            Variant::F6 => tables::f6::AT.iter().map(|r| r.as_slice()).collect(),
        }
    }
}
