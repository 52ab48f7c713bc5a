//! AVX2 + FMA: 8-float `ymm` vectors, 16 registers.

use std::arch::x86_64::*;
use std::ops::{Add, Mul, Sub};

use crate::{Dispatch, Isa, Simd};

/// The AVX2 + FMA token.
#[derive(Debug, Clone, Copy)]
pub struct Avx2(());

/// Runs `f` with the Avx2 token inside a trampoline compiled with AVX2 and FMA.
///
/// Panics unless `proof` names [`Isa::Avx2`]: a [`Dispatch`] does only after checking the CPU.
#[inline(always)]
pub fn enter<R>(proof: Dispatch, f: impl FnOnce(Avx2) -> R) -> R {
    assert_eq!(proof.isa(), Isa::Avx2, "a Avx2 trampoline needs a Dispatch for it");
    // SAFETY: the Dispatch proves that this CPU has the trampoline's features.
    unsafe { run(f) }
}

/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn run<R>(f: impl FnOnce(Avx2) -> R) -> R {
    f(Avx2(()))
}

/// Eight floats in a `ymm` register.
#[derive(Debug, Clone, Copy)]
pub struct F32x8(__m256);

macro_rules! binary {
    ($trait:ident, $method:ident, $intrinsic:ident) => {
        impl $trait for F32x8 {
            type Output = F32x8;
            #[inline(always)]
            fn $method(self, o: F32x8) -> F32x8 {
                // SAFETY: an F32x8 exists only through an Avx2 token, so the CPU has AVX.
                F32x8(unsafe { $intrinsic(self.0, o.0) })
            }
        }
    };
}
binary!(Add, add, _mm256_add_ps);
binary!(Sub, sub, _mm256_sub_ps);
binary!(Mul, mul, _mm256_mul_ps);

impl crate::sealed::Sealed for Avx2 {}

// SAFETY (every method): an Avx2 token exists only when the CPU has AVX2 and FMA.
impl Simd for Avx2 {
    type F32 = F32x8;
    const LANES: usize = 8;
    const ISA: Isa = Isa::Avx2;

    #[inline(always)]
    fn splat(self, value: f32) -> F32x8 {
        // SAFETY: see the impl.
        F32x8(unsafe { _mm256_set1_ps(value) })
    }
    #[inline(always)]
    unsafe fn load(self, src: *const f32) -> F32x8 {
        // SAFETY: see the impl; the caller guarantees 8 readable floats.
        F32x8(unsafe { _mm256_loadu_ps(src) })
    }
    #[inline(always)]
    unsafe fn load_bf16(self, src: *const u16) -> F32x8 {
        // SAFETY: see the impl; the caller guarantees 8 readable u16s. Zero-extending each
        // to 32 bits and shifting it into the high half is the bf16's f32.
        F32x8(unsafe {
            // A transmute, not `_mm256_castsi256_ps`: see `avx512::bits`.
            let words = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(src.cast())));
            std::mem::transmute::<__m256i, __m256>(words)
        })
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32, value: F32x8) {
        // SAFETY: see the impl; the caller guarantees 8 writable floats.
        unsafe { _mm256_storeu_ps(dst, value.0) }
    }
    #[inline(always)]
    fn mul_add(self, a: F32x8, b: F32x8, c: F32x8) -> F32x8 {
        // SAFETY: see the impl.
        F32x8(unsafe { _mm256_fmadd_ps(a.0, b.0, c.0) })
    }
    #[inline(always)]
    fn max(self, a: F32x8, b: F32x8) -> F32x8 {
        // SAFETY: see the impl.
        F32x8(unsafe { _mm256_max_ps(a.0, b.0) })
    }
    #[inline(always)]
    fn and(self, a: F32x8, b: F32x8) -> F32x8 {
        // SAFETY: see the impl.
        F32x8(unsafe { _mm256_and_ps(a.0, b.0) })
    }
    #[inline(always)]
    fn select(self, mask: F32x8, a: F32x8, b: F32x8) -> F32x8 {
        // SAFETY: see the impl.
        F32x8(unsafe { _mm256_blendv_ps(b.0, a.0, mask.0) })
    }
    #[inline(always)]
    fn mul_add_scalar(self, a: f32, b: f32, c: f32) -> f32 {
        // Inside an AVX2 trampoline this is one `vfmadd` instruction.
        a.mul_add(b, c)
    }
}
