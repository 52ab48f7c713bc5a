//! The depthwise 3x3 kernel (`crate::exec::depthwise`): one channel block of one image,
//! a vector of channels per multiply-add.

use repvgg_simd::Simd;

use repvgg_simd::layout::CHANNEL_BLOCK;

/// Geometry of one depthwise convolution.
#[derive(Debug, Clone, Copy)]
pub struct DepthwiseShape {
    pub n: usize,
    pub channels: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

/// One channel block of one image, one vector of lanes at a time: its nine weight
/// vectors stay in registers for the whole plane, and interior windows skip the bounds
/// checks.
#[inline(always)]
pub fn plane<S: Simd>(s: S, shape: &DepthwiseShape, w: &[f32], bias: &[f32], relu: bool, src: &[f32], dst: &mut [f32]) {
    let (h, wd) = (shape.h as isize, shape.w as isize);
    assert!(src.len() >= shape.h * shape.w * CHANNEL_BLOCK && dst.len() >= shape.oh * shape.ow * CHANNEL_BLOCK);
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        let taps: [S::F32; 9] = std::array::from_fn(|t| s.read(&w[t * CHANNEL_BLOCK + lane..]));
        let b = s.read(&bias[lane..]);
        let at = |y: isize, x: isize| (y * wd + x) as usize * CHANNEL_BLOCK + lane;
        for oy in 0..shape.oh {
            let y0 = (oy * shape.stride) as isize - 1;
            for ox in 0..shape.ow {
                let x0 = (ox * shape.stride) as isize - 1;
                let mut acc = b;
                if y0 >= 0 && x0 >= 0 && y0 + 3 <= h && x0 + 3 <= wd {
                    for (t, tap) in taps.iter().enumerate() {
                        let p = at(y0 + (t / 3) as isize, x0 + (t % 3) as isize);
                        // SAFETY: the window lies inside the map, so p + LANES <= h * w * 16
                        // <= src.len() (asserted above).
                        acc = s.mul_add(*tap, unsafe { s.load(src.as_ptr().add(p)) }, acc);
                    }
                } else {
                    for (t, tap) in taps.iter().enumerate() {
                        let (y, x) = (y0 + (t / 3) as isize, x0 + (t % 3) as isize);
                        if y >= 0 && x >= 0 && y < h && x < wd {
                            acc = s.mul_add(*tap, s.read(&src[at(y, x)..]), acc);
                        }
                    }
                }
                if relu {
                    acc = s.relu(acc);
                }
                s.write(&mut dst[(oy * shape.ow + ox) * CHANNEL_BLOCK + lane..], acc);
            }
        }
    }
}
