//! Memory-bound passes over channel-blocked activations: global average pooling,
//! squeeze-and-excitation, the classifier, and conversion to planar `NCHW`. The
//! per-channel-block arithmetic is `kernels::pointwise`'s.

use repvgg_graph::SeParams;
use repvgg_simd::{Dispatch, Simd, dispatch};

use crate::buffers::SharedMut;
use crate::kernels::amx::{Acc, AmxTiles, ROW_WORDS, TileOp};
use crate::kernels::bf16::to_bf16;
use crate::kernels::pointwise::{Weight, dot_in_order, dots, gate_relu_block, mean_block};
use crate::team::{for_each, for_each_chunk_mut, for_each_share};
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// Per-(image, channel) spatial means, `[n][channel_blocks(c) * 16]` (padding lanes included).
pub fn global_average_pool(isa: Dispatch, act: &[f32], n: usize, c: usize, plane: usize, pooled: &mut [f32]) {
    let cb = channel_blocks(c);
    let scale = 1.0 / plane as f32;
    // Items of up to 16 channel blocks: one block is too little work to be worth claiming.
    for_each_chunk_mut(&mut pooled[..n * cb * CHANNEL_BLOCK], 16 * CHANNEL_BLOCK, |item, out| {
        dispatch!(isa, |s| for (k, out) in out.chunks_exact_mut(CHANNEL_BLOCK).enumerate() {
            let i = item * 16 + k;
            mean_block(s, &act[i * plane * CHANNEL_BLOCK..(i + 1) * plane * CHANNEL_BLOCK], scale, out);
        })
    });
}

/// Scratch floats [`squeeze_excite_relu`] needs.
pub fn se_scratch_len(n: usize, c: usize, r: usize) -> usize {
    n * channel_blocks(c) * CHANNEL_BLOCK + r
}

/// Squeeze-and-excitation followed by ReLU, in place:
/// `x = relu(x * sigmoid(up(relu(down(gap(x))))))` (Hu et al. 2018), per image.
pub fn squeeze_excite_relu(
    isa: Dispatch,
    act: &mut [f32],
    n: usize,
    c: usize,
    plane: usize,
    se: &SeParams,
    scratch: &mut [f32],
) {
    let cb = channel_blocks(c);
    let r = se.down_bias.len();
    let (pooled, hidden) = scratch[..se_scratch_len(n, c, r)].split_at_mut(n * cb * CHANNEL_BLOCK);
    global_average_pool(isa, act, n, c, plane, pooled);
    // The two 1x1 convolutions on a C-vector are tiny: do them serially per image, with a
    // fixed summation order so the result does not depend on threads. The gates
    // overwrite the pooled means in place.
    dispatch!(isa, |s| for b in 0..n {
        let x = &mut pooled[b * cb * CHANNEL_BLOCK..b * cb * CHANNEL_BLOCK + c];
        for (j, h) in hidden.iter_mut().enumerate() {
            *h = repvgg_simd::relu(dot_in_order(s, &se.down_weight[j * c..(j + 1) * c], x, se.down_bias[j]));
        }
        for (i, gate) in x.iter_mut().enumerate() {
            let z = dot_in_order(s, &se.up_weight[i * r..(i + 1) * r], hidden, se.up_bias[i]);
            *gate = 1.0 / (1.0 + (-z).exp());
        }
    });
    let gates = &*pooled;
    for_each_chunk_mut(&mut act[..n * cb * plane * CHANNEL_BLOCK], plane * CHANNEL_BLOCK, |i, block| {
        dispatch!(isa, |s| gate_relu_block(s, block, &gates[i * CHANNEL_BLOCK..]))
    });
}

/// Classes per work item of [`linear`].
const CLASS_CHUNK: usize = 64;

/// The classifier on pooled features: `logits[b][k] = bias[k] + sum_c weight[k][c] pooled[b][c]`,
/// with f32 weights, or bf16 ones (`u16` bits) summed in f32 exactly as their widened
/// values would be: half the bytes to stream, for the sessions that round (BF16, INT8).
///
/// Parallel over chunks of classes. Four classes' rows at a time meet a block of images
/// (four with 32 vector registers, two with 16): at batch 1 the weights (5 MB for A0 in
/// f32) are the only real traffic, and both cores stream them; in a batch each row
/// widened and read from L1 serves the whole block.
pub fn linear<W: Weight + Sync>(
    isa: Dispatch,
    pooled: &[f32],
    n: usize,
    c: usize,
    weight: &[W],
    bias: &[f32],
    logits: &mut [f32],
) {
    let classes = bias.len();
    let cb = channel_blocks(c);
    assert!(weight.len() >= classes * c);
    assert!(logits.len() >= n * classes && pooled.len() >= n * cb * CHANNEL_BLOCK);
    let row = |k: usize| &weight[k * c..(k + 1) * c];
    let image = |b: usize| &pooled[b * cb * CHANNEL_BLOCK..b * cb * CHANNEL_BLOCK + c];
    let out = SharedMut::new(logits);
    for_each(classes.div_ceil(CLASS_CHUNK), |chunk| {
        let (k0, k1) = (chunk * CLASS_CHUNK, ((chunk + 1) * CLASS_CHUNK).min(classes));
        // The logits of classes `k..k + sums.len()` of image `b`.
        let put = |b: usize, k: usize, sums: &[f32]| {
            // SAFETY: chunks partition the classes, so each (image, class) has one writer.
            let logits = unsafe { out.region(b * classes + k, sums.len()) };
            for (j, (logit, sum)) in logits.iter_mut().zip(sums).enumerate() {
                *logit = sum + bias[k + j];
            }
        };
        dispatch!(isa, |s| class_chunk(s, k0..k1, n, &row, &image, &put))
    });
}

/// The sums of classes `classes` for images `0..n`: four rows against blocks of images,
/// the last classes one row at a time.
#[inline(always)]
fn class_chunk<'a, S: Simd, W: Weight + 'a>(
    s: S,
    classes: std::ops::Range<usize>,
    n: usize,
    row: &impl Fn(usize) -> &'a [W],
    image: &impl Fn(usize) -> &'a [f32],
    put: &impl Fn(usize, usize, &[f32]),
) {
    let wide = S::LANES >= 16;
    for k in classes.clone().step_by(4) {
        if k + 4 > classes.end {
            for b in 0..n {
                for j in k..classes.end {
                    put(b, j, &dots(s, [row(j)], [image(b)])[0]);
                }
            }
            continue;
        }
        let rows = [row(k), row(k + 1), row(k + 2), row(k + 3)];
        let mut b = 0;
        while b < n {
            let step = if wide && n - b >= 4 { 4 } else { 2.min(n - b) };
            match step {
                4 => dots(s, rows, [image(b), image(b + 1), image(b + 2), image(b + 3)])
                    .iter()
                    .enumerate()
                    .for_each(|(i, sums)| put(b + i, k, sums)),
                2 => {
                    dots(s, rows, [image(b), image(b + 1)]).iter().enumerate().for_each(|(i, sums)| put(b + i, k, sums))
                }
                _ => put(b, k, &dots(s, rows, [image(b)])[0]),
            }
            b += step;
        }
    }
}

/// Images per `B` tile of [`linear_tiles`], and feature values per tile step (64 bytes of
/// bf16).
const TILE_IMAGES: usize = 16;
const STEP_VALUES: usize = 32;

/// Most tile steps [`linear_tiles`] takes: 4096 features.
const MAX_TILE_STEPS: usize = 128;

/// Whether [`linear_tiles`] takes `c` features: whole tile steps, at most
/// [`MAX_TILE_STEPS`] of them (every built-in architecture's 1280 to 2560).
pub fn tiles_take(c: usize) -> bool {
    c.is_multiple_of(STEP_VALUES) && c / STEP_VALUES <= MAX_TILE_STEPS
}

/// Floats of the buffer [`linear_tiles`] packs `n` images' features into.
pub fn linear_tiles_len(n: usize, c: usize) -> usize {
    n.next_multiple_of(TILE_IMAGES) * c.next_multiple_of(STEP_VALUES) / 2
}

/// The classifier of BF16 sessions on AMX tiles: `logits[b][k] = bias[k] + sum_c
/// weight[k][c] x[b][c]` with the pooled features `x` rounded to bf16 like the weights,
/// products summed in f32 by `tdpbf16ps`. Each block of 16 classes is one tile product:
/// the classes' rows of the row-major bf16 weights read in place as `A` (16 rows of 32
/// values at the row stride), the features of up to 16 images, packed once into `pairs`
/// as bf16 pairs, as `B`. At batch 8 the vector path's dot products bound the head (four
/// classes against four images per step); here the weights are read once and the tile
/// unit does the rest. Blocks are split over the threads and each output is one block's,
/// so the bits do not depend on the thread count. `c` must satisfy [`tiles_take`] and
/// the process must run AMX-BF16.
#[allow(clippy::too_many_arguments)] // the features, their packing buffer, the weights, the output
pub fn linear_tiles(
    pooled: &[f32],
    pairs: &mut [f32],
    n: usize,
    c: usize,
    weight: &[u16],
    bias: &[f32],
    logits: &mut [f32],
) {
    assert!(tiles_take(c), "{c} features on tiles");
    let (classes, cb) = (bias.len(), channel_blocks(c));
    assert!(weight.len() >= classes * c && logits.len() >= n * classes && pooled.len() >= n * cb * CHANNEL_BLOCK);
    let groups = n.div_ceil(TILE_IMAGES);
    let pairs: &mut [u16] = &mut bytemuck::cast_slice_mut(pairs)[..groups * TILE_IMAGES * c];
    // Group g's panel: [c / 2][16 images][2 values], images past n zero.
    for (g, panel) in pairs.chunks_exact_mut(TILE_IMAGES * c).enumerate() {
        for (p, row) in panel.chunks_exact_mut(2 * TILE_IMAGES).enumerate() {
            for (i, pair) in row.chunks_exact_mut(2).enumerate() {
                let b = g * TILE_IMAGES + i;
                for (e, v) in pair.iter_mut().enumerate() {
                    *v = if b < n { to_bf16(pooled[b * cb * CHANNEL_BLOCK + 2 * p + e]) } else { 0 };
                }
            }
        }
    }
    let pairs: &[u16] = pairs;
    let steps = c / STEP_VALUES;
    let mut offsets = [0usize; MAX_TILE_STEPS];
    for (i, offset) in offsets.iter_mut().enumerate() {
        *offset = 2 * STEP_VALUES * i;
    }
    let offsets = &offsets[..steps];
    let weights: &[u8] = bytemuck::cast_slice(&weight[..classes * c]);
    let out = SharedMut::new(logits);
    for_each_share(classes.div_ceil(TILE_IMAGES), |share| {
        // One configuration per share, again for the last block's fewer rows.
        let mut tiles: Option<AmxTiles> = None;
        let mut acc: Acc<f32> = [0.0; ROW_WORDS * 16];
        for block in share {
            let k0 = block * TILE_IMAGES;
            let rows = TILE_IMAGES.min(classes - k0);
            if tiles.as_ref().is_none_or(|t| t.rows() != rows) {
                drop(tiles.take());
                tiles = Some(AmxTiles::with_rows(TileOp::Bf16, 2 * STEP_VALUES, rows));
            }
            let amx = tiles.as_ref().expect("configured above");
            for (g, panel) in pairs.chunks_exact(TILE_IMAGES * c).enumerate() {
                amx.product(weights, 2 * k0 * c, offsets, 2 * c, bytemuck::cast_slice(panel), TILE_IMAGES, &mut acc);
                for i in 0..TILE_IMAGES.min(n - g * TILE_IMAGES) {
                    let b = g * TILE_IMAGES + i;
                    // SAFETY: blocks partition the classes, so each (image, class) has one
                    // writer.
                    let logits = unsafe { out.region(b * classes + k0, rows) };
                    for (j, logit) in logits.iter_mut().enumerate() {
                        *logit = acc[j * ROW_WORDS + i] + bias[k0 + j];
                    }
                }
            }
        }
    });
}

/// Copies a channel-blocked activation to planar `NCHW` (dropping padding lanes).
pub fn to_planar(act: &[f32], n: usize, c: usize, plane: usize, out: &mut [f32]) {
    let cb = channel_blocks(c);
    let dst = SharedMut::new(out);
    for_each(n * c, |nc| {
        let (b, ch) = (nc / c, nc % c);
        let src = &act[(b * cb + ch / CHANNEL_BLOCK) * plane * CHANNEL_BLOCK..][..plane * CHANNEL_BLOCK];
        // SAFETY: each (image, channel) plane is written by exactly one task.
        let row = unsafe { dst.region(nc * plane, plane) };
        for (p, v) in row.iter_mut().enumerate() {
            *v = src[p * CHANNEL_BLOCK + ch % CHANNEL_BLOCK];
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::amx::available;
    use crate::kernels::bf16::from_bf16;
    use crate::team::Team;

    /// The tile classifier against the f64 sum of the bf16-rounded operands, within f32
    /// summation's bound `(c + 1) 2^-24 sum |w x|` plus the bias's rounding, on a class
    /// count with a partial last block, image groups of 16 and a partial one, and the bits
    /// the same on one thread as on two.
    #[test]
    fn tile_classifier_matches_the_bf16_sum_on_any_thread_count() {
        if !available(TileOp::Bf16) {
            eprintln!("no AMX-BF16 here: the tile classifier is not run");
            return;
        }
        let mut state = 11u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        for (n, c, classes) in [(2, 64, 37), (19, 1280, 1000), (16, 96, 16)] {
            assert!(tiles_take(c));
            let cb = channel_blocks(c);
            let mut pooled = vec![f32::NAN; n * cb * CHANNEL_BLOCK];
            for b in 0..n {
                for i in 0..c {
                    pooled[b * cb * CHANNEL_BLOCK + i] = next() * 3.0;
                }
            }
            let weight: Vec<u16> = (0..classes * c).map(|_| to_bf16(next() * 0.1)).collect();
            let bias: Vec<f32> = (0..classes).map(|_| next()).collect();
            let mut runs = Vec::new();
            for threads in [1, 2] {
                let team = Team::new(threads, std::time::Duration::ZERO).unwrap();
                let mut pairs = vec![f32::NAN; linear_tiles_len(n, c)];
                let mut logits = vec![f32::NAN; n * classes];
                team.install(|| linear_tiles(&pooled, &mut pairs, n, c, &weight, &bias, &mut logits));
                runs.push(logits);
            }
            assert!(
                runs[0].iter().zip(&runs[1]).all(|(a, b)| a.to_bits() == b.to_bits()),
                "n {n} c {c}: 1 vs 2 threads"
            );
            for b in 0..n {
                for k in 0..classes {
                    let terms = (0..c).map(|i| {
                        let x = from_bf16(to_bf16(pooled[b * cb * CHANNEL_BLOCK + i])) as f64;
                        (from_bf16(weight[k * c + i]) as f64 * x, (from_bf16(weight[k * c + i]) as f64 * x).abs())
                    });
                    let (sum, size) = terms.fold((0.0, 0.0), |(s, m), (t, a)| (s + t, m + a));
                    let want = sum + bias[k] as f64;
                    let bound = (c + 1) as f64 * 2f64.powi(-24) * size + want.abs() * 2f64.powi(-24);
                    let got = runs[0][b * classes + k] as f64;
                    assert!(
                        (got - want).abs() <= bound,
                        "n {n} c {c} image {b} class {k}: {got} vs {want} (bound {bound:e})"
                    );
                }
            }
        }
    }
}
