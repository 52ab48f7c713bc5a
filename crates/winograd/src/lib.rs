//! Winograd minimal filtering F(m, 3) for 3x3 convolutions (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", CVPR 2016).
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
//! | input channels | F(2,3) | F(4,3) sqrt(2) | F(4,3) textbook | F(6,3) |
//! |---|---|---|---|---|
//! | 32 | 2.1e-7 | 9.2e-7 | 3.4e-6 | 6.3e-6 |
//! | 128 | 4.3e-7 | 1.3e-6 | 6.0e-6 | 8.3e-6 |
//! | 512 | 9.0e-7 | 3.8e-6 | 1.9e-5 | 2.9e-5 |
//!
//! For scale, fp32 direct convolution is about 5e-7. The error grows with the reduction
//! length (roughly as sqrt(C) for random data). The tests assert per-variant bounds that
//! grow the same way.

pub mod filters;
pub mod matrices;
pub mod tables;
pub mod tiles;

pub use filters::{FilterPanel, PackedFilters};
pub use matrices::{Matrices, Point, cook_toom};
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
}

impl Variant {
    /// Every shipped variant.
    pub const ALL: [Variant; 4] = [Variant::F2, Variant::F4, Variant::F4Textbook, Variant::F6];

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
        };
        finite.iter().map(|&p| Finite(p)).chain([Infinity]).collect()
    }

    /// Output tile size m.
    pub fn m(self) -> usize {
        match self {
            Variant::F2 => 2,
            Variant::F4 | Variant::F4Textbook => 4,
            Variant::F6 => 6,
        }
    }

    /// Input tile size alpha = m + 2.
    pub fn alpha(self) -> usize {
        self.m() + 2
    }

    /// The f64 matrices from the generator.
    pub fn matrices(self) -> Matrices {
        cook_toom(&self.points()).expect("shipped point sets are valid")
    }

    /// Multiplies per output of the element-wise stage, `alpha^2 / m^2`.
    pub fn multiplies_per_output(self) -> f64 {
        (self.alpha() * self.alpha()) as f64 / (self.m() * self.m()) as f64
    }

    /// Multiplies of a stride-1 3x3 layer on an `h x w` map, tile overhang included:
    /// `alpha^2` per (input channel, output channel) pair and `m x m` output tile
    /// (Lavin & Gray 2016). `pairs` is `C / groups x K`.
    pub fn multiplies(self, pairs: u64, h: usize, w: usize) -> u64 {
        let tiles = (h.div_ceil(self.m()) * w.div_ceil(self.m())) as u64;
        pairs * tiles * (self.alpha() * self.alpha()) as u64
    }
}
