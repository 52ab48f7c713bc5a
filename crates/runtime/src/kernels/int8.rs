//! INT8 kernels: u8 activations times s8 weights, summed exactly in i32, then scaled back
//! to floats. One kernel set per CPU feature level, each with the portable code as its
//! scalar twin: integer sums are exact, so every set computes the same bits.
//!
//! The quantized layer (QARepVGG, Chu et al. 2022, section 3, for why RepVGG needs
//! per-channel weights; the affine scheme is Jacob et al. 2018) is
//!
//! ```text
//! x_q[c]    = clamp(round_half_even(x[c] / s_x), 0, 255)          (u8, zero point 0)
//! w_q[k][c] = clamp(round_half_even(w[k][c] / s_w[k]), -127, 127) (s8, per output channel)
//! acc[k]    = sum_c w_q[k][c] x_q[c]                              (i32, exact)
//! y[k]      = relu?(f32(acc[k]) * (s_x s_w[k]) + bias[k])          (one product, one sum)
//! ```
//!
//! Every RepVGG layer after the stem reads the output of a ReLU, so the activation's zero
//! point is 0 and u8 spends all its 256 steps on the values that occur.
//!
//! # Layouts
//!
//! - Column panel: `[kd / r][columns][r]` u8 ([`Int8Kernels::columns`],
//!   [`Int8Kernels::run_bytes`]): each column's reduction in runs of `r` contiguous bytes.
//!   The vector sets use `NR` = 12 columns and `r` = 16 (the FP32 direct path's layout, in
//!   bytes), so each 4-deep group is one 32-bit word to broadcast; AMX uses 16 columns
//!   (a tile's rows) and `r` up to 64 (a tile row's bytes).
//! - Weight panel: `[kd / 4][width][4]` s8, `width` 16 or 32 output channels: one 64-byte
//!   row holds 16 channels' 4-deep groups, which is what `VPDPBUSD` multiplies a
//!   broadcast 4-byte group with, and what an AMX `B` tile row holds.
//!
//! # Kernel sets
//!
//! | set | needs | per instruction |
//! |---|---|---|
//! | `amx` | amx-tile, amx-int8, the OS's permission | `tdpbusd`: 16 columns x 16 channels x up to 64 deep |
//! | `avx512-vnni` | avx512f, avx512bw, avx512vnni | `vpdpbusd zmm`: 16 channels x 4 deep, into i32 |
//! | `avx2` | avx2 | `vpmaddwd ymm` on widened values: 4 channels x 4 deep, pairs into i32 |
//! | `portable` | nothing | scalar i32 multiply-adds |
//!
//! The AVX2 set (also the one for AVX-512 CPUs without VNNI) widens both operands to
//! 16 bits and uses `vpmaddwd`, whose pair sums cannot overflow (2 x 255 x 128 < 2^31),
//! rather than `vpmaddubsw`, whose u8 x s8 pair sum saturates at 16 bits (2 x 255 x 127 =
//! 64770 > 32767): the only ways around that saturation are 7-bit weights or inputs
//! (ONNX Runtime's `reduce_range`), which would change the quantization for every set,
//! or for this set alone, and break the bitwise agreement between sets.
//!
//! A sum of `kd` products is at most `kd x 255 x 128` in magnitude: [`MAX_DEPTH`] keeps it
//! inside i32.

use crate::kernels::gemm::{MR, NR};
use repvgg_simd::layout::CHANNEL_BLOCK;
use repvgg_simd::{Dispatch, Isa};

/// Largest reduction depth whose sums fit i32 whatever the values: `kd x 255 x 128 <=
/// i32::MAX`.
pub const MAX_DEPTH: usize = i32::MAX as usize / (255 * 128);

/// Bound of the symmetric weight range, `[-127, 127]` (-128 is never produced, so negating
/// a weight channel cannot overflow).
pub const WEIGHT_MAX: i32 = 127;

/// Largest activation code.
pub const ACTIVATION_MAX: f32 = 255.0;

/// The int8 kernel sets, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Int8Set {
    #[serde(rename = "amx")]
    Amx,
    #[serde(rename = "avx512-vnni")]
    Vnni512,
    #[serde(rename = "avx2")]
    Avx2,
    #[serde(rename = "portable")]
    Portable,
}

impl std::str::FromStr for Int8Set {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Int8Set, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        Int8Set::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            crate::error::Error::Option(format!("unknown int8 kernel set `{s}` (amx, avx512-vnni, avx2, portable)"))
        })
    }
}

impl Int8Set {
    pub const ALL: [Int8Set; 4] = [Int8Set::Amx, Int8Set::Vnni512, Int8Set::Avx2, Int8Set::Portable];

    pub fn name(self) -> &'static str {
        match self {
            Int8Set::Amx => "amx",
            Int8Set::Vnni512 => "avx512-vnni",
            Int8Set::Avx2 => "avx2",
            Int8Set::Portable => "portable",
        }
    }
}

/// An int8 kernel set this CPU was checked to run (the int8 counterpart of
/// [`Dispatch`]): made only by [`Int8Kernels::for_dispatch`] and
/// [`Int8Kernels::all_supported`], which check the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int8Kernels(Int8Set);

#[cfg(target_arch = "x86_64")]
fn has_vnni512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

impl Int8Kernels {
    /// The int8 set that goes with the float kernel set `dispatch`: forcing `avx2` or
    /// `portable` (`--isa`, `REPVGG_ISA`) forces the same level here.
    pub fn for_dispatch(dispatch: Dispatch) -> Int8Kernels {
        match dispatch.isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if has_amx() => Int8Kernels(Int8Set::Amx),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if has_vnni512() => Int8Kernels(Int8Set::Vnni512),
            // A Dispatch for either proves AVX2.
            Isa::Avx512 | Isa::Avx2 => Int8Kernels(Int8Set::Avx2),
            Isa::Portable => Int8Kernels(Int8Set::Portable),
        }
    }

    /// Every int8 set this CPU runs, best first (for tests that cover them all).
    pub fn all_supported() -> Vec<Int8Kernels> {
        let mut sets = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if has_amx() {
                sets.push(Int8Kernels(Int8Set::Amx));
            }
            if has_vnni512() {
                sets.push(Int8Kernels(Int8Set::Vnni512));
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                sets.push(Int8Kernels(Int8Set::Avx2));
            }
        }
        sets.push(Int8Kernels(Int8Set::Portable));
        sets
    }

    /// `set`, if this CPU (and OS, for AMX) runs it.
    pub fn new(set: Int8Set) -> Option<Int8Kernels> {
        Int8Kernels::all_supported().into_iter().find(|k| k.0 == set)
    }

    pub fn set(self) -> Int8Set {
        self.0
    }

    /// Columns of a column panel.
    pub fn columns(self) -> usize {
        match self.0 {
            Int8Set::Amx => MAX_COLUMNS,
            _ => NR,
        }
    }

    /// Bytes of one column's reduction stored contiguously in a panel of depth `kd` (a
    /// multiple of 16): 16 for the vector sets; for AMX the deepest tile row (64, 48, 32
    /// or 16 bytes) that divides `kd`, so every product step is one full tile.
    pub fn run_bytes(self, kd: usize) -> usize {
        match self.0 {
            Int8Set::Amx => [64, 48, 32, 16].into_iter().find(|r| kd.is_multiple_of(*r)).unwrap_or(16),
            _ => CHANNEL_BLOCK,
        }
    }
}

/// Most columns of a column panel in any set (AMX's 16 tile rows).
pub const MAX_COLUMNS: usize = 16;

/// Byte offset of column `j`, reduction index `d` in a column panel of `columns` columns
/// stored in runs of `run` bytes.
#[inline(always)]
pub fn column_offset(columns: usize, run: usize, j: usize, d: usize) -> usize {
    ((d / run) * columns + j) * run + d % run
}

#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn has_amx() -> bool {
    // Every AMX CPU has AVX-512 with VNNI; the quantization and epilogue use AVX-512.
    crate::kernels::amx::available(crate::kernels::amx::TileOp::U8S8)
}

#[cfg(all(target_arch = "x86_64", not(all(target_os = "linux", target_env = "gnu"))))]
fn has_amx() -> bool {
    false
}

/// Zero point of the codes of a signed input (the network's, read by the stem): value 0
/// is code 128, so the codes span `[-128 s_x, 127 s_x]`. Every other layer reads a ReLU's
/// output and uses zero point 0.
pub const SIGNED_ZERO_POINT: u8 = 128;

/// The activation code of one value: `clamp(round_half_even(v * inv_scale + zero), 0,
/// 255)`, NaN to 0, `zero` being 0 or [`SIGNED_ZERO_POINT`]. The product and the sum are
/// two roundings (never fused); the rounding adds and subtracts 2^23, which rounds a float
/// in `[0, 2^23)` to an integer, ties to even, with two exact operations every vector set
/// has; the clamps come first, in the order `vmaxps`/`vminps` evaluate them, so that
/// every set computes the same code.
#[inline(always)]
pub fn quantize_one(v: f32, inv_scale: f32, zero: f32) -> u8 {
    const MAGIC: f32 = 8_388_608.0;
    let y = v * inv_scale + zero;
    let y = if y > 0.0 { y } else { 0.0 };
    let y = if y < ACTIVATION_MAX { y } else { ACTIVATION_MAX };
    ((y + MAGIC) - MAGIC) as u8
}

/// `dst[i] = quantize_one(src[i], inv_scale, zero)`.
pub fn quantize(k: Int8Kernels, src: &[f32], inv_scale: f32, zero: u8, dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "quantize: source and destination lengths differ");
    let zero = zero as f32;
    match k.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Int8Kernels of this set is made only after checking the CPU.
        Int8Set::Amx | Int8Set::Vnni512 => unsafe { x86::quantize_avx512(src, inv_scale, zero, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above (AVX2).
        Int8Set::Avx2 => unsafe { x86::quantize_avx2(src, inv_scale, zero, dst) },
        _ => src.iter().zip(dst).for_each(|(v, q)| *q = quantize_one(*v, inv_scale, zero)),
    }
}

/// Bytes of one window row of [`windows`] (a tile row).
pub const WINDOW_BYTES: usize = 64;

/// The windows of the network input's layer on AMX (`exec::direct_int8`'s window path):
/// window `x < count` (the [`WINDOW_BYTES`] at `dst[64 x..]`) holds, for each group `g`,
/// the four bytes `src[g][stride x..stride x + 4]` at bytes `4g..4g + 4`, and zeros from
/// `4 src.len()` on. Windows from `count` up to the next multiple of 16 may be written too,
/// with bytes of no meaning (their sums are dropped); `dst` holds them.
///
/// With AVX-512 VBMI, 16 windows at a time: one byte permutation per group gathers its 16
/// four-byte groups into a vector, and a 16 x 16 transposition of 4-byte words turns the
/// groups' vectors into the windows' rows (a copy per group and window before).
pub fn windows(k: Int8Kernels, src: &[&[u8]], stride: usize, count: usize, dst: &mut [u8]) {
    assert!(src.len() <= WINDOW_BYTES / 4 && (1..=4).contains(&stride), "{} groups at stride {stride}", src.len());
    assert!(count == 0 || src.iter().all(|s| s.len() >= stride * (count - 1) + 4), "window sources too short");
    assert!(dst.len() >= count.next_multiple_of(16) * WINDOW_BYTES, "window rows too short");
    match k.0 {
        #[cfg(target_arch = "x86_64")]
        Int8Set::Amx | Int8Set::Vnni512 if std::arch::is_x86_feature_detected!("avx512vbmi") => {
            // SAFETY: AVX-512F and BW (the set) and VBMI (checked); the asserts bound the
            // reads (masked to each source's length) and the 16-window writes.
            unsafe { x86::windows_avx512(src, stride, count, dst) }
        }
        _ => {
            for (x, window) in dst.chunks_exact_mut(WINDOW_BYTES).take(count).enumerate() {
                window.fill(0);
                for (g, s) in src.iter().enumerate() {
                    window[4 * g..4 * g + 4].copy_from_slice(&s[stride * x..stride * x + 4]);
                }
            }
        }
    }
}

/// The accumulators of one panel product: `acc[j * MR + k]` for column `j` and output
/// channel `k` of the weight panel.
pub type Tile = [i32; MR * MAX_COLUMNS];

/// `acc[j][k] = sum_d a[d][k] b[d][j]` for the first `cols` columns of the column panel `b`
/// (the set's layout: [`column_offset`]) and the `width` channels of the weight panel `a`
/// (`[kd / 4][width][4]` s8). The vector sets leave columns from `cols` on as they were;
/// AMX computes all 16 (a panel's unused columns are zeros).
pub fn panel_product(k: Int8Kernels, kd: usize, a: &[i8], width: usize, b: &[u8], cols: usize, acc: &mut Tile) {
    assert!(kd.is_multiple_of(CHANNEL_BLOCK) && kd <= MAX_DEPTH, "reduction depth {kd}");
    assert!(width == MR || width == CHANNEL_BLOCK, "weight panel width {width}");
    assert!((1..=k.columns()).contains(&cols), "{cols} columns");
    assert!(a.len() >= kd * width && b.len() >= kd * k.columns(), "panels shorter than their depth");
    match k.0 {
        #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
        // SAFETY: AMX-TILE, AMX-INT8 and the OS permission (Int8Kernels); the asserts cover
        // the tiles' reads (kd * width weights, kd * 16 panel bytes) and the tile's rows.
        Int8Set::Amx => unsafe { amx::panel(kd, a.as_ptr(), width, b.as_ptr(), k.run_bytes(kd), acc) },
        _ => strided_product(k, kd, a, width, b, Columns::PACKED, cols, acc),
    }
}

/// Where the vector sets read a column's reduction: 16-deep slice `t` of column `j` starts
/// at `slice(t) + j * column`. Slices follow the 3x3 reduction order (channel block, kernel
/// row, kernel column), so one geometry describes both a packed panel ([`Columns::PACKED`])
/// and a zero-bordered input read in place (a block's plane, a row, a pixel; columns
/// `16 x stride` bytes apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    pub block: usize,
    pub row: usize,
    pub tap: usize,
    pub column: usize,
}

impl Columns {
    /// The packed panel `[kd / 16][NR][16]`: slices `NR x 16` bytes apart, columns 16.
    pub const PACKED: Columns = Columns { block: 9 * NR * 16, row: 3 * NR * 16, tap: NR * 16, column: 16 };

    /// Columns whose reductions are contiguous bytes, `column` bytes apart (slice `t` at
    /// `16 t`).
    pub const fn contiguous(column: usize) -> Columns {
        Columns { block: 9 * 16, row: 3 * 16, tap: 16, column }
    }

    /// Byte offset of slice `t` of column 0.
    #[inline(always)]
    pub fn slice(&self, t: usize) -> usize {
        (t / 9) * self.block + (t % 9 / 3) * self.row + (t % 3) * self.tap
    }

    /// The offsets of slices 0, 1, 2, ... in turn, without a division per slice.
    #[inline(always)]
    pub fn walk(self) -> impl Iterator<Item = usize> {
        let mut at = (0usize, 0usize, 0usize);
        std::iter::from_fn(move || {
            let (blk, ky, kx) = at;
            at = match (ky, kx) {
                (2, 2) => (blk + 1, 0, 0),
                (_, 2) => (blk, ky + 1, 0),
                _ => (blk, ky, kx + 1),
            };
            Some(blk * self.block + ky * self.row + kx * self.tap)
        })
    }
}

/// [`panel_product`] for the vector and portable sets on columns laid out as `g` says
/// (a packed panel, or the bordered input read in place): the same sums.
#[allow(clippy::too_many_arguments)] // a kernel entry point: panels, geometry and sizes
pub fn strided_product(
    k: Int8Kernels,
    kd: usize,
    a: &[i8],
    width: usize,
    b: &[u8],
    g: Columns,
    cols: usize,
    acc: &mut Tile,
) {
    assert!(kd.is_multiple_of(CHANNEL_BLOCK) && kd <= MAX_DEPTH, "reduction depth {kd}");
    assert!(width == MR || width == CHANNEL_BLOCK, "weight panel width {width}");
    assert!((1..=NR).contains(&cols), "{cols} columns");
    assert!(a.len() >= kd * width, "weight panel shorter than its depth");
    let reach = (0..kd / 16).map(|t| g.slice(t)).max().unwrap_or(0) + (cols - 1) * g.column + 16;
    assert!(reach <= b.len(), "columns reach byte {reach} of {}", b.len());
    match k.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the set's features (Int8Kernels), and the asserts above cover
        // every read (kd * width weights; every slice of every column up to `reach`) and the
        // tile's writes.
        Int8Set::Vnni512 => unsafe {
            match width {
                MR => x86::vnni_panel::<2>(kd, a.as_ptr(), b.as_ptr(), g, cols, acc),
                _ => x86::vnni_panel::<1>(kd, a.as_ptr(), b.as_ptr(), g, cols, acc),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above (AVX2).
        Int8Set::Avx2 => unsafe {
            for half in 0..width / CHANNEL_BLOCK {
                x86::avx2_panel(kd, a.as_ptr(), width, half * CHANNEL_BLOCK, b.as_ptr(), g, cols, acc)
            }
        },
        Int8Set::Amx => panic!("AMX reads tiles, not strided columns"),
        _ => portable_panel(kd, a, width, b, g, cols, acc),
    }
}

/// AMX: the column panel's 16 columns are the rows of `A` tiles, the weight panel's rows
/// those of `B` tiles (16 channels of 4-deep groups each), so one `tdpbusd` per 16
/// channels and `run` bytes of reduction.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod amx {
    use std::arch::asm;

    use super::{MR, Tile};
    use crate::kernels::amx::Config;

    /// # Safety
    ///
    /// AMX-TILE and AMX-INT8 with the OS's permission; `a` valid for `kd * width` reads
    /// and `b` for `kd * 16`; `run` in {16, 32, 48, 64} divides `kd`; `width` 16 or 32.
    pub unsafe fn panel(kd: usize, a: *const i8, width: usize, b: *const u8, run: usize, acc: &mut Tile) {
        // tmm0 and tmm1 accumulate channels 0-15 and 16-31, tmm2 holds `A`, tmm3 and tmm4
        // the two `B` tiles.
        let config = Config::new(&[(16, 64), (16, 64), (16, run), (run / 4, 64), (run / 4, 64)]);
        let steps = kd / run;
        // Bytes between one step's A tiles and B tiles and the next's.
        let (a_step, b_step) = (16 * run, run / 4 * width * 4);
        let (a_stride, b_stride, c_stride) = (run, width * 4, MR * 4);
        // SAFETY: the caller guarantees CPU and OS support and the bounds: step s < steps
        // loads A from b + s * 16 run (16 rows of `run` bytes, inside kd * 16 bytes) and B
        // from a + s * run/4 * width * 4 (`run / 4` rows at a stride of `width * 4`, 64
        // bytes each, plus 64 for the second tile when width is 32: inside kd * width).
        // The stores write 16 rows of 64 bytes at a stride of MR * 4 into the tile (16 rows
        // of MR i32). The configuration is valid and aligned, steps >= 1, and the tile
        // state is released before the block ends.
        unsafe {
            if width == MR {
                asm!(
                    "ldtilecfg [{cfg}]",
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "2:",
                    "tileloadd tmm2, [{pb} + {sa}*1]",
                    "tileloadd tmm3, [{pa} + {sb}*1]",
                    "tileloadd tmm4, [{pa} + {sb}*1 + 64]",
                    "tdpbusd tmm0, tmm2, tmm3",
                    "tdpbusd tmm1, tmm2, tmm4",
                    "add {pb}, {ab}",
                    "add {pa}, {bb}",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {sc}*1], tmm0",
                    "tilestored [{c} + {sc}*1 + 64], tmm1",
                    "tilerelease",
                    cfg = in(reg) config.0.as_ptr(),
                    pb = inout(reg) b => _,
                    pa = inout(reg) a => _,
                    sa = in(reg) a_stride,
                    sb = in(reg) b_stride,
                    sc = in(reg) c_stride,
                    ab = in(reg) a_step,
                    bb = in(reg) b_step,
                    c = in(reg) acc.as_mut_ptr(),
                    n = inout(reg) steps => _,
                    options(nostack),
                );
            } else {
                asm!(
                    "ldtilecfg [{cfg}]",
                    "tilezero tmm0",
                    "2:",
                    "tileloadd tmm2, [{pb} + {sa}*1]",
                    "tileloadd tmm3, [{pa} + {sb}*1]",
                    "tdpbusd tmm0, tmm2, tmm3",
                    "add {pb}, {ab}",
                    "add {pa}, {bb}",
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{c} + {sc}*1], tmm0",
                    "tilerelease",
                    cfg = in(reg) config.0.as_ptr(),
                    pb = inout(reg) b => _,
                    pa = inout(reg) a => _,
                    sa = in(reg) a_stride,
                    sb = in(reg) b_stride,
                    sc = in(reg) c_stride,
                    ab = in(reg) a_step,
                    bb = in(reg) b_step,
                    c = in(reg) acc.as_mut_ptr(),
                    n = inout(reg) steps => _,
                    options(nostack),
                );
            }
        }
    }
}

/// The scalar twin of the panel product.
fn portable_panel(kd: usize, a: &[i8], width: usize, b: &[u8], g: Columns, cols: usize, acc: &mut Tile) {
    for j in 0..cols {
        let row = &mut acc[j * MR..j * MR + width];
        row.fill(0);
        for q in 0..kd / 4 {
            let x = &b[g.slice(q / 4) + j * g.column + (q % 4) * 4..][..4];
            let w = &a[q * width * 4..(q + 1) * width * 4];
            for (k, sum) in row.iter_mut().enumerate() {
                let w = &w[k * 4..k * 4 + 4];
                *sum += (0..4).map(|t| x[t] as i32 * w[t] as i32).sum::<i32>();
            }
        }
    }
}

/// `out[c] = relu?(f32(acc[c] - zero[c]) * scale[c] + bias[c])` for the 16 channels of
/// one block, `zero[c]` being the input zero point times the sum of channel `c`'s weights
/// (0 for a ReLU's input): the requantization every set runs as this one loop, so it
/// rounds the same everywhere (an exact difference, a conversion, a product, then a sum,
/// never fused).
#[inline(always)]
pub fn dequantize_block(acc: &[i32], zero: &[i32], scale: &[f32], bias: &[f32], relu: bool, out: &mut [f32]) {
    let (acc, zero, scale, bias, out) = (&acc[..16], &zero[..16], &scale[..16], &bias[..16], &mut out[..16]);
    for c in 0..16 {
        let y = acc[c].wrapping_sub(zero[c]) as f32 * scale[c] + bias[c];
        out[c] = if relu { repvgg_simd::relu(y) } else { y };
    }
}

/// `dequantize_block` for the `count` tile rows (columns) from `row0` on, channels
/// `c..c + 16`, into `out` (16 floats per row): one call per tile and channel block, in
/// the set's vectors. Every set rounds as `dequantize_block`: `cvtdq2ps`, then a product,
/// then a sum, and `max(0, y)` keeping NaN.
#[allow(clippy::too_many_arguments)] // a kernel entry point: the tile's part, the affine map, the output
pub fn dequantize_rows(
    k: Int8Kernels,
    tile: &Tile,
    row0: usize,
    c: usize,
    count: usize,
    zero: &[i32],
    scale: &[f32],
    bias: &[f32],
    relu: bool,
    out: &mut [f32],
) {
    assert!(c + CHANNEL_BLOCK <= MR && row0 + count <= MAX_COLUMNS && out.len() >= count * CHANNEL_BLOCK);
    let tile = &tile[row0 * MR..];
    let (zero, scale, bias) = (&zero[..CHANNEL_BLOCK], &scale[..CHANNEL_BLOCK], &bias[..CHANNEL_BLOCK]);
    match k.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F (every AMX and VNNI CPU of these sets has it, Int8Kernels checked);
        // the asserts bound the reads of `tile`, `zero`, `scale`, `bias` and the writes of
        // `out`.
        Int8Set::Amx | Int8Set::Vnni512 => unsafe {
            x86::dequantize_avx512(tile, c, count, zero, scale, bias, relu, out)
        },
        _ => {
            for j in 0..count {
                let row = &mut out[j * CHANNEL_BLOCK..(j + 1) * CHANNEL_BLOCK];
                dequantize_block(&tile[j * MR + c..], zero, scale, bias, relu, row);
            }
        }
    }
}

/// [`dequantize_rows`] then [`quantize`] with zero point 0, as one pass: the next layer's
/// codes of the same floats, `quantize_one(dequantized, inv_scale, 0)`, without the floats
/// leaving registers. The same operations in the same order, so the same bits. `out` is
/// `(bytes, pitch)`: row `j`'s 16 codes at `bytes[j * pitch..]` (16: consecutive pixels of
/// a channel block; more: pixels of a pixel-major layout).
#[allow(clippy::too_many_arguments)] // a kernel entry point: the tile's part, the affine map, the output
pub fn requantize_rows(
    k: Int8Kernels,
    tile: &Tile,
    row0: usize,
    c: usize,
    count: usize,
    affine: (&[i32], &[f32], &[f32]),
    relu: bool,
    inv_scale: f32,
    out: (&mut [u8], usize),
) {
    let (zero, scale, bias) = affine;
    let (out, pitch) = out;
    assert!(c + CHANNEL_BLOCK <= MR && row0 + count <= MAX_COLUMNS && pitch >= CHANNEL_BLOCK);
    assert!(count == 0 || out.len() >= (count - 1) * pitch + CHANNEL_BLOCK);
    let (zero, scale, bias) = (&zero[..CHANNEL_BLOCK], &scale[..CHANNEL_BLOCK], &bias[..CHANNEL_BLOCK]);
    match k.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F and BW (every AMX and VNNI CPU of these sets has them,
        // Int8Kernels checked); the asserts bound the reads of `tile` and the affine map and
        // the writes of `out`.
        Int8Set::Amx | Int8Set::Vnni512 => unsafe {
            x86::requantize_avx512(&tile[row0 * MR..], c, count, [scale, bias], zero, relu, inv_scale, out, pitch)
        },
        _ => {
            let mut floats = [0f32; MAX_COLUMNS * CHANNEL_BLOCK];
            let floats = &mut floats[..count * CHANNEL_BLOCK];
            dequantize_rows(k, tile, row0, c, count, zero, scale, bias, relu, floats);
            for (j, row) in floats.chunks_exact(CHANNEL_BLOCK).enumerate() {
                quantize(k, row, inv_scale, 0, &mut out[j * pitch..][..CHANNEL_BLOCK]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{CHANNEL_BLOCK, Columns, MR, NR, Tile};

    /// `relu?(f32(acc - zero) * scale + bias)` for one row of 16 channels, rounded as
    /// `dequantize_block` rounds (a product, then a sum; `max(0, y)` keeps NaN).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn dequantized(acc: __m512i, zero: __m512i, scale: __m512, bias: __m512, relu: bool) -> __m512 {
        let y = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, zero)), scale), bias);
        if relu { _mm512_max_ps(_mm512_setzero_ps(), y) } else { y }
    }

    /// `quantize_one(y, inv, offset)` for 16 values, as 16 words of 0..=255.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn code_words(y: __m512, inv: __m512, offset: __m512) -> __m512i {
        let y = _mm512_add_ps(_mm512_mul_ps(y, inv), offset);
        // max(y, 0) gives 0 for NaN (the second operand), as `quantize_one`.
        let y = _mm512_min_ps(_mm512_max_ps(y, _mm512_setzero_ps()), _mm512_set1_ps(255.0));
        // Ties to even by the instruction's own rounding, whatever MXCSR says.
        _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y)
    }

    /// [`code_words`] as 16 bytes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn codes(y: __m512, inv: __m512, offset: __m512) -> __m128i {
        _mm512_cvtepi32_epi8(code_words(y, inv, offset))
    }

    /// Four rows of [`code_words`] as 64 bytes, row after row: two saturating packs (exact
    /// on 0..=255) interleave the rows by 4-byte groups within each 128-bit lane, and one
    /// permutation puts the groups in row order. One 64-byte store replaces four narrowing
    /// stores, which measured as the epilogue's bottleneck.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn four_rows(q: [__m512i; 4]) -> __m512i {
        let bytes = _mm512_packus_epi16(_mm512_packus_epi32(q[0], q[1]), _mm512_packus_epi32(q[2], q[3]));
        // Group 4L + r holds row r's bytes 4L..4L + 4; row r's group L goes to 4r + L.
        let order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
        _mm512_permutexvar_epi32(order, bytes)
    }

    /// # Safety
    ///
    /// AVX-512F; `tile` holds `count` rows of `MR` from its start, `c + 16 <= MR`,
    /// `zero`, `scale` and `bias` hold 16 values, `out` `16 count`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)] // as `dequantize_rows`
    pub unsafe fn dequantize_avx512(
        tile: &[i32],
        c: usize,
        count: usize,
        zero: &[i32],
        scale: &[f32],
        bias: &[f32],
        relu: bool,
        out: &mut [f32],
    ) {
        // SAFETY: the caller's bounds: row j < count reads tile[j * MR + c..][..16]
        // (c + 16 <= MR) and writes out[16 j..][..16].
        unsafe {
            let (s, b, z) = (
                _mm512_loadu_ps(scale.as_ptr()),
                _mm512_loadu_ps(bias.as_ptr()),
                _mm512_loadu_si512(zero.as_ptr().cast()),
            );
            for j in 0..count {
                let y = dequantized(_mm512_loadu_si512(tile.as_ptr().add(j * MR + c).cast()), z, s, b, relu);
                _mm512_storeu_ps(out.as_mut_ptr().add(j * CHANNEL_BLOCK), y);
            }
        }
    }

    /// The 16 x 16 transposition of 4-byte words: `out[x]` word `g` is `rows[g]` word `x`
    /// (32-bit then 64-bit interleaves within 128-bit lanes, then two lane shuffles).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose16(rows: [__m512i; 16]) -> [__m512i; 16] {
        let mut a = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            a[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
            a[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
        }
        // b[4i + j], lane L: rows 4i..4i + 4 of column 4L + j.
        let mut b = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
            b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
            b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
            b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            let low = _mm512_shuffle_i32x4::<0x44>(b[j], b[4 + j]);
            let high = _mm512_shuffle_i32x4::<0xEE>(b[j], b[4 + j]);
            let low2 = _mm512_shuffle_i32x4::<0x44>(b[8 + j], b[12 + j]);
            let high2 = _mm512_shuffle_i32x4::<0xEE>(b[8 + j], b[12 + j]);
            out[j] = _mm512_shuffle_i32x4::<0x88>(low, low2);
            out[4 + j] = _mm512_shuffle_i32x4::<0xDD>(low, low2);
            out[8 + j] = _mm512_shuffle_i32x4::<0x88>(high, high2);
            out[12 + j] = _mm512_shuffle_i32x4::<0xDD>(high, high2);
        }
        out
    }

    /// # Safety
    ///
    /// AVX-512F, BW and VBMI; `src.len() <= 16`, `stride <= 4`, every source at least
    /// `stride (count - 1) + 4` bytes, `dst` at least `count` rounded up to 16 windows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn windows_avx512(src: &[&[u8]], stride: usize, count: usize, dst: &mut [u8]) {
        let mut index = [0u8; 64];
        for (i, v) in index.iter_mut().enumerate() {
            *v = (stride * (i / 4) + i % 4) as u8;
        }
        // SAFETY: 64 readable bytes.
        let index = unsafe { _mm512_loadu_si512(index.as_ptr().cast()) };
        for x0 in (0..count).step_by(16) {
            let mut rows = [_mm512_setzero_si512(); 16];
            for (row, s) in rows.iter_mut().zip(src) {
                let at = stride * x0;
                let n = (s.len() - at).min(64);
                let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
                // SAFETY: the mask reads the n <= s.len() - at bytes there are.
                let bytes = unsafe { _mm512_maskz_loadu_epi8(mask, s.as_ptr().add(at).cast()) };
                *row = _mm512_permutexvar_epi8(index, bytes);
            }
            for (x, window) in transpose16(rows).into_iter().enumerate() {
                // SAFETY: window x0 + x < count rounded up to 16, which `dst` holds.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().add((x0 + x) * 64).cast(), window) };
            }
        }
    }

    /// # Safety
    ///
    /// The CPU must have AVX-512F and AVX-512BW; the slices have equal lengths.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantize_avx512(src: &[f32], inv_scale: f32, zero_point: f32, dst: &mut [u8]) {
        let n = src.len() / 16 * 16;
        let (inv, offset) = (_mm512_set1_ps(inv_scale), _mm512_set1_ps(zero_point));
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 <= n <= both lengths.
            unsafe {
                let q = codes(_mm512_loadu_ps(src.as_ptr().add(i)), inv, offset);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), q);
            }
        }
        for i in n..src.len() {
            dst[i] = super::quantize_one(src[i], inv_scale, zero_point);
        }
    }

    /// `dequantize_avx512` then `quantize_avx512` (zero point 0) in registers: the same
    /// two helpers, so the same operations in the same order.
    ///
    /// # Safety
    ///
    /// AVX-512F and BW; `tile` holds `count` rows of `MR` from which `c..c + 16` are read,
    /// the affine slices 16 values each, `out` `(count - 1) pitch + 16` bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)] // as `requantize_rows`
    pub unsafe fn requantize_avx512(
        tile: &[i32],
        c: usize,
        count: usize,
        affine: [&[f32]; 2],
        zero: &[i32],
        relu: bool,
        inv_scale: f32,
        out: &mut [u8],
        pitch: usize,
    ) {
        // SAFETY: the caller's bounds: row j < count reads tile[j * MR + c..][..16] and
        // writes out[pitch j..][..16] (four rows at once only when pitch is 16).
        unsafe {
            let (s, b, z) = (
                _mm512_loadu_ps(affine[0].as_ptr()),
                _mm512_loadu_ps(affine[1].as_ptr()),
                _mm512_loadu_si512(zero.as_ptr().cast()),
            );
            let inv = _mm512_set1_ps(inv_scale);
            // A macro, not a closure: a closure would not inherit the target features.
            macro_rules! row {
                ($j:expr) => {
                    code_words(
                        dequantized(_mm512_loadu_si512(tile.as_ptr().add($j * MR + c).cast()), z, s, b, relu),
                        inv,
                        _mm512_setzero_ps(),
                    )
                };
            }
            let mut j = 0;
            while pitch == CHANNEL_BLOCK && j + 4 <= count {
                let q = four_rows([row!(j), row!(j + 1), row!(j + 2), row!(j + 3)]);
                _mm512_storeu_si512(out.as_mut_ptr().add(j * CHANNEL_BLOCK).cast(), q);
                j += 4;
            }
            for j in j..count {
                _mm_storeu_si128(out.as_mut_ptr().add(j * pitch).cast(), _mm512_cvtepi32_epi8(row!(j)));
            }
        }
    }

    /// # Safety
    ///
    /// The CPU must have AVX2; the slices have equal lengths.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_avx2(src: &[f32], inv_scale: f32, zero_point: f32, dst: &mut [u8]) {
        let n = src.len() / 8 * 8;
        let (inv, offset, zero, top, magic) = (
            _mm256_set1_ps(inv_scale),
            _mm256_set1_ps(zero_point),
            _mm256_setzero_ps(),
            _mm256_set1_ps(255.0),
            _mm256_set1_ps(8_388_608.0),
        );
        for i in (0..n).step_by(8) {
            // SAFETY: i + 8 <= n <= both lengths.
            unsafe {
                let y = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(src.as_ptr().add(i)), inv), offset);
                let y = _mm256_min_ps(_mm256_max_ps(y, zero), top);
                let y = _mm256_sub_ps(_mm256_add_ps(y, magic), magic);
                let q = _mm256_cvttps_epi32(y);
                let words = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
                _mm_storel_epi64(dst.as_mut_ptr().add(i).cast(), _mm_packus_epi16(words, words));
            }
        }
        for i in n..src.len() {
            dst[i] = super::quantize_one(src[i], inv_scale, zero_point);
        }
    }

    /// The VNNI panel product for `16 MRV` channels: `2 MRV` accumulators per column.
    ///
    /// # Safety
    ///
    /// AVX-512F/BW/VNNI; `a` valid for `kd * 16 MRV` reads, `b` for `kd * NR`;
    /// `kd % 16 == 0`; `1 <= cols <= NR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn vnni_panel<const MRV: usize>(
        kd: usize,
        a: *const i8,
        b: *const u8,
        g: Columns,
        cols: usize,
        acc: &mut Tile,
    ) {
        // SAFETY: forwarded; each arm's C equals cols.
        unsafe {
            match cols {
                1 => vnni_tile::<MRV, 1>(kd, a, b, g, acc),
                2 => vnni_tile::<MRV, 2>(kd, a, b, g, acc),
                3 => vnni_tile::<MRV, 3>(kd, a, b, g, acc),
                4 => vnni_tile::<MRV, 4>(kd, a, b, g, acc),
                5 => vnni_tile::<MRV, 5>(kd, a, b, g, acc),
                6 => vnni_tile::<MRV, 6>(kd, a, b, g, acc),
                7 => vnni_tile::<MRV, 7>(kd, a, b, g, acc),
                8 => vnni_tile::<MRV, 8>(kd, a, b, g, acc),
                9 => vnni_tile::<MRV, 9>(kd, a, b, g, acc),
                10 => vnni_tile::<MRV, 10>(kd, a, b, g, acc),
                11 => vnni_tile::<MRV, 11>(kd, a, b, g, acc),
                _ => vnni_tile::<MRV, NR>(kd, a, b, g, acc),
            }
        }
    }

    /// # Safety
    ///
    /// As [`vnni_panel`], with `C` columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn vnni_tile<const MRV: usize, const C: usize>(
        kd: usize,
        a: *const i8,
        b: *const u8,
        g: Columns,
        acc: &mut Tile,
    ) {
        let mut sums = [[_mm512_setzero_si512(); MRV]; C];
        // Opaque to the optimiser: unrolled, the four groups' column broadcasts are all
        // hoisted above their products and, with 24 accumulators live, spilled to the
        // stack and read back; as a loop of unknown count each stays next to its use.
        let groups = std::hint::black_box(4);
        for (t, slice) in g.walk().take(kd / 16).enumerate() {
            for group in 0..groups {
                let q = t * 4 + group;
                // SAFETY: q < kd / 4, so the weight row (64 MRV bytes at q * 64 MRV) is in
                // the panel, and the column words (4 bytes of slice t, column j < C, group)
                // are within the reach the caller checked.
                unsafe {
                    let w: [__m512i; MRV] =
                        std::array::from_fn(|r| _mm512_loadu_si512(a.add((q * MRV + r) * 64).cast()));
                    let x = b.add(slice + group * 4);
                    for (j, sum) in sums.iter_mut().enumerate() {
                        let xj = _mm512_set1_epi32(x.add(j * g.column).cast::<i32>().read_unaligned());
                        for r in 0..MRV {
                            sum[r] = _mm512_dpbusd_epi32(sum[r], xj, w[r]);
                        }
                    }
                }
            }
        }
        for (j, sum) in sums.iter().enumerate() {
            for (r, v) in sum.iter().enumerate() {
                // SAFETY: j < NR and r * 16 + 16 <= MR: inside the tile.
                unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(j * MR + r * 16).cast(), *v) };
            }
        }
    }

    /// The AVX2 panel product for the 16 channels `ch0..ch0 + 16` of a `width`-wide panel,
    /// two columns at a time: the four 4-channel groups' weights are widened to 16 bits
    /// once per step and shared by both columns; `vpmaddwd` leaves each channel as two
    /// partial sums, added at the end.
    ///
    /// # Safety
    ///
    /// AVX2; `a` valid for `kd * width` reads, `b` for `kd * NR`; `kd % 16 == 0`;
    /// `ch0 + 16 <= width`; `1 <= cols <= NR`.
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)] // the panel, its geometry and the tile
    pub unsafe fn avx2_panel(
        kd: usize,
        a: *const i8,
        width: usize,
        ch0: usize,
        b: *const u8,
        g: Columns,
        cols: usize,
        acc: &mut Tile,
    ) {
        let mut j = 0;
        while j < cols {
            // SAFETY: forwarded; columns j, j + 1 (when two) are below cols.
            unsafe {
                if cols - j >= 2 {
                    avx2_tile::<2>(kd, a, width, ch0, b, g, j, acc)
                } else {
                    avx2_tile::<1>(kd, a, width, ch0, b, g, j, acc)
                }
            }
            j += 2;
        }
    }

    /// # Safety
    ///
    /// As [`avx2_panel`], for columns `j0..j0 + C`.
    #[target_feature(enable = "avx2")]
    #[inline]
    #[allow(clippy::too_many_arguments)] // as `avx2_panel`
    unsafe fn avx2_tile<const C: usize>(
        kd: usize,
        a: *const i8,
        width: usize,
        ch0: usize,
        b: *const u8,
        g: Columns,
        j0: usize,
        acc: &mut Tile,
    ) {
        let mut sums = [[_mm256_setzero_si256(); 4]; C];
        for (t, slice) in g.walk().take(kd / 16).enumerate() {
            for group in 0..4 {
                let q = t * 4 + group;
                // SAFETY: row q of the weight panel holds `width * 4` bytes and the 64 read
                // start at ch0 * 4 <= (width - 16) * 4; the column words are within the
                // reach the caller checked, as in the VNNI kernel.
                unsafe {
                    let row = a.add(q * width * 4 + ch0 * 4);
                    let w: [__m256i; 4] =
                        std::array::from_fn(|i| _mm256_cvtepi8_epi16(_mm_loadu_si128(row.add(i * 16).cast())));
                    let x = b.add(slice + group * 4);
                    for (c, sum) in sums.iter_mut().enumerate() {
                        let word = x.add((j0 + c) * g.column).cast::<i32>().read_unaligned();
                        let xj = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(word)));
                        for i in 0..4 {
                            sum[i] = _mm256_add_epi32(sum[i], _mm256_madd_epi16(w[i], xj));
                        }
                    }
                }
            }
        }
        for (c, sum) in sums.iter().enumerate() {
            // hadd leaves [k0 k1 k4 k5 | k2 k3 k6 k7]; the permute restores channel order.
            let low = _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(sum[0], sum[1]));
            let high = _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(sum[2], sum[3]));
            let at = (j0 + c) * MR + ch0;
            // SAFETY: column j0 + c < NR and ch0 + 16 <= MR: inside the tile.
            unsafe {
                _mm256_storeu_si256(acc.as_mut_ptr().add(at).cast(), low);
                _mm256_storeu_si256(acc.as_mut_ptr().add(at + 8).cast(), high);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u32) -> impl FnMut() -> u32 {
        let mut s = seed;
        move || {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            s >> 8
        }
    }

    /// The plain definition, `sum_d a[d][k] b[d][j]` in i64, for the twins to match.
    fn naive(kd: usize, a: &[i8], width: usize, b: &[u8], cols: usize) -> Vec<i64> {
        let mut out = vec![0i64; cols * width];
        for j in 0..cols {
            for k in 0..width {
                out[j * width + k] = (0..kd)
                    .map(|d| {
                        b[(d / 16) * NR * 16 + j * 16 + d % 16] as i64 * a[(d / 4) * width * 4 + k * 4 + d % 4] as i64
                    })
                    .sum();
            }
        }
        out
    }

    /// Every set against the i64 definition, bitwise: every column count, both widths,
    /// depths from 16 to a 2048-channel 3x3 layer's; random values, then the saturation
    /// corners (255 x 127 and 255 x -128 everywhere, the largest sums in magnitude).
    #[test]
    fn every_set_matches_the_definition_bitwise() {
        let mut next = lcg(7);
        for kd in [16, 32, 48, 144, 432, 1728, 2048 * 9] {
            for width in [CHANNEL_BLOCK, MR] {
                for fill in ["random", "255x127", "255x-128"] {
                    let a: Vec<i8> = (0..kd * width)
                        .map(|_| match fill {
                            "random" => (next() % 255) as i32 - 127,
                            "255x127" => 127,
                            _ => -128,
                        } as i8)
                        .collect();
                    // Logical columns `[j][d]`, placed in each set's layout below.
                    let logical: Vec<u8> = (0..MAX_COLUMNS * kd)
                        .map(|_| if fill == "random" { (next() % 256) as u8 } else { 255 })
                        .collect();
                    let b: Vec<u8> =
                        (0..kd * NR).map(|i| logical[(i / 16 % NR) * kd + (i / (16 * NR)) * 16 + i % 16]).collect();
                    for cols in 1..=NR {
                        let want = naive(kd, &a, width, &b, cols);
                        for k in Int8Kernels::all_supported() {
                            let (columns, run) = (k.columns(), k.run_bytes(kd));
                            let mut panel = vec![0u8; kd * columns];
                            for j in 0..cols {
                                for d in 0..kd {
                                    panel[column_offset(columns, run, j, d)] = logical[j * kd + d];
                                }
                            }
                            let mut tile = [i32::MIN; MR * MAX_COLUMNS];
                            panel_product(k, kd, &a, width, &panel, cols, &mut tile);
                            for j in 0..cols {
                                for c in 0..width {
                                    assert_eq!(
                                        tile[j * MR + c] as i64,
                                        want[j * width + c],
                                        "{:?} kd {kd} width {width} {fill} cols {cols}: column {j} channel {c}",
                                        k.set()
                                    );
                                }
                            }
                            // The vector sets write only the columns asked for.
                            if k.set() != Int8Set::Amx {
                                assert!(tile[cols * MR..].iter().all(|&v| v == i32::MIN), "{:?}", k.set());
                            }
                        }
                    }
                }
            }
        }
    }

    /// The fused epilogue against its two passes (and so against the scalar twins), bitwise,
    /// per set: sums across i32's range, both channel halves of a tile, every row window,
    /// with and without ReLU, scales that send values past both clamps and onto ties.
    #[test]
    fn requantizing_is_dequantizing_then_quantizing() {
        let mut next = lcg(11);
        let mut tile = [0i32; MR * MAX_COLUMNS];
        for (i, v) in tile.iter_mut().enumerate() {
            *v = match i % 7 {
                0 => i32::MAX,
                1 => i32::MIN + 1,
                _ => (next() % 2_000_001) as i32 - 1_000_000,
            };
        }
        let zero: Vec<i32> = (0..MR).map(|_| (next() % 20_001) as i32 - 10_000).collect();
        let scale: Vec<f32> = (0..MR).map(|_| (next() % 1000) as f32 * 1e-6).collect();
        let bias: Vec<f32> = (0..MR).map(|_| (next() % 2001) as f32 / 10.0 - 100.0).collect();
        for k in Int8Kernels::all_supported() {
            for (c, relu, inv) in [(0, true, 1.0), (16, true, 0.5), (0, false, 3.0), (16, false, 1e-3)] {
                for (row0, count) in [(0, 16), (0, 1), (3, 7), (15, 1), (5, 11)] {
                    let affine = (&zero[c..], &scale[c..], &bias[c..]);
                    let mut floats = vec![0f32; count * CHANNEL_BLOCK];
                    dequantize_rows(k, &tile, row0, c, count, affine.0, affine.1, affine.2, relu, &mut floats);
                    let mut want = vec![0u8; count * CHANNEL_BLOCK];
                    quantize(k, &floats, inv, 0, &mut want);
                    let mut got = vec![0u8; count * CHANNEL_BLOCK];
                    requantize_rows(k, &tile, row0, c, count, affine, relu, inv, (&mut got, CHANNEL_BLOCK));
                    assert_eq!(got, want, "{:?} c {c} relu {relu} rows {row0}+{count}", k.set());
                    // Pixel-major rows, 48 bytes apart: the same codes, the bytes between untouched.
                    let mut spread = vec![7u8; (count - 1) * 48 + CHANNEL_BLOCK];
                    requantize_rows(k, &tile, row0, c, count, affine, relu, inv, (&mut spread, 48));
                    for (j, row) in want.chunks_exact(CHANNEL_BLOCK).enumerate() {
                        assert_eq!(&spread[j * 48..][..CHANNEL_BLOCK], row, "{:?} pitch 48 row {j}", k.set());
                        if j + 1 < count {
                            assert!(spread[j * 48 + CHANNEL_BLOCK..(j + 1) * 48].iter().all(|&b| b == 7));
                        }
                    }
                }
            }
        }
    }

    /// The window gather on every set against its definition, bitwise: strides 1 and 2,
    /// 1 to 16 groups, counts that leave part of a block of 16, sources that end where the
    /// last window's bytes do.
    #[test]
    fn every_set_gathers_windows_as_defined() {
        let mut next = lcg(5);
        for stride in [1, 2] {
            for groups in [1, 9, 12, 16] {
                for count in [1, 7, 16, 17, 112] {
                    let len = stride * (count - 1) + 4;
                    let rows: Vec<Vec<u8>> = (0..groups).map(|_| (0..len).map(|_| next() as u8).collect()).collect();
                    let src: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
                    let mut want = vec![0u8; count * WINDOW_BYTES];
                    for (x, window) in want.chunks_exact_mut(WINDOW_BYTES).enumerate() {
                        for (g, row) in rows.iter().enumerate() {
                            window[4 * g..4 * g + 4].copy_from_slice(&row[stride * x..stride * x + 4]);
                        }
                    }
                    for k in Int8Kernels::all_supported() {
                        let mut got = vec![0xA5u8; count.next_multiple_of(16) * WINDOW_BYTES];
                        windows(k, &src, stride, count, &mut got);
                        let got = &got[..count * WINDOW_BYTES];
                        assert_eq!(got, &want[..], "{:?} stride {stride} groups {groups} count {count}", k.set());
                    }
                }
            }
        }
    }

    /// The largest depth keeps the worst-case sum inside i32.
    #[test]
    fn the_depth_bound_keeps_sums_in_i32() {
        assert!(MAX_DEPTH as i64 * 255 * 128 <= i32::MAX as i64);
        assert!((MAX_DEPTH as i64 + 1) * 255 * 128 > i32::MAX as i64);
    }

    /// Quantization: every set against `quantize_one`, bitwise, on ties (x.5 rounds to
    /// even), the clamps, NaN, infinities, -0, denormals and random values, with lengths
    /// that leave vector tails.
    #[test]
    fn every_set_quantizes_as_the_scalar_twin() {
        let mut next = lcg(3);
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            254.5,
            255.0,
            255.49,
            255.5,
            256.0,
            1e30,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE / 2.0,
        ];
        values.extend((0..1000).map(|_| (next() % 70_000) as f32 / 256.0 - 10.0));
        for zero in [0, SIGNED_ZERO_POINT] {
            for inv_scale in [1.0, 0.37, 3.0] {
                for len in [values.len(), values.len() - 1, 15, 7, 1] {
                    let want: Vec<u8> =
                        values[..len].iter().map(|v| quantize_one(*v, inv_scale, zero as f32)).collect();
                    for k in Int8Kernels::all_supported() {
                        let mut got = vec![0u8; len];
                        quantize(k, &values[..len], inv_scale, zero, &mut got);
                        assert_eq!(got, want, "{:?} inv_scale {inv_scale} zero {zero} len {len}", k.set());
                    }
                }
            }
        }
        assert_eq!(
            [0.5, 1.5, 2.5, 3.5, 254.5, 255.5, -3.0, f32::NAN].map(|v| quantize_one(v, 1.0, 0.0)),
            [0, 2, 2, 4, 254, 255, 0, 0]
        );
        // Signed: value 0 is code 128; -128.5 and below clamp to 0, 127.5 and above to 255.
        assert_eq!(
            [0.0, -0.5, -1.5, 1.5, -128.0, -200.0, 127.0, 300.0, f32::NAN].map(|v| quantize_one(v, 1.0, 128.0)),
            [128, 128, 126, 130, 0, 0, 255, 255, 0]
        );
    }
}
