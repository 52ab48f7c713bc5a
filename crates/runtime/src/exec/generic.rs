//! A plain direct convolution on the channel-blocked layout for the layers the packed
//! paths do not take: groups whose channel counts are not multiples of 16 (custom
//! architectures only; every published variant uses the fast paths). Slow but simple:
//! one scalar multiply-add chain per output value (fused on the FMA instruction sets).

use repvgg_simd::{Dispatch, Simd, dispatch};

use crate::kernels::{CHANNEL_BLOCK, channel_blocks};
use crate::team::for_each_chunk_mut;

/// Geometry and weights of one grouped 3x3 convolution (padding 1).
#[derive(Debug, Clone, Copy)]
pub struct GenericConv<'a> {
    pub n: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
    /// `[K][C/groups][3][3]`.
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub relu: bool,
}

impl GenericConv<'_> {
    /// Runs the convolution; output channel blocks are computed in parallel.
    pub fn run(&self, isa: Dispatch, input: &[f32], output: &mut [f32]) {
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
