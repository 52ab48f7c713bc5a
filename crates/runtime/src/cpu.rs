//! CPU feature checks of the build, and the floating-point environment of worker threads.

use crate::error::{Error, Result};

/// Instruction-set features the SIMD code can have been compiled for, paired with
/// whether this build assumed them and whether this CPU has them.
macro_rules! build_features {
    ($($feature:tt),* $(,)?) => {
        fn features() -> Vec<(&'static str, bool, bool)> {
            vec![$(
                ($feature, cfg!(target_feature = $feature), {
                    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                    { std::arch::is_x86_feature_detected!($feature) }
                    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
                    { true }
                }),
            )*]
        }
    };
}

build_features!(
    "sse2",
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi1",
    "bmi2",
    "lzcnt",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512vnni",
    "avx512bf16",
    "avx512vbmi",
);

/// Who designed this CPU, as far as the cost model cares (CPUID leaf 0's vendor string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    /// Any other vendor, and every non-x86 target.
    Other,
}

/// This CPU's vendor, read once.
pub fn vendor() -> Vendor {
    static VENDOR: std::sync::OnceLock<Vendor> = std::sync::OnceLock::new();
    *VENDOR.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let id = std::arch::x86_64::__cpuid(0);
            let mut name = [0u8; 12];
            for (chunk, word) in name.chunks_exact_mut(4).zip([id.ebx, id.edx, id.ecx]) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            match &name {
                b"GenuineIntel" => Vendor::Intel,
                b"AuthenticAMD" => Vendor::Amd,
                _ => Vendor::Other,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Vendor::Other
        }
    })
}

/// Refuses to run if the binary assumes an instruction-set extension this CPU lacks.
///
/// The default build assumes nothing beyond the target's baseline (the kernels choose
/// their instruction set at run time); a binary built with `-C target-cpu=native` and
/// copied to an older machine would otherwise die of SIGILL in code outside the kernels.
pub fn check_build_features() -> Result<()> {
    let missing: Vec<&str> =
        features().into_iter().filter(|(_, built, has)| *built && !*has).map(|(f, _, _)| f).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Cpu(format!(
        "this CPU lacks {}, which this build of repvgg was compiled for (-C target-cpu=native on another machine?); \
         rebuild without target flags",
        missing.join(", ")
    )))
}

/// Sets flush-to-zero and denormals-are-zero on the calling thread.
///
/// Deep conv stacks produce subnormal values from tiny activations times tiny weights;
/// x86 handles those in microcode at ~100x the cost of a normal FMA. Flushing changes
/// results only for magnitudes below 1.2e-38, far under any tolerance we test.
pub fn set_flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr only read and write the calling thread's SSE control
        // register through a pointer to a local; setting FTZ/DAZ cannot fault and affects
        // only this thread's float rounding of subnormals.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= FTZ | DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
        }
    }
}

/// Flushes denormals on the calling thread (as [`set_flush_denormals`]) until dropped,
/// then restores the thread's previous float mode: the forward pass runs partly on the
/// embedding application's own thread, whose arithmetic must not change behind its back.
pub struct FlushDenormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

impl FlushDenormals {
    pub fn new() -> FlushDenormals {
        #[cfg(target_arch = "x86_64")]
        {
            let mut saved: u32 = 0;
            // SAFETY: stmxcsr stores the calling thread's SSE control register into a local.
            unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack)) };
            set_flush_denormals();
            FlushDenormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushDenormals {}
    }
}

impl Default for FlushDenormals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: reloads the value stmxcsr read from this same thread in `new`.
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.saved, options(nostack, readonly))
        };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_runs_this_build() {
        super::check_build_features().unwrap();
    }

    #[test]
    fn the_scoped_flush_restores_the_previous_mode() {
        std::thread::spawn(|| {
            // Each product from fresh black boxes: LLVM assumes a fixed float mode and
            // would otherwise compute the product once for all three asserts.
            let product = || std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(0.5f32);
            assert!(product() > 0.0, "subnormals before");
            {
                let _flush = super::FlushDenormals::new();
                #[cfg(target_arch = "x86_64")]
                assert_eq!(product(), 0.0);
            }
            assert!(product() > 0.0, "subnormals after");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn flush_to_zero_flushes() {
        std::thread::spawn(|| {
            super::set_flush_denormals();
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            let half = std::hint::black_box(0.5f32);
            #[cfg(target_arch = "x86_64")]
            assert_eq!(tiny * half, 0.0);
        })
        .join()
        .unwrap();
    }
}
