//! The register-blocked GEMM microkernel shared by every convolution path.
//!
//! Computes an `MR x NR` block of `C = A B` where `MR = 16 * MRV` output channels (one or
//! two AVX-512 vectors) and `NR` columns (tiles or pixels):
//!
//! ```text
//! acc[v][j] += sum_c A[c][16 v .. 16 v + 16] * B(c, j)
//! ```
//!
//! `A` is packed `[c][MR]` (the weights, packed once at load), `B` is packed
//! `[c / 16][NR][16]`: for each 16-deep slice of the reduction, the 16 values of column
//! `j` are contiguous. That is exactly what the channel-blocked activation layout
//! produces when 16 channels of one pixel are copied as a unit, so both the Winograd
//! input transform and the im2col packing write `B` with whole-vector stores. The kernel
//! broadcasts one `B` value per FMA (a memory-operand broadcast on AVX-512) and keeps the
//! `MRV x NR` accumulators in registers: 2 x 12 accumulators + 2 `A` vectors = 26 of the
//! 32 zmm registers.
//!
//! # Why not matrixmultiply
//!
//! Measured on one Zen 4 core (FMA peak 116 GFLOP/s):
//!
//! - This kernel reaches 113-117 GFLOP/s for reduction depths of 16 to 1728, and 103-113
//!   GFLOP/s on 4-column tail blocks.
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

use wide::f32x16;

pub type V = f32x16;

/// Columns per microkernel call (tiles for Winograd, output pixels for direct).
pub const NR: usize = 12;

/// The `MRV x NR` accumulator block.
pub type Acc<const MRV: usize> = [[V; NR]; MRV];

/// Accumulates `A[kc x 16 MRV] * B[kc x NR]` into `acc`, for the first `cols` columns.
///
/// A partial block (the last tiles or pixels of a layer) runs a kernel instantiated for
/// exactly its width, so a block of 4 costs a third of a block of 12, not the same.
///
/// # Safety
///
/// `kc` must be a multiple of 16; `a` must be valid for `kc * 16 * MRV` reads and `b` for
/// `kc * NR` reads (the panel keeps its full `NR` stride even when `cols < NR`). No
/// alignment is required. `1 <= cols <= NR`.
#[inline(always)]
pub unsafe fn gemm_block<const MRV: usize>(kc: usize, a: *const f32, b: *const f32, cols: usize) -> Acc<MRV> {
    let mut acc = [[V::ZERO; NR]; MRV];
    macro_rules! width {
        ($($n:literal)*) => {
            match cols {
                // SAFETY: forwarded contract; a kernel of n columns reads a subset of the panel.
                $($n => unsafe { microkernel::<MRV, $n>(kc, a, b, &mut acc) },)*
                _ => panic!("block width {cols} outside 1..={NR}"),
            }
        };
    }
    width!(1 2 3 4 5 6 7 8 9 10 11 12);
    acc
}

/// Accumulates `A[kc x 16 MRV] * B[kc x COLS]` into the first `COLS` columns of `acc`.
///
/// # Safety
///
/// As for [`gemm_block`], with `COLS <= NR`.
#[inline(always)]
pub unsafe fn microkernel<const MRV: usize, const COLS: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    acc: &mut Acc<MRV>,
) {
    debug_assert!(kc.is_multiple_of(16));
    // Accumulate in a local: through `acc` itself, every store would have to be kept in
    // memory because the compiler cannot prove `a` and `b` do not point into it.
    let mut sum = *acc;
    let mut a = a;
    let mut b = b;
    for _ in 0..kc / 16 {
        for l in 0..16 {
            // SAFETY: `a` advances by 16 * MRV floats per reduction step, `b` by 16 * NR per
            // slice of 16 steps; the caller guarantees kc steps of both are readable.
            let av: [V; MRV] = std::array::from_fn(|v| unsafe { std::ptr::read_unaligned(a.add(v * 16) as *const V) });
            for j in 0..COLS {
                // SAFETY: as above; element (l, j) of the current slice.
                let bj = V::splat(unsafe { *b.add(j * 16 + l) });
                for v in 0..MRV {
                    sum[v][j] = av[v].mul_add(bj, sum[v][j]);
                }
            }
            // SAFETY: stays within the kc * 16 * MRV floats the caller guarantees.
            a = unsafe { a.add(16 * MRV) };
        }
        // SAFETY: stays within the kc * NR floats the caller guarantees.
        b = unsafe { b.add(16 * NR) };
    }
    *acc = sum;
}
