//! Packing of the direct path's column panels (implicit im2col), `[kd / 16][NR][16]`.
//!
//! Output pixels are taken `NR` at a time (consecutive in `(n, y, x)` order, so a panel
//! may span rows and images). With a channel-blocked input and a `k x k` kernel (`k` in
//! 1, 3, 5, 7, padding `k / 2`; RepVGG's layers are 3x3, `repvgg density` runs all) the
//! reduction index is `kd = ((cb * k + ky) * k + kx) * 16 + lane`, so every copy moves the
//! 16 channels of one input pixel. The network input (planar RGB) is first copied by the executor into a
//! zero-bordered NHWC buffer and uses `kd = (ky * 3 + kx) * C + c`, padded to 16: each
//! window row is then `3 C` contiguous floats. Pixels outside the map (the padding) are
//! written as zeros; so are the columns of missing pixels in the last panel.

use repvgg_simd::Simd;

use super::gemm::NR;
use repvgg_simd::layout::CHANNEL_BLOCK;

/// Largest reduction depth of the planar (network input) packing: 7 channels x 9 taps,
/// padded to whole 16-float slices.
pub const PLANAR_MAX_KD: usize = 64;

/// The pixel geometry of a `kernel x kernel` convolution with padding `kernel / 2`.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Kernel side, odd (3 for every RepVGG layer; the planar packings take only 3).
    pub kernel: usize,
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    /// Output pixels of the batch.
    pub fn pixels(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// Pixels of column panel `panel` that exist (fewer than NR only in the last).
    pub fn panel_pixels(&self, panel: usize) -> usize {
        NR.min(self.pixels() - panel * NR)
    }

    /// Image and window origin (top-left input pixel, negative in the padding) of output
    /// pixel `p`.
    fn window(&self, p: usize) -> (usize, isize, isize) {
        let plane = self.oh * self.ow;
        let (n, rest) = (p / plane, p % plane);
        let pad = (self.kernel / 2) as isize;
        (n, (rest / self.ow * self.stride) as isize - pad, (rest % self.ow * self.stride) as isize - pad)
    }
}

#[inline(always)]
fn copy_block<S: Simd>(s: S, src: *const f32, dst: *mut f32) {
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        // SAFETY: callers pass 16 readable floats at `src` and 16 writable at `dst`.
        unsafe { s.store(dst.add(lane), s.load(src.add(lane))) }
    }
}

#[inline(always)]
fn zero_block<S: Simd>(s: S, dst: &mut [f32]) {
    for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
        s.write(&mut dst[lane..], s.zero());
    }
}

/// Packs column panel `panel` from a channel-blocked input (`channel_blocks(c)` planes of
/// `h x w` pixels per image).
///
/// Pixel-major: each pixel's window origin is computed once; a window inside the map is
/// copied without per-tap bounds checks. Border windows and missing pixels are zeroed.
#[inline(always)]
pub fn pack_blocked<S: Simd>(s: S, g: &Geometry, input: &[f32], panel: usize, out: &mut [f32]) {
    // The kernel side as a constant, so that the window walk divides by it at compile
    // time: RepVGG's 3x3 runs exactly the code it ran before other sides existed.
    match g.kernel {
        1 => pack_blocked_k::<S, 1>(s, g, input, panel, out),
        3 => pack_blocked_k::<S, 3>(s, g, input, panel, out),
        5 => pack_blocked_k::<S, 5>(s, g, input, panel, out),
        7 => pack_blocked_k::<S, 7>(s, g, input, panel, out),
        k => unimplemented!("kernel side {k}: the blocked packing is instantiated for 1, 3, 5 and 7"),
    }
}

#[inline(always)]
fn pack_blocked_k<S: Simd, const K: usize>(s: S, g: &Geometry, input: &[f32], panel: usize, out: &mut [f32]) {
    let pixels = g.panel_pixels(panel);
    let in_plane = g.h * g.w;
    let cb_count = g.c.div_ceil(CHANNEL_BLOCK);
    let (k, taps) = (K, K * K);
    assert!(out.len() >= cb_count * taps * NR * CHANNEL_BLOCK, "panel buffer too small");
    assert!(input.len() >= g.n * cb_count * in_plane * CHANNEL_BLOCK, "input too small");
    let inside = |y: isize, x: isize| y >= 0 && x >= 0 && (y as usize) < g.h && (x as usize) < g.w;
    for j in 0..NR {
        let column = |row: usize| (row * NR + j) * CHANNEL_BLOCK;
        if j >= pixels {
            for row in 0..cb_count * taps {
                zero_block(s, &mut out[column(row)..]);
            }
            continue;
        }
        let (n, y0, x0) = g.window(panel * NR + j);
        let interior = y0 >= 0 && x0 >= 0 && y0 as usize + k <= g.h && x0 as usize + k <= g.w;
        for cb in 0..cb_count {
            let image = (n * cb_count + cb) * in_plane;
            for tap in 0..taps {
                let (y, x) = (y0 + (tap / k) as isize, x0 + (tap % k) as isize);
                let dst = column(cb * taps + tap);
                if interior || inside(y, x) {
                    let src = (image + y as usize * g.w + x as usize) * CHANNEL_BLOCK;
                    // SAFETY: (y, x) is inside the map, so src + 16 <= input.len(), and
                    // dst + 16 <= out.len() for row < cb_count * taps and j < NR (asserted above).
                    copy_block(s, unsafe { input.as_ptr().add(src) }, unsafe { out.as_mut_ptr().add(dst) });
                } else {
                    zero_block(s, &mut out[dst..]);
                }
            }
        }
    }
}

/// Floats of the zero-bordered NHWC copy of a planar input: one extra row and column on
/// each side covers every window (padding 1; the last window of a stride-2 layer ends at
/// most one past the map).
pub fn padded_hwc_len(g: &Geometry) -> usize {
    g.n * (g.h + 2) * (g.w + 2) * g.c
}

/// Floats reserved for the NHWC copy: [`padded_hwc_len`] plus one channel block of
/// slack, so that the RGB packing may load whole blocks at the last window and discard
/// the extra lanes.
pub fn hwc_buffer_len(g: &Geometry) -> usize {
    padded_hwc_len(g) + CHANNEL_BLOCK
}

/// Lane masks of the RGB packing: lanes 0..9, 0..2 and 2..11 of a 16-float block.
static RGB_MASKS: [[u32; CHANNEL_BLOCK]; 3] = {
    let mut masks = [[0u32; CHANNEL_BLOCK]; 3];
    let ranges = [(0, 9), (0, 2), (2, 11)];
    let mut m = 0;
    while m < 3 {
        let mut lane = ranges[m].0;
        while lane < ranges[m].1 {
            masks[m][lane] = u32::MAX;
            lane += 1;
        }
        m += 1;
    }
    masks
};

/// Packs column panel `panel` from the NHWC copy `hwc` of an RGB input (`kd = 27`, padded
/// to 32), from whole-vector loads: slice 0 is window row 0 (9 floats) then row 1's first
/// 7, slice 1 is row 1's last 2, row 2 (9) and 5 zeros. Each slice is two or three
/// unaligned loads merged by lane. Assembling the window in a stack array instead made
/// every pixel pay for small stores read back as whole vectors (store-forwarding stalls).
#[inline(always)]
pub fn pack_rgb<S: Simd>(s: S, g: &Geometry, hwc: &[f32], panel: usize, out: &mut [f32]) {
    assert_eq!((g.c, g.kernel), (3, 3));
    let row_len = (g.w + 2) * 3;
    let pixels = g.panel_pixels(panel);
    assert!(hwc.len() >= hwc_buffer_len(g) && out.len() >= 2 * NR * CHANNEL_BLOCK, "buffers too small");
    let mask = |m: usize, lane: usize| s.read(bytemuck::cast_slice(&RGB_MASKS[m][lane..]));
    // The slack of `hwc_buffer_len` keeps the last window's row-2 load (14 floats past
    // the row's start at most) inside the buffer.
    let load = |at: usize| s.read(&hwc[at..at + S::LANES]);
    // The first pixel's coordinates by division, the others by stepping.
    let plane = g.oh * g.ow;
    let first = panel * NR;
    let (mut n, mut oy, mut ox) = (first / plane, first % plane / g.ow, first % g.ow);
    for j in 0..NR {
        let (slice0, slice1) = (j * CHANNEL_BLOCK, (NR + j) * CHANNEL_BLOCK);
        if j >= pixels {
            zero_block(s, &mut out[slice0..]);
            zero_block(s, &mut out[slice1..]);
            continue;
        }
        // Window origin (oy * stride - 1, ox * stride - 1) is padded (oy * stride, ox * stride).
        let row0 = (n * (g.h + 2) + oy * g.stride) * row_len + ox * g.stride * 3;
        let (row1, row2) = (row0 + row_len, row0 + 2 * row_len);
        for lane in (0..CHANNEL_BLOCK).step_by(S::LANES) {
            let first_half = s.select(mask(0, lane), load(row0 + lane), load(row1 - 9 + lane));
            let second = s.select(
                mask(1, lane),
                load(row1 + 7 + lane),
                s.select(mask(2, lane), load(row2 - 2 + lane), s.zero()),
            );
            s.write(&mut out[slice0 + lane..], first_half);
            s.write(&mut out[slice1 + lane..], second);
        }
        ox += 1;
        if ox == g.ow {
            (ox, oy) = (0, oy + 1);
            if oy == g.oh {
                (oy, n) = (0, n + 1);
            }
        }
    }
}

/// Packs column panel `panel` from the NHWC copy of a planar input of any channel count
/// up to 7 (custom architectures; RGB takes [`pack_rgb`]). A pixel's whole reduction is
/// assembled in a stack column and stored as whole 16-float slices.
#[inline(always)]
pub fn pack_planar<S: Simd>(s: S, g: &Geometry, hwc: &[f32], panel: usize, out: &mut [f32]) {
    assert_eq!(g.kernel, 3);
    let c = g.c;
    let (kd, row_len) = ((9 * c).div_ceil(CHANNEL_BLOCK) * CHANNEL_BLOCK, (g.w + 2) * c);
    assert!(kd <= PLANAR_MAX_KD && out.len() >= kd * NR, "panel buffer too small");
    let pixels = g.panel_pixels(panel);
    for j in 0..NR {
        let mut column = [0f32; PLANAR_MAX_KD];
        if j < pixels {
            let (n, y0, x0) = g.window(panel * NR + j);
            let base = (n * (g.h + 2) + (y0 + 1) as usize) * row_len + (x0 + 1) as usize * c;
            for ky in 0..3 {
                column[ky * 3 * c..(ky + 1) * 3 * c].copy_from_slice(&hwc[base + ky * row_len..][..3 * c]);
            }
        }
        for slice in 0..kd / CHANNEL_BLOCK {
            let dst = (slice * NR + j) * CHANNEL_BLOCK;
            copy_block(s, column[slice * CHANNEL_BLOCK..].as_ptr(), out[dst..dst + CHANNEL_BLOCK].as_mut_ptr());
        }
    }
}
