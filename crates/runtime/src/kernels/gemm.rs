//! The register-blocked GEMM microkernel shared by every convolution path.
//!
//! One call multiplies a *weight panel* (up to `MR` = 32 output channels, packed `[c][w]`
//! with `w` = 32 or 16, once at load) by a *column panel* (`NR` = 12 columns: Winograd
//! tiles or output pixels, packed `[c / 16][NR][16]`, so the 16 reduction values of
//! column `j` in each 16-deep slice are contiguous) and hands each accumulator to an
//! [`Epilogue`]:
//!
//! ```text
//! acc[k][j] = sum_c A[c][k] B(c, j)      (c in order, one fused multiply-add each)
//! ```
//!
//! The column-panel layout is what the channel-blocked activations produce when 16
//! channels of one pixel are copied as a unit, so both the Winograd input transform and
//! the im2col packing write it with whole-vector stores. Each instruction set has its own
//! register blocking ([`Gemm`]), because the accumulators must stay in registers:
//!
//! | set | accumulators | per call | registers |
//! |---|---|---|---|
//! | AVX-512 | 2 x 12 zmm | 32 channels x 12 columns | 24 + 2 `A` vectors of 32; `B` broadcast from memory |
//! | AVX2 | 2 x 6 ymm | 16 channels x 6 columns | 12 + 2 `A` + 1 broadcast = 15 of 16 |
//! | portable | 4 x 2 of 4 floats | 16 channels x 2 columns | 8 + 4 `A` + 1 = 13 of 16 (SSE2) |
//!
//! A panel of 32 x 12 is one AVX-512 call, four AVX2 calls (two channel halves x two
//! column halves) and twelve portable calls; `A` and `B` are read in place with strides,
//! so the packed layouts are the same for every set. Every accumulator sums its products
//! in the same order on every set, so the two FMA sets compute bitwise the same panel.
//!
//! # Why not matrixmultiply
//!
//! Measured on one Zen 4 core (FMA peak 116 GFLOP/s), AVX-512:
//!
//! - This kernel reaches 113-117 GFLOP/s for reduction depths of 16 to 1728, and 103-113
//!   GFLOP/s on 4-column tail panels.
//! - matrixmultiply's `sgemm` reaches 28-83 GFLOP/s on the batched Winograd GEMMs of the
//!   A0/B0 shapes (`benches/transforms.rs`, group `winograd_gemm`). It falls to 10 GFLOP/s
//!   where a layer has few tiles (F(6,3) on 14x14: 9 tiles), because it packs both
//!   operands on every call.
//! - Whole layers: on A0's 192-channel 14x14 layers (F(4,3)), its GEMM alone takes 1.51 ms
//!   against 0.48 ms for our entire layer with transforms. On the 48-channel 56x56 layer,
//!   the two take about the same time (0.43 ms).
//!
//! Our filters are packed once at load and the activations arrive already in the B layout,
//! so there is nothing left to pack per call.

use repvgg_simd::{Portable, Simd};

use repvgg_simd::layout::CHANNEL_BLOCK;

/// Columns per column panel (tiles for Winograd, output pixels for direct).
pub const NR: usize = 12;

/// Output channels per full weight panel (the last panel of a group may have 16).
pub const MR: usize = 32;

/// Receives the finished accumulators of one panel product.
pub trait Epilogue<S: Simd> {
    /// Accumulator of output channels `channel..channel + S::LANES` of the weight panel
    /// (`channel` a multiple of `S::LANES`) and column `col` of the column panel.
    fn take(&mut self, s: S, channel: usize, col: usize, acc: S::F32);
}

/// An instruction set's register blocking of the panel product.
pub trait Gemm: Simd {
    /// Multiplies the weight panel `a` (`[kc][16 MRV]`) by the first `cols` columns of the
    /// column panel `b` (`[kc / 16][NR][16]`) and passes every accumulator to `epilogue`.
    ///
    /// # Safety
    ///
    /// `kc` must be a multiple of 16; `a` must be valid for `kc * 16 * MRV` reads and `b`
    /// for `kc * NR` reads (the panel keeps its full `NR` stride even when `cols < NR`).
    /// No alignment is required. `1 <= cols <= NR`, `MRV` is 1 or 2.
    unsafe fn panel_product<const MRV: usize, E: Epilogue<Self>>(
        self,
        kc: usize,
        a: *const f32,
        b: *const f32,
        cols: usize,
        epilogue: &mut E,
    );
}

/// Reduction steps ahead of its loads at which the weight stream is prefetched (32 steps
/// are 4 KiB of a 32-wide panel). At batch 1 a layer's filters come from beyond the L2
/// and each weight is used by only a few columns, so the kernel waits on the stream; the
/// hardware prefetchers alone leave gaps (on Intel's cores they stop at every 4 KiB
/// page). Distances of 16 to 128 steps measured the same.
const PREFETCH_STEPS: usize = 32;

/// Asks for the cache line holding `p`, ahead of its load.
#[inline(always)]
fn prefetch(p: *const f32) {
    // SAFETY: SSE is part of x86-64's baseline, and a prefetch is only a hint: it reads
    // nothing the program sees and never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `R` vector rows (channels `ch0 .. ch0 + R * LANES` of the weight panel) by `C` columns
/// (`col0 .. col0 + C`) of the panel product, accumulated over `kc` in registers.
///
/// # Safety
///
/// `a` (weight panel rows at stride `a_stride`, already offset to `ch0`) and `b` (column
/// panel, already offset to `col0`) must be valid for `kc` reduction steps.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // a kernel entry point: pointers, strides and sizes
unsafe fn microkernel<S: Simd, const R: usize, const C: usize, E: Epilogue<S>>(
    s: S,
    kc: usize,
    a: *const f32,
    a_stride: usize,
    b: *const f32,
    ch0: usize,
    col0: usize,
    epilogue: &mut E,
) {
    debug_assert!(kc.is_multiple_of(CHANNEL_BLOCK));
    let mut acc = [[s.zero(); C]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc / CHANNEL_BLOCK {
        for l in 0..CHANNEL_BLOCK {
            // SAFETY: `a` advances by `a_stride` floats per reduction step, `b` by 16 * NR
            // per slice of 16 steps; the caller guarantees kc steps of both are readable.
            let av: [S::F32; R] = std::array::from_fn(|r| unsafe { s.load(a.add(r * S::LANES)) });
            for r in 0..R {
                prefetch(a.wrapping_add(PREFETCH_STEPS * a_stride + r * S::LANES));
            }
            for j in 0..C {
                // SAFETY: as above; element (l, j) of the current slice.
                let bj = s.splat(unsafe { *b.add(j * CHANNEL_BLOCK + l) });
                for r in 0..R {
                    acc[r][j] = s.mul_add(av[r], bj, acc[r][j]);
                }
            }
            // SAFETY: stays within the kc steps the caller guarantees.
            a = unsafe { a.add(a_stride) };
        }
        // SAFETY: stays within the kc * NR floats the caller guarantees.
        b = unsafe { b.add(CHANNEL_BLOCK * NR) };
    }
    for r in 0..R {
        for j in 0..C {
            epilogue.take(s, ch0 + r * S::LANES, col0 + j, acc[r][j]);
        }
    }
}

/// The panel product as calls of an `R`-vector x up-to-`C`-column microkernel: the
/// weight panel's channels `R * LANES` at a time, the columns `C` at a time, and a last
/// column group that runs a kernel of exactly its width (a panel of 4 columns costs a
/// third of one of 12, not the same). `widths` lists 1..=C as literals, one kernel
/// instantiation each.
macro_rules! tiled {
    ($s:expr, $mrv:expr, $kc:expr, $a:expr, $b:expr, $cols:expr, $epilogue:expr, rows = $r:literal, widths = [$($n:literal)*]) => {{
        let (s, kc, a, b, cols) = ($s, $kc, $a, $b, $cols);
        const C: usize = [$($n),*].len();
        let width = CHANNEL_BLOCK * $mrv;
        for ch0 in (0..width).step_by($r * <Self as Simd>::LANES) {
            for col0 in (0..cols).step_by(C) {
                // SAFETY (both blocks): the caller's contract; the offsets stay inside the
                // panels, and at most C <= NR columns from col0 exist.
                let (a, b) = unsafe { (a.add(ch0), b.add(col0 * CHANNEL_BLOCK)) };
                match (cols - col0).min(C) {
                    $($n => unsafe { microkernel::<Self, $r, $n, E>(s, kc, a, width, b, ch0, col0, $epilogue) },)*
                    other => unreachable!("{other} columns"),
                }
            }
        }
    }};
}

/// Implements [`Gemm`] for a token with its register blocking per weight-panel width
/// (`MRV` = 1 or 2 channel blocks): `rows` vectors of channels and up to `widths.len()`
/// columns per microkernel call.
macro_rules! blocking {
    ($(#[$cfg:meta])* $token:ty: $($mrv:literal => rows = $r:literal, widths = [$($n:literal)*]);+ $(;)?) => {
        $(#[$cfg])*
        impl Gemm for $token {
            #[inline(always)]
            unsafe fn panel_product<const MRV: usize, E: Epilogue<Self>>(
                self,
                kc: usize,
                a: *const f32,
                b: *const f32,
                cols: usize,
                epilogue: &mut E,
            ) {
                match MRV {
                    $($mrv => tiled!(self, MRV, kc, a, b, cols, epilogue, rows = $r, widths = [$($n)*]),)+
                    other => unreachable!("weight panels of {other} channel blocks"),
                }
            }
        }
    };
}

// AVX-512: the whole weight panel (1 or 2 zmm rows) x 12 columns in one call.
blocking!(#[cfg(target_arch = "x86_64")] repvgg_simd::x86_64::Avx512:
    1 => rows = 1, widths = [1 2 3 4 5 6 7 8 9 10 11 12];
    2 => rows = 2, widths = [1 2 3 4 5 6 7 8 9 10 11 12]);
// AVX2: 2 ymm rows (16 channels) x 6 columns per call.
blocking!(#[cfg(target_arch = "x86_64")] repvgg_simd::x86_64::Avx2:
    1 => rows = 2, widths = [1 2 3 4 5 6];
    2 => rows = 2, widths = [1 2 3 4 5 6]);
// Portable: 4 four-float rows (16 channels) x 2 columns per call.
blocking!(Portable:
    1 => rows = 4, widths = [1 2];
    2 => rows = 4, widths = [1 2]);

/// An [`Epilogue`] that stores the panel product as `[16 MRV][NR]` channel blocks:
/// channel `k`, column `j` at `((k / 16) * NR + j) * 16 + k % 16` (the Winograd
/// products' layout).
pub struct StoreBlocked {
    pub dst: *mut f32,
}

impl<S: Simd> Epilogue<S> for StoreBlocked {
    #[inline(always)]
    fn take(&mut self, s: S, channel: usize, col: usize, acc: S::F32) {
        let at = ((channel / CHANNEL_BLOCK) * NR + col) * CHANNEL_BLOCK + channel % CHANNEL_BLOCK;
        // SAFETY: the creator of StoreBlocked provides 16 MRV * NR writable floats.
        unsafe { s.store(self.dst.add(at), acc) }
    }
}

#[cfg(test)]
mod tests {
    use repvgg_simd::{Dispatch, dispatch};

    use super::*;

    /// The panel product of every instruction set this CPU runs against a scalar twin
    /// (f64 sums of the same products): both weight-panel widths, every column count, and
    /// reduction depths from 16 to 1728 (the deepest RepVGG im2col, 192 channels x 9).
    /// Columns past `cols` and the lanes around the output hold NaN, so a kernel that
    /// read a column it was not given, or wrote outside the panel, would show.
    /// Tolerance: fp32 sums of kc products of values in [-1, 1] against f64:
    /// sqrt(kc) * 2^-22 relative to the sum of |products| leaves a wide margin.
    #[test]
    fn every_isa_matches_the_scalar_twin() {
        let mut seed = 1u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        for isa in Dispatch::all_supported() {
            for kc in [16, 32, 48, 144, 432, 1728] {
                for mrv in [1, 2] {
                    let width = 16 * mrv;
                    let a: Vec<f32> = (0..kc * width).map(|_| next()).collect();
                    for cols in 1..=NR {
                        let mut b = vec![f32::NAN; kc * NR];
                        for c in 0..kc {
                            for j in 0..cols {
                                b[(c / 16) * NR * 16 + j * 16 + c % 16] = next();
                            }
                        }
                        let mut out = vec![f32::NAN; 2 * 16 * NR + 32];
                        let dst = out[16..].as_mut_ptr();
                        let mut store = StoreBlocked { dst };
                        // SAFETY: a holds kc x width floats, b kc x NR, out 16 MRV x NR after 16.
                        dispatch!(isa, |s| unsafe {
                            match mrv {
                                1 => s.panel_product::<1, _>(kc, a.as_ptr(), b.as_ptr(), cols, &mut store),
                                _ => s.panel_product::<2, _>(kc, a.as_ptr(), b.as_ptr(), cols, &mut store),
                            }
                        });
                        let tol = (kc as f64).sqrt() * 2f64.powi(-22);
                        for k in 0..width {
                            for j in 0..NR {
                                let got = out[16 + ((k / 16) * NR + j) * 16 + k % 16];
                                if j >= cols {
                                    assert!(
                                        got.is_nan(),
                                        "{:?} kc {kc} w {width} cols {cols}: column {j} written",
                                        isa.isa()
                                    );
                                    continue;
                                }
                                let terms = (0..kc)
                                    .map(|c| a[c * width + k] as f64 * b[(c / 16) * NR * 16 + j * 16 + c % 16] as f64);
                                let (want, scale) = terms.fold((0f64, 0f64), |(s, m), t| (s + t, m + t.abs()));
                                assert!(
                                    (got as f64 - want).abs() <= tol * scale,
                                    "{:?} kc {kc} w {width} cols {cols} k {k} j {j}: {got} vs {want}",
                                    isa.isa()
                                );
                            }
                        }
                        assert!(
                            out[..16].iter().chain(&out[16 + 2 * 16 * NR..]).all(|v| v.is_nan()),
                            "outside the panel"
                        );
                        if mrv == 1 {
                            assert!(
                                out[16 + 16 * NR..16 + 2 * 16 * NR].iter().all(|v| v.is_nan()),
                                "second half written"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The FMA instruction sets sum each accumulator in the same order: bitwise equal.
    #[test]
    fn the_fma_sets_compute_bitwise_the_same_panel() {
        let sets: Vec<Dispatch> =
            Dispatch::all_supported().into_iter().filter(|d| d.isa() != repvgg_simd::Isa::Portable).collect();
        let (kc, cols) = (432, 11);
        let a: Vec<f32> = (0..kc * 32).map(|i| ((i * 37 % 101) as f32 - 50.0) / 51.0).collect();
        let b: Vec<f32> = (0..kc * NR).map(|i| ((i * 53 % 97) as f32 - 48.0) / 49.0).collect();
        let outputs: Vec<Vec<f32>> = sets
            .iter()
            .map(|&isa| {
                let mut out = vec![0f32; 32 * NR];
                let mut store = StoreBlocked { dst: out.as_mut_ptr() };
                // SAFETY: sizes as the contract asks.
                dispatch!(isa, |s| unsafe { s.panel_product::<2, _>(kc, a.as_ptr(), b.as_ptr(), cols, &mut store) });
                out
            })
            .collect();
        for (set, out) in sets.iter().zip(&outputs).skip(1) {
            assert!(out.iter().zip(&outputs[0]).all(|(x, y)| x.to_bits() == y.to_bits()), "{:?}", set.isa());
        }
    }
}
