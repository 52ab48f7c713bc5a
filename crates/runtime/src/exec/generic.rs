//! A plain direct convolution on the channel-blocked layout for the layers the packed
//! paths do not take: groups whose channel counts are not multiples of 16 (custom
//! architectures only; every published variant uses the fast paths). Slow but simple:
//! one scalar multiply-add chain per output value (fused on the FMA instruction sets).

use repvgg_simd::{Dispatch, Isa, Simd, dispatch};

use super::{ConvExecutor, ConvShape, CostModel, InputLayout, LayerWeights, PackedWeights, RunContext};
use crate::plan::{Algo, Precision};
use crate::team::for_each_chunk_mut;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// The generic executor (FP32): the fallback for the layers no other executor takes.
pub(crate) struct Generic;

/// The generic path reads the deploy kernel as is; this records its size.
#[derive(Debug)]
struct DeployKernel {
    bytes: usize,
}

impl PackedWeights for DeployKernel {
    fn bytes(&self) -> usize {
        self.bytes
    }
}

impl ConvExecutor for Generic {
    fn algo(&self) -> Algo {
        Algo::Generic
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// 3x3 on a channel-blocked input, any stride and grouping.
    fn supports(&self, s: &ConvShape, _: Isa) -> bool {
        s.kernel == 3 && s.input == InputLayout::Blocked
    }

    /// Never chosen for speed: only where nothing else runs the layer.
    fn automatic(&self) -> bool {
        false
    }

    fn reads_deploy_kernel(&self) -> bool {
        true
    }

    fn packed_len(&self, _: &ConvShape) -> usize {
        0
    }

    fn pack(&self, _: &ConvShape, weights: LayerWeights<'_>) -> Box<dyn PackedWeights> {
        Box::new(DeployKernel { bytes: std::mem::size_of_val(weights.deploy) })
    }

    fn shared_len(&self, _: &ConvShape) -> usize {
        0
    }

    fn scratch_len(&self, _: &ConvShape) -> usize {
        0
    }

    fn cost(&self, _: &ConvShape, _: &CostModel) -> f64 {
        f64::INFINITY
    }

    fn run(&self, ctx: RunContext<'_>) {
        let s = ctx.shape;
        GenericConv {
            n: s.n,
            in_channels: s.in_channels,
            out_channels: s.out_channels,
            groups: s.groups,
            h: s.h,
            w: s.w,
            stride: s.stride,
            oh: s.oh,
            ow: s.ow,
            weight: ctx.deploy,
            bias: ctx.bias,
            relu: ctx.relu,
        }
        .run(ctx.isa, ctx.input, ctx.output);
    }
}

/// Geometry and weights of one grouped 3x3 convolution (padding 1).
#[derive(Debug, Clone, Copy)]
struct GenericConv<'a> {
    n: usize,
    in_channels: usize,
    out_channels: usize,
    groups: usize,
    h: usize,
    w: usize,
    stride: usize,
    oh: usize,
    ow: usize,
    /// `[K][C/groups][3][3]`.
    weight: &'a [f32],
    bias: &'a [f32],
    relu: bool,
}

impl GenericConv<'_> {
    /// Runs the convolution; output channel blocks are computed in parallel.
    fn run(&self, isa: Dispatch, input: &[f32], output: &mut [f32]) {
        let out_plane = self.oh * self.ow;
        let out_blocks = channel_blocks(self.out_channels);
        let len = self.n * out_blocks * out_plane * CHANNEL_BLOCK;
        for_each_chunk_mut(&mut output[..len], out_plane * CHANNEL_BLOCK, |item, plane| {
            dispatch!(isa, |s| self.channel_block(s, input, item / out_blocks, item % out_blocks, plane))
        });
    }

    /// Output channel block `kb` of image `n`.
    #[inline(always)]
    fn channel_block<S: Simd>(&self, s: S, input: &[f32], n: usize, kb: usize, plane: &mut [f32]) {
        let in_blocks = channel_blocks(self.in_channels);
        let (cg, kg) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let in_plane = self.h * self.w;
        let pixel = |c: usize, y: usize, x: usize| {
            input[((n * in_blocks + c / CHANNEL_BLOCK) * in_plane + y * self.w + x) * CHANNEL_BLOCK + c % CHANNEL_BLOCK]
        };
        for lane in 0..CHANNEL_BLOCK {
            let k = kb * CHANNEL_BLOCK + lane;
            for p in 0..self.oh * self.ow {
                let value = if k < self.out_channels {
                    let (oy, ox) = (p / self.ow, p % self.ow);
                    let g = k / kg;
                    let mut acc = self.bias[k];
                    for ci in 0..cg {
                        for tap in 0..9 {
                            let y = (oy * self.stride + tap / 3) as isize - 1;
                            let x = (ox * self.stride + tap % 3) as isize - 1;
                            if y >= 0 && x >= 0 && (y as usize) < self.h && (x as usize) < self.w {
                                let wv = self.weight[(k * cg + ci) * 9 + tap];
                                acc = s.mul_add_scalar(wv, pixel(g * cg + ci, y as usize, x as usize), acc);
                            }
                        }
                    }
                    if self.relu { repvgg_simd::relu(acc) } else { acc }
                } else {
                    0.0
                };
                plane[p * CHANNEL_BLOCK + lane] = value;
            }
        }
    }
}
