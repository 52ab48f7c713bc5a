//! Per-ISA vector types and the run-time choice of kernel set.
//!
//! One binary serves every CPU: the hot kernels are written once, as `#[inline(always)]`
//! bodies generic over a [`Simd`] token, and instantiated by [`dispatch!`] inside a
//! `#[target_feature]` trampoline per instruction set. A body inlined into an AVX2
//! trampoline is compiled with AVX2 and FMA enabled whatever the build's own flags are,
//! so nothing on a hot path depends on how the crate was compiled (`wide`, which picks
//! its instructions with `cfg(target_feature)` when it is compiled, cannot do this).
//!
//! | [`Isa`] | vector | lanes | needs | multiply-add |
//! |---|---|---|---|---|
//! | `avx512` | `__m512` | 16 | avx512f, avx2, fma | fused (`vfmadd231ps zmm`) |
//! | `avx2` | `__m256` | 8 | avx2, fma | fused (`vfmadd231ps ymm`) |
//! | `portable` | `[f32; 4]` | 4 | nothing | a multiply, then an add |
//!
//! The portable set is plain Rust on 4-float arrays, which LLVM turns into the target's
//! baseline SIMD (SSE2 on x86-64, NEON on aarch64). It rounds the product before the add
//! on every target, so its results do not depend on the build flags either; a fused
//! `f32::mul_add` there would be a libm call per multiply-add on x86-64 without FMA.
//!
//! # Adding an instruction set
//!
//! A NEON set for aarch64 is one more variant of [`Isa`], a module `aarch64/neon.rs` with
//! a token type implementing [`Simd`] over `float32x4_t`, one arm in [`dispatch!`], and the
//! register blocking of the GEMM microkernel for it (`repvgg-runtime`'s `kernels::gemm`).
//! The kernels' bodies and the layer schedules do not change.
//!
//! # Soundness
//!
//! A token (an ISA's zero-sized type) proves that the CPU runs its instructions: it is
//! made only inside the trampoline that [`dispatch!`] enters (`x86_64::avx2::enter`, ...),
//! which takes a [`Dispatch`], and a `Dispatch` is made only by checking the CPU
//! ([`Dispatch::new`]). Vector values exist only through a token's methods. So every
//! intrinsic call in this crate runs on a CPU that has it; a method called outside a
//! trampoline is still correct, only slower (its intrinsics are not inlined).

use std::fmt;
use std::ops::{Add, Mul, Sub};
use std::str::FromStr;
use std::sync::OnceLock;

pub mod layout;
pub mod portable;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use portable::Portable;

/// `max(0, v)` that keeps NaN: `0 > v ? 0 : v`, the order x86's `max(0, v)` instruction
/// evaluates, so the scalar and vector paths agree bit for bit. A NaN born of an overflow
/// inside a network then reaches the logits, where it is detected, instead of becoming 0
/// in the next ReLU; `-inf` becomes 0, which is also the ReLU of any value it stands for.
#[inline(always)]
pub fn relu(v: f32) -> f32 {
    if 0.0 > v { 0.0 } else { v }
}

/// Errors of the simd crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A name that is not an instruction set we have kernels for (`what`: where it came
    /// from, "instruction set" or "REPVGG_ISA value").
    #[error("unknown {what} `{name}` (auto, avx512, avx2, portable)")]
    Unknown { what: &'static str, name: String },
    /// The CPU lacks features an instruction set's kernels need (`what`: "instruction set "
    /// or "REPVGG_ISA=", printed before the set's name).
    #[error("{what}{isa} needs {missing}, which this CPU lacks (it runs: {available})")]
    Unsupported { what: &'static str, isa: Isa, missing: String, available: String },
}

/// An instruction set with a kernel set, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F (x86-64-v4): 16-float vectors, 32 registers.
    Avx512,
    /// AVX2 + FMA (x86-64-v3): 8-float vectors, 16 registers.
    Avx2,
    /// Baseline SIMD of any target, no fused multiply-add.
    Portable,
}

impl Isa {
    /// Every instruction set, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The name `--isa` and `REPVGG_ISA` take.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// CPU features the kernel set is compiled with (its trampolines' `target_feature`).
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Isa::Avx512 => &["avx512f", "avx2", "fma"],
            Isa::Avx2 => &["avx2", "fma"],
            Isa::Portable => &[],
        }
    }

    /// Features of [`Isa::features`] this CPU lacks (all of them on a non-x86 CPU).
    pub fn missing_features(self) -> Vec<&'static str> {
        self.features().iter().copied().filter(|f| !has_feature(f)).collect()
    }

    /// True if this CPU runs the kernel set.
    pub fn is_supported(self) -> bool {
        self.missing_features().is_empty()
    }

    /// The instruction sets this CPU runs, best first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_supported()).collect()
    }
}

fn has_feature(feature: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = feature;
        false
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a caller asks for: the best this process may use, or one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsaChoice {
    /// `REPVGG_ISA` if it is set, else the best instruction set this CPU runs.
    #[default]
    Auto,
    /// This instruction set, refused if the CPU lacks it.
    Force(Isa),
}

impl IsaChoice {
    fn parse(text: &str, what: &'static str) -> Result<IsaChoice, Error> {
        let name = text.trim().to_ascii_lowercase();
        if name == "auto" {
            return Ok(IsaChoice::Auto);
        }
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == name)
            .map(IsaChoice::Force)
            .ok_or_else(|| Error::Unknown { what, name: text.to_string() })
    }
}

impl FromStr for IsaChoice {
    type Err = Error;
    fn from_str(text: &str) -> Result<IsaChoice, Error> {
        IsaChoice::parse(text, "instruction set")
    }
}

impl fmt::Display for IsaChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaChoice::Auto => f.write_str("auto"),
            IsaChoice::Force(isa) => isa.fmt(f),
        }
    }
}

/// The environment variable that overrides [`IsaChoice::Auto`] for the whole process.
pub const ENV: &str = "REPVGG_ISA";

/// An instruction set this CPU was checked to run: what [`dispatch!`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dispatch(Isa);

impl Dispatch {
    /// `isa`, if this CPU runs it.
    pub fn new(isa: Isa) -> Result<Dispatch, Error> {
        Dispatch::checked(isa, "instruction set ")
    }

    fn checked(isa: Isa, what: &'static str) -> Result<Dispatch, Error> {
        let missing = isa.missing_features();
        if missing.is_empty() {
            return Ok(Dispatch(isa));
        }
        let available: Vec<&str> = Isa::supported().into_iter().map(Isa::name).collect();
        Err(Error::Unsupported { what, isa, missing: missing.join(", "), available: available.join(", ") })
    }

    /// The best instruction set this CPU runs (detected once per process).
    pub fn best() -> Dispatch {
        static BEST: OnceLock<Dispatch> = OnceLock::new();
        *BEST.get_or_init(|| {
            Isa::ALL.into_iter().find_map(|isa| Dispatch::new(isa).ok()).unwrap_or(Dispatch(Isa::Portable))
        })
    }

    /// What [`IsaChoice::Auto`] means in this process: `REPVGG_ISA` if set (read once;
    /// an unknown or unsupported value is an error every time it is asked for), else
    /// [`Dispatch::best`].
    pub fn auto() -> Result<Dispatch, Error> {
        static AUTO: OnceLock<Result<Dispatch, Error>> = OnceLock::new();
        AUTO.get_or_init(|| match std::env::var(ENV) {
            Ok(value) if !value.trim().is_empty() => Dispatch::from_env_value(&value),
            _ => Ok(Dispatch::best()),
        })
        .clone()
    }

    /// What `REPVGG_ISA=value` selects.
    pub fn from_env_value(value: &str) -> Result<Dispatch, Error> {
        match IsaChoice::parse(value, "REPVGG_ISA value")? {
            IsaChoice::Auto => Ok(Dispatch::best()),
            IsaChoice::Force(isa) => Dispatch::checked(isa, "REPVGG_ISA="),
        }
    }

    /// The instruction set a choice resolves to.
    pub fn choose(choice: IsaChoice) -> Result<Dispatch, Error> {
        match choice {
            IsaChoice::Auto => Dispatch::auto(),
            IsaChoice::Force(isa) => Dispatch::new(isa),
        }
    }

    /// Every instruction set this CPU runs, best first (for tests that cover them all).
    pub fn all_supported() -> Vec<Dispatch> {
        Isa::supported().into_iter().map(Dispatch).collect()
    }

    pub fn isa(self) -> Isa {
        self.0
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A vector instruction set, as a zero-sized token whose methods are its operations on
/// `LANES`-float vectors. Sealed: only this crate's tokens implement it.
pub trait Simd: Copy + Send + Sync + 'static + sealed::Sealed {
    /// A vector of `LANES` floats.
    type F32: Copy + Add<Output = Self::F32> + Sub<Output = Self::F32> + Mul<Output = Self::F32>;
    /// Floats per vector.
    const LANES: usize;
    /// The instruction set.
    const ISA: Isa;

    fn splat(self, value: f32) -> Self::F32;
    fn zero(self) -> Self::F32 {
        self.splat(0.0)
    }
    /// A lane mask: every bit set where `on`, else clear.
    fn mask(self, on: bool) -> Self::F32 {
        self.splat(f32::from_bits(if on { u32::MAX } else { 0 }))
    }

    /// Loads `LANES` floats from `src` (no alignment needed).
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads of `LANES` floats.
    unsafe fn load(self, src: *const f32) -> Self::F32;

    /// Loads `LANES` bf16 values (each an f32's high 16 bits, as `u16`) from `src`, widened
    /// to floats, exactly (the low 16 bits zero).
    ///
    /// # Safety
    ///
    /// `src` must be valid for reads of `LANES` u16s.
    unsafe fn load_bf16(self, src: *const u16) -> Self::F32;

    /// Stores `LANES` floats to `dst` (no alignment needed).
    ///
    /// # Safety
    ///
    /// `dst` must be valid for writes of `LANES` floats.
    unsafe fn store(self, dst: *mut f32, value: Self::F32);

    /// `a * b + c`: fused (one rounding) on FMA instruction sets, a rounded product
    /// then an add on the portable set.
    fn mul_add(self, a: Self::F32, b: Self::F32, c: Self::F32) -> Self::F32;
    /// Lane-wise maximum; where either lane is NaN the result is `b`'s lane.
    fn max(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// `max(0, v)` lane-wise, keeping NaN (see [`relu`]).
    #[inline(always)]
    fn relu(self, v: Self::F32) -> Self::F32 {
        self.max(self.zero(), v)
    }
    /// Bitwise and.
    fn and(self, a: Self::F32, b: Self::F32) -> Self::F32;
    /// `a`'s lanes where `mask` is set, else `b`'s (`mask` lanes all ones or all zeros).
    fn select(self, mask: Self::F32, a: Self::F32, b: Self::F32) -> Self::F32;
    /// The scalar `a * b + c`, rounded as [`Simd::mul_add`] rounds.
    fn mul_add_scalar(self, a: f32, b: f32, c: f32) -> f32;

    /// Loads the first `LANES` floats of `src`.
    #[inline(always)]
    fn read(self, src: &[f32]) -> Self::F32 {
        assert!(src.len() >= Self::LANES, "{} floats, need {}", src.len(), Self::LANES);
        // SAFETY: `src` holds at least LANES floats (asserted).
        unsafe { self.load(src.as_ptr()) }
    }

    /// Loads the first `LANES` bf16 values of `src`, widened ([`Simd::load_bf16`]).
    #[inline(always)]
    fn read_bf16(self, src: &[u16]) -> Self::F32 {
        assert!(src.len() >= Self::LANES, "{} bf16 values, need {}", src.len(), Self::LANES);
        // SAFETY: `src` holds at least LANES values (asserted).
        unsafe { self.load_bf16(src.as_ptr()) }
    }

    /// Stores `value` into the first `LANES` floats of `dst`.
    #[inline(always)]
    fn write(self, dst: &mut [f32], value: Self::F32) {
        assert!(dst.len() >= Self::LANES, "{} floats, need {}", dst.len(), Self::LANES);
        // SAFETY: `dst` holds at least LANES floats (asserted).
        unsafe { self.store(dst.as_mut_ptr(), value) }
    }
}

/// Runs `body` with `$s` bound to the token of a [`Dispatch`]'s instruction set, inside a
/// trampoline compiled for it: the body (and every `#[inline(always)]` function it calls
/// with `$s`) is instantiated once per instruction set.
///
/// ```
/// use repvgg_simd::{Dispatch, Simd, dispatch};
/// #[inline(always)]
/// fn sum<S: Simd>(s: S, xs: &[f32]) -> f32 {
///     let mut acc = s.zero();
///     for chunk in xs.chunks_exact(S::LANES) {
///         acc = acc + s.read(chunk);
///     }
///     let mut lanes = [0f32; 16];
///     s.write(&mut lanes, acc);
///     lanes[..S::LANES].iter().sum()
/// }
/// let xs = [1.0f32; 32];
/// for d in Dispatch::all_supported() {
///     assert_eq!(dispatch!(d, |s| sum(s, &xs)), 32.0);
/// }
/// ```
#[macro_export]
macro_rules! dispatch {
    ($dispatch:expr, |$s:ident| $body:expr) => {{
        let dispatch: $crate::Dispatch = $dispatch;
        #[allow(unreachable_patterns)]
        match dispatch.isa() {
            // `inline(always)`: the body must be inlined into the trampoline to be compiled
            // with its features; outside it, every intrinsic would be a call.
            #[cfg(target_arch = "x86_64")]
            $crate::Isa::Avx512 => $crate::x86_64::avx512::enter(
                dispatch,
                #[inline(always)]
                |$s| $body,
            ),
            #[cfg(target_arch = "x86_64")]
            $crate::Isa::Avx2 => $crate::x86_64::avx2::enter(
                dispatch,
                #[inline(always)]
                |$s| $body,
            ),
            _ => {
                let $s = $crate::Portable::new();
                $body
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<IsaChoice>().unwrap(), IsaChoice::Force(isa));
            assert_eq!(isa.name().to_uppercase().parse::<IsaChoice>().unwrap(), IsaChoice::Force(isa));
        }
        assert_eq!("auto".parse::<IsaChoice>().unwrap(), IsaChoice::Auto);
        let err = "sse9".parse::<IsaChoice>().unwrap_err();
        assert_eq!(err.to_string(), "unknown instruction set `sse9` (auto, avx512, avx2, portable)");
    }

    #[test]
    fn the_portable_set_runs_everywhere_and_best_is_supported() {
        assert!(Isa::Portable.is_supported());
        assert_eq!(Dispatch::new(Isa::Portable).unwrap().isa(), Isa::Portable);
        assert!(Dispatch::best().isa().is_supported());
        assert_eq!(Dispatch::best().isa(), Isa::supported()[0]);
    }

    #[test]
    fn unsupported_sets_are_refused_with_what_is_missing() {
        for isa in Isa::ALL.into_iter().filter(|isa| !isa.is_supported()) {
            let err = Dispatch::new(isa).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(isa.missing_features()[0]) && text.contains("portable"), "{text}");
            let err = Dispatch::from_env_value(isa.name()).unwrap_err();
            assert!(err.to_string().starts_with(&format!("REPVGG_ISA={} needs", isa.name())), "{err}");
        }
        let err = Dispatch::from_env_value("neon9").unwrap_err();
        assert!(matches!(err, Error::Unknown { what: "REPVGG_ISA value", .. }), "{err}");
        assert_eq!(Dispatch::from_env_value("AUTO").unwrap(), Dispatch::best());
    }

    /// Every operation of every supported token against the obvious scalar meaning.
    #[test]
    fn every_token_computes_what_its_methods_say() {
        #[inline(always)]
        fn check<S: Simd>(s: S) {
            let a: Vec<f32> = (0..16).map(|i| i as f32 * 0.37 - 2.0).collect();
            let b: Vec<f32> = (0..16).map(|i| 1.5 - i as f32 * 0.11).collect();
            let c: Vec<f32> = (0..16).map(|i| (i * 7 % 5) as f32 - 2.0).collect();
            let mut out = vec![f32::NAN; 16 + S::LANES];
            let (va, vb, vc) = (s.read(&a), s.read(&b), s.read(&c));
            let lanes = S::LANES;
            let fused = S::ISA != Isa::Portable;
            type Case<'a, V> = (&'a str, V, &'a dyn Fn(usize) -> f32);
            let cases: [Case<S::F32>; 9] = [
                ("add", va + vb, &|i| a[i] + b[i]),
                ("sub", va - vb, &|i| a[i] - b[i]),
                ("mul", va * vb, &|i| a[i] * b[i]),
                ("mul_add", s.mul_add(va, vb, vc), &|i| {
                    if fused { a[i].mul_add(b[i], c[i]) } else { a[i] * b[i] + c[i] }
                }),
                ("max", s.max(va, s.zero()), &|i| a[i].max(0.0)),
                ("relu", s.relu(va), &|i| relu(a[i])),
                ("and", s.and(va, s.mask(false)), &|_| 0.0),
                ("select", s.select(s.mask(true), va, vb), &|i| a[i]),
                ("splat", s.splat(3.25), &|_| 3.25),
            ];
            for (name, v, want) in cases {
                s.write(&mut out[1..], v);
                for i in 0..lanes {
                    assert_eq!(out[1 + i].to_bits(), want(i).to_bits(), "{:?} {name} lane {i}", S::ISA);
                }
                assert!(out[0].is_nan() && out[1 + lanes].is_nan(), "{:?} {name} stored outside its lanes", S::ISA);
            }
            // (1 + 2^-20)^2 - (1 + 2^-19) is 2^-40 with one rounding and 0 with two.
            let (x, y) = (1.0 + 2f32.powi(-20), -(1.0 + 2f32.powi(-19)));
            let want = if fused { 2f32.powi(-40) } else { 0.0 };
            assert_eq!(s.mul_add_scalar(x, x, y), want, "{:?} mul_add_scalar", S::ISA);
            s.write(&mut out, s.mul_add(s.splat(x), s.splat(x), s.splat(y)));
            assert_eq!(out[0], want, "{:?} mul_add rounding", S::ISA);
        }
        for d in Dispatch::all_supported() {
            dispatch!(d, |s| check(s));
        }
    }
}
