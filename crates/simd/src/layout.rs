//! The activation layout every kernel works on: channel-blocked `NCHWc16`.
//!
//! Image `n`, channel block `cb`, pixel `(y, x)` and channel `l` of the block live at
//! `((n * CB + cb) * H * W + y * W + x) * 16 + l`, with `CB` = [`channel_blocks`]`(C)`
//! and the lanes past `C` in the last block zero. Sixteen f32 channels are one AVX-512
//! vector (two AVX2, four portable ones), so the 16 channels of a pixel move as whole
//! vectors: the Winograd input and output transforms become pure vector adds and
//! multiply-adds across channels, and the GEMM's column panels are packed by whole-vector
//! copies. Both the Winograd crate's tile transforms and the runtime's kernels and
//! executors read this layout, so it is defined here, below both.

/// Channels per block of the channel-blocked layout.
pub const CHANNEL_BLOCK: usize = 16;

/// Number of 16-channel blocks needed for `c` channels.
pub fn channel_blocks(c: usize) -> usize {
    c.div_ceil(CHANNEL_BLOCK)
}
