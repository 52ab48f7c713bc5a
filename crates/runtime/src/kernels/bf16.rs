//! BF16 kernels: activations and weights rounded to bfloat16 (the upper half of an f32:
//! 8 exponent bits, 7 mantissa bits), their products summed in f32, bias and ReLU in f32.
//!
//! ```text
//! bf16(v)  = round_to_nearest_even(v to 8 significant bits)   (VCVTNEPS2BF16; NaN stays NaN)
//! acc[k]   = sum_d bf16(x[d]) bf16(w[k][d])                    (each product exact in f32)
//! y[k]     = relu?(acc[k] + bias[k])
//! ```
//!
//! A product of two bf16 values has at most 16 significant bits, so it is exact in f32 and
//! the only rounding besides the two conversions is the f32 accumulation's, the same as in
//! the FP32 kernels: over a reduction of `kd` terms the sum is within `kd 2^-24 sum |x w|`
//! of the exact sum of the rounded operands (the standard bound for recursive summation),
//! whatever order a kernel adds in. The conversions cost a relative `2^-9` per operand,
//! which is what BF16 mode trades for speed (`docs/precision.md` states the network-level
//! bound the tests hold).
//!
//! # Layouts
//!
//! The products read their activations where the executor put them (`exec::direct_bf16`:
//! a zero-bordered bf16 copy of the input, pixel-major), described like the AMX tile
//! loads (`kernels::amx`): column `j` of step `i` is the `run` bytes at `base +
//! offsets[i] + j * stride`. The weight panel is `[steps * run / 4][width][2]` bf16: each
//! 64-byte row holds 16 output channels' pairs, which is what `VDPBF16PS` multiplies a
//! broadcast pair with and what an AMX `B` tile row holds.
//!
//! # Kernel sets
//!
//! | set | needs | per instruction |
//! |---|---|---|
//! | `amx` | amx-tile, amx-bf16, the OS's permission | `tdpbf16ps`: 16 columns x 16 channels x up to 32 deep |
//! | `avx512-bf16` | avx512f, avx512bf16 | `vdpbf16ps zmm`: 16 channels x 2 deep |
//!
//! There is no portable set: on a CPU without AVX512-BF16 a BF16 session is refused and
//! FP32 runs (emulating bf16 would be slower than FP32). [`portable_product`] is the
//! kernels' scalar twin, for the tests.

use crate::kernels::amx::{Acc, AmxTiles, ROW_WORDS, TileOp};
use crate::kernels::gemm::NR;

/// A bf16 kernel set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Bf16Set {
    /// AMX-BF16 tiles (Sapphire Rapids and later).
    #[serde(rename = "amx")]
    Amx,
    /// `VDPBF16PS` on AVX-512 registers (Zen 4, Cooper Lake, and AMX CPUs).
    #[serde(rename = "avx512-bf16")]
    Avx512,
}

impl Bf16Set {
    pub const ALL: [Bf16Set; 2] = [Bf16Set::Amx, Bf16Set::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Bf16Set::Amx => "amx",
            Bf16Set::Avx512 => "avx512-bf16",
        }
    }
}

impl std::str::FromStr for Bf16Set {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        Bf16Set::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| crate::Error::Option(format!("unknown bf16 kernel set `{s}` (amx, avx512-bf16)")))
    }
}

impl std::fmt::Display for Bf16Set {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A bf16 kernel set this CPU runs: made only by [`Bf16Kernels::best`] and
/// [`Bf16Kernels::all_supported`], which check the CPU (and the OS, for AMX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Kernels(Bf16Set);

fn has_avx512bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && crate::kernels::probe_mixed::has_avx512bf16()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Bf16Kernels {
    /// Every bf16 set this CPU runs, best first (empty without AVX512-BF16).
    pub fn all_supported() -> Vec<Bf16Kernels> {
        let mut sets = Vec::new();
        if has_avx512bf16() {
            if crate::kernels::amx::available(TileOp::Bf16) {
                sets.push(Bf16Kernels(Bf16Set::Amx));
            }
            sets.push(Bf16Kernels(Bf16Set::Avx512));
        }
        sets
    }

    /// The best set this CPU runs, if any.
    pub fn best() -> Option<Bf16Kernels> {
        Bf16Kernels::all_supported().into_iter().next()
    }

    /// `set`, if this CPU (and OS, for AMX) runs it.
    pub fn new(set: Bf16Set) -> Option<Bf16Kernels> {
        Bf16Kernels::all_supported().into_iter().find(|k| k.0 == set)
    }

    pub fn set(self) -> Bf16Set {
        self.0
    }

    /// Columns (output pixels) of one product: a tile's 16 rows, or the vector
    /// blocking's `NR`.
    pub fn columns(self) -> usize {
        match self.0 {
            Bf16Set::Amx => 16,
            Bf16Set::Avx512 => NR,
        }
    }
}

/// `v` rounded to bf16, as `VCVTNEPS2BF16` rounds: to nearest, ties to even; a NaN stays a
/// (quiet) NaN; subnormal inputs become zeros of their sign.
#[inline]
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7f80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let lsb = (bits >> 16) & 1;
    ((bits + 0x7fff + lsb) >> 16) as u16
}

/// The f32 value of a bf16.
#[inline]
pub fn from_bf16(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// `dst[i] = to_bf16(src[i])`.
pub fn convert(k: Bf16Kernels, src: &[f32], dst: &mut [u16]) {
    assert!(dst.len() >= src.len(), "conversion into a shorter buffer");
    let _ = k;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: every Bf16Kernels proves AVX512-F and AVX512-BF16; the lengths are checked.
    unsafe {
        x86::convert(src, dst)
    };
    #[cfg(not(target_arch = "x86_64"))]
    src.iter().zip(dst).for_each(|(v, d)| *d = to_bf16(*v));
}

/// The sums of one product: `acc[j * 32 + k]` for column `j` and channel `k`.
pub type Bf16Acc = Acc<f32>;

/// Where a product reads: see the module's layouts. `base`, `offsets` and `stride` in
/// bytes of the activations, `run` bytes (a multiple of 4 up to 64) per step.
#[derive(Debug, Clone, Copy)]
pub struct Reads<'a> {
    pub base: usize,
    pub offsets: &'a [usize],
    pub stride: usize,
    pub run: usize,
}

impl Reads<'_> {
    /// One past the last byte column `cols - 1` reads.
    fn reach(&self, cols: usize) -> usize {
        self.base + self.offsets.iter().max().copied().unwrap_or(0) + (cols - 1) * self.stride + self.run
    }
}

/// `acc[j][k] = sum_i sum_d A_i[j][d] B_i[d][k]` for the first `cols` columns (up to
/// [`Bf16Kernels::columns`]) and the `width` (16 or 32) channels of the weight panel `a`,
/// on the vector set (the AMX set's tiles go through [`AmxTiles`]). Columns from `cols` on
/// are left as they were.
pub fn strided_product(
    k: Bf16Kernels,
    input: &[u16],
    r: Reads<'_>,
    a: &[u16],
    width: usize,
    cols: usize,
    acc: &mut Bf16Acc,
) {
    check(input, r, a, width, cols);
    assert!(cols <= NR, "{cols} columns");
    let _ = k;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: Bf16Kernels proves AVX512-BF16; `check` covers every read (each column's
    // runs, the weight rows) and the accumulator rows written (cols <= NR <= 16).
    unsafe {
        let x = input.as_ptr().cast::<u8>().add(r.base);
        match width {
            ROW_WORDS => x86::dot_panel::<2>(x, r, a.as_ptr(), cols, acc),
            _ => x86::dot_panel::<1>(x, r, a.as_ptr(), cols, acc),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    portable_product(input, r, a, width, cols, acc);
}

/// The AMX product of 16 columns (all of a tile's rows: columns past the caller's last
/// read pixels of the next row or the slack, whose sums the caller drops), one segment or
/// two (`bases`, the same offsets from each).
pub fn tile_product(tiles: &AmxTiles, input: &[u16], r: Reads<'_>, a: &[u16], width: usize, acc: &mut Bf16Acc) {
    assert_eq!(tiles.run(), r.run, "tiles configured for another run");
    tiles.product(bytemuck::cast_slice(input), r.base, r.offsets, r.stride, bytemuck::cast_slice(a), width, acc);
}

/// [`tile_product`] for two segments at `bases`, sharing each weight tile.
pub fn tile_pair_product(
    tiles: &AmxTiles,
    input: &[u16],
    bases: [usize; 2],
    r: Reads<'_>,
    a: &[u16],
    width: usize,
    acc: [&mut Bf16Acc; 2],
) {
    assert_eq!(tiles.run(), r.run, "tiles configured for another run");
    let (input, a) = (bytemuck::cast_slice(input), bytemuck::cast_slice(a));
    tiles.pair_product(input, bases, r.offsets, r.stride, a, width, acc);
}

fn check(input: &[u16], r: Reads<'_>, a: &[u16], width: usize, cols: usize) {
    assert!(width == ROW_WORDS || width == 16, "weight panel width {width}");
    assert!(r.run.is_multiple_of(4) && (4..=64).contains(&r.run), "run of {} bytes", r.run);
    assert!(cols >= 1 && !r.offsets.is_empty(), "an empty product");
    assert!(a.len() * 2 >= r.offsets.len() * r.run * width, "weight panel shorter than its steps");
    let reach = r.reach(cols);
    assert!(reach <= input.len() * 2, "columns reach byte {reach} of {}", input.len() * 2);
}

/// The scalar twin of the products: the same sums in f32, each pair added as
/// `VDPBF16PS` documents it (the odd element's product, then the even one's).
#[cfg(any(test, not(target_arch = "x86_64")))]
pub fn portable_product(input: &[u16], r: Reads<'_>, a: &[u16], width: usize, cols: usize, acc: &mut Bf16Acc) {
    check(input, r, a, width, cols);
    let pairs = r.run / 4;
    for j in 0..cols {
        let row = &mut acc[j * ROW_WORDS..j * ROW_WORDS + width];
        row.fill(0.0);
        for (i, &offset) in r.offsets.iter().enumerate() {
            let at = (r.base + offset + j * r.stride) / 2;
            for q in 0..pairs {
                let (x0, x1) = (from_bf16(input[at + 2 * q]), from_bf16(input[at + 2 * q + 1]));
                let w = &a[(i * pairs + q) * width * 2..][..width * 2];
                for (k, sum) in row.iter_mut().enumerate() {
                    *sum += x1 * from_bf16(w[2 * k + 1]);
                    *sum += x0 * from_bf16(w[2 * k]);
                }
            }
        }
    }
}

/// Where [`store_rows`] writes row `j` of its `count`.
pub enum Rows<'a> {
    /// `dst[j * 16..][..16]`: channel-blocked output pixels.
    F32(&'a mut [f32]),
    /// `dst[j * stride..][..16]`, rounded to bf16: a pixel-major buffer (the next BF16
    /// layer's bordered input).
    Bf16(&'a mut [u16], usize),
}

/// `dst[j][l] = relu?(acc[row0 + j][c + l] + bias[l])` for `count` rows of 16 channels.
#[allow(clippy::too_many_arguments)] // the accumulator's part, the affine map, the output
pub fn store_rows(
    k: Bf16Kernels,
    acc: &Bf16Acc,
    row0: usize,
    c: usize,
    count: usize,
    bias: &[f32],
    relu: bool,
    dst: Rows<'_>,
) {
    assert!(row0 + count <= 16 && c + 16 <= ROW_WORDS && bias.len() >= 16);
    let (ptr, stride, rounded) = match dst {
        Rows::F32(dst) => {
            assert!(dst.len() >= count * 16, "destination shorter than its rows");
            (dst.as_mut_ptr().cast::<u8>(), 64, false)
        }
        Rows::Bf16(dst, stride) => {
            assert!(count == 0 || (count - 1) * stride + 16 <= dst.len(), "destination shorter than its rows");
            (dst.as_mut_ptr().cast::<u8>(), 2 * stride, true)
        }
    };
    let _ = k;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: Bf16Kernels proves AVX512-F and AVX512-BF16; the asserts cover the rows read
    // and written.
    unsafe {
        x86::store_rows(acc.as_ptr().add(row0 * ROW_WORDS + c), count, bias.as_ptr(), relu, ptr, stride, rounded)
    };
    #[cfg(not(target_arch = "x86_64"))]
    for j in 0..count {
        for l in 0..16 {
            let v = acc[(row0 + j) * ROW_WORDS + c + l] + bias[l];
            let v = if relu { v.max(0.0) } else { v };
            // SAFETY: within the rows the asserts checked.
            unsafe {
                if rounded {
                    ptr.add(j * stride).cast::<u16>().add(l).write_unaligned(to_bf16(v));
                } else {
                    ptr.add(j * stride).cast::<f32>().add(l).write_unaligned(v);
                }
            }
        }
    }
}

/// `dst[3 x + c] = to_bf16(rows[c][x])` for the `rows[0].len()` pixels of three planar
/// rows: a row of the RGB network input, pixel-major (what the stem reads).
pub fn interleave3(k: Bf16Kernels, rows: [&[f32]; 3], dst: &mut [u16]) {
    let w = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == w) && dst.len() >= 3 * w, "rows and destination disagree");
    let _ = k;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: Bf16Kernels proves AVX512-F, -BW and -BF16; the assert covers every read
    // (w floats per row) and write (3 w values).
    unsafe {
        x86::interleave3(rows.map(|r| r.as_ptr()), w, dst.as_mut_ptr())
    };
    #[cfg(not(target_arch = "x86_64"))]
    for x in 0..w {
        for c in 0..3 {
            dst[3 * x + c] = to_bf16(rows[c][x]);
        }
    }
}

/// Converts `pixels` runs of 16 floats (`src`, contiguous) to bf16, run `x` into
/// `dst[x * stride..][..16]`: a channel block's row into a pixel-major buffer.
pub fn convert_blocks(k: Bf16Kernels, src: &[f32], pixels: usize, dst: &mut [u16], stride: usize) {
    assert!(src.len() >= pixels * 16, "source shorter than its pixels");
    assert!(pixels == 0 || (pixels - 1) * stride + 16 <= dst.len(), "destination shorter than its pixels");
    let _ = k;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: Bf16Kernels proves AVX512-BF16; the asserts cover every read and write.
    unsafe {
        x86::convert_blocks(src.as_ptr(), pixels, dst.as_mut_ptr(), stride)
    };
    #[cfg(not(target_arch = "x86_64"))]
    for x in 0..pixels {
        for l in 0..16 {
            dst[x * stride + l] = to_bf16(src[x * 16 + l]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Bf16Acc, NR, ROW_WORDS, Reads};

    /// # Safety
    ///
    /// AVX512-F and AVX512-BF16; `dst` at least as long as `src`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert(src: &[f32], dst: &mut [u16]) {
        let chunks = src.len() / 16;
        for i in 0..chunks {
            // SAFETY: 16 floats at i * 16 < len, 16 u16 into dst (at least as long).
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(i * 16));
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i * 16).cast(), h);
            }
        }
        let rest = chunks * 16;
        if rest < src.len() {
            let mask = (1u16 << (src.len() - rest)) - 1;
            // The tail through a local: a masked 16-bit store would need AVX512-BW, which
            // these kernels do not ask for (outlined, it was a call per conversion).
            // SAFETY: the load is masked to the `len - rest` floats left in `src`.
            let h: [u16; 16] =
                unsafe { std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src.as_ptr().add(rest)))) };
            dst[rest..src.len()].copy_from_slice(&h[..src.len() - rest]);
        }
    }

    /// # Safety
    ///
    /// AVX512-F and AVX512-BF16; `acc` readable for `count` rows of `ROW_WORDS` (16 used),
    /// `bias` for 16, `dst` writable for 16 floats (or 16 bf16 if `rounded`) at `j *
    /// stride` bytes for every `j < count`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn store_rows(
        acc: *const f32,
        count: usize,
        bias: *const f32,
        relu: bool,
        dst: *mut u8,
        stride: usize,
        rounded: bool,
    ) {
        // SAFETY: the caller's bounds.
        unsafe {
            let b = _mm512_loadu_ps(bias);
            let zero = _mm512_setzero_ps();
            for j in 0..count {
                let mut v = _mm512_add_ps(_mm512_loadu_ps(acc.add(j * ROW_WORDS)), b);
                if relu {
                    v = _mm512_max_ps(v, zero);
                }
                if rounded {
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                    _mm256_storeu_si256(dst.add(j * stride).cast(), h);
                } else {
                    _mm512_storeu_ps(dst.add(j * stride).cast(), v);
                }
            }
        }
    }

    /// Where output value `e` of vector `v` (of three) of 32 interleaved pixels comes
    /// from: the index into `(r, g)` for `_mm512_permutex2var_epi16` (`r[p]` is `p`,
    /// `g[p]` is `32 + p`), the index into `b`, and the mask of `b`'s places.
    /// Built at compile time: the stem calls `interleave3` once per input row.
    const INTERLEAVE3: [([i16; 32], [i16; 32], u32); 3] = {
        let mut tables = [([0i16; 32], [0i16; 32], 0u32); 3];
        let mut v = 0;
        while v < 3 {
            let mut e = 0;
            while e < 32 {
                let (p, c) = ((32 * v + e) / 3, (32 * v + e) % 3);
                match c {
                    0 => tables[v].0[e] = p as i16,
                    1 => tables[v].0[e] = 32 + p as i16,
                    _ => {
                        tables[v].1[e] = p as i16;
                        tables[v].2 |= 1 << e;
                    }
                }
                e += 1;
            }
            v += 1;
        }
        tables
    };

    /// # Safety
    ///
    /// AVX512-F, -BW and -BF16; the three rows readable for `w` floats, `dst` writable for
    /// `3 w` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn interleave3(rows: [*const f32; 3], w: usize, dst: *mut u16) {
        let tables = &INTERLEAVE3;
        // SAFETY: the tables are 32 i16 each (64 bytes); every load is masked to the `w`
        // floats of the rows and every store to the `3 w` values of `dst`.
        unsafe {
            let idx: [(__m512i, __m512i, u32); 3] = std::array::from_fn(|v| {
                let (rg, b, mask) = &tables[v];
                (_mm512_loadu_si512(rg.as_ptr().cast()), _mm512_loadu_si512(b.as_ptr().cast()), *mask)
            });
            let mut x = 0;
            while x < w {
                let n = (w - x).min(32);
                // 32 pixels of one channel as 32 bf16 (zeros past the row's end).
                let channel = |row: *const f32| -> __m512i {
                    let lo = (1u32 << n.min(16)) - 1;
                    let hi = if n > 16 { ((1u64 << (n - 16)) - 1) as u32 } else { 0 };
                    let a: __m256i =
                        std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lo as u16, row.add(x))));
                    let b: __m256i =
                        std::mem::transmute(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(hi as u16, row.add(x + 16))));
                    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b)
                };
                let (r, g, b) = (channel(rows[0]), channel(rows[1]), channel(rows[2]));
                for (v, &(rg, bi, mask)) in idx.iter().enumerate() {
                    let first = 32 * v;
                    if first >= 3 * n {
                        break;
                    }
                    let out = _mm512_mask_permutexvar_epi16(_mm512_permutex2var_epi16(r, rg, g), mask, bi, b);
                    let count = (3 * n - first).min(32);
                    let keep = if count == 32 { u32::MAX } else { (1u32 << count) - 1 };
                    _mm512_mask_storeu_epi16(dst.add(3 * x + first).cast(), keep, out);
                }
                x += n;
            }
        }
    }

    /// # Safety
    ///
    /// AVX512-F and AVX512-BF16; `src` readable for `pixels * 16`, `dst` writable at
    /// `x * stride .. + 16` for every `x < pixels`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert_blocks(src: *const f32, pixels: usize, dst: *mut u16, stride: usize) {
        for x in 0..pixels {
            // SAFETY: the caller's bounds.
            unsafe {
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(x * 16))));
                _mm256_storeu_si256(dst.add(x * stride).cast(), h);
            }
        }
    }

    /// # Safety
    ///
    /// AVX512-F and AVX512-BF16; every column's runs readable from `x` (the reads' base
    /// already added), `a` readable for `offsets.len() * run / 4` rows of `64 MRV` bytes;
    /// `1 <= cols <= NR`.
    pub unsafe fn dot_panel<const MRV: usize>(
        x: *const u8,
        r: Reads<'_>,
        a: *const u16,
        cols: usize,
        acc: &mut Bf16Acc,
    ) {
        // SAFETY: forwarded; each arm's C equals cols.
        unsafe {
            match cols {
                1 => dot_tile::<MRV, 1>(x, r, a, acc),
                2 => dot_tile::<MRV, 2>(x, r, a, acc),
                3 => dot_tile::<MRV, 3>(x, r, a, acc),
                4 => dot_tile::<MRV, 4>(x, r, a, acc),
                5 => dot_tile::<MRV, 5>(x, r, a, acc),
                6 => dot_tile::<MRV, 6>(x, r, a, acc),
                7 => dot_tile::<MRV, 7>(x, r, a, acc),
                8 => dot_tile::<MRV, 8>(x, r, a, acc),
                9 => dot_tile::<MRV, 9>(x, r, a, acc),
                10 => dot_tile::<MRV, 10>(x, r, a, acc),
                11 => dot_tile::<MRV, 11>(x, r, a, acc),
                _ => dot_tile::<MRV, NR>(x, r, a, acc),
            }
        }
    }

    /// # Safety
    ///
    /// As [`dot_panel`], with `C` columns.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn dot_tile<const MRV: usize, const C: usize>(x: *const u8, r: Reads<'_>, a: *const u16, acc: &mut Bf16Acc) {
        let mut sums = [[_mm512_setzero_ps(); MRV]; C];
        let pairs = r.run / 4;
        let mut row = a.cast::<u8>();
        for &offset in r.offsets {
            for q in 0..pairs {
                // SAFETY: the weight row (64 MRV bytes) is inside the panel (one of
                // `offsets.len() * pairs` rows) and each column's pair (4 bytes at offset +
                // 4 q of column j < C) within the reach the caller checked.
                unsafe {
                    let w: [__m512bh; MRV] =
                        std::array::from_fn(|m| std::mem::transmute(_mm512_loadu_si512(row.add(m * 64).cast())));
                    let p = x.add(offset + 4 * q);
                    for (j, sum) in sums.iter_mut().enumerate() {
                        let xj: __m512bh =
                            std::mem::transmute(_mm512_set1_epi32(p.add(j * r.stride).cast::<i32>().read_unaligned()));
                        for m in 0..MRV {
                            sum[m] = _mm512_dpbf16_ps(sum[m], xj, w[m]);
                        }
                    }
                    row = row.add(MRV * 64);
                }
            }
        }
        for (j, sum) in sums.iter().enumerate() {
            for (m, v) in sum.iter().enumerate() {
                // SAFETY: j < NR and m * 16 + 16 <= ROW_WORDS: inside the accumulator.
                unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(j * ROW_WORDS + m * 16), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u32) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        }
    }

    /// The scalar rounding is the instruction's, on every class of value: ties both ways,
    /// carries into the exponent, the largest finite values (rounding to infinity),
    /// infinities, NaNs and subnormals.
    #[test]
    fn scalar_rounding_is_the_instructions() {
        let mut values: Vec<f32> = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            // 1 + 2^-8 and 1 + 3 2^-8: ties below an even and an odd last bit; 1 + 2^-7.
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-7),
            3.0e38,
            f32::MAX,
            -f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0e-39,
            -1.0e-39,
            f32::MIN_POSITIVE,
        ]
        .to_vec();
        values.extend((0..4096u32).map(|i| f32::from_bits(0x3f80_0000 + i * 0x1001)));
        let mut next = lcg(7);
        values.extend((0..4096).map(|_| next() * 1000.0));
        // Ties: exactly half a bf16 step above an even and an odd bf16.
        values.extend([f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000)]);
        for k in Bf16Kernels::all_supported() {
            let mut got = vec![0u16; values.len()];
            convert(k, &values, &mut got);
            for (v, g) in values.iter().zip(&got) {
                assert_eq!(*g, to_bf16(*v), "{:?}: {v:e} ({:#x})", k.set(), v.to_bits());
            }
        }
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(to_bf16(f32::MAX), 0x7f80);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    /// The RGB interleave is the scalar conversion, value for value, at every row length
    /// around the 32-pixel vectors (tails of each size, the last vector partly filled).
    #[test]
    fn the_rgb_interleave_is_the_scalar_one() {
        let mut next = lcg(5);
        for k in Bf16Kernels::all_supported() {
            for w in [1, 2, 10, 11, 16, 17, 31, 32, 33, 63, 64, 65, 100, 224] {
                let rows: Vec<Vec<f32>> = (0..3).map(|_| (0..w).map(|_| next() * 5.0).collect()).collect();
                let mut got = vec![0xdeadu16; 3 * w + 7];
                interleave3(k, [&rows[0], &rows[1], &rows[2]], &mut got);
                for x in 0..w {
                    for c in 0..3 {
                        assert_eq!(got[3 * x + c], to_bf16(rows[c][x]), "width {w} pixel {x} channel {c}");
                    }
                }
                assert!(got[3 * w..].iter().all(|&v| v == 0xdead), "width {w}: wrote past the pixels");
            }
        }
    }

    /// Every set's products against the exact sums of the same bf16 operands, within the
    /// recursive-summation bound `kd 2^-24 sum |x w|`, and against the scalar twin: every
    /// column count, both widths, runs of 4 to 64 bytes, overlapping columns (stride below
    /// the run), many steps.
    #[test]
    fn products_match_the_exact_sums() {
        let mut next = lcg(11);
        for (run, steps, stride) in [(64, 1, 64), (64, 9, 96), (32, 27, 32), (20, 3, 12), (4, 5, 8), (64, 54, 384)] {
            let offsets: Vec<usize> = (0..steps).map(|i| i * 72 + (i % 3) * 8).collect();
            let need = offsets.iter().max().unwrap() + 15 * stride + run;
            let input: Vec<u16> = (0..need / 2 + 8).map(|_| to_bf16(next() * 3.0)).collect();
            for width in [16, 32] {
                let a: Vec<u16> = (0..steps * run / 4 * width * 2).map(|_| to_bf16(next())).collect();
                let r = Reads { base: 0, offsets: &offsets, stride, run };
                let exact = |j: usize, k: usize| {
                    let (mut sum, mut abs) = (0f64, 0f64);
                    for (i, &o) in offsets.iter().enumerate() {
                        for t in 0..run / 2 {
                            let x = from_bf16(input[(o + j * stride) / 2 + t]) as f64;
                            let w = from_bf16(a[((i * run / 4 + t / 2) * width + k) * 2 + t % 2]) as f64;
                            sum += x * w;
                            abs += (x * w).abs();
                        }
                    }
                    (sum, abs * (steps * run / 2) as f64 * 2f64.powi(-24))
                };
                let verify = |acc: &Bf16Acc, cols: usize, what: &str| {
                    for j in 0..cols {
                        for k in 0..width {
                            let (want, bound) = exact(j, k);
                            let got = acc[j * ROW_WORDS + k] as f64;
                            assert!(
                                (got - want).abs() <= bound,
                                "{what} run {run} width {width} column {j} channel {k}: {got} vs {want}"
                            );
                        }
                    }
                };
                for cols in 1..=NR {
                    let mut twin = [f32::NAN; ROW_WORDS * 16];
                    portable_product(&input, r, &a, width, cols, &mut twin);
                    verify(&twin, cols, "portable");
                    for k in Bf16Kernels::all_supported() {
                        let mut acc = [f32::NAN; ROW_WORDS * 16];
                        strided_product(k, &input, r, &a, width, cols, &mut acc);
                        verify(&acc, cols, "avx512-bf16");
                    }
                }
                if let Some(k) = Bf16Kernels::new(Bf16Set::Amx) {
                    let _ = k;
                    let tiles = AmxTiles::new(TileOp::Bf16, run);
                    let mut acc = [f32::NAN; ROW_WORDS * 16];
                    tile_product(&tiles, &input, r, &a, width, &mut acc);
                    verify(&acc, 16, "amx");
                    let (mut a0, mut a1) = ([f32::NAN; ROW_WORDS * 16], [f32::NAN; ROW_WORDS * 16]);
                    tile_pair_product(&tiles, &input, [0, 0], r, &a, width, [&mut a0, &mut a1]);
                    verify(&a0, 16, "amx pair 0");
                    verify(&a1, 16, "amx pair 1");
                }
            }
        }
    }
}
