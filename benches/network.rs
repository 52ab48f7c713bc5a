//! Whole networks on synthetic weights at 224x224: RepVGG-A0 and B0, batch 1 and 8, one
//! and two threads, the default algorithm table. `repvgg bench` gives the per-layer
//! breakdown of the same runs; `benches/compare` times the peers side by side.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use repvgg::{ArchSpec, Model, SessionOptions, Tensor};

fn networks(c: &mut Criterion) {
    let mut group = c.benchmark_group("network");
    group.sample_size(10).warm_up_time(std::time::Duration::from_millis(500));
    group.measurement_time(std::time::Duration::from_secs(3));
    for arch in ["A0", "B0"] {
        let model = Model::synthetic(ArchSpec::builtin(arch).expect("built-in"), 0).expect("model");
        for batch in [1usize, 8] {
            let input =
                Tensor::new(vec![batch, 3, 224, 224], repvgg::graph::synthetic::input(batch * 3 * 224 * 224, 1))
                    .expect("input");
            for threads in [1usize, 2] {
                let mut session = model.session(SessionOptions { threads, ..Default::default() }).expect("session");
                let mut logits = session.run(&input).expect("warm-up");
                group.throughput(Throughput::Elements(batch as u64));
                let id = BenchmarkId::new(format!("{arch}/batch{batch}"), format!("{threads}threads"));
                group.bench_function(id, |b| b.iter(|| session.run_into(&input, &mut logits).expect("run")));
            }
        }
    }
    group.finish();
}

criterion_group!(benches, networks);
criterion_main!(benches);
