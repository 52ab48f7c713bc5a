//! Direct 3x3 convolution as an implicit-im2col GEMM, for stride-2 layers, the stem and
//! small maps where Winograd's tile overhang costs more than it saves.
//!
//! Output pixels are taken `NR` at a time (consecutive in `(n, y, x)` order, so a block
//! may span rows and images). For each pixel block, the im2col panel is packed in the
//! microkernel's `B` layout, `[kd / 16][NR][16]`. With a channel-blocked input the
//! reduction index is `kd = ((cb * 3 + ky) * 3 + kx) * 16 + lane`, so every copy moves 16
//! channels of one pixel: a single vector. The panel holds `9 C` values per pixel and is
//! built once per pixel block. It is reused by every output-channel block: packing costs
//! `9 C` copies against `9 C K` multiply-adds. Pixels outside the map (the padding) are
//! written as zeros.
//!
//! The network input (3 channels, planar NCHW) is first repacked into a zero-bordered
//! NHWC copy and uses `kd = (ky * 3 + kx) * 3 + c`, padded to 32: each window row is 9
//! contiguous floats, there are no bounds checks, and the stem does not multiply 13 zero
//! channels per block.

use super::gemm::{Acc, NR, V, gemm_block};
use super::parallel::{for_each, for_each_chunk_mut};
use super::{LANES, Scratch, SharedMut, blocks};

/// How a direct layer's input is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLayout {
    /// `NCHWc16`, the layout between layers.
    Blocked,
    /// Plain `NCHW` (the network input). It is first repacked into a zero-bordered `NHWC`
    /// copy, so that each row of a 3x3 window is `3 C` contiguous floats.
    Planar,
}

impl InputLayout {
    /// The layout layer `index` of a network reads: the network input is planar, every
    /// later layer reads the channel-blocked output of the one before.
    pub fn for_layer(index: usize) -> InputLayout {
        if index == 0 { InputLayout::Planar } else { InputLayout::Blocked }
    }
}

/// Largest reduction depth of the planar (network input) path: 7 channels x 9 taps,
/// padded to whole 16-float slices.
const PLANAR_MAX_KD: usize = 64;

/// Output channels per weight block (two vectors; a last narrower block has one).
pub const BLOCK: usize = 32;

/// Weights packed for the direct path: per group and output-channel block, `[kd][width]`.
#[derive(Debug, Clone)]
pub struct DirectWeights {
    layout: InputLayout,
    groups: usize,
    out_per_group: usize,
    /// Reduction depth per group (multiple of 16).
    kd: usize,
    blocks_per_group: usize,
    k_pad: usize,
    data: Vec<f32>,
}

impl DirectWeights {
    /// Packs `[K][C/groups][3][3]` weights.
    ///
    /// With `groups > 1` the fast path needs whole channel blocks per group (`C/groups` and
    /// `K/groups` multiples of 16); callers check [`DirectWeights::supports`] first.
    pub fn new(layout: InputLayout, weights: &[f32], out_channels: usize, in_per_group: usize, groups: usize) -> Self {
        assert!(Self::supports(layout, out_channels, in_per_group, groups), "unsupported direct layout");
        assert_eq!(weights.len(), out_channels * in_per_group * 9);
        let out_per_group = out_channels / groups;
        let kd = reduction_depth(layout, in_per_group);
        let k_pad = blocks(out_per_group) * LANES;
        let blocks_per_group = k_pad.div_ceil(BLOCK);
        let mut data = vec![0f32; groups * kd * k_pad];
        for g in 0..groups {
            for b in 0..blocks_per_group {
                let k0 = b * BLOCK;
                let width = BLOCK.min(k_pad - k0);
                let base = g * kd * k_pad + k0 * kd;
                for lane in 0..width.min(out_per_group.saturating_sub(k0)) {
                    let k = g * out_per_group + k0 + lane;
                    for c in 0..in_per_group {
                        for tap in 0..9 {
                            let row = match layout {
                                InputLayout::Blocked => ((c / LANES) * 9 + tap) * LANES + c % LANES,
                                InputLayout::Planar => tap * in_per_group + c,
                            };
                            data[base + row * width + lane] = weights[(k * in_per_group + c) * 9 + tap];
                        }
                    }
                }
            }
        }
        DirectWeights { layout, groups, out_per_group, kd, blocks_per_group, k_pad, data }
    }

    /// True if the packed direct path can run this layer.
    pub fn supports(layout: InputLayout, out_channels: usize, in_per_group: usize, groups: usize) -> bool {
        let whole_blocks =
            groups == 1 || (in_per_group.is_multiple_of(LANES) && (out_channels / groups).is_multiple_of(LANES));
        match layout {
            InputLayout::Blocked => whole_blocks,
            InputLayout::Planar => groups == 1 && reduction_depth(layout, in_per_group) <= PLANAR_MAX_KD,
        }
    }

    fn block(&self, g: usize, b: usize) -> (usize, usize, &[f32]) {
        let k0 = b * BLOCK;
        let width = BLOCK.min(self.k_pad - k0);
        let start = g * self.kd * self.k_pad + k0 * self.kd;
        (k0, width, &self.data[start..start + self.kd * width])
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Geometry of one direct convolution.
#[derive(Debug, Clone, Copy)]
pub struct DirectShape {
    pub n: usize,
    pub in_channels: usize,
    pub h: usize,
    pub w: usize,
    pub out_channels: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

impl DirectShape {
    fn pixels(&self) -> usize {
        self.n * self.oh * self.ow
    }
}

/// Floats of one pixel block's im2col panel.
fn panel_floats(layout: InputLayout, kd: usize, shape: &DirectShape) -> usize {
    match layout {
        InputLayout::Blocked => blocks(shape.in_channels) * 9 * LANES * NR,
        InputLayout::Planar => kd * NR,
    }
}

/// Target size of one chunk of panels, in floats (1 MiB).
const CHUNK_FLOATS: usize = 1 << 18;

fn chunk_blocks(layout: InputLayout, kd: usize, shape: &DirectShape) -> usize {
    (CHUNK_FLOATS / panel_floats(layout, kd, shape)).max(1)
}

/// Floats of the shared panel buffer [`run`] needs.
pub fn panels_len(weights: &DirectWeights, shape: &DirectShape) -> usize {
    panels_len_for(weights.layout, shape)
}

/// Floats of per-worker scratch [`run`] needs (one panel, for the fused schedule).
pub fn scratch_len_for(layout: InputLayout, shape: &DirectShape) -> usize {
    panel_floats(layout, reduction_depth(layout, shape.in_channels), shape)
}

/// Layers whose packed weights fit in this many bytes run fused: one parallel pass over
/// pixel blocks, each packing its panel and multiplying it by every weight block (which
/// stay in the core's L2). Bigger weights use the two-phase schedule so that each
/// weight block is read once per chunk instead of once per pixel block.
pub const FUSED_WEIGHT_BYTES: usize = 1 << 20;

/// [`panels_len`] before the weights are packed.
pub fn panels_len_for(layout: InputLayout, shape: &DirectShape) -> usize {
    if layout == InputLayout::Planar {
        return hwc_buffer_len(shape);
    }
    let kd = reduction_depth(layout, shape.in_channels);
    let pixel_blocks = shape.pixels().div_ceil(NR);
    chunk_blocks(layout, kd, shape).min(pixel_blocks) * panel_floats(layout, kd, shape)
}

/// Floats of the zero-bordered NHWC copy of a planar input: one extra row and column on
/// each side covers every window (padding 1; the last window of a stride-2 layer ends at
/// most one past the map).
fn padded_hwc_len(shape: &DirectShape) -> usize {
    shape.n * (shape.h + 2) * (shape.w + 2) * shape.in_channels
}

/// Floats reserved for the NHWC copy: [`padded_hwc_len`] plus one vector of slack, so that
/// the RGB packing may load whole vectors at the last window and discard the extra lanes.
fn hwc_buffer_len(shape: &DirectShape) -> usize {
    padded_hwc_len(shape) + LANES
}

/// Repacks planar `NCHW` into the zero-bordered NHWC copy, in parallel over rows.
fn to_padded_hwc(input: &[f32], s: &DirectShape, hwc: &mut [f32]) {
    let (c, pw) = (s.in_channels, s.w + 2);
    let row_len = pw * c;
    for_each_chunk_mut(&mut hwc[..padded_hwc_len(s)], row_len, |r, row| {
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

/// Reduction depth of one group with `in_per_group` input channels.
fn reduction_depth(layout: InputLayout, in_per_group: usize) -> usize {
    match layout {
        InputLayout::Blocked => blocks(in_per_group) * 9 * LANES,
        InputLayout::Planar => (in_per_group * 9).div_ceil(LANES) * LANES,
    }
}

/// Runs the convolution: `output = relu?(conv(input) + bias)`, channel-blocked out.
///
/// Small weights run fused (see [`FUSED_WEIGHT_BYTES`]). Otherwise, like the Winograd
/// path, pixel blocks are processed in chunks whose panels fit in
/// about 1 MB: first every panel of the chunk is packed (in parallel), then the
/// (output-channel block, pixel block) products run in parallel, ordered block-major so
/// each worker reuses a weight block across the whole chunk while it is in cache. A
/// layer with few pixels and many output channels (7x7 maps, 1280 channels) thus reads
/// its weights once instead of once per pixel block.
///
/// `bias` is padded to the output's channel blocks. The work split depends only on the
/// shape, so results are identical for any number of threads.
pub fn run(
    weights: &DirectWeights,
    bias: &[f32],
    relu: bool,
    shape: &DirectShape,
    input: &[f32],
    output: &mut [f32],
    panels: &mut [f32],
    scratch: &Scratch,
) {
    let s = *shape;
    let out_blocks = blocks(s.out_channels);
    assert!(output.len() >= s.n * out_blocks * s.oh * s.ow * LANES, "output buffer too small");
    assert!(bias.len() >= out_blocks * LANES, "bias not padded to whole blocks");
    let in_len = match weights.layout {
        InputLayout::Blocked => s.n * blocks(s.in_channels) * s.h * s.w * LANES,
        InputLayout::Planar => s.n * s.in_channels * s.h * s.w,
    };
    assert!(input.len() >= in_len, "input buffer too small");

    let pixel_blocks = s.pixels().div_ceil(NR);
    let gb_count = weights.groups * weights.blocks_per_group;
    let (input, panels) = if weights.layout == InputLayout::Planar {
        assert!(panels.len() >= hwc_buffer_len(shape), "panel buffer too small for the NHWC copy");
        let (hwc, rest) = panels.split_at_mut(hwc_buffer_len(shape));
        to_padded_hwc(input, shape, hwc);
        (&*hwc, rest)
    } else {
        (input, panels)
    };
    let out = SharedMut::new(output);
    let product = |gb: usize, pixels: &PixelBlock, panel: &[f32]| {
        let (g, b) = (gb / weights.blocks_per_group, gb % weights.blocks_per_group);
        let (k0, width, a) = weights.block(g, b);
        let panel = &panel[g * weights.kd * NR..];
        let out_block = (g * weights.out_per_group + k0) / LANES;
        match width {
            32 => block_product::<2>(weights.kd, a, panel, bias, relu, &s, pixels, out_block, out),
            16 => block_product::<1>(weights.kd, a, panel, bias, relu, &s, pixels, out_block, out),
            _ => unreachable!("block widths are 16 or 32"),
        }
    };
    if weights.bytes() <= FUSED_WEIGHT_BYTES || weights.layout == InputLayout::Planar {
        assert!(scratch.len() >= scratch_len_for(weights.layout, shape), "scratch too small");
        for_each(pixel_blocks, |pb| {
            scratch.with(|panel| {
                pack_panel(weights.layout, &s, input, pb, panel);
                let pixels = PixelBlock::new(&s, pb);
                for gb in 0..gb_count {
                    product(gb, &pixels, panel);
                }
            })
        });
        return;
    }
    assert!(panels.len() >= panels_len(weights, shape), "panel buffer too small");
    let per_chunk = chunk_blocks(weights.layout, weights.kd, shape);
    let panel_len = panel_floats(weights.layout, weights.kd, shape);
    for chunk_start in (0..pixel_blocks).step_by(per_chunk) {
        let chunk_len = per_chunk.min(pixel_blocks - chunk_start);
        for_each_chunk_mut(&mut panels[..chunk_len * panel_len], panel_len, |local, panel| {
            pack_panel(weights.layout, &s, input, chunk_start + local, panel);
        });
        let panels = &*panels;
        for_each(gb_count * chunk_len, |item| {
            let (gb, local) = (item / chunk_len, item % chunk_len);
            let pixels = PixelBlock::new(&s, chunk_start + local);
            product(gb, &pixels, &panels[local * panel_len..(local + 1) * panel_len]);
        });
    }
}

/// The output pixels of one block: how many exist and where each one's first channel
/// block starts, computed once per block (the divisions would otherwise dominate small
/// reductions such as the stem's 27).
struct PixelBlock {
    count: usize,
    /// Offset of pixel j in output channel block 0; block kb adds `kb * plane * 16`.
    base: [usize; NR],
}

impl PixelBlock {
    fn new(s: &DirectShape, pb: usize) -> PixelBlock {
        let plane = s.oh * s.ow;
        let out_blocks = blocks(s.out_channels);
        let count = NR.min(s.pixels() - pb * NR);
        let base = std::array::from_fn(|j| {
            let p = pb * NR + j.min(count - 1);
            ((p / plane) * out_blocks * plane + p % plane) * LANES
        });
        PixelBlock { count, base }
    }
}

/// Multiplies one weight block by the panel and stores bias (+ ReLU) results.
#[allow(clippy::too_many_arguments)]
fn block_product<const MRV: usize>(
    kd: usize,
    a: &[f32],
    b: &[f32],
    bias: &[f32],
    relu: bool,
    s: &DirectShape,
    pixels: &PixelBlock,
    out_block: usize,
    out: SharedMut,
) {
    assert!(a.len() >= kd * 16 * MRV && b.len() >= kd * NR);
    // SAFETY: the assert above covers the kd * 16 * MRV and kd * NR reads, kd % 16 == 0,
    // and 1 <= pixels.count <= NR.
    let acc: Acc<MRV> = unsafe { gemm_block::<MRV>(kd, a.as_ptr(), b.as_ptr(), pixels.count) };
    let plane = s.oh * s.ow;
    for v in 0..MRV {
        let kb = out_block + v;
        let bias_v = V::from(<[f32; LANES]>::try_from(&bias[kb * LANES..(kb + 1) * LANES]).expect("16 lanes"));
        let block_offset = kb * plane * LANES;
        for j in 0..pixels.count {
            let mut y = acc[v][j] + bias_v;
            if relu {
                y = y.max(V::ZERO);
            }
            // SAFETY: each (pixel, channel block) is written by exactly one work item: pixel
            // blocks partition the pixels and items partition the channel blocks.
            unsafe { out.region(pixels.base[j] + block_offset, LANES) }.copy_from_slice(y.as_array());
        }
    }
}

/// The stem's panel for RGB input (`kd = 27`, padded to 32), built from whole-vector loads
/// of the NHWC copy: slice 0 is window row 0 (9 floats) then row 1's first 7, slice 1 is
/// row 1's last 2, row 2 (9) and 5 zeros. Each slice is two or three unaligned loads
/// merged by lane. Assembling the window in a stack array instead made every pixel pay
/// for small stores read back as whole vectors (store-forwarding stalls): packing took
/// 22% of the stem's profile samples, now 12%, and the A0 stem runs 9% faster.
fn pack_rgb_panel(s: &DirectShape, hwc: &[f32], row_len: usize, pb: usize, pixels: usize, panel: &mut [f32]) {
    let lanes = |lo: usize, hi: usize| {
        V::from(std::array::from_fn::<f32, LANES, _>(|i| if (lo..hi).contains(&i) { f32::from_bits(!0) } else { 0.0 }))
    };
    let (first9, first2, from2_to11) = (lanes(0, 9), lanes(0, 2), lanes(2, 11));
    // The slack of `hwc_buffer_len` keeps the last window's row-2 load (14 floats past
    // the row's start at most) inside the buffer.
    let load = |at: usize| V::from(<[f32; LANES]>::try_from(&hwc[at..at + LANES]).expect("16 floats"));
    // The first pixel's coordinates by division, the others by stepping.
    let plane = s.oh * s.ow;
    let first = pb * NR;
    let (mut n, mut oy, mut ox) = (first / plane, first % plane / s.ow, first % s.ow);
    for j in 0..NR {
        let (slice0, slice1) = if j < pixels {
            // Window origin (oy * stride - 1, ox * stride - 1) is padded (oy * stride, ox * stride).
            let row0 = (n * (s.h + 2) + oy * s.stride) * row_len + ox * s.stride * 3;
            let (row1, row2) = (row0 + row_len, row0 + 2 * row_len);
            ox += 1;
            if ox == s.ow {
                (ox, oy) = (0, oy + 1);
                if oy == s.oh {
                    (oy, n) = (0, n + 1);
                }
            }
            (
                first9.select(load(row0), load(row1 - 9)),
                first2.select(load(row1 + 7), from2_to11.select(load(row2 - 2), V::ZERO)),
            )
        } else {
            (V::ZERO, V::ZERO)
        };
        panel[j * LANES..(j + 1) * LANES].copy_from_slice(slice0.as_array());
        panel[(NR + j) * LANES..(NR + j + 1) * LANES].copy_from_slice(slice1.as_array());
    }
}

/// Packs the im2col panel of pixel block `pb`; returns how many of its NR pixels exist.
///
/// Pixel-major: each pixel's window origin is computed once; a window inside the map is
/// copied without per-tap bounds checks (three whole 16-channel pixels per row and
/// channel block). Border windows and missing pixels are zero-filled.
fn pack_panel(layout: InputLayout, s: &DirectShape, input: &[f32], pb: usize, panel: &mut [f32]) -> usize {
    let plane = s.oh * s.ow;
    let pixels = NR.min(s.pixels() - pb * NR);
    let in_plane = s.h * s.w;
    let window = |j: usize| {
        let p = pb * NR + j;
        let (n, rest) = (p / plane, p % plane);
        (n, (rest / s.ow * s.stride) as isize - 1, (rest % s.ow * s.stride) as isize - 1)
    };
    let inside = |y: isize, x: isize| y >= 0 && x >= 0 && (y as usize) < s.h && (x as usize) < s.w;
    match layout {
        InputLayout::Blocked => {
            let cb_count = blocks(s.in_channels);
            assert!(panel.len() >= cb_count * 9 * NR * LANES && input.len() >= s.n * cb_count * in_plane * LANES);
            for j in 0..NR {
                let column = |row: usize| (row * NR + j) * LANES;
                if j >= pixels {
                    for row in 0..cb_count * 9 {
                        panel[column(row)..column(row) + LANES].fill(0.0);
                    }
                    continue;
                }
                let (n, y0, x0) = window(j);
                let interior = y0 >= 0 && x0 >= 0 && y0 as usize + 3 <= s.h && x0 as usize + 3 <= s.w;
                for cb in 0..cb_count {
                    let image = (n * cb_count + cb) * in_plane;
                    for tap in 0..9 {
                        let (y, x) = (y0 + (tap / 3) as isize, x0 + (tap % 3) as isize);
                        let dst = column(cb * 9 + tap);
                        if interior || inside(y, x) {
                            let src = (image + y as usize * s.w + x as usize) * LANES;
                            // SAFETY: (y, x) is inside the map, so src + 16 <= input.len() (asserted
                            // above), and dst + 16 <= panel.len() for row < cb_count * 9 and j < NR.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    input.as_ptr().add(src),
                                    panel.as_mut_ptr().add(dst),
                                    LANES,
                                )
                            };
                        } else {
                            panel[dst..dst + LANES].fill(0.0);
                        }
                    }
                }
            }
        }
        InputLayout::Planar => {
            // `input` is the zero-bordered NHWC copy: window (y0, x0) starts at padded
            // (y0 + 1, x0 + 1), and its rows are 3 C contiguous floats. A pixel's whole
            // reduction (at most PLANAR_MAX_KD values) is assembled in registers and stored
            // as whole 16-float slices.
            let c = s.in_channels;
            let (kd_pad, row_len) = (reduction_depth(layout, c), (s.w + 2) * c);
            assert!(kd_pad <= PLANAR_MAX_KD && panel.len() >= kd_pad * NR);
            if c == 3 {
                pack_rgb_panel(s, input, row_len, pb, pixels, panel);
                return pixels;
            }
            for j in 0..NR {
                let mut column = [0f32; PLANAR_MAX_KD];
                if j < pixels {
                    let (n, y0, x0) = window(j);
                    let base = (n * (s.h + 2) + (y0 + 1) as usize) * row_len + (x0 + 1) as usize * c;
                    let mut row = |ky: usize, len: usize| {
                        column[ky * len..(ky + 1) * len].copy_from_slice(&input[base + ky * row_len..][..len]);
                    };
                    for ky in 0..3 {
                        // RGB (the only planar input a network has) gets fixed-size copies.
                        if c == 3 { row(ky, 9) } else { row(ky, 3 * c) }
                    }
                }
                for slice in 0..kd_pad / LANES {
                    let dst = (slice * NR + j) * LANES;
                    panel[dst..dst + LANES].copy_from_slice(&column[slice * LANES..(slice + 1) * LANES]);
                }
            }
        }
    }
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::parallel::Team;
    use crate::reference::{Activation, conv2d};

    /// The network-input (planar) path against the f64 reference convolution: RGB (the
    /// vector-load packing) and other channel counts, strides 1 and 2, odd sizes, pixel
    /// blocks that span rows and images, padded output channels. The panel buffer starts
    /// as NaN, so a lane of the NHWC slack or of a neighbouring window that leaked into
    /// a panel would show. Tolerance: fp32 sums of at most 63 products of values in
    /// [-1, 1], against f64; 1e-5 of the largest output leaves a wide margin.
    #[test]
    fn planar_input_matches_the_reference_convolution() {
        let team = Team::new(2, std::time::Duration::ZERO).unwrap();
        for (c, k, stride, n, h, w) in [
            (3, 48, 2, 2, 61, 47),
            (3, 20, 1, 2, 13, 11),
            (3, 64, 2, 1, 5, 9),
            (5, 16, 1, 1, 9, 8),
            (7, 40, 2, 2, 10, 13),
        ] {
            let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
            let shape = DirectShape { n, in_channels: c, h, w, out_channels: k, stride, oh, ow };
            let mut seed = (c * 1000 + k * 10 + stride) as u32;
            let mut next = move || {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            };
            let weights: Vec<f32> = (0..k * c * 9).map(|_| next()).collect();
            let bias_raw: Vec<f32> = (0..k).map(|_| next()).collect();
            let input: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
            let mut bias = bias_raw.clone();
            bias.resize(blocks(k) * LANES, 0.0);

            let packed = DirectWeights::new(InputLayout::Planar, &weights, k, c, 1);
            let mut panels = vec![f32::NAN; panels_len(&packed, &shape)];
            let scratch = Scratch::new(2, scratch_len_for(InputLayout::Planar, &shape));
            let mut output = vec![0f32; n * blocks(k) * oh * ow * LANES];
            team.install(|| run(&packed, &bias, true, &shape, &input, &mut output, &mut panels, &scratch));

            let activation = Activation { n, c, h, w, data: input.iter().map(|&v| v as f64).collect() };
            let expected = conv2d(&activation, &weights, Some(&bias_raw), k, 3, stride, 1, 1);
            let scale = expected.data.iter().fold(0f64, |m, v| m.max(v.abs()));
            for b in 0..n {
                for ch in 0..k {
                    for p in 0..oh * ow {
                        let want = expected.data[(b * k + ch) * oh * ow + p].max(0.0);
                        let got = output[((b * blocks(k) + ch / LANES) * oh * ow + p) * LANES + ch % LANES] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * scale,
                            "c{c} k{k} s{stride} {n}x{h}x{w}: image {b} channel {ch} pixel {p}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
