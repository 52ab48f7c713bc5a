//! Single convolution layers of RepVGG-A0/B0 at 224x224, batch 1, one thread, under
//! every algorithm that applies and every instruction set this CPU runs: the measurements behind the default algorithm table
//! (`repvgg_runtime::plan::default_algo`). Throughput is reported in direct-equivalent
//! FLOP/s (2 x K x C x 9 x output pixels), so algorithms compare directly.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use repvgg::runtime::DEFAULT_SPIN;
use repvgg::runtime::buffers::Scratch;
use repvgg::runtime::exec::direct::{self, DirectShape, DirectWeights, InputLayout};
use repvgg::runtime::exec::winograd::{self as wino, WinogradShape};
use repvgg::runtime::kernels::gemm::MR;
use repvgg::runtime::kernels::{CHANNEL_BLOCK, channel_blocks};
use repvgg::runtime::team::Team;
use repvgg::simd::Dispatch;
use repvgg::winograd::{PackedFilters, Variant};

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
        let out_side = (side - 1) / stride + 1;
        let weights: Vec<f32> = (0..cout * cin * 9).map(|i| ((i * 31 % 97) as f32 - 48.0) * 1e-3).collect();
        let bias = vec![0.01f32; channel_blocks(cout) * CHANNEL_BLOCK];
        let input: Vec<f32> =
            (0..channel_blocks(cin) * CHANNEL_BLOCK * side * side).map(|i| (i % 13) as f32 * 0.05).collect();
        let mut output = vec![0f32; channel_blocks(cout) * CHANNEL_BLOCK * out_side * out_side];
        group.throughput(Throughput::Elements((2 * cout * cin * 9 * out_side * out_side) as u64));

        let shape = DirectShape {
            n: 1,
            kernel: 3,
            in_channels: cin,
            h: side,
            w: side,
            out_channels: cout,
            groups: 1,
            stride,
            oh: out_side,
            ow: out_side,
        };
        let packed = DirectWeights::new(InputLayout::Blocked, &weights, cout, cin, 1);
        let mut shared = vec![0f32; direct::shared_len(InputLayout::Blocked, &shape)];
        let scratch = Scratch::new(1, direct::scratch_len(InputLayout::Blocked, &shape));
        for isa in Dispatch::all_supported() {
            group.bench_function(BenchmarkId::new(format!("direct/{}", isa.isa()), name), |b| {
                b.iter(|| {
                    pool.install(|| {
                        direct::run(isa, &packed, &bias, true, &shape, &input, &mut output, &mut shared, &scratch)
                    })
                })
            });
        }
        if stride != 1 {
            continue;
        }
        for v in [Variant::F2, Variant::F4, Variant::F6] {
            let shape = WinogradShape { n: 1, in_channels: cin, out_channels: cout, groups: 1, h: side, w: side };
            let filters = PackedFilters::new(v, &weights, cout, cin, 1, MR).expect("filters");
            let mut shared = vec![0f32; wino::shared_len(v, &shape)];
            let scratch = Scratch::new(1, wino::scratch_len(v, &shape));
            for isa in Dispatch::all_supported() {
                group.bench_function(BenchmarkId::new(format!("{v:?}/{}", isa.isa()), name), |b| {
                    b.iter(|| {
                        pool.install(|| {
                            wino::run(isa, &filters, &bias, true, &shape, &input, &mut output, &mut shared, &scratch)
                        })
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, layers);
criterion_main!(benches);
