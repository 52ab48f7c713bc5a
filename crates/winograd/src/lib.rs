//! Winograd minimal filtering F(m, 3) for 3x3 convolutions (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", CVPR 2016), and its polyphase form for
//! stride 2 ([`matrices::polyphase`]).
//!
//! # The algorithm
//!
//! For a 3x3 filter `g` and an `alpha x alpha` input tile `d` (`alpha = m + 2`), the
//! `m x m` outputs of the correlation are
//!
//! ```text
//! Y = A^T [ (G g G^T) . (B^T d B) ] A
//! ```
//!
//! where `.` is the element-wise product. Over a layer with C input and K output
//! channels, the element-wise products become `alpha^2` independent matrix products
//! `M_p = U_p V_p` (`U_p`: K x C transformed filters, `V_p`: C x tiles transformed
//! inputs). That needs `alpha^2 / m^2` multiplies per output instead of 9: 4 for
//! F(2,3), 2.25 for F(4,3) and 1.78 for F(6,3).
//!
//! This crate provides:
//!
//! - [`matrices`]: the Cook-Toom generator that builds `A^T`, `G`, `B^T` in f64 from a
//!   list of interpolation points;
//! - [`tables`]: the shipped f32 constants, tested equal to the generator;
//! - [`filters`]: the load-time filter transform, packed for the runtime's GEMM;
//! - [`tiles`]: the input and output tile transforms on the channel-blocked layout,
//!   generic over the instruction set (`repvgg-simd`), each with a scalar twin.
//!
//! It knows no graph types: it works on slices, strides and the `NCHWc16` tile layout
//! (`repvgg_simd::layout`).
//!
//! # Points and accuracy
//!
//! | variant | points | `alpha^2/m^2` |
//! |---|---|---|
//! | F(2,3) | 0, +-1, inf | 4 |
//! | F(4,3) (default) | 0, +-sqrt(2)/2, +-sqrt(2), inf | 2.25 |
//! | F(4,3) textbook | 0, +-1, +-2, inf | 2.25 |
//! | F(6,3) | 0, +-1, +-2, +-1/2, inf | 1.78 |
//! | P2: stride 2, F(2,2) on even samples | 0, 1, inf | 6.25 (direct: 9) |
//! | P3: stride 2, F(3,2) on even samples | 0, +-1, inf | 5.44 |
//!
//! Winograd trades multiplies for a larger rounding error. The error is amplified by the
//! size of the transform coefficients, which grow with the spread of the points' powers.
//! The points `+-sqrt(2)/2, +-sqrt(2)` are placed symmetrically around 1 in log scale, so
//! their powers up to the cube stay within [0.35, 2.83]. The textbook points' powers
//! reach 8 and their B^T entries 5. Both sets cost the same operations: the kernels exploit
//! the `+-p` symmetry and read the constants at compile time. The sqrt(2) set is several
//! times more accurate, which is why it is the default.
//!
//! Measured `max |err| / max |ref|` of a whole fp32 layer against an f64 direct
//! convolution (24x24 map, 16 outputs, uniform [-1, 1) data; `tests/layer.rs`,
//! `error_table`):
//!
//! | input channels | F(2,3) | F(4,3) sqrt(2) | F(4,3) textbook | F(6,3) | P2 (stride 2) | P3 (stride 2) |
//! |---|---|---|---|---|---|---|
//! | 32 | 2.1e-7 | 9.2e-7 | 3.4e-6 | 6.3e-6 | 2.9e-7 | 2.2e-7 |
//! | 128 | 4.3e-7 | 1.3e-6 | 6.0e-6 | 8.3e-6 | 3.7e-7 | 3.6e-7 |
//! | 512 | 9.0e-7 | 3.8e-6 | 1.9e-5 | 2.9e-5 | 9.9e-7 | 6.9e-7 |
//!
//! For scale, fp32 direct convolution is about 5e-7. The error grows with the reduction
//! length (roughly as sqrt(C) for random data). The tests assert per-variant bounds that
//! grow the same way.

pub mod filters;
pub mod matrices;
pub mod tables;
pub mod tiles;

pub use filters::{FilterPanel, PackedFilters};
pub use matrices::{Matrices, Point, cook_toom, polyphase};
pub use tiles::{input_tile, output_tile, output_tile_raw};

/// Errors of the winograd crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A point set the Cook-Toom construction cannot use.
    #[error("invalid interpolation points: {0}")]
    InvalidPoints(String),
    /// Filter dimensions or packing parameters that do not fit together.
    #[error("invalid filter layout: {0}")]
    Layout(String),
}

/// A shipped Winograd variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// F(2,3), points 0, +-1, inf.
    F2,
    /// F(4,3), points 0, +-sqrt(2)/2, +-sqrt(2), inf (the default F(4,3)).
    F4,
    /// F(4,3), points 0, +-1, +-2, inf (for comparison only).
    F4Textbook,
    /// F(6,3), points 0, +-1, +-2, +-1/2, inf.
    F6,
    /// Stride 2, 2x2 output tiles: F(2,2) on the even samples (points 0, 1, inf), the odd
    /// ones passed through ([`matrices::polyphase`]).
    P2,
    /// Stride 2, 3x3 output tiles: F(3,2) on the even samples (points 0, +-1, inf).
    P3,
}

impl Variant {
    /// Every shipped variant.
    pub const ALL: [Variant; 6] =
        [Variant::F2, Variant::F4, Variant::F4Textbook, Variant::F6, Variant::P2, Variant::P3];

    /// The stride-1 variants, F(m, 3).
    pub const STRIDE_1: [Variant; 4] = [Variant::F2, Variant::F4, Variant::F4Textbook, Variant::F6];

    /// The interpolation points, in the order the tables use: 0, then `+p, -p` pairs, then infinity.
    pub fn points(self) -> Vec<Point> {
        use Point::{Finite, Infinity};
        let half_root = std::f64::consts::FRAC_1_SQRT_2;
        let root = std::f64::consts::SQRT_2;
        let finite: &[f64] = match self {
            Variant::F2 => &[0.0, 1.0, -1.0],
            Variant::F4 => &[0.0, half_root, -half_root, root, -root],
            Variant::F4Textbook => &[0.0, 1.0, -1.0, 2.0, -2.0],
            Variant::F6 => &[0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5],
            Variant::P2 => &[0.0, 1.0],
            Variant::P3 => &[0.0, 1.0, -1.0],
        };
        finite.iter().map(|&p| Finite(p)).chain([Infinity]).collect()
    }

    /// Output tile size m.
    pub fn m(self) -> usize {
        match self {
            Variant::F2 | Variant::P2 => 2,
            Variant::P3 => 3,
            Variant::F4 | Variant::F4Textbook => 4,
            Variant::F6 => 6,
        }
    }

    /// The convolution's stride: 1 for F(m, 3), 2 for the polyphase variants.
    pub fn stride(self) -> usize {
        match self {
            Variant::P2 | Variant::P3 => 2,
            _ => 1,
        }
    }

    /// Input tile size: alpha = m + 2 at stride 1, 2m + 1 at stride 2. Tiles start
    /// `stride * m` input pixels apart.
    pub fn alpha(self) -> usize {
        (self.m() - 1) * self.stride() + 3
    }

    /// The f64 matrices from the generator.
    pub fn matrices(self) -> Matrices {
        let points = self.points();
        match self.stride() {
            1 => cook_toom(&points),
            _ => matrices::polyphase(&points),
        }
        .expect("shipped point sets are valid")
    }

    /// Multiplies per output of the element-wise stage, `alpha^2 / m^2`.
    pub fn multiplies_per_output(self) -> f64 {
        (self.alpha() * self.alpha()) as f64 / (self.m() * self.m()) as f64
    }

    /// Multiplies of a 3x3 layer with an `h x w` output map, tile overhang included:
    /// `alpha^2` per (input channel, output channel) pair and `m x m` output tile
    /// (Lavin & Gray 2016). `pairs` is `C / groups x K`.
    pub fn multiplies(self, pairs: u64, h: usize, w: usize) -> u64 {
        let tiles = (h.div_ceil(self.m()) * w.div_ceil(self.m())) as u64;
        pairs * tiles * (self.alpha() * self.alpha()) as u64
    }
}
