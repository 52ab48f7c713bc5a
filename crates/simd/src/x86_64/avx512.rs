//! AVX-512F: 16-float `zmm` vectors, 32 registers.

use std::arch::x86_64::*;
use std::ops::{Add, Mul, Sub};

use crate::{Dispatch, Isa, Simd};

/// The AVX-512 token.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

/// Runs `f` with the Avx512 token inside a trampoline compiled with AVX-512F, AVX2 and FMA.
///
/// Panics unless `proof` names [`Isa::Avx512`]: a [`Dispatch`] does only after checking the CPU.
#[inline(always)]
pub fn enter<R>(proof: Dispatch, f: impl FnOnce(Avx512) -> R) -> R {
    assert_eq!(proof.isa(), Isa::Avx512, "a Avx512 trampoline needs a Dispatch for it");
    // SAFETY: the Dispatch proves that this CPU has the trampoline's features.
    unsafe { run(f) }
}

/// # Safety
///
/// The CPU must support AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn run<R>(f: impl FnOnce(Avx512) -> R) -> R {
    f(Avx512(()))
}

/// The bits of `v` as an integer vector. A transmute rather than `_mm512_castps_si512`:
/// the intrinsic is a target-feature function, which the methods below (inlined into
/// AVX-512 trampolines, but compiled without the feature themselves) cannot always
/// inline, and an outlined cast passes both vectors through memory.
#[inline(always)]
fn bits(v: __m512) -> __m512i {
    // SAFETY: both are 64 bytes of plain data; every bit pattern is valid for each.
    unsafe { std::mem::transmute(v) }
}

/// [`bits`]' inverse.
#[inline(always)]
fn floats(v: __m512i) -> __m512 {
    // SAFETY: as in `bits`.
    unsafe { std::mem::transmute(v) }
}

/// Sixteen floats in a `zmm` register.
#[derive(Debug, Clone, Copy)]
pub struct F32x16(__m512);

macro_rules! binary {
    ($trait:ident, $method:ident, $intrinsic:ident) => {
        impl $trait for F32x16 {
            type Output = F32x16;
            #[inline(always)]
            fn $method(self, o: F32x16) -> F32x16 {
                // SAFETY: an F32x16 exists only through an Avx512 token, so the CPU has AVX-512F.
                F32x16(unsafe { $intrinsic(self.0, o.0) })
            }
        }
    };
}
binary!(Add, add, _mm512_add_ps);
binary!(Sub, sub, _mm512_sub_ps);
binary!(Mul, mul, _mm512_mul_ps);

impl crate::sealed::Sealed for Avx512 {}

// SAFETY (every method): an Avx512 token exists only when the CPU has AVX-512F, AVX2 and
// FMA. Bitwise operations go through the integer forms: the `_ps` ones need AVX512DQ.
impl Simd for Avx512 {
    type F32 = F32x16;
    const LANES: usize = 16;
    const ISA: Isa = Isa::Avx512;

    #[inline(always)]
    fn splat(self, value: f32) -> F32x16 {
        // SAFETY: see the impl.
        F32x16(unsafe { _mm512_set1_ps(value) })
    }
    #[inline(always)]
    unsafe fn load(self, src: *const f32) -> F32x16 {
        // SAFETY: see the impl; the caller guarantees 16 readable floats.
        F32x16(unsafe { _mm512_loadu_ps(src) })
    }
    #[inline(always)]
    unsafe fn load_bf16(self, src: *const u16) -> F32x16 {
        // SAFETY: see the impl; the caller guarantees 16 readable u16s. Zero-extending each
        // to 32 bits and shifting it into the high half is the bf16's f32.
        F32x16(unsafe { floats(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(src.cast())))) })
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32, value: F32x16) {
        // SAFETY: see the impl; the caller guarantees 16 writable floats.
        unsafe { _mm512_storeu_ps(dst, value.0) }
    }
    #[inline(always)]
    fn mul_add(self, a: F32x16, b: F32x16, c: F32x16) -> F32x16 {
        // SAFETY: see the impl.
        F32x16(unsafe { _mm512_fmadd_ps(a.0, b.0, c.0) })
    }
    #[inline(always)]
    fn max(self, a: F32x16, b: F32x16) -> F32x16 {
        // SAFETY: see the impl.
        F32x16(unsafe { _mm512_max_ps(a.0, b.0) })
    }
    #[inline(always)]
    fn and(self, a: F32x16, b: F32x16) -> F32x16 {
        // SAFETY: see the impl.
        F32x16(unsafe { floats(_mm512_and_si512(bits(a.0), bits(b.0))) })
    }
    #[inline(always)]
    fn select(self, mask: F32x16, a: F32x16, b: F32x16) -> F32x16 {
        // SAFETY: see the impl.
        unsafe {
            let m = bits(mask.0);
            let keep = _mm512_and_si512(m, bits(a.0));
            let other = _mm512_andnot_si512(m, bits(b.0));
            F32x16(floats(_mm512_or_si512(keep, other)))
        }
    }
    #[inline(always)]
    fn mul_add_scalar(self, a: f32, b: f32, c: f32) -> f32 {
        // Inside an AVX-512 trampoline this is one `vfmadd` instruction.
        a.mul_add(b, c)
    }
}
