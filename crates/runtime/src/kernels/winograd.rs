//! Winograd F(m,3) convolution of a stride-1 layer (Lavin & Gray 2016).
//!
//! A layer's tiles are grouped in blocks of `NR` (the microkernel's column count; a block
//! may span tile rows and images). For each tile block:
//!
//! 1. **Input transform**: `V = B^T d B` for each tile and channel block, written as the
//!    GEMM's `B` panels `[p][cb][j][16]`.
//! 2. **GEMM + output transform**, per output-channel block: for each of the `alpha^2`
//!    positions `p`, `M_p = U_p V_p` with the microkernel (the filters were transformed
//!    and packed at load); once all positions of the block are in the worker's scratch,
//!    and still hot there, `Y = A^T M A` + bias (+ ReLU) writes the output tiles.
//!
//! Two schedules run these steps:
//!
//! - **fused** (filters up to [`FUSED_FILTER_BYTES`]): one parallel pass over tile blocks,
//!   each worker transforming its block into its own scratch and multiplying it by every
//!   filter block, which stay in its L2. No barrier between the steps.
//! - **two-phase** (bigger filters, the deep 14x14 layers): tile blocks in chunks whose
//!   transformed inputs take up to 8 MiB; phase 1 transforms a chunk in parallel, phase 2
//!   runs the (filter block, tile block) items in parallel, ordered filter-block major,
//!   so each worker reads its share of the filters once per chunk, not once per tile
//!   block.
//!
//! The schedule and the work split depend only on the layer's shape, never on the thread
//! count, and each output element is produced by the same sequence of operations
//! whichever worker runs it. Results are therefore identical for any number of threads.

use repvgg_winograd::{PackedFilters, Variant, input_tile, output_tile_raw};

use super::gemm::{Acc, NR, gemm_block};
use super::parallel::{for_each, for_each_chunk_mut};
use super::{LANES, Scratch, SharedMut, blocks};

/// Target size of one chunk's transformed inputs, in floats (8 MiB).
///
/// Every chunk streams all of the layer's filters once (from DRAM: a network's filters
/// exceed the L3), while each filter block reads the chunk's panels from L2 or L3. So the
/// larger the chunk, the fewer filter passes, as long as the panels stay in the L3 (32 MiB
/// here). 8 MiB puts every layer of A0, B0 and B1g4 at 224, batch 1 or 8, in one chunk.
/// Against 1 MiB, measured in interleaved A/B runs on two threads: B1g4 batch 1 (37.7 MB
/// of filters per 512-channel layer, read twice before) 47.1 -> 39.2 ms; the Winograd
/// layers of A0 at batch 8 36.8 -> 33.2 ms; B0 at batch 1 no change beyond the noise.
const CHUNK_FLOATS: usize = 1 << 21;

/// Geometry of one Winograd convolution (stride 1, padding 1).
#[derive(Debug, Clone, Copy)]
pub struct WinogradShape {
    pub n: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub h: usize,
    pub w: usize,
}

impl WinogradShape {
    fn tiles(&self, v: Variant) -> (usize, usize) {
        (self.h.div_ceil(v.m()), self.w.div_ceil(v.m()))
    }
}

/// True if the Winograd path can run this layer: whole channel blocks per group.
pub fn supports(out_channels: usize, in_per_group: usize, groups: usize) -> bool {
    groups == 1 || (in_per_group.is_multiple_of(LANES) && (out_channels / groups).is_multiple_of(LANES))
}

/// Floats of one tile block's transformed input.
fn block_floats(v: Variant, shape: &WinogradShape) -> usize {
    v.alpha() * v.alpha() * blocks(shape.in_channels) * NR * LANES
}

/// Tile blocks per chunk.
fn chunk_blocks(v: Variant, shape: &WinogradShape, chunk_floats: usize) -> usize {
    (chunk_floats / block_floats(v, shape)).max(1)
}

/// Floats the shared transformed-input buffer needs.
pub fn transformed_len(v: Variant, shape: &WinogradShape) -> usize {
    let (th, tw) = shape.tiles(v);
    let tile_blocks = (shape.n * th * tw).div_ceil(NR);
    chunk_blocks(v, shape, CHUNK_FLOATS).min(tile_blocks) * block_floats(v, shape)
}

/// Floats of the products `M_p` of one block of 32 output channels.
fn products_len(v: Variant) -> usize {
    v.alpha() * v.alpha() * 2 * NR * LANES
}

/// Scratch floats per worker: the products, plus one tile block's transformed input for
/// the fused schedule.
pub fn scratch_len(v: Variant, shape: &WinogradShape) -> usize {
    products_len(v) + block_floats(v, shape)
}

/// Layers whose transformed filters fit in this many bytes run fused: one parallel pass
/// over tile blocks, each transforming its tiles into the worker's scratch and
/// multiplying them by every filter block, with no barrier between the phases. The
/// filters stay in each core's L2. Bigger filters use the two-phase schedule, which reads
/// each filter block once per chunk instead of once per tile block.
pub const FUSED_FILTER_BYTES: usize = 3 << 19;

/// Runs the layer: `output = relu?(conv(input) + bias)`, channel-blocked in and out.
#[allow(clippy::too_many_arguments)]
pub fn run(
    filters: &PackedFilters,
    bias: &[f32],
    relu: bool,
    shape: &WinogradShape,
    input: &[f32],
    output: &mut [f32],
    transformed: &mut [f32],
    scratch: &Scratch,
) {
    run_in_chunks(filters, bias, relu, shape, input, output, transformed, scratch, CHUNK_FLOATS)
}

/// [`run`] with chunks of `chunk_floats` transformed floats (tests use small chunks to
/// exercise the chunk loop on small layers).
#[allow(clippy::too_many_arguments)]
fn run_in_chunks(
    filters: &PackedFilters,
    bias: &[f32],
    relu: bool,
    shape: &WinogradShape,
    input: &[f32],
    output: &mut [f32],
    transformed: &mut [f32],
    scratch: &Scratch,
    chunk_floats: usize,
) {
    let v = filters.variant();
    let s = *shape;
    let (in_blocks, out_blocks) = (blocks(s.in_channels), blocks(s.out_channels));
    let plane = s.h * s.w;
    assert!(input.len() >= s.n * in_blocks * plane * LANES, "input buffer too small");
    assert!(output.len() >= s.n * out_blocks * plane * LANES, "output buffer too small");
    assert!(bias.len() >= out_blocks * LANES, "bias not padded to whole blocks");
    assert!(scratch.len() >= scratch_len(v, shape), "scratch too small");

    let m = v.m();
    let (th, tw) = s.tiles(v);
    let tiles = s.n * th * tw;
    let tile_blocks = tiles.div_ceil(NR);
    let per_chunk = chunk_blocks(v, shape, chunk_floats);
    let block_len = block_floats(v, shape);
    let pos_stride = in_blocks * NR * LANES;
    let groups = filters.groups();
    let group_blocks = filters.c_pad() / LANES;
    let gb_count = groups * filters.blocks_per_group();
    let out = SharedMut::new(output);
    let geometry = Geometry { m, th, tw, h: s.h, w: s.w, plane, out_blocks: blocks(s.out_channels), tiles };
    let transform = |tb: usize, panels: &mut [f32]| {
        let block = TileBlock::new(&geometry, tb);
        for (j, tile) in block.tiles[..block.count].iter().enumerate() {
            for cb in 0..in_blocks {
                let src = &input[(tile.image * in_blocks + cb) * plane * LANES..][..plane * LANES];
                let dst = &mut panels[(cb * NR + j) * LANES..];
                input_tile(v, src, s.w * LANES, s.h, s.w, tile.y0, tile.x0, dst, pos_stride);
            }
        }
    };
    let multiply = |gb: usize, tb: usize, panels: &[f32], products: &mut [f32]| {
        let (g, b) = (gb / filters.blocks_per_group(), gb % filters.blocks_per_group());
        let block = filters.block(g, b);
        let out_block = (g * filters.out_per_group() + block.k0) / LANES;
        let ctx = Block { v, panels, group_offset: g * group_blocks * NR * LANES, pos_stride, kc: filters.c_pad() };
        match block.width {
            32 => ctx.multiply_and_store::<2>(&block, products, bias, relu, &geometry, tb, out_block, out),
            16 => ctx.multiply_and_store::<1>(&block, products, bias, relu, &geometry, tb, out_block, out),
            _ => unreachable!("block widths are 16 or 32"),
        }
    };
    if filters.bytes() <= FUSED_FILTER_BYTES {
        for_each(tile_blocks, |tb| {
            scratch.with(|buf| {
                let (panels, products) = buf.split_at_mut(block_len);
                transform(tb, panels);
                for gb in 0..gb_count {
                    multiply(gb, tb, panels, products);
                }
            })
        });
        return;
    }
    assert!(transformed.len() >= transformed_len(v, shape), "transformed-input buffer too small");
    for chunk_start in (0..tile_blocks).step_by(per_chunk) {
        let chunk_len = per_chunk.min(tile_blocks - chunk_start);
        // Phase 1: input transforms into this chunk's B panels.
        for_each_chunk_mut(&mut transformed[..chunk_len * block_len], block_len, |local, panels| {
            transform(chunk_start + local, panels)
        });
        let transformed = &*transformed;
        // Phase 2: GEMM over all positions, then output transforms, per (block, tile block).
        for_each(gb_count * chunk_len, |item| {
            let (gb, local) = (item / chunk_len, item % chunk_len);
            let panels = &transformed[local * block_len..(local + 1) * block_len];
            scratch.with(|products| multiply(gb, chunk_start + local, panels, products));
        });
    }
}

/// What the tile loops need of a layer's shape.
struct Geometry {
    m: usize,
    th: usize,
    tw: usize,
    h: usize,
    w: usize,
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

/// The tiles of one block, located once (the divisions are not free next to a short GEMM).
struct TileBlock {
    count: usize,
    tiles: [TileAt; NR],
}

impl TileBlock {
    fn new(g: &Geometry, tb: usize) -> TileBlock {
        let first = tb * NR;
        let count = NR.min(g.tiles - first);
        let mut tiles = [TileAt::default(); NR];
        for (j, tile) in tiles.iter_mut().enumerate().take(count) {
            let t = first + j;
            let (image, ty, tx) = (t / (g.th * g.tw), t % (g.th * g.tw) / g.tw, t % g.tw);
            *tile = TileAt {
                image,
                y0: (ty * g.m) as isize - 1,
                x0: (tx * g.m) as isize - 1,
                rows: g.m.min(g.h - ty * g.m),
                cols: g.m.min(g.w - tx * g.m),
                out_base: (image * g.out_blocks * g.plane + ty * g.m * g.w + tx * g.m) * LANES,
            };
        }
        TileBlock { count, tiles }
    }
}

/// One (tile block, output-channel block) item of phase 2.
struct Block<'a> {
    v: Variant,
    panels: &'a [f32],
    /// Offset of this group's channel blocks within each position's panel.
    group_offset: usize,
    pos_stride: usize,
    kc: usize,
}

impl Block<'_> {
    #[allow(clippy::too_many_arguments)]
    fn multiply_and_store<const MRV: usize>(
        &self,
        filters: &repvgg_winograd::FilterBlock<'_>,
        products: &mut [f32],
        bias: &[f32],
        relu: bool,
        geometry: &Geometry,
        tb: usize,
        out_block: usize,
        out: SharedMut,
    ) {
        let tiles = TileBlock::new(geometry, tb);
        let v = self.v;
        let positions = v.alpha() * v.alpha();
        let m_stride = MRV * NR * LANES;
        assert!(products.len() >= positions * m_stride);
        let cols = tiles.count;
        for p in 0..positions {
            let a = filters.position(p);
            let b = &self.panels[p * self.pos_stride + self.group_offset..];
            assert!(a.len() >= self.kc * 16 * MRV && b.len() >= self.kc * NR);
            // SAFETY: the assert above covers kc * 16 * MRV reads of `a` and kc * NR of `b`;
            // kc (the group's padded input channels) is a multiple of 16; 1 <= cols <= NR.
            let acc: Acc<MRV> = unsafe { gemm_block::<MRV>(self.kc, a.as_ptr(), b.as_ptr(), cols) };
            let dst = &mut products[p * m_stride..(p + 1) * m_stride];
            for (vi, row) in acc.iter().enumerate() {
                for (j, x) in row.iter().enumerate().take(cols) {
                    dst[(vi * NR + j) * LANES..][..LANES].copy_from_slice(x.as_array());
                }
            }
        }
        for vi in 0..MRV {
            let kb = out_block + vi;
            let bias16: &[f32; LANES] = bias[kb * LANES..(kb + 1) * LANES].try_into().expect("16 lanes");
            for (j, tile) in tiles.tiles[..tiles.count].iter().enumerate() {
                let offset = tile.out_base + kb * geometry.plane * LANES;
                let last = offset + ((tile.rows - 1) * geometry.w + tile.cols) * LANES;
                let dst = out.raw(offset, last - offset);
                let src = &products[(vi * NR + j) * LANES..];
                // SAFETY: the tile's rows x cols pixels of channel block kb lie in
                // [offset, last), inside the buffer (checked by `raw`), and no other item
                // writes them: tiles partition the map and items partition the channel blocks.
                unsafe {
                    output_tile_raw(v, src, m_stride, bias16, relu, dst, geometry.w * LANES, tile.rows, tile.cols);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::parallel::Team;
    use crate::reference::{Activation, conv2d};

    /// The two-phase schedule with one chunk (the default size), with chunks of one and of
    /// three tile blocks (four chunks; two, the last one partial), on one and two threads:
    /// bitwise the same output, which matches the f64 reference convolution. The layer
    /// (192 channels, 14x14, batch 3: 48 tiles, four blocks) has 5.3 MB of F(4,3) filters,
    /// beyond the fused schedule. Tolerance 1e-5 of the largest output: the F(4,3) error at
    /// 192 input channels is about 1.5e-6 (winograd crate docs).
    #[test]
    fn chunk_size_and_thread_count_do_not_change_the_result() {
        let (n, c, k, side) = (3, 192, 192, 14);
        let shape = WinogradShape { n, in_channels: c, out_channels: k, h: side, w: side };
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        let weights: Vec<f32> = (0..k * c * 9).map(|_| next() * 0.05).collect();
        let bias: Vec<f32> = (0..k).map(|_| next() * 0.1).collect();
        let planar: Vec<f32> = (0..n * c * side * side).map(|_| next()).collect();
        let plane = side * side;
        // NCHW -> NCHWc16 (192 channels are whole blocks).
        let mut blocked = vec![0f32; planar.len()];
        for (i, &x) in planar.iter().enumerate() {
            let (b, ch, p) = (i / (c * plane), i / plane % c, i % plane);
            blocked[((b * (c / LANES) + ch / LANES) * plane + p) * LANES + ch % LANES] = x;
        }
        let filters = PackedFilters::new(Variant::F4, &weights, k, c, 1, super::super::direct::BLOCK).unwrap();
        assert!(filters.bytes() > FUSED_FILTER_BYTES, "the test needs the two-phase schedule");
        let block = block_floats(Variant::F4, &shape);
        let mut outputs = Vec::new();
        for threads in [1, 2] {
            let team = Team::new(threads, std::time::Duration::ZERO).unwrap();
            for chunk in [CHUNK_FLOATS, block, 3 * block] {
                let mut transformed = vec![f32::NAN; transformed_len(Variant::F4, &shape)];
                let scratch = Scratch::new(threads, scratch_len(Variant::F4, &shape));
                let mut output = vec![f32::NAN; blocked.len()];
                team.install(|| {
                    run_in_chunks(
                        &filters,
                        &bias,
                        true,
                        &shape,
                        &blocked,
                        &mut output,
                        &mut transformed,
                        &scratch,
                        chunk,
                    )
                });
                outputs.push(output);
            }
        }
        for other in &outputs[1..] {
            assert!(other.iter().zip(&outputs[0]).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        let activation = Activation { n, c, h: side, w: side, data: planar.iter().map(|&x| x as f64).collect() };
        let expected = conv2d(&activation, &weights, Some(&bias), k, 3, 1, 1, 1);
        let scale = expected.data.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, want) in expected.data.iter().enumerate() {
            let (b, ch, p) = (i / (k * plane), i / plane % k, i % plane);
            let got = outputs[0][((b * (k / LANES) + ch / LANES) * plane + p) * LANES + ch % LANES] as f64;
            assert!((got - want.max(0.0)).abs() <= 1e-5 * scale, "image {b} channel {ch} pixel {p}: {got} vs {want}");
        }
    }
}
