//! Machine probes: the FMA peak and the DRAM read bandwidth of the calling thread, per
//! instruction set, so that `repvgg bench` sets each layer against what the kernels it
//! ran could do at most.

use std::time::Instant;

use repvgg_simd::{Dispatch, Simd, dispatch};

/// The FMA peak of `threads` threads at once with `isa`'s kernels, in GFLOP/s: each
/// runs [`fma_gflops`] for about `millis` ms and the rates are summed.
pub fn peak_gflops(isa: Dispatch, threads: usize, millis: u64) -> f64 {
    on_threads(threads, || dispatch!(isa, |s| fma_gflops(s, millis)))
}

/// Runs `probe` on `threads` fresh threads at once and sums what they measure.
pub fn on_threads(threads: usize, probe: impl Fn() -> f64 + Sync) -> f64 {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(&probe)).collect();
        handles.into_iter().map(|t| t.join().expect("probe thread")).sum()
    })
}

/// FP32 multiply-add throughput in GFLOP/s (2 flops per lane per multiply-add): 12
/// independent chains of vector multiply-adds, enough to cover the latency of two FMA
/// pipes, for about `millis` ms.
#[inline(always)]
pub fn fma_gflops<S: Simd>(s: S, millis: u64) -> f64 {
    let mut acc = [s.splat(1.0); 12];
    let (b, c) = (s.splat(0.999_999), s.splat(1e-7));
    let start = Instant::now();
    let mut iterations = 0u64;
    while start.elapsed().as_millis() < millis as u128 {
        for _ in 0..10_000 {
            for a in acc.iter_mut() {
                *a = s.mul_add(*a, b, c);
            }
        }
        iterations += 10_000;
        acc = std::hint::black_box(acc);
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(acc);
    (iterations * 12 * S::LANES as u64 * 2) as f64 / seconds / 1e9
}

/// Read bandwidth in GB/s (10^9 bytes): sums `buffer` (larger than the caches) with 8
/// independent vector accumulators, pass after pass for about `millis` ms.
#[inline(always)]
pub fn read_gbps<S: Simd>(s: S, buffer: &[f32], millis: u64) -> f64 {
    let step = 8 * S::LANES;
    let usable = buffer.len() / step * step;
    let mut acc = [s.zero(); 8];
    let start = Instant::now();
    let mut passes = 0u64;
    while passes == 0 || start.elapsed().as_millis() < millis as u128 {
        for chunk in std::hint::black_box(&buffer[..usable]).chunks_exact(step) {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = *a + s.read(&chunk[k * S::LANES..]);
            }
        }
        passes += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(acc);
    (passes as usize * usable * 4) as f64 / seconds / 1e9
}

#[cfg(test)]
mod tests {
    use repvgg_simd::{Dispatch, dispatch};

    /// Plausibility only (speed belongs in benchmarks): positive, finite rates on every
    /// instruction set this CPU runs.
    #[test]
    fn the_probes_measure_something() {
        let buffer = vec![1f32; 1 << 20];
        for isa in Dispatch::all_supported() {
            let gflops = dispatch!(isa, |s| super::fma_gflops(s, 2));
            let gbps = dispatch!(isa, |s| super::read_gbps(s, &buffer, 2));
            assert!(gflops.is_finite() && gflops > 0.0 && gbps.is_finite() && gbps > 0.0, "{:?}", isa.isa());
        }
    }
}
