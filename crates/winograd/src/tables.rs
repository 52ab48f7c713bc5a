//! The shipped f32 transform constants, one module per variant.
//!
//! These are the f64 Cook-Toom matrices of [`crate::matrices`] rounded to f32, written
//! out so that the SIMD kernels see them at compile time. A test checks each entry
//! against the generator. `G` is not shipped: filters are transformed once, at load, in
//! f64 straight from the generator.

/// F(2,3), points 0, +-1, inf.
pub mod f2 {
    pub const BT: [[f32; 4]; 4] =
        [[-1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, -1.0, 0.0, 1.0]];
    pub const AT: [[f32; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, 1.0]];
}

/// F(4,3), points 0, +-sqrt(2)/2, +-sqrt(2), inf.
pub mod f4 {
    const R: f32 = std::f32::consts::SQRT_2;
    const H: f32 = std::f32::consts::FRAC_1_SQRT_2;
    pub const BT: [[f32; 6]; 6] = [
        [1.0, 0.0, -2.5, 0.0, 1.0, 0.0],
        [0.0, -R, -2.0, H, 1.0, 0.0],
        [0.0, R, -2.0, -H, 1.0, 0.0],
        [0.0, -H, -0.5, R, 1.0, 0.0],
        [0.0, H, -0.5, -R, 1.0, 0.0],
        [0.0, 1.0, 0.0, -2.5, 0.0, 1.0],
    ];
    /// Powers of the points: `(+-sqrt(2)/2)^i` and `(+-sqrt(2))^i`.
    pub const AT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, H, -H, R, -R, 0.0],
        [0.0, 0.5, 0.5, 2.0, 2.0, 0.0],
        [0.0, 0.35355338, -0.35355338, 2.828427, -2.828427, 1.0],
    ];
}

/// F(4,3), textbook points 0, +-1, +-2, inf (kept for comparison).
pub mod f4_textbook {
    pub const BT: [[f32; 6]; 6] = [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ];
    pub const AT: [[f32; 6]; 4] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ];
}

/// F(6,3), points 0, +-1, +-2, +-1/2, inf.
pub mod f6 {
    pub const BT: [[f32; 8]; 8] = [
        [-1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0, 0.0],
        [0.0, 1.0, 1.0, -4.25, -4.25, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 4.25, -4.25, -1.0, 1.0, 0.0],
        [0.0, 0.5, 0.25, -2.5, -1.25, 2.0, 1.0, 0.0],
        [0.0, -0.5, 0.25, 2.5, -1.25, -2.0, 1.0, 0.0],
        [0.0, 2.0, 4.0, -2.5, -5.0, 0.5, 1.0, 0.0],
        [0.0, -2.0, 4.0, 2.5, -5.0, -0.5, 1.0, 0.0],
        [0.0, -1.0, 0.0, 5.25, 0.0, -5.25, 0.0, 1.0],
    ];
    pub const AT: [[f32; 8]; 6] = [
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 0.125, -0.125, 0.0],
        [0.0, 1.0, 1.0, 16.0, 16.0, 0.0625, 0.0625, 0.0],
        [0.0, 1.0, -1.0, 32.0, -32.0, 0.03125, -0.03125, 1.0],
    ];
}

/// The polyphase `B^T` (`2m + 1` square) from F(m, 2)'s `e = m + 1` square one: row `j < e`
/// reads the even samples with F(m, 2)'s row, row `e + j` passes odd sample `j` through.
const fn polyphase_bt<const E: usize, const A: usize>(even: [[f32; E]; E]) -> [[f32; A]; A] {
    let mut bt = [[0.0; A]; A];
    let mut j = 0;
    while j < E {
        let mut i = 0;
        while i < E {
            bt[j][2 * i] = even[j][i];
            i += 1;
        }
        j += 1;
    }
    while j < A {
        bt[j][2 * (j - E) + 1] = 1.0;
        j += 1;
    }
    bt
}

/// The polyphase `A^T` (`m x (2m + 1)`): F(m, 2)'s, plus the odd products added through.
const fn polyphase_at<const M: usize, const E: usize, const A: usize>(even: [[f32; E]; M]) -> [[f32; A]; M] {
    let mut at = [[0.0; A]; M];
    let mut i = 0;
    while i < M {
        let mut j = 0;
        while j < E {
            at[i][j] = even[i][j];
            j += 1;
        }
        at[i][E + i] = 1.0;
        i += 1;
    }
    at
}

/// Stride 2, m = 2: F(2,2) on the even samples, points 0, 1, inf.
pub mod p2 {
    pub const BT_EVEN: [[f32; 3]; 3] = [[-1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 1.0]];
    pub const AT_EVEN: [[f32; 3]; 2] = [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]];
    pub const BT: [[f32; 5]; 5] = super::polyphase_bt(BT_EVEN);
    pub const AT: [[f32; 5]; 2] = super::polyphase_at(AT_EVEN);
}

/// Stride 2, m = 3: F(3,2) on the even samples, points 0, +-1, inf.
pub mod p3 {
    pub const BT_EVEN: [[f32; 4]; 4] =
        [[-1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, -1.0, 0.0, 1.0]];
    pub const AT_EVEN: [[f32; 4]; 3] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, 0.0], [0.0, 1.0, 1.0, 1.0]];
    pub const BT: [[f32; 7]; 7] = super::polyphase_bt(BT_EVEN);
    pub const AT: [[f32; 7]; 3] = super::polyphase_at(AT_EVEN);
}

#[cfg(test)]
mod tests {
    use crate::Variant;

    /// Every shipped constant equals the generator's f64 value rounded to f32.
    #[test]
    fn shipped_tables_equal_the_generator() {
        for v in Variant::ALL {
            let m = v.matrices();
            for (shipped, generated) in [(v.bt_rows(), &m.bt), (v.at_rows(), &m.at)] {
                assert_eq!(shipped.len(), generated.len());
                for (s, g) in shipped.iter().zip(generated) {
                    let g32: Vec<f32> = g.iter().map(|&x| x as f32).collect();
                    assert_eq!(*s, g32.as_slice(), "{v:?}");
                }
            }
        }
    }

    /// The SIMD kernels assume the `+-p` pair structure: row `-p` of `B^T` is row `+p` with
    /// odd coefficients negated, and likewise for the columns of `A^T`.
    #[test]
    fn tables_have_the_pair_structure_the_kernels_assume() {
        for v in Variant::STRIDE_1 {
            let (bt, at) = (v.bt_rows(), v.at_rows());
            let a = v.alpha();
            for k in (1..a - 1).step_by(2) {
                for i in 0..a {
                    let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                    assert_eq!(bt[k + 1][i], sign * bt[k][i], "{v:?} B^T rows {k},{}", k + 1);
                }
                for (i, row) in at.iter().enumerate() {
                    let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                    assert_eq!(row[k + 1], sign * row[k], "{v:?} A^T column {k}");
                }
            }
        }
    }
}
