//! Mixed-precision instruction probes, measured before the kernels were designed: the
//! throughput of the bf16 and int8 dot-product instructions a BF16 or INT8 GEMM
//! microkernel would be built on, beside the FP32 FMA peak of [`super::probe`].
//!
//! - `VDPBF16PS` (AVX512-BF16) on `zmm`: 32 bf16 products summed pairwise into 16 fp32
//!   lanes, counted as 64 FLOPs (2 per multiply-add), like the FMA probe counts 2 per lane;
//! - `VPDPBUSD` (AVX512-VNNI) on `zmm`: 64 u8 x s8 products summed by fours into 16 s32
//!   lanes, 128 integer ops;
//! - AMX `TDPBF16PS` on 16x16 fp32 accumulator tiles with 16x32 bf16 operands: 16384 FLOPs
//!   each; `TDPBSSD` (s8 x s8 -> s32) with 16x64 int8 operands: 32768 ops each. Both with
//!   the operand tiles resident (the peak) and reloaded from L1 every step (the cost of the
//!   tile loads). Stable Rust has no AMX intrinsics, so these are `asm!`, after the process
//!   asked Linux for the tile state once ([`amx_permitted`]).
//!
//! Every probe runs only after checking the CPU (and for AMX the kernel's permission), so
//! all of this builds and runs on any x86-64 machine and reports nothing it cannot
//! measure. [`mixed_peaks`] is what `repvgg bench` prints; [`instruction_table`] is the
//! interleaved, repeated measurement behind `docs/precision.md`.

use std::time::Instant;

use repvgg_simd::{Dispatch, dispatch};

use super::probe;

/// The mixed-precision peaks of some threads at once: `None` where the CPU (or the OS, for
/// AMX) lacks the instruction.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct MixedPeaks {
    /// `VDPBF16PS` on `zmm`, GFLOP/s (2 per bf16 multiply-add).
    pub bf16_gflops: Option<f64>,
    /// `VPDPBUSD` on `zmm` (u8 x s8 -> s32), GOP/s (2 per multiply-add).
    pub vnni_gops: Option<f64>,
    /// AMX `TDPBF16PS` with the operand tiles resident, GFLOP/s.
    pub amx_bf16_gflops: Option<f64>,
    /// AMX `TDPBSSD` (s8 x s8 -> s32) with the operand tiles resident, GOP/s.
    pub amx_int8_gops: Option<f64>,
}

impl MixedPeaks {
    /// True when nothing could be measured.
    pub fn is_empty(&self) -> bool {
        *self == MixedPeaks::default()
    }
}

/// One throughput probe of this module (or the FP32 FMA one, to compare against).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// FP32 `vfmadd` with the best kernel set's vectors ([`probe::fma_gflops`]).
    Fp32Fma,
    /// `VDPBF16PS` zmm, 16 independent accumulators.
    Bf16Dot,
    /// `VPDPBUSD` zmm, 16 independent accumulators.
    U8S8Dot,
    /// AMX `TDPBF16PS`, 2x2 blocking, operand tiles loaded once.
    AmxBf16,
    /// AMX `TDPBF16PS`, 2x2 blocking, the four operand tiles reloaded from L1 every step.
    AmxBf16Loads,
    /// AMX `TDPBSSD`, 2x2 blocking, operand tiles loaded once.
    AmxInt8,
    /// AMX `TDPBSSD`, 2x2 blocking, the four operand tiles reloaded from L1 every step.
    AmxInt8Loads,
    /// AMX `TDPBUSD` (u8 x s8, the form post-ReLU activations take), 2x2 blocking,
    /// operand tiles loaded once.
    AmxU8S8,
}

impl Probe {
    pub const ALL: [Probe; 8] = [
        Probe::Fp32Fma,
        Probe::Bf16Dot,
        Probe::U8S8Dot,
        Probe::AmxBf16,
        Probe::AmxBf16Loads,
        Probe::AmxInt8,
        Probe::AmxInt8Loads,
        Probe::AmxU8S8,
    ];

    /// What it runs, for tables.
    pub fn name(self) -> &'static str {
        match self {
            Probe::Fp32Fma => "FP32 FMA (best kernel set)",
            Probe::Bf16Dot => "VDPBF16PS zmm",
            Probe::U8S8Dot => "VPDPBUSD zmm",
            Probe::AmxBf16 => "AMX TDPBF16PS, tiles resident",
            Probe::AmxBf16Loads => "AMX TDPBF16PS + 4 tile loads",
            Probe::AmxInt8 => "AMX TDPBSSD, tiles resident",
            Probe::AmxInt8Loads => "AMX TDPBSSD + 4 tile loads",
            Probe::AmxU8S8 => "AMX TDPBUSD, tiles resident",
        }
    }

    /// `GFLOP/s` or `GOP/s`.
    pub fn unit(self) -> &'static str {
        match self {
            Probe::U8S8Dot | Probe::AmxInt8 | Probe::AmxInt8Loads | Probe::AmxU8S8 => "GOP/s",
            _ => "GFLOP/s",
        }
    }

    /// Whether this CPU (and OS) runs it.
    pub fn is_supported(self) -> bool {
        match self {
            Probe::Fp32Fma => true,
            Probe::Bf16Dot => has_avx512bf16(),
            Probe::U8S8Dot => has_avx512vnni(),
            Probe::AmxBf16 | Probe::AmxBf16Loads => amx_bf16_available(),
            Probe::AmxInt8 | Probe::AmxInt8Loads | Probe::AmxU8S8 => amx_int8_available(),
        }
    }

    /// The calling thread's rate for about `millis` ms, in 10^9 FLOPs or ops per second;
    /// `None` if the CPU lacks the instruction.
    pub fn measure(self, millis: u64) -> Option<f64> {
        if !self.is_supported() {
            return None;
        }
        match self {
            Probe::Fp32Fma => Some(dispatch!(Dispatch::best(), |s| probe::fma_gflops(s, millis))),
            Probe::Bf16Dot => x86::bf16_dot_gflops(millis),
            Probe::U8S8Dot => x86::u8s8_dot_gops(millis),
            Probe::AmxBf16 => amx::throughput(amx::Op::Bf16, false, millis),
            Probe::AmxBf16Loads => amx::throughput(amx::Op::Bf16, true, millis),
            Probe::AmxInt8 => amx::throughput(amx::Op::Int8, false, millis),
            Probe::AmxInt8Loads => amx::throughput(amx::Op::Int8, true, millis),
            Probe::AmxU8S8 => amx::throughput(amx::Op::U8S8, false, millis),
        }
    }

    /// The rate of `threads` threads at once (summed), each measuring for about `millis`.
    pub fn measure_on(self, threads: usize, millis: u64) -> Option<f64> {
        if !self.is_supported() {
            return None;
        }
        Some(probe::on_threads(threads, || self.measure(millis).unwrap_or(0.0)))
    }
}

/// The peaks `repvgg bench` prints beside the FP32 one: each supported instruction on
/// `threads` threads at once for about `millis` ms (the AMX ones with resident tiles).
pub fn mixed_peaks(threads: usize, millis: u64) -> MixedPeaks {
    MixedPeaks {
        bf16_gflops: Probe::Bf16Dot.measure_on(threads, millis),
        vnni_gops: Probe::U8S8Dot.measure_on(threads, millis),
        amx_bf16_gflops: Probe::AmxBf16.measure_on(threads, millis),
        amx_int8_gops: Probe::AmxInt8.measure_on(threads, millis),
    }
}

/// Whether the CPU has AVX512-BF16 (`VDPBF16PS`).
pub fn has_avx512bf16() -> bool {
    x86::has_avx512bf16()
}

/// Whether the CPU has AVX512-VNNI (`VPDPBUSD` on `zmm`).
pub fn has_avx512vnni() -> bool {
    x86::has_avx512vnni()
}

/// Whether this process may run AMX tile instructions: the CPU has AMX-TILE and Linux gave
/// the process the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`,
/// asked once per process; the answer is cached). False on other systems.
pub fn amx_permitted() -> bool {
    amx::permitted()
}

/// AMX-TILE and AMX-BF16 (`TDPBF16PS`), with the OS's permission.
pub fn amx_bf16_available() -> bool {
    amx::SUPPORTED && x86::cpuid_amx().0 && amx_permitted()
}

/// AMX-TILE and AMX-INT8 (`TDPBSSD`, `TDPBUSD`), with the OS's permission.
pub fn amx_int8_available() -> bool {
    amx::SUPPORTED && x86::cpuid_amx().2 && amx_permitted()
}

/// Dependent-chain latencies, measured on the calling thread (on its CPU time where the
/// OS gives it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    /// ns per step of a dependent chain of register-register scalar `add`s (1 cycle
    /// each): the core clock period while it ran.
    pub cycle_ns: f64,
    /// FP32 `vfmadd` zmm (AVX-512F), ns.
    pub fma_ns: Option<f64>,
    /// `VDPBF16PS` zmm, ns.
    pub bf16_dot_ns: Option<f64>,
    /// `VPDPBUSD` zmm, ns.
    pub u8s8_dot_ns: Option<f64>,
}

/// Latencies of one dependent chain each, about `millis` ms per instruction.
pub fn latencies(millis: u64) -> Latencies {
    x86::latencies(millis)
}

/// Runs `chunk` (which returns the operations it did) until `millis` ms have passed, and
/// returns 10^9 operations per second.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn rate(millis: u64, mut chunk: impl FnMut() -> u64) -> f64 {
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        ops += chunk();
        if start.elapsed().as_millis() >= millis as u128 {
            break;
        }
    }
    ops as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// ns per step of `chunk` (which returns the steps it did), run for about `millis` ms, on
/// the thread's CPU time where the OS gives it (so that time slices other processes take
/// do not count), else on wall time.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn step_ns(millis: u64, chunk: impl FnMut() -> u64) -> f64 {
    let (cpu, wall) = (thread_cpu_seconds(), Instant::now());
    let per_ns = rate(millis, chunk);
    let wall = wall.elapsed().as_secs_f64();
    match thread_cpu_seconds().zip(cpu) {
        Some((after, before)) if after > before => (after - before) / (per_ns * wall),
        _ => 1.0 / per_ns,
    }
}

/// CPU time of the calling thread so far, in seconds (Linux with glibc; `None` elsewhere).
fn thread_cpu_seconds() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec to the address given, a live local.
        let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
        ok.then_some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The interleaved measurement behind `docs/precision.md`: for each thread count, `rounds`
/// rounds of every supported [`Probe`] in turn (about `millis` ms each), then per core
/// the median, minimum and maximum, and the median over rounds of the ratio to the FP32
/// FMA probe of the same round; then the single-thread latencies.
///
/// "on CPU" is the per-core median with each thread's wall time replaced by the CPU time it
/// got meanwhile: the rate of a core the probe had to itself, when other processes share
/// the cores (not when the hypervisor takes them: steal time is not excluded).
pub fn instruction_table(threads: &[usize], rounds: usize, millis: u64) -> String {
    use std::fmt::Write;
    let rounds = rounds.max(1);
    let probes: Vec<Probe> = Probe::ALL.into_iter().filter(|p| p.is_supported()).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "per core: median [min, max] of {rounds} interleaved rounds of {millis} ms; x FP32 = median over rounds of the ratio to the FP32 FMA probe of the same round; \
         on CPU = the same with each thread's CPU time in place of wall time"
    );
    let _ = writeln!(
        out,
        "{:>7}  {:<31} {:>7}  {:>9} {:>20}  {:>7}  {:>9} {:>20}  {:>7}",
        "threads", "instruction", "unit", "median", "[min, max]", "x FP32", "on CPU", "[min, max]", "x FP32"
    );
    for &t in threads {
        let t = t.max(1);
        // rates[probe][round], per core
        let mut rates = vec![Vec::with_capacity(rounds); probes.len()];
        // the same per core against CPU time
        let mut on_cpu = vec![Vec::with_capacity(rounds); probes.len()];
        for _ in 0..rounds {
            for (i, p) in probes.iter().enumerate() {
                let (rate, cpu_rate) = measure_with_cpu_time(*p, t, millis);
                rates[i].push(rate / t as f64);
                on_cpu[i].push(cpu_rate / t as f64);
            }
        }
        for (i, p) in probes.iter().enumerate() {
            let ratios: Vec<f64> = rates[i].iter().zip(&rates[0]).map(|(r, f)| r / f).collect();
            let cpu_ratios: Vec<f64> = on_cpu[i].iter().zip(&on_cpu[0]).map(|(r, f)| r / f).collect();
            let range = |v: &[f64]| {
                let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
                format!("[{lo:.1}, {hi:.1}]")
            };
            let _ = writeln!(
                out,
                "{:>7}  {:<31} {:>7}  {:>9.1} {:>20}  {:>6.2}x  {:>9.1} {:>20}  {:>6.2}x",
                t,
                p.name(),
                p.unit(),
                median(&rates[i]),
                range(&rates[i]),
                median(&ratios),
                median(&on_cpu[i]),
                range(&on_cpu[i]),
                median(&cpu_ratios)
            );
        }
    }
    let samples: Vec<Latencies> = (0..rounds).map(|_| latencies(millis)).collect();
    let cycle = median(&samples.iter().map(|l| l.cycle_ns).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "latency, 1 thread, one dependent chain, on CPU time: clock {:.2} GHz (a dependent chain of 1-cycle register adds, median of {rounds})",
        1.0 / cycle
    );
    type Pick = fn(&Latencies) -> Option<f64>;
    let kinds: [(&str, Pick); 3] =
        [("FP32 vfmadd zmm", |l| l.fma_ns), ("VDPBF16PS zmm", |l| l.bf16_dot_ns), ("VPDPBUSD zmm", |l| l.u8s8_dot_ns)];
    for (name, get) in kinds {
        // Cycles per sample with that sample's own clock, then the median.
        let ns: Vec<f64> = samples.iter().filter_map(get).collect();
        if ns.is_empty() {
            continue;
        }
        let cycles: Vec<f64> = samples.iter().filter_map(|l| get(l).map(|n| n / l.cycle_ns)).collect();
        // Against the FMA chain of the same sample: independent of the clock estimate.
        let vs_fma: Vec<f64> = samples.iter().filter_map(|l| Some(get(l)? / l.fma_ns?)).collect();
        let _ = writeln!(
            out,
            "  {:<17} {:.3} ns = {:.2} cycles [min {:.2}, max {:.2}] = {:.2}x the FMA latency",
            name,
            median(&ns),
            median(&cycles),
            cycles.iter().copied().fold(f64::MAX, f64::min),
            cycles.iter().copied().fold(f64::MIN, f64::max),
            median(&vs_fma)
        );
    }
    out
}

/// `probe` on `threads` threads at once, summed: the rates against wall time and against
/// each thread's CPU time (NaN where that is not available).
fn measure_with_cpu_time(probe: Probe, threads: usize, millis: u64) -> (f64, f64) {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(move || {
                    let (cpu, wall) = (thread_cpu_seconds(), Instant::now());
                    let rate = probe.measure(millis).unwrap_or(f64::NAN);
                    let wall = wall.elapsed().as_secs_f64();
                    let cpu = thread_cpu_seconds().zip(cpu).map(|(after, before)| after - before);
                    // rate x wall operations in the thread's own window, over its CPU time.
                    (rate, cpu.map_or(f64::NAN, |cpu| rate * wall / cpu))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread")).fold((0.0, 0.0), |(a, b), (r, c)| (a + r, b + c))
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The AVX-512 BF16 and VNNI kernels, and the latency chains.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::hint::black_box;

    use super::{Latencies, rate, step_ns};

    pub fn has_avx512bf16() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }

    pub fn has_avx512vnni() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni")
    }

    /// CPUID leaf 7 subleaf 0, EDX: bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8
    /// (`is_x86_feature_detected!("amx-tile")` is not stable).
    pub fn cpuid_amx() -> (bool, bool, bool) {
        // `__cpuid` and `__cpuid_count` are safe from Rust 1.94 and unsafe before; the
        // workspace supports 1.89.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 is read only if the CPU has it.
        let edx = unsafe { if __cpuid(0).eax < 7 { 0 } else { __cpuid_count(7, 0).edx } };
        (edx >> 22 & 1 == 1, edx >> 24 & 1 == 1, edx >> 25 & 1 == 1)
    }

    /// Independent accumulators of the throughput loops: more than latency x issue rate
    /// of any of these instructions on current cores (4-6 cycles x 2 per cycle).
    const CHAINS: usize = 16;
    /// Loop trips per timed chunk.
    const TRIPS: u64 = 10_000;
    /// Unrolled steps per trip of the latency chains.
    const UNROLL: u64 = 8;

    pub fn bf16_dot_gflops(millis: u64) -> Option<f64> {
        if !has_avx512bf16() {
            return None;
        }
        Some(rate(millis, || {
            // SAFETY: the CPU has AVX-512F and AVX512-BF16 (checked above).
            black_box(unsafe { dpbf16_throughput(black_box(TRIPS)) });
            TRIPS * CHAINS as u64 * 64
        }))
    }

    pub fn u8s8_dot_gops(millis: u64) -> Option<f64> {
        if !has_avx512vnni() {
            return None;
        }
        Some(rate(millis, || {
            // SAFETY: the CPU has AVX-512F and AVX512-VNNI (checked above).
            black_box(unsafe { dpbusd_throughput(black_box(TRIPS)) });
            TRIPS * CHAINS as u64 * 128
        }))
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dpbf16_throughput(trips: u64) -> f32 {
        let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
        let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(2e-3));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..trips {
            for c in acc.iter_mut() {
                *c = _mm512_dpbf16_ps(*c, a, b);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &c| _mm512_add_ps(s, c));
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    fn dpbusd_throughput(trips: u64) -> i32 {
        let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..trips {
            for c in acc.iter_mut() {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_si512(), |s, &c| _mm512_add_epi32(s, c));
        _mm512_reduce_add_epi32(sum)
    }

    #[target_feature(enable = "avx512f")]
    fn fma_chain(trips: u64) -> f32 {
        let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = _mm512_set1_ps(1.0);
        for _ in 0..trips {
            for _ in 0..UNROLL {
                acc = _mm512_fmadd_ps(acc, b, c);
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dpbf16_chain(trips: u64) -> f32 {
        let a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.25));
        let b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(2e-3));
        let mut acc = _mm512_setzero_ps();
        for _ in 0..trips {
            for _ in 0..UNROLL {
                acc = _mm512_dpbf16_ps(acc, a, b);
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    fn dpbusd_chain(trips: u64) -> i32 {
        let (a, b) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
        let mut acc = _mm512_setzero_si512();
        for _ in 0..trips {
            for _ in 0..UNROLL {
                acc = _mm512_dpbusd_epi32(acc, a, b);
            }
        }
        _mm512_reduce_add_epi32(acc)
    }

    /// A dependent chain of 16 register-register scalar adds per trip (1 cycle each on
    /// every x86-64 core of the last decade); the loop counter runs beside it. Not
    /// `add reg, imm`: Golden Cove and later fold small immediate adds at rename and run
    /// several such dependent adds per cycle.
    fn add_chain(trips: u64) -> u64 {
        let mut x = 0u64;
        let mut n = trips.max(1);
        let y = black_box(1u64);
        // SAFETY: registers only: no memory, no stack, flags are clobbered (the default).
        unsafe {
            asm!(
                "2:",
                ".rept 16",
                "add {x}, {y}",
                ".endr",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                y = in(reg) y,
                n = inout(reg) n,
                options(nomem, nostack),
            );
        }
        black_box(n);
        x
    }

    pub fn latencies(millis: u64) -> Latencies {
        let cycle_ns = step_ns(millis, || {
            black_box(add_chain(black_box(TRIPS)));
            TRIPS * 16
        });
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let fma_ns = avx512.then(|| {
            step_ns(millis, || {
                // SAFETY: the CPU has AVX-512F (checked above).
                black_box(unsafe { fma_chain(black_box(TRIPS)) });
                TRIPS * UNROLL
            })
        });
        let bf16_dot_ns = has_avx512bf16().then(|| {
            step_ns(millis, || {
                // SAFETY: the CPU has AVX-512F and AVX512-BF16 (checked above).
                black_box(unsafe { dpbf16_chain(black_box(TRIPS)) });
                TRIPS * UNROLL
            })
        });
        let u8s8_dot_ns = has_avx512vnni().then(|| {
            step_ns(millis, || {
                // SAFETY: the CPU has AVX-512F and AVX512-VNNI (checked above).
                black_box(unsafe { dpbusd_chain(black_box(TRIPS)) });
                TRIPS * UNROLL
            })
        });
        Latencies { cycle_ns, fma_ns, bf16_dot_ns, u8s8_dot_ns }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::Latencies;

    pub fn has_avx512bf16() -> bool {
        false
    }

    pub fn has_avx512vnni() -> bool {
        false
    }

    pub fn cpuid_amx() -> (bool, bool, bool) {
        (false, false, false)
    }

    pub fn bf16_dot_gflops(_millis: u64) -> Option<f64> {
        None
    }

    pub fn u8s8_dot_gops(_millis: u64) -> Option<f64> {
        None
    }

    pub fn latencies(_millis: u64) -> Latencies {
        Latencies { cycle_ns: f64::NAN, fma_ns: None, bf16_dot_ns: None, u8s8_dot_ns: None }
    }
}

/// AMX tiles: the OS permission, the throughput loops and a single tile product (to check
/// the asm computes what it should). Linux only (the permission is an `arch_prctl`).
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod amx {
    use std::arch::asm;
    use std::hint::black_box;
    use std::sync::OnceLock;

    use super::rate;

    pub const SUPPORTED: bool = true;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        /// `TDPBF16PS`: C (16x16 fp32) += A (16x32 bf16) x B (32x16 bf16, stored as 16
        /// rows of 16 pairs).
        Bf16,
        /// `TDPBSSD`: C (16x16 s32) += A (16x64 s8) x B (64x16 s8, stored as 16 rows of
        /// 16 quadruples).
        Int8,
        /// `TDPBUSD`: as `Int8` with A unsigned.
        U8S8,
    }

    impl Op {
        /// FLOPs or integer ops (2 per multiply-add) of one instruction on full tiles.
        fn ops(self) -> u64 {
            match self {
                Op::Bf16 => 16 * 16 * 32 * 2,
                Op::Int8 | Op::U8S8 => 16 * 16 * 64 * 2,
            }
        }
    }

    /// The tile configuration (palette 1: 8 tiles, each at most 16 rows of 64 bytes),
    /// operands A (two tiles) and B (two tiles), and room for one C tile, 64-byte aligned
    /// as `ldtilecfg` wants and small enough to stay in L1.
    #[repr(C, align(64))]
    pub struct Tiles {
        config: [u8; 64],
        pub a: [u8; 2048],
        pub b: [u8; 2048],
        pub c: [u8; 1024],
    }

    impl Tiles {
        /// All eight tiles configured as 16 rows x 64 bytes; A and B filled with the 16-bit
        /// patterns `a` and `b` (one bf16 value, or two int8 values), C zeroed.
        pub fn new(a: u16, b: u16) -> Box<Tiles> {
            let mut config = [0u8; 64];
            config[0] = 1; // palette 1
            for t in 0..8 {
                config[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
                config[48 + t] = 16;
            }
            let fill = |v: u16| {
                let mut buf = [0u8; 2048];
                for pair in buf.chunks_exact_mut(2) {
                    pair.copy_from_slice(&v.to_le_bytes());
                }
                buf
            };
            Box::new(Tiles { config, a: fill(a), b: fill(b), c: [0; 1024] })
        }
    }

    pub fn permitted() -> bool {
        static PERMITTED: OnceLock<bool> = OnceLock::new();
        *PERMITTED.get_or_init(|| {
            if !super::x86::cpuid_amx().1 {
                return false;
            }
            const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: this arch_prctl only asks the kernel to let the process use the AMX
            // tile data state; it touches no memory of ours. Kernels without AMX support
            // (or that deny it) return an error, which is the answer.
            let asked = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
            if asked != 0 {
                return false;
            }
            let mut granted: u64 = 0;
            // SAFETY: ARCH_GET_XCOMP_PERM writes one u64, the permitted feature mask, to
            // the address given, which is a live local.
            let got = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mut granted as *mut u64) };
            got == 0 && granted >> XFEATURE_XTILEDATA & 1 == 1
        })
    }

    /// One 2x2-blocked AMX loop: C tiles tmm0-3, A tiles tmm4-5 (`a`, `a + 1024`), B tiles
    /// tmm6-7 (`b`, `b + 1024`), all 16 rows of 64 bytes; `$in_loop` are the instructions
    /// repeated before the four products of every trip (the operand tile loads, or none).
    macro_rules! amx_loop {
        ($name:ident, $op:literal, [$($in_loop:literal),*]) => {
            /// # Safety
            ///
            /// The CPU must have AMX-TILE and the instruction's AMX extension, and the
            /// process the OS's permission for the tile data ([`permitted`]).
            unsafe fn $name(tiles: &mut Tiles, trips: u64) {
                let trips = trips.max(1);
                // SAFETY: the caller guarantees the CPU and OS support. The configuration
                // is valid (palette 1, 8 tiles of 16 x 64 bytes) and 64-byte aligned; every
                // tile load reads 16 rows of 64 bytes at a stride of 64 from `a`, `a + 1024`,
                // `b` or `b + 1024`, inside `tiles.a` / `tiles.b` (2048 bytes each), and the
                // one store writes 1024 bytes to `tiles.c`. The tile state is released before
                // the block ends; tile registers are not Rust's. The counter trips >= 1.
                unsafe {
                    asm!(
                        "ldtilecfg [{cfg}]",
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        "tileloadd tmm4, [{a} + {stride}*1]",
                        "tileloadd tmm5, [{a} + {stride}*1 + 1024]",
                        "tileloadd tmm6, [{b} + {stride}*1]",
                        "tileloadd tmm7, [{b} + {stride}*1 + 1024]",
                        "2:",
                        $($in_loop,)*
                        concat!($op, " tmm0, tmm4, tmm6"),
                        concat!($op, " tmm1, tmm4, tmm7"),
                        concat!($op, " tmm2, tmm5, tmm6"),
                        concat!($op, " tmm3, tmm5, tmm7"),
                        "dec {n}",
                        "jnz 2b",
                        "tilestored [{c} + {stride}*1], tmm3",
                        "tilerelease",
                        cfg = in(reg) tiles.config.as_ptr(),
                        a = in(reg) tiles.a.as_ptr(),
                        b = in(reg) tiles.b.as_ptr(),
                        c = in(reg) tiles.c.as_mut_ptr(),
                        stride = in(reg) 64usize,
                        n = inout(reg) trips => _,
                        options(nostack),
                    );
                }
            }
        };
    }

    amx_loop!(bf16_resident, "tdpbf16ps", []);
    amx_loop!(
        bf16_loads,
        "tdpbf16ps",
        [
            "tileloadd tmm4, [{a} + {stride}*1]",
            "tileloadd tmm5, [{a} + {stride}*1 + 1024]",
            "tileloadd tmm6, [{b} + {stride}*1]",
            "tileloadd tmm7, [{b} + {stride}*1 + 1024]"
        ]
    );
    amx_loop!(int8_resident, "tdpbssd", []);
    amx_loop!(u8s8_resident, "tdpbusd", []);
    amx_loop!(
        int8_loads,
        "tdpbssd",
        [
            "tileloadd tmm4, [{a} + {stride}*1]",
            "tileloadd tmm5, [{a} + {stride}*1 + 1024]",
            "tileloadd tmm6, [{b} + {stride}*1]",
            "tileloadd tmm7, [{b} + {stride}*1 + 1024]"
        ]
    );

    /// Trips per timed chunk: 4 products of 16 or 32 cycles at the expected rate, so about
    /// 100k-200k cycles, against a few hundred for the configuration and the first loads.
    const TRIPS: u64 = 2_000;

    /// The calling thread's rate of `op` in 10^9 ops per second, or `None` without the
    /// CPU's and OS's support.
    pub fn throughput(op: Op, loads: bool, millis: u64) -> Option<f64> {
        let supported = match op {
            Op::Bf16 => super::amx_bf16_available(),
            Op::Int8 | Op::U8S8 => super::amx_int8_available(),
        };
        if !supported {
            return None;
        }
        // bf16 0.0078125 (0x3C00) and 1.0 (0x3F80); int8 bytes 1 and 2.
        let mut tiles = match op {
            Op::Bf16 => Tiles::new(0x3C00, 0x3F80),
            Op::Int8 | Op::U8S8 => Tiles::new(0x0101, 0x0202),
        };
        let kernel = match (op, loads) {
            (Op::Bf16, false) => bf16_resident,
            (Op::Bf16, true) => bf16_loads,
            (Op::Int8, false) => int8_resident,
            (Op::Int8, true) => int8_loads,
            (Op::U8S8, _) => u8s8_resident,
        };
        Some(rate(millis, || {
            // SAFETY: AMX-TILE, the op's extension and the OS permission were checked above.
            unsafe { kernel(&mut tiles, black_box(TRIPS)) };
            black_box(&tiles.c);
            TRIPS * 4 * op.ops()
        }))
    }

    /// C = A x B for one tile of each, 16 rows of 64 bytes: `tiles.a[..1024]` is A,
    /// `tiles.b[..1024]` B (in the instruction's layout), the result goes to `tiles.c`.
    macro_rules! amx_product {
        ($name:ident, $op:literal) => {
            /// # Safety
            ///
            /// As for the loops: CPU support and the OS permission.
            unsafe fn $name(tiles: &mut Tiles) {
                // SAFETY: the caller guarantees CPU and OS support; the configuration is
                // valid and aligned; the loads read 1024 bytes each from `tiles.a` and
                // `tiles.b`, the store writes 1024 bytes to `tiles.c`; the tile state is
                // released before the block ends.
                unsafe {
                    asm!(
                        "ldtilecfg [{cfg}]",
                        "tilezero tmm0",
                        "tileloadd tmm4, [{a} + {stride}*1]",
                        "tileloadd tmm6, [{b} + {stride}*1]",
                        concat!($op, " tmm0, tmm4, tmm6"),
                        "tilestored [{c} + {stride}*1], tmm0",
                        "tilerelease",
                        cfg = in(reg) tiles.config.as_ptr(),
                        a = in(reg) tiles.a.as_ptr(),
                        b = in(reg) tiles.b.as_ptr(),
                        c = in(reg) tiles.c.as_mut_ptr(),
                        stride = in(reg) 64usize,
                        options(nostack),
                    );
                }
            }
        };
    }

    amx_product!(bf16_product, "tdpbf16ps");
    amx_product!(int8_product, "tdpbssd");
    amx_product!(u8s8_product, "tdpbusd");

    /// One `TDPBF16PS` on zeroed C: `a` is 16x32 (bf16 bits), `b` 32x16 (bf16 bits).
    pub fn bf16_matmul(a: &[[u16; 32]; 16], b: &[[u16; 16]; 32]) -> Option<[[f32; 16]; 16]> {
        if !super::amx_bf16_available() {
            return None;
        }
        let mut tiles = Tiles::new(0, 0);
        for (m, row) in a.iter().enumerate() {
            for (k, v) in row.iter().enumerate() {
                tiles.a[m * 64 + 2 * k..][..2].copy_from_slice(&v.to_le_bytes());
            }
        }
        // B's row k of the tile holds the pairs (B[2k][n], B[2k+1][n]) for n = 0..16.
        for (kk, row) in b.iter().enumerate() {
            for (n, v) in row.iter().enumerate() {
                tiles.b[(kk / 2) * 64 + n * 4 + (kk % 2) * 2..][..2].copy_from_slice(&v.to_le_bytes());
            }
        }
        // SAFETY: AMX-TILE, AMX-BF16 and the OS permission were checked above.
        unsafe { bf16_product(&mut tiles) };
        let mut c = [[0f32; 16]; 16];
        for (m, row) in c.iter_mut().enumerate() {
            for (n, v) in row.iter_mut().enumerate() {
                *v = f32::from_le_bytes(tiles.c[m * 64 + n * 4..][..4].try_into().expect("4 bytes"));
            }
        }
        Some(c)
    }

    /// One `TDPBSSD` on zeroed C: `a` is 16x64, `b` 64x16.
    pub fn int8_matmul(a: &[[i8; 64]; 16], b: &[[i8; 16]; 64]) -> Option<[[i32; 16]; 16]> {
        let a = a.map(|row| row.map(|v| v as u8));
        // SAFETY (of the call): `int8_product` runs only once `byte_matmul` has checked support.
        byte_matmul(&a, b, |tiles| unsafe { int8_product(tiles) })
    }

    /// One `TDPBUSD` on zeroed C: `a` is 16x64 (unsigned), `b` 64x16.
    pub fn u8s8_matmul(a: &[[u8; 64]; 16], b: &[[i8; 16]; 64]) -> Option<[[i32; 16]; 16]> {
        // SAFETY (of the call): `u8s8_product` runs only once `byte_matmul` has checked support.
        byte_matmul(a, b, |tiles| unsafe { u8s8_product(tiles) })
    }

    /// Packs A (bytes) and B (64x16 s8) into tiles, runs `product` if the CPU has AMX-INT8
    /// and the OS allows the tiles, and unpacks C.
    fn byte_matmul(
        a: &[[u8; 64]; 16],
        b: &[[i8; 16]; 64],
        product: impl FnOnce(&mut Tiles),
    ) -> Option<[[i32; 16]; 16]> {
        if !super::amx_int8_available() {
            return None;
        }
        let mut tiles = Tiles::new(0, 0);
        for (m, row) in a.iter().enumerate() {
            tiles.a[m * 64..][..64].copy_from_slice(row);
        }
        // B's row k of the tile holds the quadruples (B[4k..4k+4][n]) for n = 0..16.
        for (kk, row) in b.iter().enumerate() {
            for (n, &v) in row.iter().enumerate() {
                tiles.b[(kk / 4) * 64 + n * 4 + kk % 4] = v as u8;
            }
        }
        product(&mut tiles);
        let mut c = [[0i32; 16]; 16];
        for (m, row) in c.iter_mut().enumerate() {
            for (n, v) in row.iter_mut().enumerate() {
                *v = i32::from_le_bytes(tiles.c[m * 64 + n * 4..][..4].try_into().expect("4 bytes"));
            }
        }
        Some(c)
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
mod amx {
    pub const SUPPORTED: bool = false;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Bf16,
        Int8,
        U8S8,
    }

    pub fn permitted() -> bool {
        false
    }

    pub fn throughput(_op: Op, _loads: bool, _millis: u64) -> Option<f64> {
        None
    }

    pub fn bf16_matmul(_a: &[[u16; 32]; 16], _b: &[[u16; 16]; 32]) -> Option<[[f32; 16]; 16]> {
        None
    }

    pub fn int8_matmul(_a: &[[i8; 64]; 16], _b: &[[i8; 16]; 64]) -> Option<[[i32; 16]; 16]> {
        None
    }

    pub fn u8s8_matmul(_a: &[[u8; 64]; 16], _b: &[[i8; 16]; 64]) -> Option<[[i32; 16]; 16]> {
        None
    }
}

/// C = A x B with one AMX `TDPBF16PS` (A 16x32, B 32x16, as bf16 bits; C starts at zero),
/// or `None` without AMX-BF16 and the OS's permission. For tests and for the layout's
/// record: B's tile row `k` holds the pairs `(B[2k][n], B[2k+1][n])`.
pub fn amx_bf16_matmul(a: &[[u16; 32]; 16], b: &[[u16; 16]; 32]) -> Option<[[f32; 16]; 16]> {
    amx::bf16_matmul(a, b)
}

/// C = A x B with one AMX `TDPBSSD` (A 16x64, B 64x16, s8; C starts at zero), or `None`
/// without AMX-INT8 and the OS's permission. B's tile row `k` holds `B[4k..4k+4][n]`.
pub fn amx_int8_matmul(a: &[[i8; 64]; 16], b: &[[i8; 16]; 64]) -> Option<[[i32; 16]; 16]> {
    amx::int8_matmul(a, b)
}

/// C = A x B with one AMX `TDPBUSD` (A 16x64 u8, B 64x16 s8; C starts at zero), or `None`
/// without AMX-INT8 and the OS's permission.
pub fn amx_u8s8_matmul(a: &[[u8; 64]; 16], b: &[[i8; 16]; 64]) -> Option<[[i32; 16]; 16]> {
    amx::u8s8_matmul(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(x: f32) -> u16 {
        // Round to nearest even (the tests only use values bf16 holds exactly or nearly).
        let bits = x.to_bits();
        ((bits + 0x7FFF + (bits >> 16 & 1)) >> 16) as u16
    }

    fn from_bf16(b: u16) -> f32 {
        f32::from_bits((b as u32) << 16)
    }

    /// Plausibility only (speed belongs in `instruction_table`): every probe this CPU runs
    /// gives a finite, positive rate; the others give `None`.
    #[test]
    fn the_probes_measure_something() {
        for p in Probe::ALL {
            match p.measure(3) {
                Some(r) => assert!(r.is_finite() && r > 0.0, "{p:?}: {r}"),
                None => {
                    assert!(!p.is_supported());
                    println!("note: {} is not supported here, skipped", p.name());
                }
            }
        }
        let peaks = mixed_peaks(2, 2);
        for r in [peaks.bf16_gflops, peaks.vnni_gops, peaks.amx_bf16_gflops, peaks.amx_int8_gops].into_iter().flatten()
        {
            assert!(r.is_finite() && r > 0.0);
        }
        assert_eq!(peaks.bf16_gflops.is_some(), has_avx512bf16());
        assert_eq!(peaks.amx_int8_gops.is_some(), amx_int8_available());
        let l = latencies(2);
        assert!(l.cycle_ns.is_finite() && l.cycle_ns > 0.0 || !cfg!(target_arch = "x86_64"));
        for ns in [l.fma_ns, l.bf16_dot_ns, l.u8s8_dot_ns].into_iter().flatten() {
            assert!(ns.is_finite() && ns > 0.0);
        }
    }

    /// The permission is asked once and the answer holds, from any thread.
    #[test]
    fn amx_permission_is_consistent() {
        let first = amx_permitted();
        let others: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(amx_permitted)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(others.iter().all(|&p| p == first));
        assert_eq!(amx_permitted(), first);
        if !first {
            println!("note: no AMX tile permission here (CPU or OS), AMX probes skipped");
            assert!(!amx_bf16_available() && !amx_int8_available());
        }
    }

    /// One TDPBF16PS against a scalar reference: small multiples of 1/4 make every product
    /// and every partial sum exact in fp32, so the check is bitwise and verifies the operand
    /// layouts; then random values within fp32 rounding of the exact sum.
    #[test]
    fn amx_bf16_tile_product_is_right() {
        let exact_a: [[u16; 32]; 16] =
            std::array::from_fn(|m| std::array::from_fn(|k| bf16(((m * 7 + k * 3) % 13) as f32 * 0.25 - 1.5)));
        let exact_b: [[u16; 16]; 32] =
            std::array::from_fn(|k| std::array::from_fn(|n| bf16(((k * 5 + n * 11) % 9) as f32 * 0.5 - 2.0)));
        let Some(c) = amx_bf16_matmul(&exact_a, &exact_b) else {
            println!("note: no AMX-BF16 here, tile product not checked");
            return;
        };
        for m in 0..16 {
            for n in 0..16 {
                let want: f32 = (0..32).map(|k| from_bf16(exact_a[m][k]) * from_bf16(exact_b[k][n])).sum();
                assert_eq!(c[m][n].to_bits(), want.to_bits(), "C[{m}][{n}]");
            }
        }
        // Random values: within the fp32 rounding of 32 additions of the exact sum.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bf16((state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
        };
        let a: [[u16; 32]; 16] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        let b: [[u16; 16]; 32] = std::array::from_fn(|_| std::array::from_fn(|_| next()));
        let c = amx_bf16_matmul(&a, &b).expect("supported above");
        for m in 0..16 {
            for n in 0..16 {
                let terms = (0..32).map(|k| from_bf16(a[m][k]) as f64 * from_bf16(b[k][n]) as f64);
                let (want, magnitude) = terms.fold((0.0, 0.0), |(s, g), t| (s + t, g + t.abs()));
                let err = (c[m][n] as f64 - want).abs();
                assert!(err <= 32.0 * f32::EPSILON as f64 * magnitude, "C[{m}][{n}] = {} vs {want}", c[m][n]);
            }
        }
    }

    /// One TDPBSSD, then one TDPBUSD on the same bytes, against scalar references, exactly,
    /// with the full s8 and u8 ranges.
    #[test]
    fn amx_int8_tile_product_is_right() {
        let a: [[i8; 64]; 16] =
            std::array::from_fn(|m| std::array::from_fn(|k| ((m * 37 + k * 101) % 256) as u8 as i8));
        let b: [[i8; 16]; 64] =
            std::array::from_fn(|k| std::array::from_fn(|n| ((k * 53 + n * 29 + 7) % 256) as u8 as i8));
        let Some(c) = amx_int8_matmul(&a, &b) else {
            println!("note: no AMX-INT8 here, tile product not checked");
            return;
        };
        for m in 0..16 {
            for n in 0..16 {
                let want: i32 = (0..64).map(|k| a[m][k] as i32 * b[k][n] as i32).sum();
                assert_eq!(c[m][n], want, "C[{m}][{n}]");
            }
        }
        // TDPBUSD reads the same bytes of A as unsigned.
        let ua = a.map(|row| row.map(|v| v as u8));
        let c = amx_u8s8_matmul(&ua, &b).expect("AMX-INT8 supported above");
        for m in 0..16 {
            for n in 0..16 {
                let want: i32 = (0..64).map(|k| ua[m][k] as i32 * b[k][n] as i32).sum();
                assert_eq!(c[m][n], want, "u8 x s8 C[{m}][{n}]");
            }
        }
    }

    /// The measurement behind docs/precision.md (seconds, not a test):
    /// `cargo test --release -p repvgg-runtime instruction_peaks -- --ignored --nocapture`,
    /// `PEAK_ROUNDS` (default 9) rounds of `PEAK_MILLIS` (default 200) ms per probe, on 1
    /// and 2 threads.
    #[test]
    #[ignore]
    fn instruction_peaks() {
        let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let threads: Vec<usize> = vec![1, std::thread::available_parallelism().map_or(1, |n| n.get())];
        println!("{}", instruction_table(&threads, env("PEAK_ROUNDS", 9) as usize, env("PEAK_MILLIS", 200)));
    }
}
