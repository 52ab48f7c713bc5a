//! Depthwise 3x3 convolution (one filter per channel, `groups = C`, padding 1) on the
//! channel-blocked layout, for `repvgg density`'s depthwise row (MobileNet's layer kind,
//! which RepVGG's paper sets against its dense 3x3s). The layout makes it simple: a
//! vector holds consecutive channels of one pixel, so every output vector is nine
//! multiply-adds of input vectors by per-channel weight vectors, with no reduction
//! across lanes. Its arithmetic intensity is the reason it runs far from the FMA peak:
//! nine multiply-adds per loaded input value at best, against `9 K` for a dense 3x3.

use repvgg_simd::{Dispatch, dispatch};

pub use crate::kernels::depthwise::DepthwiseShape;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

use crate::kernels::depthwise;
use crate::team::for_each_chunk_mut;

/// Weights `[C][1][3][3]` repacked as `[C / 16][9][16]` (tap-major per channel block).
#[derive(Debug, Clone)]
pub struct DepthwiseWeights {
    channels: usize,
    data: Vec<f32>,
}

impl DepthwiseWeights {
    pub fn new(weights: &[f32], channels: usize) -> DepthwiseWeights {
        assert_eq!(weights.len(), channels * 9, "depthwise weights are [C][1][3][3]");
        let mut data = vec![0f32; channel_blocks(channels) * 9 * CHANNEL_BLOCK];
        for c in 0..channels {
            for tap in 0..9 {
                data[((c / CHANNEL_BLOCK) * 9 + tap) * CHANNEL_BLOCK + c % CHANNEL_BLOCK] = weights[c * 9 + tap];
            }
        }
        DepthwiseWeights { channels, data }
    }
}

/// `output = relu?(depthwise(input) + bias)`, channel-blocked in and out, in parallel over
/// (image, channel block) planes; `bias` is padded to whole channel blocks.
pub fn run(
    isa: Dispatch,
    weights: &DepthwiseWeights,
    bias: &[f32],
    relu: bool,
    shape: &DepthwiseShape,
    input: &[f32],
    output: &mut [f32],
) {
    let s = *shape;
    assert_eq!(weights.channels, s.channels, "weights for another channel count");
    let blocks = channel_blocks(s.channels);
    assert!(bias.len() >= blocks * CHANNEL_BLOCK, "bias not padded to whole blocks");
    assert!(input.len() >= s.n * blocks * s.h * s.w * CHANNEL_BLOCK, "input buffer too small");
    let out_plane = s.oh * s.ow * CHANNEL_BLOCK;
    for_each_chunk_mut(&mut output[..s.n * blocks * out_plane], out_plane, |item, plane| {
        let cb = item % blocks;
        let src = &input[item * s.h * s.w * CHANNEL_BLOCK..][..s.h * s.w * CHANNEL_BLOCK];
        let w = &weights.data[cb * 9 * CHANNEL_BLOCK..][..9 * CHANNEL_BLOCK];
        let b = &bias[cb * CHANNEL_BLOCK..][..CHANNEL_BLOCK];
        dispatch!(isa, |simd| depthwise::plane(simd, &s, w, b, relu, src, plane))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{Activation, conv2d};
    use crate::team::Team;

    /// Against the f64 reference convolution with `groups = C`, both strides, channel
    /// counts that fill and do not fill the last block. Tolerance: sums of nine products
    /// of values in [-1, 1], 1e-6 of the largest output.
    #[test]
    fn depthwise_matches_the_reference_convolution() {
        let team = Team::new(2, std::time::Duration::ZERO).unwrap();
        for isa in Dispatch::all_supported() {
            for (c, stride, n, h, w) in [(32, 1, 2, 9, 7), (20, 2, 1, 11, 12), (48, 1, 1, 1, 5), (16, 2, 2, 8, 8)] {
                let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                let mut seed = (c * 100 + stride) as u32;
                let mut next = move || {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                };
                let weights: Vec<f32> = (0..c * 9).map(|_| next()).collect();
                let bias_raw: Vec<f32> = (0..c).map(|_| next()).collect();
                let planar: Vec<f32> = (0..n * c * h * w).map(|_| next()).collect();
                let cb = channel_blocks(c);
                let mut bias = bias_raw.clone();
                bias.resize(cb * CHANNEL_BLOCK, 0.0);
                let mut input = vec![0f32; n * cb * h * w * CHANNEL_BLOCK];
                for (i, v) in planar.iter().enumerate() {
                    let (b, ch, p) = (i / (c * h * w), i / (h * w) % c, i % (h * w));
                    input[((b * cb + ch / CHANNEL_BLOCK) * h * w + p) * CHANNEL_BLOCK + ch % CHANNEL_BLOCK] = *v;
                }
                let shape = DepthwiseShape { n, channels: c, h, w, stride, oh, ow };
                let packed = DepthwiseWeights::new(&weights, c);
                let mut output = vec![f32::NAN; n * cb * oh * ow * CHANNEL_BLOCK];
                team.install(|| run(isa, &packed, &bias, true, &shape, &input, &mut output));

                let activation = Activation { n, c, h, w, data: planar.iter().map(|&v| v as f64).collect() };
                let expected = conv2d(&activation, &weights, Some(&bias_raw), c, 3, stride, 1, c);
                let scale = expected.data.iter().fold(0f64, |m, v| m.max(v.abs()));
                for b in 0..n {
                    for ch in 0..c {
                        for p in 0..oh * ow {
                            let want = expected.data[(b * c + ch) * oh * ow + p].max(0.0);
                            let got = output
                                [((b * cb + ch / CHANNEL_BLOCK) * oh * ow + p) * CHANNEL_BLOCK + ch % CHANNEL_BLOCK]
                                as f64;
                            assert!(
                                (got - want).abs() <= 1e-6 * scale,
                                "{:?} c{c} s{stride}: image {b} channel {ch} pixel {p}: {got} vs {want}",
                                isa.isa()
                            );
                        }
                    }
                }
            }
        }
    }
}
