//! The hot kernels, written once over the instruction set (`repvgg_simd::Simd`) and
//! instantiated for AVX-512, AVX2+FMA and the portable set by the layer executors'
//! `dispatch!` calls (`crate::exec`):
//!
//! - [`gemm`]: the register-blocked GEMM microkernel, with each instruction set's own
//!   register blocking;
//! - [`im2col`]: packing of the direct path's column panels;
//! - [`depthwise`]: the depthwise 3x3 plane (for `repvgg density`);
//! - [`pointwise`]: pooling, squeeze-and-excitation and the classifier's dot products;
//! - [`probe`]: the FMA-peak and DRAM-bandwidth probes that `repvgg bench` sets times
//!   against.
//!
//! The Winograd tile transforms are the same kind of code and live in `repvgg-winograd`.
//! Everything here works on slices, strides and raw pointers over the channel-blocked
//! `NCHWc16` activation layout: image `n`, channel block `cb`, pixel `(y, x)` and channel
//! `l` of the block live at `((n * CB + cb) * H * W + y * W + x) * 16 + l`.

pub mod depthwise;
pub mod gemm;
pub mod im2col;
pub mod pointwise;
pub mod probe;
pub mod probe_mixed;

pub use repvgg_winograd::CHANNEL_BLOCK;

/// Number of 16-channel blocks needed for `c` channels.
pub fn channel_blocks(c: usize) -> usize {
    c.div_ceil(CHANNEL_BLOCK)
}
