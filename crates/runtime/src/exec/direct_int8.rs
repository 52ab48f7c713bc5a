//! Direct convolution in INT8: u8 activations, s8 weights and exact i32 sums
//! (`kernels::int8`), then `relu?(f32(acc - zero[k]) * s_x s_w[k] + bias[k])`.
//!
//! A 3x3 layer reads its input in place ([`reads_in_place`]):
//!
//! 1. the input is quantized once into a zero-bordered u8 copy (the channel-blocked
//!    floats of the layer before, or the planar network input with zero point 128),
//!    channel-blocked or, on AMX at widths that are multiples of 64, pixel-major
//!    ([`code_block`]), unless the layer before already wrote it ([`super::Codes`]);
//! 2. each work item takes a row segment (16 pixels and two rows for AMX, whose tiles read
//!    a kernel row's three taps, 48 bytes of a channel block or a pixel-major span in
//!    64-byte steps, at a stride of one pixel times the layer's stride; `NR` pixels for
//!    the vector sets, which walk channel blocks with `int8::Columns`) and a few weight
//!    panels;
//! 3. the epilogue writes floats, channel-blocked, or the next layer's codes in the layout
//!    that layer reads.
//!
//! AMX gathers the windows of maps under 12 pixels wide into rows of their own first
//! ([`Gathered`]). Every set runs the network input's RGB layer as whole windows: each
//! output pixel's 3x3x3 window in one row of 36 bytes, one tile step on AMX and 12 groups
//! of four bytes on the vector sets, where read in place its 3 channels would fill 3 of
//! every 16-channel block's bytes ([`window_run`]). Other layers, and grouped narrow layers on AMX, run the
//! FP32 direct path's implicit-im2col GEMM on bytes: the input quantized to u8 at the front of the shared
//! buffer, column panels packed from it in the set's layout, and `exec::schedule`'s fused
//! or two-phase schedule. Activations between an INT8 layer and an FP32 one (the layers a
//! quantized file keeps in FP32, SE blocks, the classifier) are floats, so the two mix
//! freely.

use super::direct::{CHUNK_FLOATS, FUSED_WEIGHT_BYTES, PanelPixels, SIDES};
use super::schedule::{Schedule, Work};
use super::{
    Codes, ConvExecutor, ConvShape, CostModel, InputLayout, LayerWeights, PackedWeights, RunContext, downcast,
};
use crate::buffers::{LINE, LineAligned, SharedMut, line_skip, zero_border};
use crate::kernels::amx::{AmxTiles, TileOp};
use crate::kernels::gemm::{MR, NR};
use crate::kernels::int8::{self, Int8Kernels, Int8Set, MAX_COLUMNS, MAX_DEPTH, SIGNED_ZERO_POINT, Tile};
use crate::plan::{Algo, Precision};
use crate::team::for_each_chunk_mut;
use repvgg_simd::Isa;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// The direct executor (INT8).
pub(crate) struct DirectInt8;

/// Reduction depth of one group: whole channel blocks times the kernel's taps.
fn depth(s: &ConvShape) -> usize {
    channel_blocks(s.in_per_group()) * s.kernel * s.kernel * CHANNEL_BLOCK
}

/// Bytes of the quantized input, rounded up to whole floats of the shared buffer.
fn quantized_floats(s: &ConvShape) -> usize {
    (s.n * channel_blocks(s.in_channels) * s.h * s.w * CHANNEL_BLOCK).div_ceil(4)
}

/// The layer's panels of `columns` pixels and its schedule (the FP32 direct path's, for
/// bytes). A packed panel has room for [`MAX_COLUMNS`] columns whatever the set, so the
/// buffers' sizes do not depend on it.
fn work(s: &ConvShape, columns: usize) -> Work {
    let (kd, k_pad) = (depth(s), channel_blocks(s.out_channels / s.groups) * CHANNEL_BLOCK);
    let weight_bytes = s.groups * kd * k_pad;
    // A column panel holds every group's reduction: columns of `groups * kd` bytes.
    let panel_floats = s.groups * kd * MAX_COLUMNS / 4;
    let schedule = if weight_bytes <= FUSED_WEIGHT_BYTES {
        Schedule::Fused
    } else {
        Schedule::TwoPhase { chunk: (CHUNK_FLOATS / panel_floats).max(1) }
    };
    Work {
        column_panels: (s.n * s.oh * s.ow).div_ceil(columns),
        weight_panels: s.groups * k_pad.div_ceil(MR),
        panel_floats,
        schedule,
    }
}

impl ConvExecutor for DirectInt8 {
    fn algo(&self) -> Algo {
        Algo::Direct
    }

    fn precision(&self) -> Precision {
        Precision::Int8
    }

    /// Channel-blocked input with kernel sides in [`SIDES`], whole channel blocks per
    /// group when there are groups, and a reduction within [`MAX_DEPTH`]; or the planar
    /// network input (signed, zero point 128) of a 3x3 stem of at most 16 channels.
    fn supports(&self, s: &ConvShape, _: Isa) -> bool {
        let input = match s.input {
            InputLayout::Blocked => SIDES.contains(&s.kernel),
            InputLayout::Planar => s.kernel == 3 && s.groups == 1 && s.in_channels <= CHANNEL_BLOCK,
        };
        input && s.whole_channel_blocks() && depth(s) <= MAX_DEPTH
    }

    /// The s8 weights and one f32 scale per padded output channel, in floats.
    fn packed_len(&self, s: &ConvShape) -> usize {
        let k_pad = channel_blocks(s.out_channels / s.groups) * CHANNEL_BLOCK;
        s.groups * (depth(s) * k_pad).div_ceil(4) + s.groups * k_pad
    }

    fn pack(&self, s: &ConvShape, weights: LayerWeights<'_>) -> Box<dyn PackedWeights> {
        assert!(self.supports(s, Isa::Portable), "unsupported INT8 direct layer");
        let layer = weights.int8.expect("the INT8 executor runs only layers with INT8 weights");
        Box::new(Int8Weights::pack(s, layer))
    }

    /// The quantized input, then the two-phase schedule's chunk of panels (the most any
    /// set's panel width needs); or AMX's zero-bordered input.
    fn shared_len(&self, s: &ConvShape) -> usize {
        let panels = quantized_floats(s) + work(s, NR).shared_len().max(work(s, MAX_COLUMNS).shared_len());
        let gathered = if s.kernel == 3 && s.ow < IN_PLACE_MIN_WIDTH {
            // Either layout's rows: channel blocks' 48-byte steps, or pixel-major spans.
            let blocked = Gathered::new(s, channel_blocks(s.in_channels) * 3 * 48).floats();
            blocked.max(pixel_major(s).map_or(0, |block| Gathered::new(s, span_depth(block)).floats()))
        } else {
            0
        };
        panels.max(codes_len(s) + gathered)
    }

    fn scratch_len(&self, s: &ConvShape) -> usize {
        let stem = window_run(s).map_or(0, |_| Windows::new(s).bytes.div_ceil(4) + LINE / 4);
        work(s, NR).scratch_len(0).max(work(s, MAX_COLUMNS).scratch_len(0)).max(stem)
    }

    /// The FP32 direct path's cost at a quarter of the slots per multiply-add (`vpdpbusd`
    /// does four per lane), plus a quarter of its weight stream.
    fn cost(&self, s: &ConvShape, model: &CostModel) -> f64 {
        let (cb, kb) = (channel_blocks(s.in_per_group()) as f64, channel_blocks(s.out_channels / s.groups) as f64);
        let groups = s.groups as f64;
        let weight_floats = groups * kb * cb * 256.0 * (s.kernel * s.kernel) as f64 / 4.0;
        let pixels = (s.n * s.oh * s.ow) as f64;
        groups * kb * cb * 4.0 * (s.kernel * s.kernel) as f64 * pixels / 0.9 + model.stream * weight_floats
    }

    fn run(&self, ctx: RunContext<'_>) {
        run(ctx)
    }
}

/// A layer's INT8 weights packed in panels of up to `MR` output channels, `[kd / 4][width]
/// [4]` each (`kernels::int8`), with each output channel's combined scale `s_x s_w[k]`.
#[derive(Debug)]
struct Int8Weights {
    kernel: usize,
    groups: usize,
    out_per_group: usize,
    kd: usize,
    k_pad: usize,
    panels_per_group: usize,
    /// Line-aligned: each `B` tile row (64 bytes) is one cache line.
    data: LineAligned<i8>,
    /// `s_x s_w[k]` per padded output channel (0 on padding), group-major.
    scale: Vec<f32>,
    /// `1 / s_x`.
    inv_input_scale: f32,
    /// The input's zero point: [`SIGNED_ZERO_POINT`] for the planar network input, else 0.
    zero_point: u8,
    /// `zero_point * sum w_q[k]` per padded output channel, group-major: what the codes'
    /// offset adds to each sum, subtracted in the epilogue.
    zero: Vec<i32>,
    /// The network input's layer ([`window_run`]): the same weights in window order,
    /// panels of `[window_depth / 4][width][4]` (groups past the window's zero); AMX
    /// reads the first `run / 4` rows of each in one tile step.
    window: Option<LineAligned<i8>>,
    /// A layer that reads pixel-major codes on AMX ([`code_block`]), where this process
    /// runs AMX: the same weights in span order ([`Int8Weights::span_panel`]).
    spans: Option<LineAligned<i8>>,
}

impl PackedWeights for Int8Weights {
    fn bytes(&self) -> usize {
        // One packing is read per run; a span-ordered copy holds as many bytes (a span's
        // steps cover it exactly at widths that are multiples of 64).
        self.data.as_slice().len() + 4 * self.scale.len()
    }
}

/// The depth of a pixel-major layer's span-ordered weights: 3 kernel rows of `chunks`
/// steps of `run` bytes.
fn span_depth(block: usize) -> usize {
    let (chunks, run) = cut(block);
    3 * chunks * run
}

impl Int8Weights {
    fn pack(s: &ConvShape, layer: &crate::quant::Int8Layer) -> Int8Weights {
        let (cg, taps) = (s.in_per_group(), s.kernel * s.kernel);
        assert_eq!(layer.weight.len(), s.out_channels * cg * taps, "INT8 weights do not match the layer");
        assert_eq!(layer.weight_scale.len(), s.out_channels, "INT8 scales do not match the layer");
        let out_per_group = s.out_channels / s.groups;
        let (kd, k_pad) = (depth(s), channel_blocks(out_per_group) * CHANNEL_BLOCK);
        let panels_per_group = k_pad.div_ceil(MR);
        let mut aligned = LineAligned::zeroed(s.groups * kd * k_pad);
        let data = aligned.as_mut_slice();
        let mut scale = vec![0f32; s.groups * k_pad];
        let zero_point = if s.input == InputLayout::Planar { SIGNED_ZERO_POINT } else { 0 };
        let mut zero = vec![0i32; s.groups * k_pad];
        for g in 0..s.groups {
            for b in 0..panels_per_group {
                let k0 = b * MR;
                let width = MR.min(k_pad - k0);
                let base = g * kd * k_pad + k0 * kd;
                for lane in 0..width.min(out_per_group.saturating_sub(k0)) {
                    let k = g * out_per_group + k0 + lane;
                    scale[g * k_pad + k0 + lane] = layer.input_scale * layer.weight_scale[k];
                    let sum: i32 = layer.weight[k * cg * taps..(k + 1) * cg * taps].iter().map(|&w| w as i32).sum();
                    zero[g * k_pad + k0 + lane] = zero_point as i32 * sum;
                    for c in 0..cg {
                        for tap in 0..taps {
                            let row = ((c / CHANNEL_BLOCK) * taps + tap) * CHANNEL_BLOCK + c % CHANNEL_BLOCK;
                            data[base + (row / 4) * width * 4 + lane * 4 + row % 4] =
                                layer.weight[(k * cg + c) * taps + tap];
                        }
                    }
                }
            }
        }
        let window = window_run(s).map(|run| {
            let depth = window_depth(run);
            let mut aligned = LineAligned::zeroed(depth * k_pad);
            let data = aligned.as_mut_slice();
            for k in 0..s.out_channels {
                let (k0, lane) = (k / MR * MR, k % MR);
                let width = MR.min(k_pad - k0);
                for c in 0..cg {
                    for tap in 0..taps {
                        let row = (c * s.kernel + tap / s.kernel) * WINDOW_GROUP + tap % s.kernel;
                        data[k0 * depth + (row / 4) * width * 4 + lane * 4 + row % 4] =
                            layer.weight[(k * cg + c) * taps + tap];
                    }
                }
            }
            aligned
        });
        let spans = pixel_major(s).filter(|_| crate::kernels::amx::available(TileOp::U8S8)).map(|pixel_major| {
            // Step (kernel row, chunk), byte `t`: span position `v = chunk * run + t`, which
            // is tap `v / block` of channel `v % block`; zero past the span and the channels.
            let (chunks, run) = cut(pixel_major);
            let depth = span_depth(pixel_major);
            let mut aligned = LineAligned::zeroed(depth * k_pad);
            let data = aligned.as_mut_slice();
            for k in 0..s.out_channels {
                let (k0, lane) = (k / MR * MR, k % MR);
                let width = MR.min(k_pad - k0);
                for d in 0..depth {
                    let (step, t) = (d / run, d % run);
                    let (ky, v) = (step / chunks, step % chunks * run + t);
                    let (kx, c) = (v / pixel_major, v % pixel_major);
                    if kx < 3 && c < cg {
                        data[k0 * depth + (d / 4) * width * 4 + lane * 4 + d % 4] =
                            layer.weight[(k * cg + c) * taps + ky * 3 + kx];
                    }
                }
            }
            aligned
        });
        Int8Weights {
            kernel: s.kernel,
            groups: s.groups,
            out_per_group,
            kd,
            k_pad,
            panels_per_group,
            data: aligned,
            scale,
            inv_input_scale: 1.0 / layer.input_scale,
            zero_point,
            zero,
            window,
            spans,
        }
    }

    /// Panel `b` of group `g` in the order of codes of `block` bytes per pixel
    /// ([`code_block`]): channel-block order, or span order (pixel-major, no groups). Its
    /// first output channel within the group, its width and data.
    fn panel(&self, block: usize, g: usize, b: usize) -> (usize, usize, &[i8]) {
        let k0 = b * MR;
        let width = MR.min(self.k_pad - k0);
        if block == CHANNEL_BLOCK {
            let start = g * self.kd * self.k_pad + k0 * self.kd;
            return (k0, width, &self.data.as_slice()[start..start + self.kd * width]);
        }
        let spans = self.spans.as_ref().expect("weights in span order").as_slice();
        let depth = span_depth(block);
        (k0, width, &spans[k0 * depth..][..depth * width])
    }

    /// The epilogue constants of the panel whose first output channel is `k0` of group `g`
    /// (channel block `first_block` of the layer; `bias` padded to whole blocks).
    fn affine<'a>(&'a self, g: usize, k0: usize, bias: &'a [f32], first_block: usize) -> Affine<'a> {
        let at = g * self.k_pad + k0;
        Affine { zero: &self.zero[at..], scale: &self.scale[at..], bias: &bias[first_block * CHANNEL_BLOCK..] }
    }
}

/// Packs column panel `index` of `columns` pixels in the set's layout (each group's
/// reduction of `kd` bytes after the other's, runs of `run` bytes: `int8::column_offset`)
/// from the quantized channel-blocked input; the padding border is `zero` (the code of
/// 0), the pixels past the last 0.
fn pack_panel(s: &ConvShape, input: &[u8], index: usize, columns: usize, run: usize, zero: u8, panel: &mut [u8]) {
    let (cb, taps, pad) = (channel_blocks(s.in_channels), s.kernel * s.kernel, s.kernel / 2);
    let pixels = s.n * s.oh * s.ow;
    let kd = depth(s);
    for j in 0..columns {
        let p = index * columns + j;
        // Each 16-byte chunk (one channel block at one tap) stays within one run.
        let at = |block: usize, tap: usize| {
            let d = (block * taps + tap) * CHANNEL_BLOCK;
            (d / kd) * kd * columns + int8::column_offset(columns, run, j, d % kd)
        };
        if p >= pixels {
            for block in 0..cb {
                for tap in 0..taps {
                    panel[at(block, tap)..][..CHANNEL_BLOCK].fill(0);
                }
            }
            continue;
        }
        let (image, oy, ox) = (p / (s.oh * s.ow), p / s.ow % s.oh, p % s.ow);
        for block in 0..cb {
            let plane = &input[(image * cb + block) * s.h * s.w * CHANNEL_BLOCK..][..s.h * s.w * CHANNEL_BLOCK];
            for ky in 0..s.kernel {
                let iy = (oy * s.stride + ky).wrapping_sub(pad);
                for kx in 0..s.kernel {
                    let ix = (ox * s.stride + kx).wrapping_sub(pad);
                    let dst = &mut panel[at(block, ky * s.kernel + kx)..][..CHANNEL_BLOCK];
                    if iy < s.h && ix < s.w {
                        dst.copy_from_slice(&plane[(iy * s.w + ix) * CHANNEL_BLOCK..][..CHANNEL_BLOCK]);
                    } else {
                        dst.fill(zero);
                    }
                }
            }
        }
    }
}

/// Quantizes input row `y` of channel block `block` of `image` into `dst` (`w` pixels of
/// 16 bytes): a row of the channel-blocked input as it is; for the planar network input,
/// each channel's row quantized and interleaved, the channels past its last holding the
/// zero point (their weights are 0).
#[allow(clippy::too_many_arguments)] // the layer, where the row is, its map to codes
fn quantize_row(
    kernels: Int8Kernels,
    s: &ConvShape,
    input: &[f32],
    image: usize,
    block: usize,
    y: usize,
    w: &Int8Weights,
    dst: &mut [u8],
) {
    match s.input {
        InputLayout::Blocked => {
            let cb = channel_blocks(s.in_channels);
            let src = &input[((image * cb + block) * s.h + y) * s.w * CHANNEL_BLOCK..][..s.w * CHANNEL_BLOCK];
            int8::quantize(kernels, src, w.inv_input_scale, w.zero_point, dst);
        }
        InputLayout::Planar => {
            const CHUNK: usize = 256;
            dst.fill(w.zero_point);
            let mut codes = [0u8; CHUNK];
            for c in 0..s.in_channels {
                let row = &input[((image * s.in_channels + c) * s.h + y) * s.w..][..s.w];
                for (i, src) in row.chunks(CHUNK).enumerate() {
                    let codes = &mut codes[..src.len()];
                    int8::quantize(kernels, src, w.inv_input_scale, w.zero_point, codes);
                    for (x, q) in codes.iter().enumerate() {
                        dst[(i * CHUNK + x) * CHANNEL_BLOCK + c] = *q;
                    }
                }
            }
        }
    }
}

/// The u8 input with a zero border of one pixel, in planes of `block` channels per pixel
/// ([`code_block`]): channel-blocked (16) or pixel-major (every padded channel, one
/// plane per image). What 3x3 layers read their tiles or columns from without packing.
struct Bordered {
    /// Pixels per side of the bordered plane.
    ph: usize,
    pw: usize,
    /// Bytes per pixel of one plane, of one bordered row, of one plane, of one image.
    block: usize,
    row: usize,
    plane: usize,
    image: usize,
    /// Bytes of the buffer: every plane, then slack for the tile rows past a plane's last
    /// output pixel and the runs past a span's end (their results are dropped, or their
    /// weights zero).
    bytes: usize,
}

impl Bordered {
    fn new(s: &ConvShape, block: usize) -> Bordered {
        Bordered::of(s.n, s.h, s.w, channel_blocks(s.in_channels) * CHANNEL_BLOCK, s.stride, block)
    }

    /// `n` images of `h x w` pixels of `channels` (padded) bytes, read at `stride`.
    fn of(n: usize, h: usize, w: usize, channels: usize, stride: usize, block: usize) -> Bordered {
        let (ph, pw) = (h + 2, w + 2);
        let (row, plane) = (pw * block, ph * pw * block);
        let image = channels / block * plane;
        let slack = (MAX_COLUMNS * stride + 4) * block + LINE;
        Bordered { ph, pw, block, row, plane, image, bytes: n * image + slack }
    }
}

/// Bytes per pixel of one plane of the bordered codes a 3x3 layer reads: pixel-major (all
/// its padded channels) on AMX without groups, where a kernel row's three taps are one
/// span of `3c` bytes cut into 64-byte tile rows (27 steps at 192 channels instead of 36
/// of the 48 bytes a 16-channel block offers); channel blocks of 16 otherwise (the vector
/// sets' columns, and groups, whose channels must not share a step).
pub(crate) fn code_block(s: &ConvShape, kernels: Int8Kernels) -> usize {
    match pixel_major(s) {
        Some(block) if kernels.set() == Int8Set::Amx => block,
        _ => CHANNEL_BLOCK,
    }
}

/// The pixel-major block of a layer AMX reads so: without groups, 3x3, on the
/// channel-blocked input, whose padded channels are a multiple of 64 (then a span is whole
/// 64-byte steps, three for every four of channel blocks). Other widths keep channel
/// blocks: at 48 channels the steps are as many, at 96 one in six fewer, and either way
/// the wider tile-row stride and the pixel-strided epilogue measured slower.
fn pixel_major(s: &ConvShape) -> Option<usize> {
    let block = channel_blocks(s.in_channels) * CHANNEL_BLOCK;
    (s.groups == 1 && s.kernel == 3 && s.input == InputLayout::Blocked && block.is_multiple_of(64)).then_some(block)
}

/// How AMX cuts a kernel row's span of `3 block` bytes into tile steps: the fewest steps
/// of at most 64 bytes, each as short as they allow (a multiple of 4). Bytes a step reads
/// past the span (the next pixel's) meet zero weights.
fn cut(block: usize) -> (usize, usize) {
    let span = 3 * block;
    let chunks = span.div_ceil(64);
    (chunks, span.div_ceil(chunks).next_multiple_of(4))
}

/// Whether the layer of `shape` can take its input as bordered u8 codes from the layer
/// before ([`super::Codes`]): the layers that read their input in place.
pub(crate) fn takes_codes(shape: &ConvShape, kernels: Int8Kernels) -> bool {
    reads_in_place(shape, kernels)
}

/// Floats of the bordered u8 codes of the input of the layer of `shape` in either layout,
/// with room to start them on a cache line ([`line_start`]).
pub(crate) fn codes_len(shape: &ConvShape) -> usize {
    let blocked = Bordered::new(shape, CHANNEL_BLOCK).bytes;
    let bytes = pixel_major(shape).map_or(blocked, |block| blocked.max(Bordered::new(shape, block).bytes));
    bytes.div_ceil(4) + LINE / 4
}

/// The bytes of `buffer` from its first cache line on: where the bordered codes start,
/// for the producer and the consumer of the same buffer alike (tile rows that start on a
/// line read fewer lines).
fn line_start(buffer: &mut [f32]) -> &mut [u8] {
    let skip = line_skip(buffer.as_ptr());
    bytemuck::cast_slice_mut(&mut buffer[skip..])
}

/// Where a producer writes its output as the next layer's codes: that layer's bordered
/// layout (its input is this layer's output: `oh x ow`, the same channel blocks).
struct CodesOut<'a> {
    inv_scale: f32,
    layout: Bordered,
    /// Bytes from one channel block's codes of a pixel to the next block's: a plane
    /// (channel-blocked) or 16 (pixel-major).
    block_step: usize,
    bytes: *mut u8,
    len: usize,
    _buffer: std::marker::PhantomData<&'a mut [u8]>,
}

// SAFETY: items write disjoint pixels (as through `SharedMut`); the pointer is only used
// through `pixels`, whose contract keeps concurrent writes disjoint.
unsafe impl Send for CodesOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for CodesOut<'_> {}

impl<'a> CodesOut<'a> {
    /// Zeroes the border ring and the slack of every plane (the interior is all written
    /// by the layer's items) and returns the writer of planes of `block` bytes per pixel.
    fn new(s: &ConvShape, inv_scale: f32, block: usize, output: &'a mut [f32]) -> CodesOut<'a> {
        let channels = channel_blocks(s.out_channels) * CHANNEL_BLOCK;
        assert!(block > 0 && channels.is_multiple_of(block), "codes of {block} bytes per pixel");
        let layout = Bordered::of(s.n, s.oh, s.ow, channels, 2, block);
        let bytes: &mut [u8] = &mut line_start(output)[..layout.bytes];
        let planes = s.n * layout.image;
        zero_border(&mut bytes[..planes], layout.plane, layout.row, layout.pw, block);
        bytes[planes..].fill(0);
        CodesOut {
            inv_scale,
            block_step: if block == CHANNEL_BLOCK { layout.plane } else { CHANNEL_BLOCK },
            layout,
            bytes: bytes.as_mut_ptr(),
            len: bytes.len(),
            _buffer: std::marker::PhantomData,
        }
    }

    /// The codes of channel block `block` of `count` consecutive pixels of output row `y`
    /// of `image` from column `x`: 16 bytes per pixel, `pitch` bytes from one pixel's to
    /// the next's (returned).
    ///
    /// # Safety
    ///
    /// No other live slice may overlap these pixels (items write disjoint pixels).
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn pixels(&self, image: usize, block: usize, y: usize, x: usize, count: usize) -> (&mut [u8], usize) {
        let l = &self.layout;
        let at = image * l.image + block * self.block_step + (y + 1) * l.row + (x + 1) * l.block;
        let len = (count - 1) * l.block + CHANNEL_BLOCK;
        assert!(count > 0 && at + len <= self.len, "codes outside the bordered output");
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        (unsafe { std::slice::from_raw_parts_mut(self.bytes.add(at), len) }, l.block)
    }
}

/// The epilogue of `count` tile rows from `row0`, channels `c..c + 16`: floats into
/// `floats`, or with `codes` the next layer's codes of the same floats into `bytes`.
#[allow(clippy::too_many_arguments)] // the tile's part, the affine map, the two outputs
#[inline(always)]
fn store(
    kernels: Int8Kernels,
    tile: &Tile,
    row0: usize,
    c: usize,
    count: usize,
    w: (&[i32], &[f32], &[f32]),
    relu: bool,
    out: Out<'_>,
) {
    let (zero, scale, bias) = w;
    match out {
        Out::Floats(dst) => int8::dequantize_rows(kernels, tile, row0, c, count, zero, scale, bias, relu, dst),
        Out::Codes(inv, dst, pitch) => int8::requantize_rows(kernels, tile, row0, c, count, w, relu, inv, (dst, pitch)),
    }
}

/// Where [`store`] writes.
enum Out<'a> {
    Floats(&'a mut [f32]),
    /// Codes at `1 / s_x`, 16 bytes per pixel, pixels `pitch` bytes apart.
    Codes(f32, &'a mut [u8], usize),
}

/// A layer's output: channel-blocked floats (`blocks` channel blocks of `oh x ow` maps), or
/// the next layer's bordered codes.
enum Sink<'a> {
    Floats { out: SharedMut, blocks: usize, oh: usize, ow: usize },
    Codes(CodesOut<'a>),
}

impl<'a> Sink<'a> {
    fn new(s: &ConvShape, codes: Codes, output: &'a mut [f32]) -> Sink<'a> {
        match codes.output {
            Some(inv) => Sink::Codes(CodesOut::new(s, inv, codes.block, output)),
            None => {
                Sink::Floats { out: SharedMut::new(output), blocks: channel_blocks(s.out_channels), oh: s.oh, ow: s.ow }
            }
        }
    }

    /// Channel block `block` of `count` consecutive pixels of output row `y` of `image`
    /// from column `x`.
    ///
    /// # Safety
    ///
    /// No other live slice may overlap these pixels (items write disjoint pixels).
    #[inline(always)]
    unsafe fn pixels(&self, image: usize, block: usize, y: usize, x: usize, count: usize) -> Out<'_> {
        match self {
            Sink::Floats { out, blocks, oh, ow } => {
                let start = (((image * blocks + block) * oh + y) * ow + x) * CHANNEL_BLOCK;
                let region = out.raw(start, count * CHANNEL_BLOCK);
                // SAFETY: `raw` checked the bounds; exclusivity is the caller's contract.
                Out::Floats(unsafe { std::slice::from_raw_parts_mut(region, count * CHANNEL_BLOCK) })
            }
            Sink::Codes(codes) => {
                // SAFETY: as above.
                let (dst, pitch) = unsafe { codes.pixels(image, block, y, x, count) };
                Out::Codes(codes.inv_scale, dst, pitch)
            }
        }
    }
}

/// One weight panel's epilogue constants from its first channel on: the zero-point
/// correction, the scales and the bias.
struct Affine<'a> {
    zero: &'a [i32],
    scale: &'a [f32],
    bias: &'a [f32],
}

impl Affine<'_> {
    fn at(&self, c: usize) -> (&[i32], &[f32], &[f32]) {
        (&self.zero[c..], &self.scale[c..], &self.bias[c..])
    }
}

/// Weight panels (of 32 output channels) per work item of the AMX path.
const PANELS_PER_ITEM: usize = 4;

/// Whether the layer reads its input in place (no packing): every 3x3 layer on the vector
/// and portable sets (`int8::Columns` walks the bordered input), and with AMX (the three
/// taps of a kernel row are one span of tile rows: [`cut`]) on maps wide enough that a row fills
/// most of a tile's 16 rows, or, narrower, without groups (their windows are gathered from
/// the bordered input: [`gathers`]); grouped narrow layers pack panels.
fn reads_in_place(s: &ConvShape, kernels: Int8Kernels) -> bool {
    s.kernel == 3 && (kernels.set() != Int8Set::Amx || s.ow >= IN_PLACE_MIN_WIDTH || s.groups == 1)
}

/// Whether an AMX layer that reads its input in place gathers its windows first: rows
/// too short to fill a tile's 16 rows ([`Gathered`]).
fn gathers(s: &ConvShape, kernels: Int8Kernels) -> bool {
    kernels.set() == Int8Set::Amx && s.ow < IN_PLACE_MIN_WIDTH
}

/// Bytes of gathered windows one pass of a narrow layer holds at most (the passes re-read
/// the weights, so they are few: a 7x7 map of 192 channels fits 90 images in one).
const GATHER_BYTES: usize = 4 << 20;

/// Output pixels per tile pair: what one gathered product covers.
const PAIR: usize = 2 * MAX_COLUMNS;

/// A narrow layer's gathered windows on AMX: each output pixel's tile steps (what its
/// in-place reads would see: `3 x channel blocks` runs of 48 bytes, or a pixel-major
/// layer's three spans in 64-byte steps) copied into a row
/// of its own, so that a tile takes 16 consecutive pixels of the batch whatever their
/// rows (the last stage's 7-pixel rows would fill 7 of 16 tile rows in place).
struct Gathered {
    /// Bytes per pixel, and pixels per pass (whole tile pairs).
    row: usize,
    pass: usize,
}

impl Gathered {
    /// The passes of a layer whose pixels gather `row` bytes each.
    fn new(s: &ConvShape, row: usize) -> Gathered {
        let pixels = (s.n * s.oh * s.ow).next_multiple_of(PAIR);
        Gathered { row, pass: pixels.min((GATHER_BYTES / row).max(PAIR) / PAIR * PAIR) }
    }

    /// Floats of one pass, with room to start it on a cache line.
    fn floats(&self) -> usize {
        (self.pass * self.row).div_ceil(4) + LINE / 4
    }
}

/// Narrowest output row the AMX path without packing runs.
const IN_PLACE_MIN_WIDTH: usize = 12;

/// The AMX path: quantize into the bordered layout, then for each segment of up to 16
/// output pixels of one row, every weight panel's tile product read in place.
fn run_in_place(ctx: RunContext<'_>, weights: &Int8Weights) {
    let RunContext { int8: kernels, shape, bias, relu, input, output, shared, codes, .. } = ctx;
    let s = *shape;
    let block = code_block(shape, kernels);
    let layout = Bordered::new(shape, block);
    let cb = channel_blocks(s.in_channels);
    let row_bytes = layout.row;
    let (shared, gather) = shared.split_at_mut(codes_len(shape));
    let bordered: &[u8] = if codes.input {
        // The layer before wrote this layer's codes in this layout (`CodesOut`).
        &bytemuck::cast_slice::<f32, u8>(&input[line_skip(input.as_ptr())..])[..layout.bytes]
    } else {
        let bytes: &mut [u8] = &mut line_start(shared)[..layout.bytes];
        let zero = weights.zero_point;
        let (planes, slack) = bytes.split_at_mut(s.n * layout.image);
        slack.fill(zero);
        // One item per bordered row (a whole number of floats: 16 bytes per pixel).
        let rows: &mut [f32] = bytemuck::cast_slice_mut(planes);
        let planes_per_image = cb * CHANNEL_BLOCK / block;
        for_each_chunk_mut(rows, row_bytes / 4, |r, row| {
            let row: &mut [u8] = bytemuck::cast_slice_mut(row);
            let (plane, py) = (r / layout.ph, r % layout.ph);
            if py == 0 || py == layout.ph - 1 {
                row.fill(zero);
                return;
            }
            row[..block].fill(zero);
            row[row_bytes - block..].fill(zero);
            let dst = &mut row[block..row_bytes - block];
            let (image, first) = (plane / planes_per_image, plane % planes_per_image * block / CHANNEL_BLOCK);
            if block == CHANNEL_BLOCK {
                quantize_row(kernels, &s, input, image, first, py - 1, weights, dst);
                return;
            }
            // Pixel-major: each channel block's row quantized in pieces, then spread
            // 16 bytes per pixel.
            const PIECE: usize = 64;
            let mut piece = [0u8; PIECE * CHANNEL_BLOCK];
            for b in 0..block / CHANNEL_BLOCK {
                let src =
                    &input[(((image * cb + first + b) * s.h) + py - 1) * s.w * CHANNEL_BLOCK..][..s.w * CHANNEL_BLOCK];
                for (i, src) in src.chunks(PIECE * CHANNEL_BLOCK).enumerate() {
                    let codes = &mut piece[..src.len()];
                    int8::quantize(kernels, src, weights.inv_input_scale, zero, codes);
                    for (x, code) in codes.chunks_exact(CHANNEL_BLOCK).enumerate() {
                        let at = (i * PIECE + x) * block + b * CHANNEL_BLOCK;
                        dst[at..at + CHANNEL_BLOCK].copy_from_slice(code);
                    }
                }
            }
        });
        bytes
    };

    // AMX's steps: per plane of the group and kernel row, the row's three taps (`3 block`
    // contiguous bytes) in `chunks` runs of `run` bytes; the weights' reduction order puts
    // the same bytes in the same steps. On channel blocks that is one 48-byte run, which
    // is also the vector sets' reduction order.
    let (span_steps, step_bytes) = cut(block);
    let planes_per_group = s.in_per_group().div_ceil(block);
    let mut steps = [0usize; MAX_DEPTH / 48 + 1];
    let offsets = &mut steps[..planes_per_group * 3 * span_steps];
    for (i, offset) in offsets.iter_mut().enumerate() {
        let (plane, ky, chunk) = (i / (3 * span_steps), i / span_steps % 3, i % span_steps);
        *offset = plane * layout.plane + ky * row_bytes + chunk * step_bytes;
    }
    let offsets: &[usize] = offsets;
    if gathers(&s, kernels) {
        let sink = Sink::new(&s, codes, output);
        let reads = (&layout, offsets, step_bytes);
        return run_gathered(kernels, &s, weights, bordered, reads, gather, &sink, bias, relu);
    }
    // AMX takes segments of 16 pixels and two rows per item (a pair of rows shares every
    // weight tile loaded); the vector sets segments of NR pixels, one row.
    let amx_set = kernels.set() == Int8Set::Amx;
    let (columns, rows_per_item) = if amx_set { (MAX_COLUMNS, 2) } else { (NR, 1) };
    let segments = s.ow.div_ceil(columns);
    let sink = Sink::new(&s, codes, output);
    let geometry =
        int8::Columns { block: layout.plane, row: row_bytes, tap: CHANNEL_BLOCK, column: s.stride * CHANNEL_BLOCK };
    // Items are (row segment, chunk of weight panels): chunks keep a few rows of a small
    // map with many output channels (the last stage) from making too few items.
    let panels = s.groups * weights.panels_per_group;
    let chunks = panels.div_ceil(PANELS_PER_ITEM);
    let groups_of_rows = s.oh.div_ceil(rows_per_item);
    crate::team::for_each_share(s.n * groups_of_rows * segments * chunks, |share| {
        // Set up once per share: the accumulator tiles, and the tile configuration, which
        // changes only where a row's last segment is narrower.
        let mut amx: Option<AmxTiles> = None;
        let mut tiles: [Tile; 2] = [[0; MR * MAX_COLUMNS]; 2];
        for item in share {
            let (chunk, item) = (item % chunks, item / chunks);
            let image = item / (groups_of_rows * segments);
            let (oy, x0) = (item / segments % groups_of_rows * rows_per_item, item % segments * columns);
            let count = columns.min(s.ow - x0);
            let rows = rows_per_item.min(s.oh - oy);
            if amx_set && amx.as_ref().is_none_or(|amx| amx.rows() != count) {
                // The configuration in place is released before the next is loaded.
                drop(amx.take());
                amx = Some(AmxTiles::with_rows(TileOp::U8S8, step_bytes, count));
            }
            for wp in chunk * PANELS_PER_ITEM..panels.min((chunk + 1) * PANELS_PER_ITEM) {
                let (g, b) = (wp / weights.panels_per_group, wp % weights.panels_per_group);
                let (k0, width, a) = weights.panel(block, g, b);
                let base = |oy: usize| {
                    image * layout.image
                        + g * planes_per_group * layout.plane
                        + (oy * layout.pw + x0) * s.stride * block
                };
                let stride = s.stride * block;
                let [t0, t1] = &mut tiles;
                let weights_bytes: &[u8] = bytemuck::cast_slice(a);
                match &amx {
                    Some(amx) if rows == 2 => amx.pair_product(
                        bordered,
                        [base(oy), base(oy + 1)],
                        offsets,
                        stride,
                        weights_bytes,
                        width,
                        [t0, t1],
                    ),
                    Some(amx) => amx.product(bordered, base(oy), offsets, stride, weights_bytes, width, t0),
                    None => {
                        int8::strided_product(kernels, weights.kd, a, width, &bordered[base(oy)..], geometry, count, t0)
                    }
                }
                let first_block = (g * weights.out_per_group + k0) / CHANNEL_BLOCK;
                let affine = weights.affine(g, k0, bias, first_block);
                for (r, tile) in tiles.iter().enumerate().take(rows) {
                    for blk in 0..width / CHANNEL_BLOCK {
                        // SAFETY: each item writes its own pixels (one row segment) of every
                        // channel block.
                        let out = unsafe { sink.pixels(image, first_block + blk, oy + r, x0, count) };
                        let c = blk * CHANNEL_BLOCK;
                        store(kernels, tile, 0, c, count, affine.at(c), relu, out);
                    }
                }
            }
        }
    });
}

/// The AMX path of narrow maps: per pass, gather every pixel's steps, then items of (tile
/// pair, chunk of weight panels), the items of one chunk one after the other so that its
/// weights stay in cache while the pixels change.
#[allow(clippy::too_many_arguments)] // the layer, its input and steps, the buffers, the epilogue
fn run_gathered(
    kernels: Int8Kernels,
    s: &ConvShape,
    weights: &Int8Weights,
    bordered: &[u8],
    reads: (&Bordered, &[usize], usize),
    buffer: &mut [f32],
    sink: &Sink<'_>,
    bias: &[f32],
    relu: bool,
) {
    let (layout, offsets, step_bytes) = reads;
    let gathered = Gathered::new(s, offsets.len() * step_bytes);
    let (plane_out, pixels) = (s.oh * s.ow, s.n * s.oh * s.ow);
    let skip = line_skip(buffer.as_ptr());
    let rows = &mut buffer[skip..][..gathered.pass * gathered.row / 4];
    let mut steps = [0usize; MAX_DEPTH / 48 + 1];
    let steps = &mut steps[..offsets.len()];
    for (i, step) in steps.iter_mut().enumerate() {
        *step = i * step_bytes;
    }
    let steps: &[usize] = steps;
    let panels = weights.panels_per_group;
    let chunks = panels.div_ceil(PANELS_PER_ITEM);
    for first in (0..pixels).step_by(gathered.pass) {
        let count = gathered.pass.min(pixels - first);
        for_each_chunk_mut(rows, gathered.row / 4, |j, row| {
            let row: &mut [u8] = bytemuck::cast_slice_mut(row);
            let p = first + j;
            if j >= count {
                row.fill(0);
                return;
            }
            let (image, oy, ox) = (p / plane_out, p / s.ow % s.oh, p % s.ow);
            let base = image * layout.image + (oy * layout.pw + ox) * s.stride * layout.block;
            for (dst, offset) in row.chunks_exact_mut(step_bytes).zip(offsets) {
                dst.copy_from_slice(&bordered[base + offset..][..step_bytes]);
            }
        });
        let rows: &[u8] = bytemuck::cast_slice(&*rows);
        let pairs = count.div_ceil(PAIR);
        crate::team::for_each(chunks * pairs, |item| {
            let (chunk, pair) = (item / pairs, item % pairs);
            let amx = AmxTiles::new(TileOp::U8S8, step_bytes);
            let mut tiles: [Tile; 2] = [[0; MR * MAX_COLUMNS]; 2];
            let p0 = pair * PAIR;
            let bases = [p0 * gathered.row, (p0 + MAX_COLUMNS) * gathered.row];
            for wp in chunk * PANELS_PER_ITEM..panels.min((chunk + 1) * PANELS_PER_ITEM) {
                let (k0, width, a) = weights.panel(layout.block, 0, wp);
                let [t0, t1] = &mut tiles;
                amx.pair_product(rows, bases, steps, gathered.row, bytemuck::cast_slice(a), width, [t0, t1]);
                let first_block = k0 / CHANNEL_BLOCK;
                let affine = weights.affine(0, k0, bias, first_block);
                for (r, tile) in tiles.iter().enumerate() {
                    // The tile's pixels, in runs along one output row.
                    let mut j = 0;
                    while j < MAX_COLUMNS {
                        let p = first + p0 + r * MAX_COLUMNS + j;
                        if p >= first + count {
                            break;
                        }
                        let (image, oy, ox) = (p / plane_out, p / s.ow % s.oh, p % s.ow);
                        let run = (s.ow - ox).min(MAX_COLUMNS - j).min(first + count - p);
                        for blk in 0..width / CHANNEL_BLOCK {
                            // SAFETY: each item writes its own pixels of its panels' blocks.
                            let out = unsafe { sink.pixels(image, first_block + blk, oy, ox, run) };
                            let c = blk * CHANNEL_BLOCK;
                            store(kernels, tile, j, c, run, affine.at(c), relu, out);
                        }
                        j += run;
                    }
                }
            }
        });
    }
}

/// Bytes of one (channel, kernel row) group of a window: the row's three taps and a byte
/// whose weight is zero (tile reductions come in groups of four bytes).
const WINDOW_GROUP: usize = 4;

/// Bytes between windows, and the output rows of one work item, on the window path.
const WINDOW_STRIDE: usize = int8::WINDOW_BYTES;
const WINDOW_ROWS: usize = 2;

/// The reduction of the network input's layer, if it takes the window path: the whole
/// 3x3 window of an output pixel (`WINDOW_GROUP` bytes per channel and kernel row) in one
/// row, when it fits a tile row (at most five channels). Read in place, RGB would fill 9
/// of each AMX step's 48 bytes in three steps per product, and 3 of each 16 bytes the
/// vector sets reduce; as windows it is one step of 36 bytes, or 48 in the vector sets'
/// slices of 16 ([`window_depth`]).
fn window_run(s: &ConvShape) -> Option<usize> {
    let run = s.in_channels * 3 * WINDOW_GROUP;
    (s.input == InputLayout::Planar && s.kernel == 3 && s.groups == 1 && run <= 64).then_some(run)
}

/// The vector sets' reduction depth over windows of `run` bytes: whole 16-byte slices,
/// the bytes past `run` (stale window bytes) multiplied by zero weights.
fn window_depth(run: usize) -> usize {
    run.next_multiple_of(CHANNEL_BLOCK)
}

/// A work item's buffers on the window path, in its worker's scratch: the input rows its
/// output rows read, quantized, one zero-point column on the left and slack on the right
/// (the last window's fourth byte); then one `WINDOW_STRIDE`-byte row per output pixel,
/// rows padded to whole tiles.
struct Windows {
    /// Bytes per quantized input row, and input rows per item.
    row: usize,
    rows: usize,
    /// Windows per output row (whole tiles of `MAX_COLUMNS`).
    per_row: usize,
    /// Where the windows start (line-aligned within the scratch) and the bytes needed.
    start: usize,
    bytes: usize,
}

impl Windows {
    fn new(s: &ConvShape) -> Windows {
        let (row, rows) = (s.w + 4, (WINDOW_ROWS - 1) * s.stride + 3);
        let per_row = s.ow.div_ceil(MAX_COLUMNS) * MAX_COLUMNS;
        let start = (s.in_channels * rows * row).next_multiple_of(LINE);
        Windows { row, rows, per_row, start, bytes: start + WINDOW_ROWS * per_row * WINDOW_STRIDE }
    }
}

/// The network input's layer: each item quantizes the input rows of two output rows,
/// copies every output pixel's window into a row of its own (three taps of one channel and
/// kernel row are three consecutive bytes of a quantized row), and runs one tile step per
/// (16 pixels, weight panel) on AMX, or the vector set's product over `NR` windows.
fn run_windows(ctx: RunContext<'_>, weights: &Int8Weights, panels: &[i8]) {
    let RunContext { int8: kernels, shape, bias, relu, input, output, scratch, codes, .. } = ctx;
    let s = *shape;
    let run = window_run(&s).expect("a layer of the window path");
    let depth = window_depth(run);
    let layout = Windows::new(&s);
    let (zero, inv) = (weights.zero_point, weights.inv_input_scale);
    let sink = Sink::new(&s, codes, output);
    let pairs = s.oh.div_ceil(WINDOW_ROWS);
    let k_pad = weights.k_pad;
    crate::team::for_each_share(s.n * pairs, |share| {
        // Once per share: the worker's buffers, the tile configuration and accumulators.
        scratch.with(|buffer| {
            let amx = (kernels.set() == Int8Set::Amx).then(|| AmxTiles::new(TileOp::U8S8, run));
            let columns = kernels.columns();
            let mut tiles: [Tile; 2] = [[0; MR * MAX_COLUMNS]; 2];
            for item in share {
                let (image, oy) = (item / pairs, item % pairs * WINDOW_ROWS);
                let rows = WINDOW_ROWS.min(s.oh - oy);
                let bytes = &mut line_start(buffer)[..layout.bytes];
                let (quantized, windows) = bytes.split_at_mut(layout.start);
                for (i, dst) in quantized.chunks_exact_mut(layout.row).take(s.in_channels * layout.rows).enumerate() {
                    let (c, j) = (i / layout.rows, i % layout.rows);
                    let y = (oy * s.stride + j).wrapping_sub(1);
                    dst.fill(zero);
                    if y < s.h {
                        let src = &input[((image * s.in_channels + c) * s.h + y) * s.w..][..s.w];
                        int8::quantize(kernels, src, inv, zero, &mut dst[1..=s.w]);
                    }
                }
                let quantized: &[u8] = quantized;
                let groups = run / WINDOW_GROUP;
                // The windows past a row's last pixel, and a missing second row, are read by the
                // tiles with bytes of no meaning; their sums are dropped.
                for (r, row) in windows.chunks_exact_mut(layout.per_row * WINDOW_STRIDE).take(rows).enumerate() {
                    // Group g is channel g / 3, kernel row g % 3: the quantized row's bytes from
                    // the window's left column on.
                    let mut sources: [&[u8]; WINDOW_STRIDE / WINDOW_GROUP] = [&[]; WINDOW_STRIDE / WINDOW_GROUP];
                    for (g, source) in sources.iter_mut().enumerate().take(groups) {
                        *source = &quantized[(g / 3 * layout.rows + r * s.stride + g % 3) * layout.row..][..layout.row];
                    }
                    int8::windows(kernels, &sources[..groups], s.stride, s.ow, row);
                }
                let windows: &[u8] = windows;
                for x0 in (0..s.ow).step_by(columns) {
                    let count = columns.min(s.ow - x0);
                    let bases = [x0 * WINDOW_STRIDE, (layout.per_row + x0) * WINDOW_STRIDE];
                    for k0 in (0..k_pad).step_by(MR) {
                        let width = MR.min(k_pad - k0);
                        let a = &panels[k0 * depth..][..depth * width];
                        let [t0, t1] = &mut tiles;
                        match &amx {
                            Some(amx) => {
                                let panel: &[u8] = bytemuck::cast_slice(a);
                                amx.pair_product(windows, bases, &[0], WINDOW_STRIDE, panel, width, [t0, t1]);
                            }
                            None => {
                                for (tile, base) in [t0, t1].into_iter().zip(bases).take(rows) {
                                    let (b, g) = (&windows[base..], int8::Columns::contiguous(WINDOW_STRIDE));
                                    int8::strided_product(kernels, depth, a, width, b, g, count, tile);
                                }
                            }
                        }
                        let first_block = k0 / CHANNEL_BLOCK;
                        let affine = weights.affine(0, k0, bias, first_block);
                        for (r, tile) in tiles.iter().enumerate().take(rows) {
                            for blk in 0..width / CHANNEL_BLOCK {
                                // SAFETY: each item writes its own output rows.
                                let out = unsafe { sink.pixels(image, first_block + blk, oy + r, x0, count) };
                                let c = blk * CHANNEL_BLOCK;
                                store(kernels, tile, 0, c, count, affine.at(c), relu, out);
                            }
                        }
                    }
                }
            }
        });
    });
}

/// A column panel's output pixels: up to AMX's 16.
type Pixels = PanelPixels<MAX_COLUMNS>;

/// Runs the convolution: `output = relu?(conv(input) + bias)`, channel-blocked out.
fn run(ctx: RunContext<'_>) {
    let weights: &Int8Weights = downcast(ctx.weights);
    let s = *ctx.shape;
    let out_blocks = channel_blocks(s.out_channels);
    if ctx.codes.output.is_none() {
        assert!(ctx.output.len() >= s.n * out_blocks * s.oh * s.ow * CHANNEL_BLOCK, "output buffer too small");
    }
    assert!(ctx.bias.len() >= out_blocks * CHANNEL_BLOCK, "bias not padded to whole blocks");
    let in_len = s.n * channel_blocks(s.in_channels) * s.h * s.w * CHANNEL_BLOCK;
    let read = match s.input {
        _ if ctx.codes.input => codes_len(&s),
        InputLayout::Blocked => in_len,
        InputLayout::Planar => s.n * s.in_channels * s.h * s.w,
    };
    assert!(ctx.input.len() >= read, "input buffer too small");
    assert!(ctx.shared.len() >= DirectInt8.shared_len(&s), "shared panel buffer too small");
    assert_eq!((weights.groups, weights.kernel), (s.groups, s.kernel), "weights packed for another layer");
    if let Some(window) = &weights.window {
        return run_windows(ctx, weights, window.as_slice());
    }
    if reads_in_place(&s, ctx.int8) {
        return run_in_place(ctx, weights);
    }
    let RunContext { int8: kernels, shape, bias, relu, input, output, shared, scratch, codes, .. } = ctx;
    assert_eq!(codes, Codes::NONE, "only layers that read their input in place exchange codes");

    let (quantized, shared) = shared.split_at_mut(quantized_floats(shape));
    // One item per row of a channel block (16 bytes per pixel: a whole number of floats).
    let cb = channel_blocks(s.in_channels);
    for_each_chunk_mut(&mut quantized[..in_len / 4], s.w * CHANNEL_BLOCK / 4, |r, row| {
        let (plane, y) = (r / s.h, r % s.h);
        quantize_row(kernels, &s, input, plane / cb, plane % cb, y, weights, bytemuck::cast_slice_mut(row));
    });
    let quantized: &[u8] = &bytemuck::cast_slice::<f32, u8>(quantized)[..in_len];

    let out = SharedMut::new(output);
    let (columns, run) = (kernels.columns(), kernels.run_bytes(weights.kd));
    let pack = |col: usize, _: &Pixels, panel: &mut [f32]| {
        pack_panel(&s, quantized, col, columns, run, weights.zero_point, bytemuck::cast_slice_mut(panel));
    };
    let product = |weight_panel: usize, pixels: &Pixels, panel: &[f32], _: &mut [f32]| {
        let (g, b) = (weight_panel / weights.panels_per_group, weight_panel % weights.panels_per_group);
        let (k0, width, a) = weights.panel(CHANNEL_BLOCK, g, b);
        let panel = &bytemuck::cast_slice::<f32, u8>(panel)[g * weights.kd * columns..];
        let mut tile: Tile = [0; MR * MAX_COLUMNS];
        int8::panel_product(kernels, weights.kd, a, width, panel, pixels.count, &mut tile);
        let first_block = (g * weights.out_per_group + k0) / CHANNEL_BLOCK;
        let scale = &weights.scale[g * weights.k_pad + k0..];
        let zero = &weights.zero[g * weights.k_pad + k0..];
        let bias = &bias[first_block * CHANNEL_BLOCK..];
        let first = first_block * pixels.block_stride;
        let blocks = width / CHANNEL_BLOCK;
        let end = first + pixels.base[pixels.count - 1] + (blocks - 1) * pixels.block_stride + CHANNEL_BLOCK;
        // Each (pixel, channel block) is written by exactly one item: column panels
        // partition the pixels and weight panels the channel blocks.
        let region = out.raw(first, end - first);
        for j in 0..pixels.count {
            for blk in 0..blocks {
                let at = pixels.base[j] + blk * pixels.block_stride;
                // SAFETY: `at + 16 <= end - first` (the last pixel and block bound the
                // region, and offsets grow with both), and no other item writes here.
                let dst = unsafe { std::slice::from_raw_parts_mut(region.add(at), CHANNEL_BLOCK) };
                let c = blk * CHANNEL_BLOCK;
                int8::dequantize_rows(kernels, &tile, j, c, 1, &zero[c..], &scale[c..], &bias[c..], relu, dst);
            }
        }
    };
    work(shape, columns).run(shared, scratch, 0, |col| Pixels::new(&s, col, columns), pack, product);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::Scratch;
    use crate::kernels::int8::quantize_one;
    use crate::quant::{Int8Layer, quantize_weights};
    use crate::team::Team;
    use repvgg_simd::Dispatch;

    /// The layer by definition: codes of the channel-blocked input, i64 sums over the
    /// zero-padded window, then the same float requantization (`dequantize_block`).
    fn reference(s: &ConvShape, layer: &Int8Layer, bias: &[f32], relu: bool, input: &[f32]) -> Vec<f32> {
        let (cb, kb) = (channel_blocks(s.in_channels), channel_blocks(s.out_channels));
        let (cg, kg, pad) = (s.in_per_group(), s.out_channels / s.groups, s.kernel / 2);
        let inv = 1.0 / layer.input_scale;
        let zero = if s.input == InputLayout::Planar { SIGNED_ZERO_POINT as i64 } else { 0 };
        let at = |b: usize, c: usize, y: usize, x: usize| match s.input {
            InputLayout::Blocked => {
                ((b * cb + c / CHANNEL_BLOCK) * s.h * s.w + y * s.w + x) * CHANNEL_BLOCK + c % CHANNEL_BLOCK
            }
            InputLayout::Planar => ((b * s.in_channels + c) * s.h + y) * s.w + x,
        };
        let mut out = vec![0f32; s.n * kb * s.oh * s.ow * CHANNEL_BLOCK];
        for b in 0..s.n {
            for k in 0..s.out_channels {
                let g = k / kg;
                let scale = layer.input_scale * layer.weight_scale[k];
                for oy in 0..s.oh {
                    for ox in 0..s.ow {
                        let mut acc = 0i64;
                        for c in 0..cg {
                            for ky in 0..s.kernel {
                                for kx in 0..s.kernel {
                                    let (iy, ix) = (
                                        (oy * s.stride + ky).wrapping_sub(pad),
                                        (ox * s.stride + kx).wrapping_sub(pad),
                                    );
                                    if iy < s.h && ix < s.w {
                                        let x = quantize_one(input[at(b, g * cg + c, iy, ix)], inv, zero as f32) as i64
                                            - zero;
                                        let w = layer.weight[((k * cg + c) * s.kernel + ky) * s.kernel + kx] as i64;
                                        acc += x * w;
                                    }
                                }
                            }
                        }
                        let mut y = [0f32; 16];
                        let mut a = [0i32; 16];
                        a[0] = acc as i32;
                        let mut sc = [0f32; 16];
                        sc[0] = scale;
                        let mut bi = [0f32; 16];
                        bi[0] = bias[k];
                        int8::dequantize_block(&a, &[0; 16], &sc, &bi, relu, &mut y);
                        out[((b * kb + k / CHANNEL_BLOCK) * s.oh * s.ow + oy * s.ow + ox) * CHANNEL_BLOCK
                            + k % CHANNEL_BLOCK] = y[0];
                    }
                }
            }
        }
        out
    }

    /// Every kernel set this CPU runs (through the executor, with its packing, schedule
    /// and epilogue) against the definition, bitwise: kernel sides 1 and 3, both strides,
    /// groups, padded channels, odd sizes, panels across images, the fused and two-phase
    /// schedules (the 640-channel shapes' weights exceed `FUSED_WEIGHT_BYTES`), AMX's
    /// in-place path on rows of 12 pixels and more and its gathered windows on narrower
    /// ones (in one pass and in several), on channel blocks and pixel-major codes, its RGB
    /// windows, thread counts 1 and 2. The
    /// inputs include values past the clipping threshold (code 255) and the shared buffer
    /// starts as NaN.
    #[test]
    fn every_set_matches_the_integer_definition_bitwise() {
        for (shape, layout) in [
            (3, 16, 16, 1, 1, 1, 7, 9),
            (3, 40, 24, 1, 2, 2, 11, 8),
            (1, 48, 40, 1, 1, 2, 5, 7),
            (3, 32, 64, 2, 1, 1, 9, 9),
            (3, 48, 48, 1, 1, 2, 14, 13),
            (3, 640, 256, 1, 2, 1, 6, 6),
            // Rows of at least 12 pixels: AMX reads them in place (odd row counts, stride 2,
            // groups, several segments per row, the last one partial).
            (3, 32, 48, 1, 2, 2, 29, 27),
            (3, 32, 64, 2, 1, 1, 13, 16),
            (3, 48, 40, 1, 1, 1, 5, 40),
            (3, 640, 256, 1, 1, 1, 3, 12),
            // Pixel-major on AMX (64 and 128 channels, both strides, two images).
            (3, 64, 48, 1, 2, 2, 29, 27),
            (3, 128, 32, 1, 1, 2, 14, 14),
            (3, 64, 40, 1, 1, 2, 7, 7),
            // Narrow rows on AMX gather their windows: more pixels than one pass holds.
            (3, 640, 32, 1, 1, 1, 80, 10),
        ]
        .into_iter()
        .map(|shape| (shape, InputLayout::Blocked))
        .chain(
            // The network input (planar, signed, zero point 128): RGB at stride 2 read in
            // place and packed, other channel counts.
            [
                (3, 3, 48, 1, 2, 2, 29, 30),
                (3, 3, 20, 1, 1, 1, 13, 11),
                (3, 5, 16, 1, 1, 1, 9, 14),
                (3, 16, 32, 1, 2, 1, 8, 8),
            ]
            .into_iter()
            .map(|shape| (shape, InputLayout::Planar)),
        ) {
            let (kernel, c, k, groups, stride, n, h, w) = shape;
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let s =
                ConvShape { n, kernel, in_channels: c, out_channels: k, groups, stride, h, w, oh, ow, input: layout };
            let mut seed = (kernel * 7919 + c * 1000 + k * 10 + stride) as u32;
            let mut next = move || {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            };
            let cg = c / groups;
            let deploy: Vec<f32> = (0..k * cg * kernel * kernel).map(|_| next()).collect();
            let (weight, weight_scale) = quantize_weights(&deploy, k, false);
            let layer = Int8Layer { input_scale: 1.0 / 200.0, weight_scale, weight };
            let mut bias: Vec<f32> = (0..k).map(|_| next()).collect();
            bias.resize(channel_blocks(k) * CHANNEL_BLOCK, 0.0);
            let cb = channel_blocks(c);
            let input = match layout {
                InputLayout::Blocked => {
                    let mut input = vec![0f32; n * cb * h * w * CHANNEL_BLOCK];
                    for (i, v) in input.iter_mut().enumerate() {
                        if (i % CHANNEL_BLOCK) + (i / (h * w * CHANNEL_BLOCK) % cb) * CHANNEL_BLOCK < c {
                            *v = (next() + 1.0) * 0.7;
                        }
                    }
                    input
                }
                // Signed, past the clipping threshold both ways.
                InputLayout::Planar => (0..n * c * h * w).map(|_| next() * 0.9).collect(),
            };
            assert!(DirectInt8.supports(&s, Isa::Portable));
            let want = reference(&s, &layer, &bias, true, &input);
            let packed = DirectInt8.pack(&s, LayerWeights { deploy: &deploy, int8: Some(&layer) });
            for threads in [1, 2] {
                let team = Team::new(threads, std::time::Duration::ZERO).unwrap();
                for int8 in Int8Kernels::all_supported() {
                    let mut output = vec![f32::NAN; want.len()];
                    let mut shared = vec![f32::NAN; DirectInt8.shared_len(&s)];
                    let scratch = Scratch::new(team.threads(), DirectInt8.scratch_len(&s));
                    let ctx = RunContext {
                        isa: Dispatch::best(),
                        int8,
                        bf16: None,
                        shape: &s,
                        weights: &*packed,
                        deploy: &deploy,
                        bias: &bias,
                        relu: true,
                        input: &input,
                        output: &mut output,
                        shared: &mut shared,
                        scratch: &scratch,
                        codes: crate::exec::Codes::NONE,
                    };
                    team.install(|| DirectInt8.run(ctx));
                    for (i, (g, e)) in output.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{:?} threads {threads} {kernel}x{kernel} c{c} k{k} g{groups} s{stride}: element {i}: {g} vs {e}",
                            int8.set()
                        );
                    }
                }
            }
        }
    }
}
