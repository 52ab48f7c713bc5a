//! Direct convolution as an implicit-im2col GEMM, for stride-2 layers, the stem and small
//! maps where Winograd's tile overhang costs more than it saves. RepVGG's layers are 3x3;
//! the channel-blocked path takes kernel sides 1, 3, 5 and 7 (padding `k / 2`), which
//! `repvgg density` uses for its 1x1, 5x5 and 7x7 rows.
//!
//! Each column panel (NR output pixels) is packed once (`kernels::im2col`) and reused by
//! every weight panel: packing costs `9 C` copies per pixel against `9 C K`
//! multiply-adds. The schedule (fused or two-phase) is `exec::schedule`'s.
//!
//! The network input (3 channels, planar NCHW) is first repacked into a zero-bordered
//! NHWC copy and uses `kd = (ky * 3 + kx) * 3 + c`, padded to 32: each window row is 9
//! contiguous floats, there are no bounds checks, and the stem does not multiply 13 zero
//! channels per panel.

use repvgg_simd::{Isa, dispatch};

use super::schedule::{Schedule, Work};
use super::{ConvExecutor, ConvShape, CostModel, InputLayout, LayerWeights, PackedWeights, RunContext, downcast};
use crate::buffers::SharedMut;
use crate::kernels::gemm::{Epilogue, Gemm, MR, NR};
use crate::kernels::im2col::{self, Geometry, PLANAR_MAX_KD};
use crate::plan::{Algo, Precision};
use crate::team::for_each_chunk_mut;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// The direct executor (FP32).
pub(crate) struct Direct;

impl ConvExecutor for Direct {
    fn algo(&self) -> Algo {
        Algo::Direct
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// Any stride; kernel sides in [`SIDES`] on the channel-blocked layout (3 on the
    /// network input); whole channel blocks per group when there are groups.
    fn supports(&self, s: &ConvShape, _: Isa) -> bool {
        let side = match s.input {
            InputLayout::Blocked => SIDES.contains(&s.kernel),
            InputLayout::Planar => s.kernel == 3,
        };
        side && DirectWeights::supports(s.input, s.out_channels, s.in_per_group(), s.groups)
    }

    fn packed_len(&self, s: &ConvShape) -> usize {
        DirectWeights::len(s.input, s.kernel, s.out_channels, s.in_per_group(), s.groups)
    }

    fn pack(&self, s: &ConvShape, weights: LayerWeights<'_>) -> Box<dyn PackedWeights> {
        let weight = weights.deploy;
        assert!(self.supports(s, Isa::Portable), "unsupported direct layer");
        Box::new(DirectWeights::pack(s.input, s.kernel, weight, s.out_channels, s.in_per_group(), s.groups))
    }

    fn shared_len(&self, s: &ConvShape) -> usize {
        shared_len(s)
    }

    fn scratch_len(&self, s: &ConvShape) -> usize {
        work(s).scratch_len(0)
    }

    /// The GEMM, `K C 9 P / 16` slots over `P` output pixels, divided by 0.9 (im2col
    /// packing, and a reduction 9x longer than Winograd's per position), plus streaming the
    /// packed weights, `K C 9` floats. Both counted in whole channel blocks per group.
    fn cost(&self, s: &ConvShape, model: &CostModel) -> f64 {
        let (cb, kb) = (channel_blocks(s.in_per_group()) as f64, channel_blocks(s.out_channels / s.groups) as f64);
        let groups = s.groups as f64;
        let weight_floats = groups * kb * cb * 256.0 * 9.0;
        let pixels = (s.n * s.oh * s.ow) as f64;
        groups * kb * cb * 16.0 * 9.0 * pixels / 0.9 + model.stream * weight_floats
    }

    fn run(&self, ctx: RunContext<'_>) {
        run(ctx)
    }
}

impl PackedWeights for DirectWeights {
    fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Weights packed for the direct path: per group and weight panel (up to `MR` output
/// channels), `[kd][width]`.
#[derive(Debug, Clone)]
pub struct DirectWeights {
    layout: InputLayout,
    /// Kernel side.
    kernel: usize,
    groups: usize,
    out_per_group: usize,
    /// Reduction depth per group (multiple of 16).
    kd: usize,
    panels_per_group: usize,
    k_pad: usize,
    data: Vec<f32>,
}

impl DirectWeights {
    /// Packs `[K][C/groups][k][k]` weights; callers check [`DirectWeights::supports`] first
    /// (whole channel blocks per group when `groups > 1`, a kernel side in [`SIDES`]).
    fn pack(
        layout: InputLayout,
        kernel: usize,
        weights: &[f32],
        out_channels: usize,
        in_per_group: usize,
        groups: usize,
    ) -> Self {
        let taps = kernel * kernel;
        assert_eq!(weights.len(), out_channels * in_per_group * taps);
        let out_per_group = out_channels / groups;
        let kd = reduction_depth(layout, kernel, in_per_group);
        let k_pad = channel_blocks(out_per_group) * CHANNEL_BLOCK;
        let panels_per_group = k_pad.div_ceil(MR);
        let mut data = vec![0f32; Self::len(layout, kernel, out_channels, in_per_group, groups)];
        for g in 0..groups {
            for b in 0..panels_per_group {
                let k0 = b * MR;
                let width = MR.min(k_pad - k0);
                let base = g * kd * k_pad + k0 * kd;
                for lane in 0..width.min(out_per_group.saturating_sub(k0)) {
                    let k = g * out_per_group + k0 + lane;
                    for c in 0..in_per_group {
                        for tap in 0..taps {
                            let row = match layout {
                                InputLayout::Blocked => {
                                    ((c / CHANNEL_BLOCK) * taps + tap) * CHANNEL_BLOCK + c % CHANNEL_BLOCK
                                }
                                InputLayout::Planar => tap * in_per_group + c,
                            };
                            data[base + row * width + lane] = weights[(k * in_per_group + c) * taps + tap];
                        }
                    }
                }
            }
        }
        DirectWeights { layout, kernel, groups, out_per_group, kd, panels_per_group, k_pad, data }
    }

    /// Floats that [`DirectWeights::pack`] allocates for this layer shape, known before
    /// building it (for memory limits).
    pub fn len(layout: InputLayout, kernel: usize, out_channels: usize, in_per_group: usize, groups: usize) -> usize {
        groups * reduction_depth(layout, kernel, in_per_group) * channel_blocks(out_channels / groups) * CHANNEL_BLOCK
    }

    /// True if the packed direct path can run this layer.
    pub fn supports(layout: InputLayout, out_channels: usize, in_per_group: usize, groups: usize) -> bool {
        let whole_blocks = groups == 1
            || (in_per_group.is_multiple_of(CHANNEL_BLOCK) && (out_channels / groups).is_multiple_of(CHANNEL_BLOCK));
        match layout {
            InputLayout::Blocked => whole_blocks,
            InputLayout::Planar => groups == 1 && reduction_depth(layout, 3, in_per_group) <= PLANAR_MAX_KD,
        }
    }

    /// Panel `b` of group `g`: its first output channel within the group, its width and data.
    fn panel(&self, g: usize, b: usize) -> (usize, usize, &[f32]) {
        let k0 = b * MR;
        let width = MR.min(self.k_pad - k0);
        let start = g * self.kd * self.k_pad + k0 * self.kd;
        (k0, width, &self.data[start..start + self.kd * width])
    }
}

/// Kernel sides the channel-blocked path runs (each an instance of the packing).
pub const SIDES: [usize; 4] = [1, 3, 5, 7];

/// The im2col geometry of a layer.
fn geometry(s: &ConvShape) -> Geometry {
    Geometry { n: s.n, c: s.in_channels, kernel: s.kernel, h: s.h, w: s.w, stride: s.stride, oh: s.oh, ow: s.ow }
}

/// Target size of one chunk of panels, in floats (1 MiB).
pub const CHUNK_FLOATS: usize = 1 << 18;

/// Layers whose packed weights fit in this many bytes run fused (`exec::schedule`); the
/// network input always does.
pub const FUSED_WEIGHT_BYTES: usize = 1 << 20;

/// Reduction depth of one group with `in_per_group` input channels.
fn reduction_depth(layout: InputLayout, kernel: usize, in_per_group: usize) -> usize {
    let taps = kernel * kernel;
    match layout {
        InputLayout::Blocked => channel_blocks(in_per_group) * taps * CHANNEL_BLOCK,
        InputLayout::Planar => (in_per_group * taps).div_ceil(CHANNEL_BLOCK) * CHANNEL_BLOCK,
    }
}

/// The layer's panels and schedule.
fn work(s: &ConvShape) -> Work {
    let layout = s.input;
    let (cg, kg) = (s.in_channels / s.groups, s.out_channels / s.groups);
    let kd = reduction_depth(layout, s.kernel, cg);
    let k_pad = channel_blocks(kg) * CHANNEL_BLOCK;
    let weight_bytes = s.groups * kd * k_pad * 4;
    let panel_floats = match layout {
        InputLayout::Blocked => channel_blocks(s.in_channels) * s.kernel * s.kernel * CHANNEL_BLOCK * NR,
        InputLayout::Planar => kd * NR,
    };
    let schedule = if weight_bytes <= FUSED_WEIGHT_BYTES || layout == InputLayout::Planar {
        Schedule::Fused
    } else {
        Schedule::TwoPhase { chunk: (CHUNK_FLOATS / panel_floats).max(1) }
    };
    Work {
        column_panels: (s.n * s.oh * s.ow).div_ceil(NR),
        weight_panels: s.groups * k_pad.div_ceil(MR),
        panel_floats,
        schedule,
    }
}

/// Floats of the shared buffer [`run`] needs: a chunk of panels for the two-phase
/// schedule, plus the NHWC copy of a planar input.
fn shared_len(shape: &ConvShape) -> usize {
    let hwc = if shape.input == InputLayout::Planar { im2col::hwc_buffer_len(&geometry(shape)) } else { 0 };
    hwc + work(shape).shared_len()
}

/// Repacks planar `NCHW` into the zero-bordered NHWC copy, in parallel over rows.
fn to_padded_hwc(input: &[f32], s: &ConvShape, hwc: &mut [f32]) {
    let (c, pw) = (s.in_channels, s.w + 2);
    let row_len = pw * c;
    for_each_chunk_mut(&mut hwc[..im2col::padded_hwc_len(&geometry(s))], row_len, |r, row| {
        let (n, py) = (r / (s.h + 2), r % (s.h + 2));
        if py == 0 || py > s.h {
            row.fill(0.0);
            return;
        }
        let y = py - 1;
        row[..c].fill(0.0);
        row[(s.w + 1) * c..].fill(0.0);
        for ch in 0..c {
            let src = &input[((n * c + ch) * s.h + y) * s.w..][..s.w];
            for (x, v) in src.iter().enumerate() {
                row[(x + 1) * c + ch] = *v;
            }
        }
    });
}

/// Runs the convolution: `output = relu?(conv(input) + bias)`, channel-blocked out.
///
/// `bias` is padded to the output's channel blocks. The work split depends only on the
/// shape, so results are identical for any number of threads.
fn run(ctx: RunContext<'_>) {
    let RunContext { isa, shape, weights, bias, relu, input, output, shared, scratch, .. } = ctx;
    let weights: &DirectWeights = downcast(weights);
    let s = *shape;
    let layout = weights.layout;
    let out_blocks = channel_blocks(s.out_channels);
    assert!(output.len() >= s.n * out_blocks * s.oh * s.ow * CHANNEL_BLOCK, "output buffer too small");
    assert!(bias.len() >= out_blocks * CHANNEL_BLOCK, "bias not padded to whole blocks");
    let in_len = match layout {
        InputLayout::Blocked => s.n * channel_blocks(s.in_channels) * s.h * s.w * CHANNEL_BLOCK,
        InputLayout::Planar => s.n * s.in_channels * s.h * s.w,
    };
    assert!(input.len() >= in_len, "input buffer too small");
    assert_eq!(weights.layout, s.input, "weights packed for another input layout");
    assert!(shared.len() >= shared_len(shape), "shared panel buffer too small");
    assert_eq!(weights.groups, s.groups, "weights packed for another group count");
    assert_eq!(weights.kernel, s.kernel, "weights packed for another kernel side");
    let geometry = geometry(shape);
    let (input, shared) = if layout == InputLayout::Planar {
        let (hwc, rest) = shared.split_at_mut(im2col::hwc_buffer_len(&geometry));
        to_padded_hwc(input, shape, hwc);
        (&*hwc, rest)
    } else {
        (input, shared)
    };
    let out = SharedMut::new(output);
    let pack = |col: usize, _: &PanelPixels, panel: &mut [f32]| {
        dispatch!(isa, |s| match layout {
            InputLayout::Blocked => im2col::pack_blocked(s, &geometry, input, col, panel),
            InputLayout::Planar if geometry.c == 3 => im2col::pack_rgb(s, &geometry, input, col, panel),
            InputLayout::Planar => im2col::pack_planar(s, &geometry, input, col, panel),
        })
    };
    let product = |weight_panel: usize, pixels: &PanelPixels, panel: &[f32], _: &mut [f32]| {
        let (g, b) = (weight_panel / weights.panels_per_group, weight_panel % weights.panels_per_group);
        let (k0, width, a) = weights.panel(g, b);
        let panel = &panel[g * weights.kd * NR..];
        let first_block = (g * weights.out_per_group + k0) / CHANNEL_BLOCK;
        dispatch!(isa, |s| match width {
            MR => panel_product::<_, 2>(s, weights.kd, a, panel, bias, relu, pixels, first_block, out),
            CHANNEL_BLOCK => panel_product::<_, 1>(s, weights.kd, a, panel, bias, relu, pixels, first_block, out),
            _ => unreachable!("panel widths are 16 or 32"),
        })
    };
    work(shape).run(shared, scratch, 0, |col| PanelPixels::new(&s, col, NR), pack, product);
}

/// The output pixels of one column panel (of at most `C` pixels): how many exist and
/// where each one's first channel block starts, computed once per panel (the divisions
/// would otherwise dominate small reductions such as the stem's 27).
pub(super) struct PanelPixels<const C: usize = NR> {
    pub count: usize,
    /// Offset of pixel j in output channel block 0; block kb adds `kb * plane * 16`.
    pub base: [usize; C],
    /// Floats of one output channel block (`plane * 16`).
    pub block_stride: usize,
}

impl<const C: usize> PanelPixels<C> {
    /// Column panel `panel` of a layer cut in panels of `columns <= C` pixels.
    pub fn new(s: &ConvShape, panel: usize, columns: usize) -> PanelPixels<C> {
        assert!(columns <= C, "{columns} columns in a panel of at most {C}");
        let plane = s.oh * s.ow;
        let out_blocks = channel_blocks(s.out_channels);
        let count = columns.min(s.n * plane - panel * columns);
        let base = std::array::from_fn(|j| {
            let p = panel * columns + j.min(count - 1);
            ((p / plane) * out_blocks * plane + p % plane) * CHANNEL_BLOCK
        });
        PanelPixels { count, base, block_stride: plane * CHANNEL_BLOCK }
    }
}

/// Bias (+ ReLU) and the scattered store of each pixel's channel blocks.
struct BiasReluStore<'a> {
    bias: &'a [f32],
    relu: bool,
    pixels: &'a PanelPixels,
    /// Output pointer at the panel's first channel block.
    out: *mut f32,
}

impl<S: repvgg_simd::Simd> Epilogue<S> for BiasReluStore<'_> {
    #[inline(always)]
    fn take(&mut self, s: S, channel: usize, col: usize, acc: S::F32) {
        let mut y = acc + s.read(&self.bias[channel..]);
        if self.relu {
            y = s.relu(y);
        }
        let at = self.pixels.base[col] + (channel / CHANNEL_BLOCK) * self.pixels.block_stride + channel % CHANNEL_BLOCK;
        // SAFETY: `panel_product` checked that the panel's last pixel and channel block are
        // inside the output, and offsets grow with the pixel and the block.
        unsafe { s.store(self.out.add(at), y) }
    }
}

/// Multiplies one weight panel by a column panel and stores bias (+ ReLU) results.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn panel_product<S: Gemm, const MRV: usize>(
    s: S,
    kd: usize,
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    relu: bool,
    pixels: &PanelPixels,
    first_block: usize,
    out: SharedMut,
) {
    assert!(a.len() >= kd * CHANNEL_BLOCK * MRV && b.len() >= kd * NR);
    let first = first_block * pixels.block_stride;
    let end = first + pixels.base[pixels.count - 1] + (MRV - 1) * pixels.block_stride + CHANNEL_BLOCK;
    // Each (pixel, channel block) is written by exactly one item: column panels partition
    // the pixels and items partition the channel blocks.
    let out = out.raw(first, end - first);
    let mut epilogue = BiasReluStore { bias: &bias[first_block * CHANNEL_BLOCK..], relu, pixels, out };
    // SAFETY: the assert above covers the kd * 16 * MRV and kd * NR reads, kd % 16 == 0,
    // and 1 <= pixels.count <= NR.
    unsafe { s.panel_product::<MRV, _>(kd, a.as_ptr(), b.as_ptr(), pixels.count, &mut epilogue) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::Scratch;
    use crate::reference::{Activation, conv2d};
    use crate::team::Team;
    use repvgg_simd::Dispatch;

    /// Packs `weights` and runs the layer once on `team`, the shared buffer starting as NaN.
    fn conv(
        team: &Team,
        isa: Dispatch,
        shape: &ConvShape,
        weights: &[f32],
        bias: &[f32],
        relu: bool,
        input: &[f32],
    ) -> Vec<f32> {
        let mut output = vec![0f32; shape.n * channel_blocks(shape.out_channels) * shape.oh * shape.ow * CHANNEL_BLOCK];
        let packed = Direct.pack(shape, LayerWeights::f32(weights));
        let mut shared = vec![f32::NAN; Direct.shared_len(shape)];
        let scratch = Scratch::new(team.threads(), Direct.scratch_len(shape));
        let ctx = RunContext {
            isa,
            int8: crate::kernels::int8::Int8Kernels::for_dispatch(isa),
            bf16: None,
            shape,
            weights: &*packed,
            deploy: weights,
            bias,
            relu,
            input,
            output: &mut output,
            shared: &mut shared,
            scratch: &scratch,
            codes: crate::exec::Codes::NONE,
        };
        team.install(|| Direct.run(ctx));
        output
    }

    /// The network-input (planar) path against the f64 reference convolution, on every
    /// instruction set this CPU runs: RGB (the vector-load packing) and other channel
    /// counts, strides 1 and 2, odd sizes, column panels that span rows and images, padded
    /// output channels. The panel buffer starts
    /// as NaN, so a lane of the NHWC slack or of a neighbouring window that leaked into
    /// a panel would show. Tolerance: fp32 sums of at most 63 products of values in
    /// [-1, 1], against f64; 1e-5 of the largest output leaves a wide margin.
    #[test]
    fn planar_input_matches_the_reference_convolution() {
        let team = Team::new(2, std::time::Duration::ZERO).unwrap();
        for isa in Dispatch::all_supported() {
            for (c, k, stride, n, h, w) in [
                (3, 48, 2, 2, 61, 47),
                (3, 20, 1, 2, 13, 11),
                (3, 64, 2, 1, 5, 9),
                (5, 16, 1, 1, 9, 8),
                (7, 40, 2, 2, 10, 13),
            ] {
                let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                let input_layout = InputLayout::Planar;
                let shape = ConvShape {
                    n,
                    kernel: 3,
                    in_channels: c,
                    h,
                    w,
                    out_channels: k,
                    groups: 1,
                    stride,
                    oh,
                    ow,
                    input: input_layout,
                };
                let mut seed = (c * 1000 + k * 10 + stride) as u32;
                let mut next = move || {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                };
                let weights: Vec<f32> = (0..k * c * 9).map(|_| next()).collect();
                let bias_raw: Vec<f32> = (0..k).map(|_| next()).collect();
                let input: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
                let mut bias = bias_raw.clone();
                bias.resize(channel_blocks(k) * CHANNEL_BLOCK, 0.0);

                let output = conv(&team, isa, &shape, &weights, &bias, true, &input);

                let activation = Activation { n, c, h, w, data: input.iter().map(|&v| v as f64).collect() };
                let expected = conv2d(&activation, &weights, Some(&bias_raw), k, 3, stride, 1, 1);
                let scale = expected.data.iter().fold(0f64, |m, v| m.max(v.abs()));
                for b in 0..n {
                    for ch in 0..k {
                        for p in 0..oh * ow {
                            let want = expected.data[(b * k + ch) * oh * ow + p].max(0.0);
                            let got = output[((b * channel_blocks(k) + ch / CHANNEL_BLOCK) * oh * ow + p)
                                * CHANNEL_BLOCK
                                + ch % CHANNEL_BLOCK] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * scale,
                                "{:?} c{c} k{k} s{stride} {n}x{h}x{w}: image {b} channel {ch} pixel {p}: {got} vs {want}",
                                isa.isa()
                            );
                        }
                    }
                }
            }
        }
    }

    /// The channel-blocked path with kernels of side 1, 3, 5 and 7 (padding k / 2), both
    /// strides, one and two groups, against the f64 reference convolution. Tolerance: fp32
    /// sums of up to 49 x 48 = 2352 products of values in [-1, 1] against f64, 1e-5 of the
    /// largest output (the measured worst is about 1e-6).
    #[test]
    fn any_odd_kernel_matches_the_reference_convolution() {
        let team = Team::new(2, std::time::Duration::ZERO).unwrap();
        for isa in Dispatch::all_supported() {
            for (kernel, c, k, groups, stride, n, h, w) in [
                (1, 48, 40, 1, 1, 2, 9, 7),
                (1, 32, 32, 2, 2, 1, 10, 11),
                (3, 32, 48, 1, 1, 1, 12, 9),
                (5, 48, 20, 1, 1, 2, 9, 13),
                (5, 32, 32, 2, 2, 1, 11, 8),
                (7, 16, 36, 1, 1, 1, 15, 10),
                (7, 40, 16, 1, 2, 2, 7, 9),
            ] {
                let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                let input_layout = InputLayout::Blocked;
                let shape = ConvShape {
                    n,
                    kernel,
                    in_channels: c,
                    h,
                    w,
                    out_channels: k,
                    groups,
                    stride,
                    oh,
                    ow,
                    input: input_layout,
                };
                let mut seed = (kernel * 7919 + c * 1000 + k * 10 + stride) as u32;
                let mut next = move || {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                };
                let cg = c / groups;
                let weights: Vec<f32> = (0..k * cg * kernel * kernel).map(|_| next()).collect();
                let bias_raw: Vec<f32> = (0..k).map(|_| next()).collect();
                let planar: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
                let mut bias = bias_raw.clone();
                bias.resize(channel_blocks(k) * CHANNEL_BLOCK, 0.0);
                let cb = channel_blocks(c);
                let mut input = vec![0f32; n * cb * h * w * CHANNEL_BLOCK];
                for (i, v) in planar.iter().enumerate() {
                    let (b, ch, p) = (i / (c * h * w), i / (h * w) % c, i % (h * w));
                    input[((b * cb + ch / CHANNEL_BLOCK) * h * w + p) * CHANNEL_BLOCK + ch % CHANNEL_BLOCK] = *v;
                }

                assert!(Direct.supports(&shape, isa.isa()));
                let output = conv(&team, isa, &shape, &weights, &bias, false, &input);

                let activation = Activation { n, c, h, w, data: planar.iter().map(|&v| v as f64).collect() };
                let expected = conv2d(&activation, &weights, Some(&bias_raw), k, kernel, stride, kernel / 2, groups);
                assert_eq!((expected.h, expected.w), (oh, ow));
                let scale = expected.data.iter().fold(0f64, |m, v| m.max(v.abs()));
                for b in 0..n {
                    for ch in 0..k {
                        for p in 0..oh * ow {
                            let want = expected.data[(b * k + ch) * oh * ow + p];
                            let got = output[((b * channel_blocks(k) + ch / CHANNEL_BLOCK) * oh * ow + p)
                                * CHANNEL_BLOCK
                                + ch % CHANNEL_BLOCK] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * scale,
                                "{:?} {kernel}x{kernel} c{c} k{k} g{groups} s{stride}: image {b} channel {ch} pixel {p}: {got} vs {want}",
                                isa.isa()
                            );
                        }
                    }
                }
            }
        }
    }
}
