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

/// A dot product's weights: f32, or bf16 (`u16` bits, widened exactly as they are read:
/// a bf16 is an f32's high half), so that rounded weights are summed exactly as f32 ones.
pub trait Weight: Copy {
    fn read<S: Simd>(s: S, src: &[Self]) -> S::F32;
    fn value(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn read<S: Simd>(s: S, src: &[f32]) -> S::F32 {
        s.read(src)
    }
    #[inline(always)]
    fn value(self) -> f32 {
        self
    }
}

impl Weight for u16 {
    #[inline(always)]
    fn read<S: Simd>(s: S, src: &[u16]) -> S::F32 {
        s.read_bf16(src)
    }
    #[inline(always)]
    fn value(self) -> f32 {
        crate::kernels::bf16::from_bf16(self)
    }
}

/// `sum_i w[r][i] x[b][i]` for `R` weight rows and `B` inputs: per (input, row), 16
/// lane-wise partial sums over the whole channel blocks, a fixed pairwise tree over the
/// lanes, then the tail in order. Each result's bits are the same whatever `R`, `B` and
/// the vector width, and bf16 rows give the bits of f32 rows of their widened values.
/// The `R x B` lane-wise sums are independent chains, which hides the multiply-add
/// latency that bounds a single one; each weight vector read (and widened) serves all `B`
/// inputs, so a batch streams the rows once per `B` images rather than once per image.
#[inline(always)]
pub fn dots<S: Simd, W: Weight, const R: usize, const B: usize>(s: S, w: [&[W]; R], x: [&[f32]; B]) -> [[f32; R]; B] {
    let len = w.iter().map(|w| w.len()).chain(x.iter().map(|x| x.len())).min().unwrap_or(0);
    let whole = len / CHANNEL_BLOCK * CHANNEL_BLOCK;
    let mut partial = [[[0f32; CHANNEL_BLOCK]; R]; B];
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        let mut acc = [[s.zero(); R]; B];
        for i in (0..whole).step_by(CHANNEL_BLOCK) {
            // A loop, not `array::from_fn`: its closure would not inherit the caller's
            // target features, and each widening would become a call.
            let mut wv = [s.zero(); R];
            for r in 0..R {
                wv[r] = W::read(s, &w[r][i + lane..]);
            }
            for b in 0..B {
                let xv = s.read(&x[b][i + lane..]);
                for r in 0..R {
                    acc[b][r] = s.mul_add(wv[r], xv, acc[b][r]);
                }
            }
        }
        for b in 0..B {
            for r in 0..R {
                s.write(&mut partial[b][r][lane..], acc[b][r]);
            }
        }
    }
    std::array::from_fn(|b| {
        std::array::from_fn(|r| {
            let head = lane_tree(&mut partial[b][r]);
            let tail = w[r][whole..len].iter().zip(&x[b][whole..len]);
            tail.fold(head, |acc, (a, v)| s.mul_add_scalar(a.value(), *v, acc))
        })
    })
}

/// The fixed pairwise tree over a dot product's 16 lane sums: lane `l` takes lane
/// `l + width` for widths 8, 4, 2, 1 (the tree is part of the result's bits).
#[inline(always)]
fn lane_tree(lanes: &mut [f32; CHANNEL_BLOCK]) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use repvgg_simd::{Dispatch, dispatch};

    /// bf16 rows give the bits of f32 rows holding their widened values, on every
    /// instruction set, for lengths with and without a tail; each set's rows one at a time
    /// give the bits of four at once, and inputs in a batch the bits of each alone.
    #[test]
    fn dots_keep_their_bits_across_rows_inputs_and_bf16() {
        let mut state = 7u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        for len in [0, 1, 15, 16, 17, 1280, 1283] {
            let x: Vec<f32> = (0..len).map(|_| next()).collect();
            let y: Vec<f32> = (0..len).map(|_| next()).collect();
            let rows: Vec<Vec<u16>> =
                (0..4).map(|_| (0..len).map(|_| (next().to_bits() >> 16) as u16).collect()).collect();
            let wide: Vec<Vec<f32>> = rows.iter().map(|r| r.iter().map(|v| v.value()).collect()).collect();
            for isa in Dispatch::all_supported() {
                let (got, want, single, batched) = dispatch!(isa, |s| (
                    dots(s, [&rows[0][..], &rows[1], &rows[2], &rows[3]], [&x[..]])[0],
                    dots(s, [&wide[0][..], &wide[1], &wide[2], &wide[3]], [&x[..]])[0],
                    std::array::from_fn::<f32, 4, _>(|r| dots(s, [&rows[r][..]], [&x[..]])[0][0]),
                    dots(s, [&rows[0][..], &rows[1], &rows[2], &rows[3]], [&y[..], &x, &y]),
                ));
                assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits), "{:?} length {len}", isa.isa());
                assert_eq!(single.map(f32::to_bits), got.map(f32::to_bits), "{:?} length {len}", isa.isa());
                let alone = dispatch!(isa, |s| dots(s, [&rows[0][..], &rows[1], &rows[2], &rows[3]], [&y[..]])[0]);
                assert_eq!(batched[1].map(f32::to_bits), got.map(f32::to_bits), "{:?} length {len}", isa.isa());
                for b in [0, 2] {
                    assert_eq!(batched[b].map(f32::to_bits), alone.map(f32::to_bits), "{:?} length {len}", isa.isa());
                }
            }
        }
    }
}
