//! Memory-bound passes over channel-blocked activations, per channel block: spatial
//! sums for pooling, gating, and the classifier's dot products.
//!
//! Each result depends only on its lane's values, summed in a fixed order, so the FMA
//! instruction sets agree bitwise whatever their vector width; the cross-lane sum of a
//! dot product is a fixed pairwise tree over the 16 lanes.

use repvgg_simd::Simd;

use repvgg_simd::layout::CHANNEL_BLOCK;

/// `out[l] = scale * sum_p plane[p * 16 + l]` over the pixels of one channel block.
#[inline(always)]
pub fn mean_block<S: Simd>(s: S, plane: &[f32], scale: f32, out: &mut [f32]) {
    assert!(plane.len().is_multiple_of(CHANNEL_BLOCK) && out.len() >= CHANNEL_BLOCK);
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        let sum = plane.chunks_exact(CHANNEL_BLOCK).fold(s.zero(), |acc, px| acc + s.read(&px[lane..]));
        s.write(&mut out[lane..], sum * s.splat(scale));
    }
}

/// `plane = relu(plane * gate)` over the pixels of one channel block (`gate`: 16 floats).
#[inline(always)]
pub fn gate_relu_block<S: Simd>(s: S, plane: &mut [f32], gate: &[f32]) {
    assert!(plane.len().is_multiple_of(CHANNEL_BLOCK) && gate.len() >= CHANNEL_BLOCK);
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        let g = s.read(&gate[lane..]);
        for px in plane.chunks_exact_mut(CHANNEL_BLOCK) {
            let v = s.relu(s.read(&px[lane..]) * g);
            s.write(&mut px[lane..], v);
        }
    }
}

/// `sum_i w[i] x[i]`: 16 lane-wise partial sums over the whole channel blocks, a fixed
/// pairwise tree over the lanes, then the tail in order.
#[inline(always)]
pub fn dot<S: Simd>(s: S, w: &[f32], x: &[f32]) -> f32 {
    dots::<S, 1>(s, [w], x)[0]
}

/// [`dot`] of `R` weight rows with the same `x`, each summed in exactly [`dot`]'s order (so
/// the same bits): the rows' lane-wise sums are independent chains, which hides the
/// multiply-add latency that bounds a single one.
#[inline(always)]
pub fn dots<S: Simd, const R: usize>(s: S, w: [&[f32]; R], x: &[f32]) -> [f32; R] {
    let len = w.iter().map(|w| w.len()).min().unwrap_or(0).min(x.len());
    let whole = len / CHANNEL_BLOCK * CHANNEL_BLOCK;
    let mut partial = [[0f32; CHANNEL_BLOCK]; R];
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        let mut acc = [s.zero(); R];
        for i in (0..whole).step_by(CHANNEL_BLOCK) {
            let xv = s.read(&x[i + lane..]);
            for r in 0..R {
                acc[r] = s.mul_add(s.read(&w[r][i + lane..]), xv, acc[r]);
            }
        }
        for r in 0..R {
            s.write(&mut partial[r][lane..], acc[r]);
        }
    }
    std::array::from_fn(|r| {
        let head = lane_tree(&mut partial[r]);
        w[r][whole..len].iter().zip(&x[whole..len]).fold(head, |acc, (a, b)| s.mul_add_scalar(*a, *b, acc))
    })
}

/// The fixed pairwise tree over a dot product's 16 lane sums: lane `l` takes lane
/// `l + width` for widths 8, 4, 2, 1 (the tree is part of the result's bits).
#[inline(always)]
pub fn lane_tree(lanes: &mut [f32; CHANNEL_BLOCK]) -> f32 {
    let mut width = CHANNEL_BLOCK;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
    }
    lanes[0]
}

/// `sum_i w[i] x[i] + bias` in order, one scalar multiply-add at a time (the small
/// squeeze-and-excitation convolutions, whose summation order is part of the result).
#[inline(always)]
pub fn dot_in_order<S: Simd>(s: S, w: &[f32], x: &[f32], bias: f32) -> f32 {
    w.iter().zip(x).fold(bias, |acc, (a, b)| s.mul_add_scalar(*a, *b, acc))
}
