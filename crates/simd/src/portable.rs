//! The portable kernel set: 4-float arrays in plain Rust, which LLVM compiles to the
//! target's baseline SIMD (SSE2 on x86-64, NEON on aarch64). No fused multiply-add: the
//! product is rounded, then added, on every target.

use std::ops::{Add, Mul, Sub};

use crate::{Isa, Simd};

/// The portable token (always available).
#[derive(Debug, Clone, Copy)]
pub struct Portable(());

impl Portable {
    pub fn new() -> Portable {
        Portable(())
    }
}

impl Default for Portable {
    fn default() -> Self {
        Portable::new()
    }
}

/// Four floats.
#[derive(Debug, Clone, Copy)]
pub struct F32x4([f32; 4]);

#[inline(always)]
fn lanes(f: impl Fn(usize) -> f32) -> F32x4 {
    F32x4(std::array::from_fn(f))
}

impl Add for F32x4 {
    type Output = F32x4;
    #[inline(always)]
    fn add(self, o: F32x4) -> F32x4 {
        lanes(|i| self.0[i] + o.0[i])
    }
}

impl Sub for F32x4 {
    type Output = F32x4;
    #[inline(always)]
    fn sub(self, o: F32x4) -> F32x4 {
        lanes(|i| self.0[i] - o.0[i])
    }
}

impl Mul for F32x4 {
    type Output = F32x4;
    #[inline(always)]
    fn mul(self, o: F32x4) -> F32x4 {
        lanes(|i| self.0[i] * o.0[i])
    }
}

impl crate::sealed::Sealed for Portable {}

impl Simd for Portable {
    type F32 = F32x4;
    const LANES: usize = 4;
    const ISA: Isa = Isa::Portable;

    #[inline(always)]
    fn splat(self, value: f32) -> F32x4 {
        F32x4([value; 4])
    }
    #[inline(always)]
    unsafe fn load(self, src: *const f32) -> F32x4 {
        // SAFETY: the caller guarantees 4 readable floats.
        F32x4(unsafe { std::ptr::read_unaligned(src as *const [f32; 4]) })
    }
    #[inline(always)]
    unsafe fn load_bf16(self, src: *const u16) -> F32x4 {
        // SAFETY: the caller guarantees 4 readable u16s.
        let bits = unsafe { std::ptr::read_unaligned(src as *const [u16; 4]) };
        F32x4(bits.map(|b| f32::from_bits((b as u32) << 16)))
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32, value: F32x4) {
        // SAFETY: the caller guarantees 4 writable floats.
        unsafe { std::ptr::write_unaligned(dst as *mut [f32; 4], value.0) }
    }
    #[inline(always)]
    fn mul_add(self, a: F32x4, b: F32x4, c: F32x4) -> F32x4 {
        a * b + c
    }
    #[inline(always)]
    fn max(self, a: F32x4, b: F32x4) -> F32x4 {
        // `a > b ? a : b`: b where either is NaN, as the x86 instruction does.
        lanes(|i| if a.0[i] > b.0[i] { a.0[i] } else { b.0[i] })
    }
    #[inline(always)]
    fn and(self, a: F32x4, b: F32x4) -> F32x4 {
        lanes(|i| f32::from_bits(a.0[i].to_bits() & b.0[i].to_bits()))
    }
    #[inline(always)]
    fn select(self, mask: F32x4, a: F32x4, b: F32x4) -> F32x4 {
        lanes(|i| {
            let m = mask.0[i].to_bits();
            f32::from_bits((a.0[i].to_bits() & m) | (b.0[i].to_bits() & !m))
        })
    }
    #[inline(always)]
    fn mul_add_scalar(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}
