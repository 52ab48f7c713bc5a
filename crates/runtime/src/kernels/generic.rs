//! A plain direct convolution on the channel-blocked layout for the layers the packed
//! paths do not take: groups whose channel counts are not multiples of 16 (custom
//! architectures only; every published variant uses the fast paths). Slow but simple:
//! one f32 FMA chain per output value.

use super::parallel::for_each_chunk_mut;
use super::{LANES, blocks};

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
    pub fn run(&self, input: &[f32], output: &mut [f32]) {
        let (in_blocks, out_blocks) = (blocks(self.in_channels), blocks(self.out_channels));
        let (cg, kg) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let (in_plane, out_plane) = (self.h * self.w, self.oh * self.ow);
        let pixel = |n: usize, c: usize, y: usize, x: usize| {
            input[((n * in_blocks + c / LANES) * in_plane + y * self.w + x) * LANES + c % LANES]
        };
        for_each_chunk_mut(&mut output[..self.n * out_blocks * out_plane * LANES], out_plane * LANES, |nb, plane| {
            let (n, kb) = (nb / out_blocks, nb % out_blocks);
            for lane in 0..LANES {
                let k = kb * LANES + lane;
                for p in 0..out_plane {
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
                                    acc = wv.mul_add(pixel(n, g * cg + ci, y as usize, x as usize), acc);
                                }
                            }
                        }
                        if self.relu { acc.max(0.0) } else { acc }
                    } else {
                        0.0
                    };
                    plane[p * LANES + lane] = value;
                }
            }
        });
    }
}
