//! Layer executors: each layer kind's packed weights, buffer sizes and schedule, calling
//! the per-instruction-set kernels (`crate::kernels`, `repvgg_winograd::tiles`) through
//! `repvgg_simd::dispatch!` once per work item.
//!
//! - [`direct`]: implicit-im2col GEMM (stride-2 layers, the stem, small maps; kernel
//!   sides 1, 3, 5 and 7 on the channel-blocked layout);
//! - [`depthwise`]: depthwise 3x3, lane per channel (for `repvgg density`);
//! - [`winograd`]: Winograd F(m,3) for stride-1 layers;
//! - [`schedule`]: the fused and two-phase schedules those two share;
//! - [`generic`]: a plain loop for group shapes without whole channel blocks;
//! - [`pointwise`]: pooling, squeeze-and-excitation, the classifier, layout changes.

pub mod depthwise;
pub mod direct;
pub mod generic;
pub mod pointwise;
pub mod schedule;
pub mod winograd;
