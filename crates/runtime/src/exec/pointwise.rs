//! Memory-bound passes over channel-blocked activations: global average pooling,
//! squeeze-and-excitation, the classifier, and conversion to planar `NCHW`. The
//! per-channel-block arithmetic is `kernels::pointwise`'s.

use repvgg_graph::SeParams;
use repvgg_simd::{Dispatch, Simd, dispatch};

use crate::buffers::SharedMut;
use crate::kernels::pointwise::{Weight, dot_in_order, dots, gate_relu_block, mean_block};
use crate::team::{for_each, for_each_chunk_mut};
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
