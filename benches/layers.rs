//! Single convolution layers of RepVGG-A0/B0 at 224x224, batch 1, one thread, under
//! every algorithm that applies and every instruction set this CPU runs: the measurements behind the default algorithm table
//! (the cost model of `repvgg_runtime::Plan`). Throughput is reported in direct-equivalent
//! FLOP/s (2 x K x C x 9 x output pixels), so algorithms compare directly.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use repvgg::runtime::lab::{Conv, ConvSpec, Team};
use repvgg::runtime::{Algo, DEFAULT_SPIN};
use repvgg::simd::Dispatch;

/// (name, in channels, out channels, input side, stride).
const LAYERS: [(&str, usize, usize, usize, usize); 8] = [
    ("a0_stage1.0_48-48_112_s2", 48, 48, 112, 2),
    ("a0_stage1.1_48-48_56", 48, 48, 56, 1),
    ("a0_stage2.1_96-96_28", 96, 96, 28, 1),
    ("a0_stage3.1_192-192_14", 192, 192, 14, 1),
    ("a0_stage4.0_192-1280_14_s2", 192, 1280, 14, 2),
    ("b0_stage1.1_64-64_56", 64, 64, 56, 1),
    ("b0_stage2.1_128-128_28", 128, 128, 28, 1),
    ("b0_stage3.1_256-256_14", 256, 256, 14, 1),
];

fn layers(c: &mut Criterion) {
    let pool = Team::new(1, DEFAULT_SPIN).expect("team");
    let mut group = c.benchmark_group("layer");
    group.sample_size(20).warm_up_time(std::time::Duration::from_millis(300));
    group.measurement_time(std::time::Duration::from_secs(1));
    for (name, cin, cout, side, stride) in LAYERS {
        let spec =
            ConvSpec { n: 1, kernel: 3, in_channels: cin, out_channels: cout, groups: 1, stride, h: side, w: side };
        let (out_side, _) = spec.output_size();
        let weights: Vec<f32> = (0..cout * cin * 9).map(|i| ((i * 31 % 97) as f32 - 48.0) * 1e-3).collect();
        let bias = vec![0.01f32; cout];
        let input: Vec<f32> = (0..spec.input_len()).map(|i| (i % 13) as f32 * 0.05).collect();
        let mut output = vec![0f32; spec.output_len()];
        group.throughput(Throughput::Elements((2 * cout * cin * 9 * out_side * out_side) as u64));

        for algo in [Algo::Direct, Algo::F2, Algo::F4, Algo::F6] {
            // Winograd runs stride-1 layers only.
            let Ok(mut conv) = Conv::new(algo, spec, &weights, &bias, &pool) else { continue };
            let label = match algo {
                Algo::Direct => "direct".to_string(),
                other => format!("{:?}", other),
            };
            for isa in Dispatch::all_supported() {
                group.bench_function(BenchmarkId::new(format!("{label}/{}", isa.isa()), name), |b| {
                    b.iter(|| conv.run(&pool, isa, &input, &mut output))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
