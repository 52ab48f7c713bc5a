//! Direct 3x3 convolution in BF16 (`kernels::bf16`): the input rounded to bf16 once, the
//! weights rounded at packing, products summed in f32, bias and ReLU in f32, the output
//! channel-blocked f32 like every other executor's.
//!
//! The input is copied into a zero-bordered **pixel-major** bf16 buffer (each pixel's `c`
//! channels contiguous, one zero pixel around each image): then every output pixel's
//! window is at a fixed offset from its left neighbour's (`stride * c` values), and one
//! kernel row's three taps are `3c` contiguous values. A product step reads `run` bytes
//! (32 values, an AMX tile row) of that span, 16 output pixels of a row at once (AMX tile
//! rows, two rows per item sharing each weight tile) or `NR` (the `VDPBF16PS` blocking),
//! in place: no im2col. The weights are packed to match, span position by span position,
//! with zeros where a step's last run reaches past the span (the values read there belong
//! to the next pixel of the same image, or the border, and are finite: an input that
//! passed `check_finite` has no infinities for a zero weight to turn into NaN).
//!
//! Grouped layers run one group's channels per tap instead (`cg` contiguous values per
//! pixel), the planar network input (the stem) with its 3 channels per pixel unpadded.
//!
//! Maps too narrow for in-place rows to fill the tiles (the last stage's 7-pixel rows
//! would leave 9 of 16 tile rows empty) copy each output pixel's steps, the same values
//! the in-place reads see, one pixel after the other over the whole batch
//! ([`reads_packed`]), so a tile takes 16 pixels whatever the rows; the weights are the
//! same either way.

use super::{ConvExecutor, ConvShape, CostModel, InputLayout, LayerWeights, PackedWeights, RunContext, downcast};
use crate::buffers::{LINE, LineAligned, SharedMut, line_skip, zero_border};
use crate::kernels::amx::{AmxTiles, ROW_WORDS, TileOp};
use crate::kernels::bf16::{self, Bf16Acc, Bf16Kernels, Bf16Set, Reads, Rows};
use crate::plan::{Algo, Precision};
use crate::team::for_each_chunk_mut;
use repvgg_simd::Isa;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// The direct executor (BF16).
pub(crate) struct DirectBf16;

/// Most product steps of one layer: a reduction of up to 576 runs of 32 values (2048
/// channels per group at 3x3).
const MAX_STEPS: usize = 576;

/// Bytes of one product step: an AMX tile row.
const RUN_BYTES: usize = 64;

/// Weight panels (of 32 output channels) per work item.
const PANELS_PER_ITEM: usize = 4;

/// Packed weights above which a layer's items take one panel and every row of the batch
/// (half of a 2 MiB L2: what the weights can keep of it beside the activations).
const STREAMED_WEIGHT_BYTES: usize = 1 << 20;

/// How a layer's input sits in the bordered buffer and how its reduction is cut into
/// steps; independent of the map's size except for the strides.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Values per pixel: the channel-blocked input's padded channels, or the planar
    /// input's channels.
    c: usize,
    /// Contiguous values one step group covers: a kernel row's `3c` without groups, one
    /// tap's `cg` with them.
    len: usize,
    /// Step groups: 3 kernel rows, or 9 taps.
    parts: usize,
    /// Bytes of one step (a multiple of 4, at most 64).
    run: usize,
}

impl Span {
    fn new(s: &ConvShape) -> Span {
        let c = match s.input {
            InputLayout::Blocked => channel_blocks(s.in_channels) * CHANNEL_BLOCK,
            InputLayout::Planar => s.in_channels,
        };
        let (len, parts) = if s.groups == 1 { (3 * c, 3) } else { (s.in_per_group(), 9) };
        Span { c, len, parts, run: RUN_BYTES.min((2 * len).next_multiple_of(4)) }
    }

    /// Steps per step group and in all.
    fn chunks(&self) -> usize {
        (2 * self.len).div_ceil(self.run)
    }

    fn steps(&self) -> usize {
        self.parts * self.chunks()
    }

    /// Values of reduction a step covers.
    fn values(&self) -> usize {
        self.run / 2
    }
}

/// The bordered buffer's geometry: `n` images of `h x w` pixels of `c` values.
#[derive(Debug, Clone, Copy)]
struct Bordered {
    ph: usize,
    pw: usize,
    c: usize,
    /// Values of one bordered row (`pw c` rounded up to whole floats) and plane.
    row: usize,
    plane: usize,
    /// Values of the buffer: every image's plane, then slack for the last tile rows and
    /// runs past the last pixel (their sums are dropped, their weights zero): 16 pixels
    /// at stride 2, a kernel row's span and one more run.
    len: usize,
}

impl Bordered {
    fn of(n: usize, h: usize, w: usize, c: usize) -> Bordered {
        let (ph, pw) = (h + 2, w + 2);
        let row = (pw * c).next_multiple_of(2);
        let plane = ph * row;
        let slack = (16 * 2 + 4) * c + RUN_BYTES / 2 + 16;
        Bordered { ph, pw, c, row, plane, len: n * plane + slack.next_multiple_of(2) }
    }

    /// The input of a layer of shape `s` whose span is `span`.
    fn input(s: &ConvShape, span: &Span) -> Bordered {
        Bordered::of(s.n, s.h, s.w, span.c)
    }

    /// Floats of the buffer, with room to start it on a cache line ([`aligned`]).
    fn floats(&self) -> usize {
        self.len / 2 + LINE / 4
    }
}

/// Floats of a layer's input as bf16 in its bordered layout, which the layer before can
/// write directly ([`super::Codes`]; the session checks it fits the activation buffer),
/// with room to start it on a cache line ([`aligned`]).
pub(crate) fn input_len(s: &ConvShape) -> usize {
    Bordered::input(s, &Span::new(s)).floats()
}

/// The bordered buffer of `floats` floats inside `buffer`, from its first cache line: a
/// tile row of 64 bytes at a whole number of lines from the start then reads one line,
/// not two. Producer and consumer find the same start in the same buffer.
fn aligned(buffer: &[f32], floats: usize) -> &[f32] {
    &buffer[line_skip(buffer.as_ptr())..][..floats]
}

fn aligned_mut(buffer: &mut [f32], floats: usize) -> &mut [f32] {
    let skip = line_skip(buffer.as_ptr());
    &mut buffer[skip..][..floats]
}

/// Where a producer writes its output as the next BF16 layer's bordered input (that
/// layer's input is this layer's output: `oh x ow`, the same channel blocks).
struct BorderedOut {
    layout: Bordered,
    values: *mut u16,
    len: usize,
}

// SAFETY: items write disjoint pixels (as through `SharedMut`); the pointer is only used
// through `pixels`, whose contract keeps concurrent writes disjoint.
unsafe impl Send for BorderedOut {}
// SAFETY: as above.
unsafe impl Sync for BorderedOut {}

impl BorderedOut {
    /// Zeroes the border ring of every plane and the slack (the interior is all written
    /// by the layer's items) and returns the writer.
    fn new(s: &ConvShape, output: &mut [f32]) -> BorderedOut {
        let layout = Bordered::of(s.n, s.oh, s.ow, channel_blocks(s.out_channels) * CHANNEL_BLOCK);
        let values: &mut [u16] = bytemuck::cast_slice_mut(aligned_mut(output, layout.len / 2));
        let (planes, slack) = values.split_at_mut(s.n * layout.plane);
        zero_border(planes, layout.plane, layout.row, layout.pw, layout.c);
        slack.fill(0);
        BorderedOut { layout, values: values.as_mut_ptr(), len: values.len() }
    }

    /// The first value of output pixel `(y, x)` of `image`, channel block `block`, and the
    /// values from there to the buffer's end.
    ///
    /// # Safety
    ///
    /// No other live slice may overlap the values the caller writes through it (items
    /// write disjoint pixels and channel blocks).
    #[allow(clippy::mut_from_ref)]
    unsafe fn at(&self, image: usize, y: usize, x: usize, block: usize) -> &mut [u16] {
        let l = &self.layout;
        let at = image * l.plane + (y + 1) * l.row + (x + 1) * l.c + block * CHANNEL_BLOCK;
        assert!(at < self.len, "output outside the bordered buffer");
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.values.add(at), self.len - at) }
    }
}

/// A layer's output: channel-blocked floats, or the next layer's bordered bf16 input.
enum Sink {
    Floats(SharedMut),
    Bf16(BorderedOut),
}

impl ConvExecutor for DirectBf16 {
    fn algo(&self) -> Algo {
        Algo::Direct
    }

    fn precision(&self) -> Precision {
        Precision::Bf16
    }

    /// 3x3 layers on the channel-blocked input (whole channel blocks per group when there
    /// are groups), or on the planar network input without groups; at most
    /// [`MAX_STEPS`] steps of reduction.
    fn supports(&self, s: &ConvShape, _: Isa) -> bool {
        let input = match s.input {
            InputLayout::Blocked => s.whole_channel_blocks(),
            InputLayout::Planar => s.groups == 1 && s.in_channels <= 64,
        };
        s.kernel == 3 && input && Span::new(s).steps() <= MAX_STEPS
    }

    /// The bf16 weights, in floats.
    fn packed_len(&self, s: &ConvShape) -> usize {
        let span = Span::new(s);
        let k_pad = channel_blocks(s.out_channels / s.groups) * CHANNEL_BLOCK;
        (s.groups * span.steps() * span.values() * k_pad).div_ceil(2)
    }

    fn pack(&self, s: &ConvShape, weights: LayerWeights<'_>) -> Box<dyn PackedWeights> {
        assert!(self.supports(s, Isa::Portable), "unsupported BF16 direct layer");
        Box::new(Bf16Weights::pack(s, weights.deploy))
    }

    /// The bordered bf16 input, then the packed windows where they are read, in floats
    /// (and room to align each).
    fn shared_len(&self, s: &ConvShape) -> usize {
        input_len(s) + windows_len(s, &Span::new(s))
    }

    fn scratch_len(&self, _: &ConvShape) -> usize {
        0
    }

    /// The FP32 direct path's multiplies at the bf16 rate (AMX's, about 15 FP32 slots per
    /// multiply slot), plus half its weight stream. BF16 runs where the session asks for
    /// it, so the cost only ranks it against itself.
    fn cost(&self, s: &ConvShape, model: &CostModel) -> f64 {
        let span = Span::new(s);
        let k_pad = (channel_blocks(s.out_channels / s.groups) * CHANNEL_BLOCK) as f64;
        let macs = (s.groups * span.steps() * span.values()) as f64 * k_pad * (s.n * s.oh * s.ow) as f64;
        macs / 16.0 / 15.0 + model.stream * (s.groups * span.steps() * span.values()) as f64 * k_pad / 2.0
    }

    fn run(&self, ctx: RunContext<'_>) {
        run(ctx)
    }
}

/// A layer's weights rounded to bf16, in panels of up to 32 output channels: panel `b` of
/// group `g` is `[steps * run / 4][width][2]`, step `i` covering values `chunk * run / 2 ..`
/// of span `part` (`i = part * chunks + chunk`).
#[derive(Debug)]
struct Bf16Weights {
    groups: usize,
    out_per_group: usize,
    k_pad: usize,
    panels_per_group: usize,
    /// bf16 values per output channel (every step's).
    depth: usize,
    span: Span,
    /// Line-aligned: each `B` tile row (64 bytes) is one cache line.
    data: LineAligned<u16>,
}

impl PackedWeights for Bf16Weights {
    fn bytes(&self) -> usize {
        2 * self.data.as_slice().len()
    }
}

impl Bf16Weights {
    fn pack(s: &ConvShape, deploy: &[f32]) -> Bf16Weights {
        let (cg, span) = (s.in_per_group(), Span::new(s));
        assert_eq!(deploy.len(), s.out_channels * cg * 9, "weights do not match the layer");
        let out_per_group = s.out_channels / s.groups;
        let k_pad = channel_blocks(out_per_group) * CHANNEL_BLOCK;
        let panels_per_group = k_pad.div_ceil(ROW_WORDS);
        let depth = span.steps() * span.values();
        let mut aligned = LineAligned::zeroed(s.groups * depth * k_pad);
        let data = aligned.as_mut_slice();
        for g in 0..s.groups {
            for b in 0..panels_per_group {
                let k0 = b * ROW_WORDS;
                let width = ROW_WORDS.min(k_pad - k0);
                let base = (g * k_pad + k0) * depth;
                for lane in 0..width.min(out_per_group.saturating_sub(k0)) {
                    let k = g * out_per_group + k0 + lane;
                    for d in 0..depth {
                        let (step, t) = (d / span.values(), d % span.values());
                        let (part, v) = (step / span.chunks(), step % span.chunks() * span.values() + t);
                        if v >= span.len {
                            continue;
                        }
                        // Which input channel and tap span position `v` of part `part` is.
                        let (c, ky, kx) =
                            if s.groups == 1 { (v % span.c, part, v / span.c) } else { (v, part / 3, part % 3) };
                        if c < cg {
                            let w = deploy[((k * cg + c) * 3 + ky) * 3 + kx];
                            data[base + (d / 2) * width * 2 + lane * 2 + d % 2] = bf16::to_bf16(w);
                        }
                    }
                }
            }
        }
        Bf16Weights { groups: s.groups, out_per_group, k_pad, panels_per_group, depth, span, data: aligned }
    }

    /// Panel `b` of group `g`: its first output channel within the group, its width and data.
    fn panel(&self, g: usize, b: usize) -> (usize, usize, &[u16]) {
        let k0 = b * ROW_WORDS;
        let width = ROW_WORDS.min(self.k_pad - k0);
        let start = (g * self.k_pad + k0) * self.depth;
        (k0, width, &self.data.as_slice()[start..start + self.depth * width])
    }
}

/// Writes bordered row `py` of `image` (`dst`, `row` values) from the channel-blocked or
/// planar input: zeros on the border and past the last pixel, each pixel's channels
/// converted to bf16.
fn fill_row(k: Bf16Kernels, s: &ConvShape, span: &Span, input: &[f32], image: usize, py: usize, dst: &mut [u16]) {
    dst.fill(0);
    if py == 0 || py == s.h + 1 {
        return;
    }
    let y = py - 1;
    let interior = &mut dst[span.c..(s.w + 1) * span.c];
    match s.input {
        InputLayout::Blocked => {
            let cb = channel_blocks(s.in_channels);
            for b in 0..cb {
                let src = &input[((image * cb + b) * s.h + y) * s.w * CHANNEL_BLOCK..][..s.w * CHANNEL_BLOCK];
                bf16::convert_blocks(k, src, s.w, &mut interior[b * CHANNEL_BLOCK..], span.c);
            }
        }
        InputLayout::Planar if s.in_channels == 3 => {
            let row = |c: usize| &input[((image * 3 + c) * s.h + y) * s.w..][..s.w];
            bf16::interleave3(k, [row(0), row(1), row(2)], interior);
        }
        InputLayout::Planar => {
            const CHUNK: usize = 256;
            let mut values = [0u16; CHUNK];
            for c in 0..s.in_channels {
                let row = &input[((image * s.in_channels + c) * s.h + y) * s.w..][..s.w];
                for (i, src) in row.chunks(CHUNK).enumerate() {
                    let values = &mut values[..src.len()];
                    bf16::convert(k, src, values);
                    let pixels = interior[(i * CHUNK * span.c + c)..].iter_mut().step_by(span.c);
                    pixels.zip(values.iter()).for_each(|(d, v)| *d = *v);
                }
            }
        }
    }
}

/// Runs the convolution: `output = relu?(conv(input) + bias)`, channel-blocked out.
fn run(ctx: RunContext<'_>) {
    let RunContext { bf16: kernels, shape, weights, bias, relu, input, output, shared, codes, .. } = ctx;
    let kernels = kernels.expect("BF16 layers run in sessions with a bf16 kernel set");
    let w: &Bf16Weights = downcast(weights);
    let s = *shape;
    let span = Span::new(&s);
    let layout = Bordered::input(&s, &span);
    let windows_floats = windows_len(&s, &span);
    let out_blocks = channel_blocks(s.out_channels);
    if codes.output.is_none() {
        assert!(output.len() >= s.n * out_blocks * s.oh * s.ow * CHANNEL_BLOCK, "output buffer too small");
    }
    assert!(bias.len() >= out_blocks * CHANNEL_BLOCK, "bias not padded to whole blocks");
    let read = match s.input {
        _ if codes.input => layout.floats(),
        InputLayout::Blocked => s.n * channel_blocks(s.in_channels) * s.h * s.w * CHANNEL_BLOCK,
        InputLayout::Planar => s.n * s.in_channels * s.h * s.w,
    };
    assert!(input.len() >= read, "input buffer too small");
    assert!(shared.len() >= layout.floats() + windows_floats, "shared buffer too small");
    assert_eq!((w.groups, w.span.c, w.span.len), (s.groups, span.c, span.len), "weights packed for another layer");

    let (shared, windows_buffer) = shared.split_at_mut(layout.floats());
    let bordered: &[u16] = if codes.input {
        // The layer before wrote this layer's input in this layout (`BorderedOut`).
        bytemuck::cast_slice(aligned(input, layout.len / 2))
    } else {
        // One item per bordered row (whole floats: `row` is even).
        let (rows, slack) = aligned_mut(shared, layout.len / 2).split_at_mut(s.n * layout.plane / 2);
        slack.fill(0.0);
        for_each_chunk_mut(rows, layout.row / 2, |r, row| {
            fill_row(kernels, &s, &span, input, r / layout.ph, r % layout.ph, bytemuck::cast_slice_mut(row));
        });
        bytemuck::cast_slice(aligned(shared, layout.len / 2))
    };

    // Step offsets in bytes from a pixel's window: kernel row (or tap), then run.
    let mut steps = [0usize; MAX_STEPS];
    let offsets = &mut steps[..span.steps()];
    for (i, offset) in offsets.iter_mut().enumerate() {
        let (part, chunk) = (i / span.chunks(), i % span.chunks());
        let at = if s.groups == 1 { part * layout.row } else { (part / 3 * layout.pw + part % 3) * span.c };
        *offset = 2 * at + chunk * span.run;
    }
    let offsets: &[usize] = offsets;

    let amx_set = kernels.set() == Bf16Set::Amx;
    let (columns, rows_per_unit) = if amx_set { (16, 2) } else { (kernels.columns(), 1) };
    let plane_out = s.oh * s.ow;
    let total = s.n * plane_out;
    let sink = match codes.output {
        Some(_) => Sink::Bf16(BorderedOut::new(&s, output)),
        None => Sink::Floats(SharedMut::new(output)),
    };

    // Where the products read: the bordered input in place (a unit is one row segment,
    // two rows of one for AMX), or, on maps too narrow to fill the tile rows, the
    // windows packed pixel after pixel (a unit is `columns` consecutive output pixels of
    // the whole batch, two groups of them for AMX; the same values as in place, so the
    // same weights).
    let packed = reads_packed(&s);
    let pk = span.steps() * span.values();
    let mut packed_offsets = [0usize; MAX_STEPS];
    let (source, offsets, stride, units): (&[u16], &[usize], usize, usize) = if packed {
        let rows = aligned_mut(windows_buffer, windows_floats - LINE / 4);
        let (rows, pad) = rows.split_at_mut(total * pk / 2);
        pad.fill(0.0);
        for_each_chunk_mut(rows, pk / 2, |p, row| {
            let row: &mut [u16] = bytemuck::cast_slice_mut(row);
            let (image, oy, ox) = (p / plane_out, p / s.ow % s.oh, p % s.ow);
            let window = image * layout.plane + oy * s.stride * layout.row + ox * s.stride * span.c;
            for (i, step) in row.chunks_exact_mut(span.values()).enumerate() {
                step.copy_from_slice(&bordered[window + offsets[i] / 2..][..span.values()]);
            }
        });
        for (i, offset) in packed_offsets[..span.steps()].iter_mut().enumerate() {
            *offset = i * span.run;
        }
        let rows: &[f32] = aligned(windows_buffer, windows_floats - LINE / 4);
        (bytemuck::cast_slice(rows), &packed_offsets[..span.steps()], 2 * pk, total.div_ceil(columns * rows_per_unit))
    } else {
        (bordered, offsets, 2 * s.stride * span.c, s.n * s.oh.div_ceil(rows_per_unit) * s.ow.div_ceil(columns))
    };
    // The tile rows of unit `u`: for each of its (up to two) segments, the byte where
    // its first row is read, its first output pixel (flattened over the batch) and how
    // many of its rows are pixels. A segment's pixels are consecutive in that order.
    let segments = s.ow.div_ceil(columns);
    let groups_of_rows = s.oh.div_ceil(rows_per_unit);
    let unit_tiles = |u: usize, group: usize| -> [(usize, usize, usize); 2] {
        std::array::from_fn(|t| {
            if t >= rows_per_unit {
                (0, 0, 0)
            } else if packed {
                let first = (u * rows_per_unit + t) * columns;
                (2 * first * pk, first, columns.min(total.saturating_sub(first)))
            } else {
                let image = u / (groups_of_rows * segments);
                let (oy, x0) = (u / segments % groups_of_rows * rows_per_unit + t, u % segments * columns);
                let count = if oy < s.oh { columns.min(s.ow - x0) } else { 0 };
                let base = 2 * (image * layout.plane + oy * s.stride * layout.row + x0 * s.stride * span.c + group);
                (base, (image * s.oh + oy) * s.ow + x0, count)
            }
        })
    };

    let panels = s.groups * w.panels_per_group;
    // An item takes a few weight panels and one unit, or, where the weights do not stay
    // in the L2 cache between items (the last stage's), one panel and every unit of the
    // batch: each panel then comes from memory once, not once per unit.
    let (panels_per_item, units_per_item) =
        if w.bytes() > STREAMED_WEIGHT_BYTES { (1, units) } else { (PANELS_PER_ITEM, 1) };
    let chunks = panels.div_ceil(panels_per_item);
    let unit_groups = units.div_ceil(units_per_item);
    // In place, every segment of a map narrower than a tile has its width in pixels: the
    // tiles take that many rows, so the products skip the pixels the epilogue would drop.
    let tile_rows = if packed { columns } else { s.ow.min(columns) };
    crate::team::for_each_share(unit_groups * chunks, |share| {
        // Once per share: the tile configuration and the accumulators.
        let amx = amx_set.then(|| AmxTiles::with_rows(TileOp::Bf16, span.run, tile_rows));
        let mut accs: [Bf16Acc; 2] = [[0.0; ROW_WORDS * 16]; 2];
        for item in share {
            let (chunk, unit_group) = (item % chunks, item / chunks);
            for wp in chunk * panels_per_item..panels.min((chunk + 1) * panels_per_item) {
                let (g, b) = (wp / w.panels_per_group, wp % w.panels_per_group);
                let (k0, width, a) = w.panel(g, b);
                let group = if s.groups == 1 { 0 } else { g * s.in_per_group() };
                for unit in unit_group * units_per_item..units.min((unit_group + 1) * units_per_item) {
                    let tiles = unit_tiles(unit, group);
                    let reads = Reads { base: tiles[0].0, offsets, stride, run: span.run };
                    let [a0, a1] = &mut accs;
                    match &amx {
                        Some(amx) if tiles[1].2 > 0 => {
                            bf16::tile_pair_product(amx, source, [tiles[0].0, tiles[1].0], reads, a, width, [a0, a1])
                        }
                        Some(amx) => bf16::tile_product(amx, source, reads, a, width, a0),
                        None => bf16::strided_product(kernels, source, reads, a, width, tiles[0].2, a0),
                    }
                    let first_block = (g * w.out_per_group + k0) / CHANNEL_BLOCK;
                    for (acc, &(_, first, count)) in accs.iter().zip(&tiles) {
                        // Runs of the segment's pixels within one output row.
                        let mut j = 0;
                        while j < count {
                            let q = first + j;
                            let (image, oy, ox) = (q / plane_out, q / s.ow % s.oh, q % s.ow);
                            let run = (count - j).min(s.ow - ox);
                            for blk in 0..width / CHANNEL_BLOCK {
                                let (c, block) = (blk * CHANNEL_BLOCK, first_block + blk);
                                let bias = &bias[block * CHANNEL_BLOCK..];
                                let rows = match &sink {
                                    Sink::Floats(out) => {
                                        let start =
                                            ((image * out_blocks + block) * plane_out + oy * s.ow + ox) * CHANNEL_BLOCK;
                                        let region = out.raw(start, run * CHANNEL_BLOCK);
                                        // SAFETY: `raw` checked the bounds; each item writes its
                                        // own pixels (its units') of its panels' channel blocks,
                                        // so no other slice overlaps this one.
                                        Rows::F32(unsafe {
                                            std::slice::from_raw_parts_mut(region, run * CHANNEL_BLOCK)
                                        })
                                    }
                                    // SAFETY: as above, in the next layer's layout: these pixels'
                                    // values of this channel block are this item's.
                                    Sink::Bf16(out) => {
                                        Rows::Bf16(unsafe { out.at(image, oy, ox, block) }, out.layout.c)
                                    }
                                };
                                bf16::store_rows(kernels, acc, j, c, run, bias, relu, rows);
                            }
                            j += run;
                        }
                    }
                }
            }
        }
    });
}

/// Whether a layer's products read packed windows rather than the bordered input in
/// place: without groups, on maps so narrow that a row's segments would leave a quarter
/// of the tile rows empty (the last stage's 7-pixel rows fill 7 of 16).
fn reads_packed(s: &ConvShape) -> bool {
    s.groups == 1 && s.input == InputLayout::Blocked && 4 * s.ow < 3 * s.ow.next_multiple_of(16)
}

/// Floats of the packed windows ([`reads_packed`]): every output pixel of the batch, then
/// zero rows up to a whole number of two tiles, with room to align them.
fn windows_len(s: &ConvShape, span: &Span) -> usize {
    if !reads_packed(s) {
        return 0;
    }
    (s.n * s.oh * s.ow).next_multiple_of(32) * span.steps() * span.values() / 2 + LINE / 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::Scratch;
    use crate::exec::Codes;
    use crate::kernels::int8::Int8Kernels;
    use crate::team::Team;
    use repvgg_simd::Dispatch;

    /// The layer in f64 on the bf16-rounded input and weights, with the bound of each
    /// output: `(kd + 1) 2^-24 sum |x w|` (f32 summation, and the bias's addition).
    fn reference(s: &ConvShape, deploy: &[f32], bias: &[f32], input: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (cb, kb) = (channel_blocks(s.in_channels), channel_blocks(s.out_channels));
        let (cg, kg) = (s.in_per_group(), s.out_channels / s.groups);
        let at = |b: usize, c: usize, y: usize, x: usize| match s.input {
            InputLayout::Blocked => {
                ((b * cb + c / CHANNEL_BLOCK) * s.h * s.w + y * s.w + x) * CHANNEL_BLOCK + c % CHANNEL_BLOCK
            }
            InputLayout::Planar => ((b * s.in_channels + c) * s.h + y) * s.w + x,
        };
        let round = |v: f32| bf16::from_bf16(bf16::to_bf16(v)) as f64;
        let len = s.n * kb * s.oh * s.ow * CHANNEL_BLOCK;
        let (mut out, mut bound) = (vec![0f64; len], vec![0f64; len]);
        for b in 0..s.n {
            for k in 0..s.out_channels {
                let g = k / kg;
                for oy in 0..s.oh {
                    for ox in 0..s.ow {
                        let (mut acc, mut abs) = (0f64, 0f64);
                        for c in 0..cg {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) =
                                        ((oy * s.stride + ky).wrapping_sub(1), (ox * s.stride + kx).wrapping_sub(1));
                                    if iy < s.h && ix < s.w {
                                        let p = round(input[at(b, g * cg + c, iy, ix)])
                                            * round(deploy[((k * cg + c) * 3 + ky) * 3 + kx]);
                                        acc += p;
                                        abs += p.abs();
                                    }
                                }
                            }
                        }
                        let i = ((b * kb + k / CHANNEL_BLOCK) * s.oh * s.ow + oy * s.ow + ox) * CHANNEL_BLOCK
                            + k % CHANNEL_BLOCK;
                        let v = acc + bias[k] as f64;
                        out[i] = v.max(0.0);
                        bound[i] = (Span::new(s).steps() * 32 + 2) as f64 * 2f64.powi(-24) * (abs + v.abs());
                    }
                }
            }
        }
        (out, bound)
    }

    /// Every bf16 set this CPU runs, through the executor, against the f64 convolution of
    /// the same bf16-rounded operands within the f32 summation bound: both strides,
    /// groups, channel counts that are not multiples of 32 (runs past the span), odd
    /// sizes, segments across rows and images, maps narrower than a tile, weights large
    /// enough to be streamed panel by panel, the planar
    /// input of 3 channels, thread counts 1 and 2; the shared buffer starts as NaN.
    #[test]
    fn every_set_matches_the_rounded_definition() {
        let sets = Bf16Kernels::all_supported();
        if sets.is_empty() {
            eprintln!("no bf16 kernel set on this CPU: nothing to run");
            return;
        }
        for (shape, layout) in [
            (16, 16, 1, 1, 1, 7, 9),
            (40, 24, 1, 2, 2, 11, 8),
            (48, 48, 1, 1, 2, 14, 13),
            (32, 64, 2, 1, 1, 9, 9),
            (64, 128, 4, 2, 1, 13, 16),
            (96, 32, 1, 1, 1, 5, 40),
            (192, 256, 1, 2, 1, 6, 6),
            // Weights past `STREAMED_WEIGHT_BYTES`: one panel and every row per item.
            (256, 512, 1, 2, 2, 9, 7),
            (32, 48, 1, 2, 2, 29, 27),
        ]
        .into_iter()
        .map(|shape| (shape, InputLayout::Blocked))
        .chain(
            [(3, 48, 1, 2, 2, 29, 30), (3, 20, 1, 1, 1, 13, 11), (5, 16, 1, 1, 1, 9, 14)]
                .into_iter()
                .map(|s| (s, InputLayout::Planar)),
        ) {
            let (c, k, groups, stride, n, h, w) = shape;
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let s = ConvShape {
                n,
                kernel: 3,
                in_channels: c,
                out_channels: k,
                groups,
                stride,
                h,
                w,
                oh,
                ow,
                input: layout,
            };
            assert!(DirectBf16.supports(&s, Isa::Portable));
            let mut seed = (c * 1000 + k * 10 + stride) as u32;
            let mut next = move || {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            };
            let deploy: Vec<f32> = (0..k * (c / groups) * 9).map(|_| next() * 0.3).collect();
            let mut bias: Vec<f32> = (0..k).map(|_| next()).collect();
            bias.resize(channel_blocks(k) * CHANNEL_BLOCK, 0.0);
            let cb = channel_blocks(c);
            let input: Vec<f32> = match layout {
                InputLayout::Blocked => (0..n * cb * h * w * CHANNEL_BLOCK)
                    .map(|i| {
                        let channel = (i % CHANNEL_BLOCK) + (i / (h * w * CHANNEL_BLOCK) % cb) * CHANNEL_BLOCK;
                        if channel < c { (next() + 1.0) * 0.7 } else { 0.0 }
                    })
                    .collect(),
                InputLayout::Planar => (0..n * c * h * w).map(|_| next() * 2.0).collect(),
            };
            let (want, bound) = reference(&s, &deploy, &bias, &input);
            let packed = DirectBf16.pack(&s, LayerWeights::f32(&deploy));
            for threads in [1, 2] {
                let team = Team::new(threads, std::time::Duration::ZERO).unwrap();
                for &kernels in &sets {
                    let mut output = vec![f32::NAN; want.len()];
                    let mut shared = vec![f32::NAN; DirectBf16.shared_len(&s)];
                    let scratch = Scratch::new(team.threads(), 0);
                    let ctx = RunContext {
                        isa: Dispatch::best(),
                        int8: Int8Kernels::for_dispatch(Dispatch::best()),
                        bf16: Some(kernels),
                        shape: &s,
                        weights: &*packed,
                        deploy: &deploy,
                        bias: &bias,
                        relu: true,
                        input: &input,
                        output: &mut output,
                        shared: &mut shared,
                        scratch: &scratch,
                        codes: Codes::NONE,
                    };
                    team.install(|| DirectBf16.run(ctx));
                    for (i, ((g, e), b)) in output.iter().zip(&want).zip(&bound).enumerate() {
                        let ok = if i % CHANNEL_BLOCK
                            + i / (s.oh * s.ow * CHANNEL_BLOCK) % channel_blocks(k) * CHANNEL_BLOCK
                            < k
                        {
                            (*g as f64 - e).abs() <= *b
                        } else {
                            true
                        };
                        assert!(
                            ok,
                            "{:?} threads {threads} c{c} k{k} g{groups} s{stride} {layout:?}: element {i}: {g} vs {e} (bound {b})",
                            kernels.set()
                        );
                    }
                }
            }
        }
    }
}
