//! Winograd F(m,3) convolution of a stride-1 layer (Lavin & Gray 2016), and its polyphase
//! form for stride 2 (`repvgg_winograd::polyphase`): the same tiles, transforms and GEMMs,
//! with input tiles of `2m + 1` pixels `2m` apart.
//!
//! A layer's tiles are grouped in column panels of `NR` (the microkernel's column count;
//! a panel may span tile rows and images). Per column panel:
//!
//! 1. **Input transform** (the panel's packing): `V = B^T d B` for each tile and channel
//!    block, written as the GEMM's column panels `[p][cb][j][16]`.
//! 2. **GEMM + output transform**, per weight panel (the product): for each of the
//!    `alpha^2` positions `p`, `M_p = U_p V_p` with the microkernel (the filters were
//!    transformed and packed at load); once all positions are in the worker's scratch,
//!    and still hot there, `Y = A^T M A` + bias (+ ReLU) writes the output tiles.
//!
//! Layers with filters up to [`FUSED_FILTER_BYTES`] run the fused schedule, bigger ones
//! the two-phase schedule with chunks of up to 8 MiB of transformed tiles
//! (`exec::schedule`). Each output element is produced by the same sequence of
//! operations whichever worker runs it, so results are identical for any thread count.

use repvgg_simd::{Isa, Simd, dispatch};
use repvgg_winograd::{FilterPanel, PackedFilters, Variant, input_tile, output_tile_raw};

use super::schedule::{Schedule, Work};
use super::{ConvExecutor, ConvShape, CostModel, InputLayout, LayerWeights, PackedWeights, RunContext, downcast};
use crate::buffers::SharedMut;
use crate::kernels::gemm::{Gemm, MR, NR, StoreBlocked};
use crate::plan::{Algo, Precision};
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// A Winograd executor (FP32): one variant, with the cost of its tile transforms.
pub(crate) struct Winograd {
    algo: Algo,
    variant: Variant,
    /// Slots per tile and input channel block of the input transform, and per tile and
    /// output channel block of the output transform: measured ns/tile times 3.6 GHz on a
    /// Zen 4 core (`benches/transforms.rs`).
    input_slots: f64,
    output_slots: f64,
    /// The GEMM's share of the FMA peak relative to the F(m,3) variants'. Polyphase layers
    /// reduce over 48-256 channels with `alpha^2` short GEMMs per tile, against direct's one
    /// long one: measured on the Intel Xeon (AVX-512, one thread), P2 took 1.37-1.6x
    /// direct's time on A0's stride-2 layers at batch 1 and 1.1-1.4x on B0's at batch 8,
    /// for 1.44x fewer multiplies. At 0.5 the model ranks it as measured, behind direct.
    gemm_efficiency: f64,
}

/// F(2,3), points 0, +-1, inf.
pub(crate) static F2: Winograd =
    Winograd { algo: Algo::F2, variant: Variant::F2, input_slots: 65.0, output_slots: 47.0, gemm_efficiency: 1.0 };

/// F(4,3), points 0, +-sqrt(2)/2, +-sqrt(2), inf.
pub(crate) static F4: Winograd =
    Winograd { algo: Algo::F4, variant: Variant::F4, input_slots: 216.0, output_slots: 137.0, gemm_efficiency: 1.0 };

/// F(6,3), points 0, +-1, +-2, +-1/2, inf.
pub(crate) static F6: Winograd =
    Winograd { algo: Algo::F6, variant: Variant::F6, input_slots: 504.0, output_slots: 396.0, gemm_efficiency: 1.0 };

/// Stride 2: F(2,2) on the even samples (`repvgg_winograd::polyphase`). Transform slots
/// scaled from F(2,3)'s by the operations of each transform. (P3, F(3,2)'s, measured
/// slower than P2 on every stride-2 layer of A0 and B0, so it is not offered.)
pub(crate) static P2: Winograd =
    Winograd { algo: Algo::P2, variant: Variant::P2, input_slots: 80.0, output_slots: 50.0, gemm_efficiency: 0.5 };

impl ConvExecutor for Winograd {
    fn algo(&self) -> Algo {
        self.algo
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// 3x3 at the variant's stride, on a channel-blocked input, with whole channel blocks
    /// per group when there are groups.
    fn supports(&self, s: &ConvShape, _: Isa) -> bool {
        s.kernel == 3
            && s.stride == self.variant.stride()
            && s.input == InputLayout::Blocked
            && supports(s.out_channels, s.in_per_group(), s.groups)
    }

    fn packed_len(&self, s: &ConvShape) -> usize {
        PackedFilters::len(self.variant, s.out_channels, s.in_per_group(), s.groups)
    }

    /// The filter transform `U = G g G^T`, packed in weight panels of `MR` output channels.
    fn pack(&self, s: &ConvShape, weights: LayerWeights<'_>) -> Box<dyn PackedWeights> {
        let weight = weights.deploy;
        Box::new(
            PackedFilters::new(self.variant, weight, s.out_channels, s.in_per_group(), s.groups, MR)
                .expect("layer shapes were validated"),
        )
    }

    fn shared_len(&self, s: &ConvShape) -> usize {
        work(self.variant, &WinogradShape::of(s), CHUNK_FLOATS).shared_len()
    }

    /// The products, plus a column panel for the fused schedule.
    fn scratch_len(&self, s: &ConvShape) -> usize {
        work(self.variant, &WinogradShape::of(s), CHUNK_FLOATS).scratch_len(products_len(self.variant))
    }

    /// `alpha^2` per (input channel, output channel) pair and output tile, tile overhang
    /// included (Lavin & Gray 2016).
    fn multiplies(&self, s: &ConvShape, _: u64) -> u64 {
        let pairs = (s.in_per_group() * s.out_channels) as u64;
        self.variant.multiplies(pairs, s.oh, s.ow)
    }

    /// Over `T` tiles: the GEMM, `K C alpha^2 T / 16` slots; the transforms, a fixed number
    /// of slots per tile and channel block; streaming the transformed filters, `K C alpha^2`
    /// floats. At batch 1 a network's Winograd filters exceed the L3 cache, so every layer
    /// reads its own from DRAM once per run. The stream is what makes F(4,3) beat F(6,3)
    /// on 14x14 maps: they multiply equally often there (tile overhang), but F(6,3)'s
    /// filters are 1.8x larger; where the stream costs more, it makes F(2,3) (filters 16/36
    /// of F(4,3)'s) win there.
    fn cost(&self, s: &ConvShape, model: &CostModel) -> f64 {
        let v = self.variant;
        let (cb, kb) = (channel_blocks(s.in_per_group()) as f64, channel_blocks(s.out_channels / s.groups) as f64);
        let groups = s.groups as f64;
        let positions = v.alpha() * v.alpha();
        let weight_floats = groups * kb * cb * 256.0 * positions as f64;
        let tiles = (s.n * s.oh.div_ceil(v.m()) * s.ow.div_ceil(v.m())) as f64;
        let gemm = groups * kb * cb * 16.0 * positions as f64 * tiles / self.gemm_efficiency;
        gemm + tiles * groups * (cb * self.input_slots + kb * self.output_slots) + model.stream * weight_floats
    }

    fn run(&self, ctx: RunContext<'_>) {
        run_in_chunks(ctx, CHUNK_FLOATS)
    }
}

impl PackedWeights for PackedFilters {
    fn bytes(&self) -> usize {
        PackedFilters::bytes(self)
    }
}

/// Target size of one chunk's transformed inputs, in floats (8 MiB).
///
/// Every chunk streams all of the layer's filters once (from DRAM: a network's filters
/// exceed the L3), while each filter panel reads the chunk's panels from L2 or L3. So the
/// larger the chunk, the fewer filter passes, as long as the panels stay in the L3 (32 MiB
/// here). 8 MiB puts every layer of A0, B0 and B1g4 at 224, batch 1 or 8, in one chunk.
/// Against 1 MiB, measured in interleaved A/B runs on two threads: B1g4 batch 1 (37.7 MB
/// of filters per 512-channel layer, read twice before) 47.1 -> 39.2 ms; the Winograd
/// layers of A0 at batch 8 36.8 -> 33.2 ms; B0 at batch 1 no change beyond the noise.
const CHUNK_FLOATS: usize = 1 << 21;

/// Layers whose transformed filters fit in this many bytes run fused: the filters stay in
/// each core's L2 while every column panel passes them.
pub const FUSED_FILTER_BYTES: usize = 3 << 19;

/// Geometry of one Winograd convolution (padding 1): input `h x w`, output `oh x ow`.
#[derive(Debug, Clone, Copy)]
struct WinogradShape {
    n: usize,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

impl WinogradShape {
    fn of(s: &ConvShape) -> WinogradShape {
        WinogradShape {
            n: s.n,
            in_channels: s.in_channels,
            out_channels: s.out_channels,
            groups: s.groups,
            h: s.h,
            w: s.w,
            oh: s.oh,
            ow: s.ow,
        }
    }

    fn tiles(&self, v: Variant) -> (usize, usize) {
        (self.oh.div_ceil(v.m()), self.ow.div_ceil(v.m()))
    }
}

/// True if the Winograd path can run this layer: whole channel blocks per group.
fn supports(out_channels: usize, in_per_group: usize, groups: usize) -> bool {
    groups == 1 || (in_per_group.is_multiple_of(CHANNEL_BLOCK) && (out_channels / groups).is_multiple_of(CHANNEL_BLOCK))
}

/// Floats of the products `M_p` of one weight panel (all positions, `MR` x `NR`).
fn products_len(v: Variant) -> usize {
    v.alpha() * v.alpha() * MR * NR
}

/// The layer's panels and schedule; `chunk_floats` bounds a two-phase chunk.
fn work(v: Variant, s: &WinogradShape, chunk_floats: usize) -> Work {
    let (th, tw) = s.tiles(v);
    let positions = v.alpha() * v.alpha();
    let (cg, kg) = (s.in_channels / s.groups, s.out_channels / s.groups);
    let (c_pad, k_pad) = (channel_blocks(cg) * CHANNEL_BLOCK, channel_blocks(kg) * CHANNEL_BLOCK);
    let filter_bytes = s.groups * positions * c_pad * k_pad * 4;
    let panel_floats = positions * channel_blocks(s.in_channels) * NR * CHANNEL_BLOCK;
    let schedule = if filter_bytes <= FUSED_FILTER_BYTES {
        Schedule::Fused
    } else {
        Schedule::TwoPhase { chunk: (chunk_floats / panel_floats).max(1) }
    };
    Work {
        column_panels: (s.n * th * tw).div_ceil(NR),
        weight_panels: s.groups * k_pad.div_ceil(MR),
        panel_floats,
        schedule,
    }
}

/// Runs the layer with chunks of `chunk_floats` transformed floats (tests use small
/// chunks to exercise the chunk loop on small layers): `output = relu?(conv(input) +
/// bias)`, channel-blocked in and out.
fn run_in_chunks(ctx: RunContext<'_>, chunk_floats: usize) {
    let RunContext { isa, shape, weights, bias, relu, input, output, shared, scratch, .. } = ctx;
    let filters: &PackedFilters = downcast(weights);
    let shape = &WinogradShape::of(shape);
    let v = filters.variant();
    let s = *shape;
    let (in_blocks, out_blocks) = (channel_blocks(s.in_channels), channel_blocks(s.out_channels));
    let (in_plane, plane) = (s.h * s.w, s.oh * s.ow);
    assert_eq!((s.oh, s.ow), ((s.h - 1) / v.stride() + 1, (s.w - 1) / v.stride() + 1), "output size");
    assert!(input.len() >= s.n * in_blocks * in_plane * CHANNEL_BLOCK, "input buffer too small");
    assert!(output.len() >= s.n * out_blocks * plane * CHANNEL_BLOCK, "output buffer too small");
    assert!(bias.len() >= out_blocks * CHANNEL_BLOCK, "bias not padded to whole blocks");
    assert_eq!(filters.groups(), s.groups, "filters packed for another group count");

    let (th, tw) = s.tiles(v);
    let geometry = Geometry {
        m: v.m(),
        step: v.m() * v.stride(),
        th,
        tw,
        h: s.h,
        w: s.w,
        oh: s.oh,
        ow: s.ow,
        plane,
        out_blocks,
        tiles: s.n * th * tw,
    };
    let pos_stride = in_blocks * NR * CHANNEL_BLOCK;
    let group_blocks = filters.c_pad() / CHANNEL_BLOCK;
    let per_group = filters.panels_per_group();
    let out = SharedMut::new(output);
    let pack = |_: usize, tiles: &PanelTiles, panel: &mut [f32]| {
        dispatch!(isa, |s| transform_panel(s, v, tiles, input, in_blocks, &geometry, pos_stride, panel))
    };
    let product = |weight_panel: usize, tiles: &PanelTiles, panel: &[f32], products: &mut [f32]| {
        let (g, b) = (weight_panel / per_group, weight_panel % per_group);
        let filter = filters.panel(g, b);
        let first_block = (g * filters.out_per_group() + filter.k0) / CHANNEL_BLOCK;
        let item = Product {
            v,
            filter,
            kc: filters.c_pad(),
            panel: &panel[g * group_blocks * NR * CHANNEL_BLOCK..],
            pos_stride,
            tiles,
            bias,
            relu,
            first_block,
        };
        dispatch!(isa, |s| match item.filter.width {
            MR => item.run::<_, 2>(s, products, &geometry, out),
            CHANNEL_BLOCK => item.run::<_, 1>(s, products, &geometry, out),
            _ => unreachable!("panel widths are 16 or 32"),
        })
    };
    let locate = |col: usize| PanelTiles::new(&geometry, col);
    work(v, shape, chunk_floats).run(shared, scratch, products_len(v), locate, pack, product);
}

/// What the tile loops need of a layer's shape: output tiles of `m x m` pixels, whose input
/// tiles start `step` pixels apart; an `h x w` input and an `oh x ow` output (`plane`
/// pixels).
struct Geometry {
    m: usize,
    step: usize,
    th: usize,
    tw: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    plane: usize,
    out_blocks: usize,
    tiles: usize,
}

/// Where one tile reads and writes.
#[derive(Debug, Clone, Copy, Default)]
struct TileAt {
    image: usize,
    /// Top-left input pixel (the padding makes it -1 at the map's top/left edge).
    y0: isize,
    x0: isize,
    /// Valid output rows and columns (fewer than m at the bottom/right edge).
    rows: usize,
    cols: usize,
    /// Offset of the tile's first output pixel in output channel block 0.
    out_base: usize,
}

/// The tiles of one column panel, located once (the divisions are not free next to a
/// short GEMM).
struct PanelTiles {
    count: usize,
    tiles: [TileAt; NR],
}

impl PanelTiles {
    fn new(g: &Geometry, panel: usize) -> PanelTiles {
        let first = panel * NR;
        let count = NR.min(g.tiles - first);
        let mut tiles = [TileAt::default(); NR];
        for (j, tile) in tiles.iter_mut().enumerate().take(count) {
            let t = first + j;
            let (image, ty, tx) = (t / (g.th * g.tw), t % (g.th * g.tw) / g.tw, t % g.tw);
            *tile = TileAt {
                image,
                y0: (ty * g.step) as isize - 1,
                x0: (tx * g.step) as isize - 1,
                rows: g.m.min(g.oh - ty * g.m),
                cols: g.m.min(g.ow - tx * g.m),
                out_base: (image * g.out_blocks * g.plane + ty * g.m * g.ow + tx * g.m) * CHANNEL_BLOCK,
            };
        }
        PanelTiles { count, tiles }
    }
}

/// The input transforms of one column panel.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_panel<S: Simd>(
    s: S,
    v: Variant,
    tiles: &PanelTiles,
    input: &[f32],
    in_blocks: usize,
    g: &Geometry,
    pos_stride: usize,
    panel: &mut [f32],
) {
    let plane_len = g.h * g.w * CHANNEL_BLOCK;
    for (j, tile) in tiles.tiles[..tiles.count].iter().enumerate() {
        for cb in 0..in_blocks {
            let src = &input[(tile.image * in_blocks + cb) * plane_len..][..plane_len];
            let dst = &mut panel[(cb * NR + j) * CHANNEL_BLOCK..];
            input_tile(s, v, src, g.w * CHANNEL_BLOCK, g.h, g.w, tile.y0, tile.x0, dst, pos_stride);
        }
    }
}

/// One (weight panel, column panel) product: the GEMMs of every position, then the
/// output transforms.
struct Product<'a> {
    v: Variant,
    filter: FilterPanel<'a>,
    /// The group's padded input channels (the reduction depth).
    kc: usize,
    /// The column panel at this group's channel blocks.
    panel: &'a [f32],
    pos_stride: usize,
    tiles: &'a PanelTiles,
    bias: &'a [f32],
    relu: bool,
    first_block: usize,
}

impl Product<'_> {
    #[inline(always)]
    fn run<S: Gemm, const MRV: usize>(&self, s: S, products: &mut [f32], g: &Geometry, out: SharedMut) {
        let v = self.v;
        let positions = v.alpha() * v.alpha();
        let m_stride = MRV * NR * CHANNEL_BLOCK;
        assert!(products.len() >= positions * m_stride);
        for p in 0..positions {
            let a = self.filter.position(p);
            let b = &self.panel[p * self.pos_stride..];
            assert!(a.len() >= self.kc * CHANNEL_BLOCK * MRV && b.len() >= self.kc * NR);
            let mut store = StoreBlocked { dst: products[p * m_stride..(p + 1) * m_stride].as_mut_ptr() };
            // SAFETY: the asserts above cover kc * 16 * MRV reads of `a`, kc * NR of `b` and
            // the MRV * NR * 16 floats `store` writes; kc (the group's padded input
            // channels) is a multiple of 16; 1 <= count <= NR.
            unsafe { s.panel_product::<MRV, _>(self.kc, a.as_ptr(), b.as_ptr(), self.tiles.count, &mut store) };
        }
        for vi in 0..MRV {
            let kb = self.first_block + vi;
            let bias: &[f32; CHANNEL_BLOCK] =
                self.bias[kb * CHANNEL_BLOCK..(kb + 1) * CHANNEL_BLOCK].try_into().expect("16 lanes");
            for (j, tile) in self.tiles.tiles[..self.tiles.count].iter().enumerate() {
                let offset = tile.out_base + kb * g.plane * CHANNEL_BLOCK;
                let last = offset + ((tile.rows - 1) * g.ow + tile.cols) * CHANNEL_BLOCK;
                let dst = out.raw(offset, last - offset);
                let src = &products[(vi * NR + j) * CHANNEL_BLOCK..];
                // SAFETY: the tile's rows x cols pixels of channel block kb lie in
                // [offset, last), inside the buffer (checked by `raw`), and no other item
                // writes them: tiles partition the map and items partition the channel blocks.
                unsafe {
                    output_tile_raw(
                        s,
                        v,
                        src,
                        m_stride,
                        bias,
                        self.relu,
                        dst,
                        g.ow * CHANNEL_BLOCK,
                        tile.rows,
                        tile.cols,
                    )
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffers::Scratch;
    use crate::reference::{Activation, conv2d};
    use crate::team::Team;
    use repvgg_simd::Dispatch;

    /// On every instruction set this CPU runs, the two-phase schedule with one chunk (the default size), with chunks of one and of
    /// three column panels (four chunks; two, the last one partial), on one and two threads:
    /// bitwise the same output, which matches the f64 reference convolution. The layer
    /// (192 channels, 14x14, batch 3: 48 tiles, four column panels) has 5.3 MB of F(4,3) filters,
    /// beyond the fused schedule; its default chunk (four panels, 1.3 MB) runs one item per
    /// product, the smaller chunks one item per weight panel. Tolerance 1e-5 of the largest output: the F(4,3) error at
    /// 192 input channels is about 1.5e-6 (winograd crate docs).
    #[test]
    fn chunk_size_and_thread_count_do_not_change_the_result() {
        check_chunks_and_threads(&F4, 14, 14);
    }

    /// The same for polyphase P2 at stride 2: 192 channels, 15x13 in, 8x7 out (odd sizes,
    /// partial tiles at both edges), 3.7 MB of filters.
    #[test]
    fn polyphase_chunk_size_and_thread_count_do_not_change_the_result() {
        check_chunks_and_threads(&P2, 15, 13);
    }

    fn check_chunks_and_threads(executor: &Winograd, h: usize, w: usize) {
        let variant = executor.variant;
        let stride = variant.stride();
        let (n, c, k) = (3, 192, 192);
        let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        let conv = ConvShape {
            n,
            kernel: 3,
            in_channels: c,
            out_channels: k,
            groups: 1,
            stride,
            h,
            w,
            oh,
            ow,
            input: InputLayout::Blocked,
        };
        let shape = WinogradShape::of(&conv);
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        let weights: Vec<f32> = (0..k * c * 9).map(|_| next() * 0.05).collect();
        let bias: Vec<f32> = (0..k).map(|_| next() * 0.1).collect();
        let planar: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
        let (plane, out_plane) = (h * w, oh * ow);
        // NCHW -> NCHWc16 (192 channels are whole blocks).
        let mut blocked = vec![0f32; planar.len()];
        for (i, &x) in planar.iter().enumerate() {
            let (b, ch, p) = (i / (c * plane), i / plane % c, i % plane);
            blocked
                [((b * (c / CHANNEL_BLOCK) + ch / CHANNEL_BLOCK) * plane + p) * CHANNEL_BLOCK + ch % CHANNEL_BLOCK] = x;
        }
        let filters = PackedFilters::new(variant, &weights, k, c, 1, MR).unwrap();
        assert!(filters.bytes() > FUSED_FILTER_BYTES, "the test needs the two-phase schedule");
        let panel = work(variant, &shape, CHUNK_FLOATS).panel_floats;
        for isa in Dispatch::all_supported() {
            let mut outputs = Vec::new();
            for threads in [1, 2] {
                let team = Team::new(threads, std::time::Duration::ZERO).unwrap();
                for chunk in [CHUNK_FLOATS, panel, 3 * panel] {
                    let mut shared = vec![f32::NAN; executor.shared_len(&conv)];
                    let scratch = Scratch::new(threads, executor.scratch_len(&conv));
                    let mut output = vec![f32::NAN; n * k * out_plane];
                    let ctx = RunContext {
                        isa,
                        int8: crate::kernels::int8::Int8Kernels::for_dispatch(isa),
                        bf16: None,
                        shape: &conv,
                        weights: &filters,
                        deploy: &weights,
                        bias: &bias,
                        relu: true,
                        input: &blocked,
                        output: &mut output,
                        shared: &mut shared,
                        scratch: &scratch,
                        codes: crate::exec::Codes::NONE,
                    };
                    team.install(|| run_in_chunks(ctx, chunk));
                    outputs.push(output);
                }
            }
            for other in &outputs[1..] {
                assert!(other.iter().zip(&outputs[0]).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
            let activation = Activation { n, c, h, w, data: planar.iter().map(|&x| x as f64).collect() };
            let expected = conv2d(&activation, &weights, Some(&bias), k, 3, stride, 1, 1);
            let scale = expected.data.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, want) in expected.data.iter().enumerate() {
                let (b, ch, p) = (i / (k * out_plane), i / out_plane % k, i % out_plane);
                let got = outputs[0][((b * (k / CHANNEL_BLOCK) + ch / CHANNEL_BLOCK) * out_plane + p) * CHANNEL_BLOCK
                    + ch % CHANNEL_BLOCK] as f64;
                assert!(
                    (got - want.max(0.0)).abs() <= 1e-5 * scale,
                    "{:?} {variant:?} image {b} channel {ch} pixel {p}: {got} vs {want}",
                    isa.isa()
                );
            }
        }
    }
}
