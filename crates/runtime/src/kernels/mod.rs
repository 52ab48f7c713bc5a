//! The hot kernels, written once over the instruction set (`repvgg_simd::Simd`) and
//! instantiated for AVX-512, AVX2+FMA and the portable set by the layer executors'
//! `dispatch!` calls (`crate::exec`):
//!
//! - [`gemm`]: the register-blocked GEMM microkernel, with each instruction set's own
//!   register blocking;
//! - [`im2col`]: packing of the direct path's column panels;
//! - [`amx`]: AMX tile products on activations read in place, for INT8 and BF16;
//! - [`bf16`]: the BF16 products (bf16 x bf16 -> f32) per bf16 kernel set, and the
//!   conversion of activations to bf16;
//! - [`int8`]: the INT8 panel product (u8 x s8 -> i32) per int8 kernel set, activation
//!   quantization and requantization;
//! - [`depthwise`]: the depthwise 3x3 plane (for `repvgg density`);
//! - [`pointwise`]: pooling, squeeze-and-excitation and the classifier's dot products;
//! - [`probe`]: the FMA-peak and DRAM-bandwidth probes that `repvgg bench` sets times
//!   against; [`probe_mixed`]: the bf16 and int8 instruction peaks (AVX-512 and AMX) the
//!   lower-precision kernels would be built on.
//!
//! The Winograd tile transforms are the same kind of code and live in `repvgg-winograd`.
//! Everything here works on slices, strides and raw pointers over the channel-blocked
//! `NCHWc16` activation layout (`repvgg_simd::layout`).

pub mod amx;
pub mod bf16;
pub mod depthwise;
pub mod gemm;
pub mod im2col;
pub mod int8;
pub mod pointwise;
pub mod probe;
pub mod probe_mixed;
