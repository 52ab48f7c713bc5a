//! Concurrency stress: one `Model` driven from 8 threads with mixed batch and input
//! sizes for a bounded time; every output must equal a single-threaded run bit for bit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use repvgg_graph::{ArchSpec, synthetic};
use repvgg_runtime::{AlgoChoice, Model, SessionOptions, Tensor};

/// How long the threads keep going (after each has done at least a few runs).
const BUDGET: Duration = Duration::from_secs(4);

#[test]
fn eight_threads_on_one_model_agree_with_a_single_thread() {
    let arch = ArchSpec::from_toml(
        "name='stress'\nblocks_per_stage=[2,2,3,1]\nwidths=[32,32,48,96,128]\ngroups=2\ngrouped_layers=[2,4]\nse=true\nnum_classes=50\n",
        "stress",
    )
    .unwrap();
    let model = Model::synthetic(arch, 9).unwrap();
    let shapes = [(1, 32, 32), (2, 45, 37), (3, 24, 64), (1, 71, 29), (2, 16, 16), (4, 40, 40)];
    let inputs: Vec<Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(n, h, w))| Tensor::new(vec![n, 3, h, w], synthetic::input(n * 3 * h * w, 100 + i as u64)).unwrap())
        .collect();
    // Threads use the default table or force F(4,3); each compares with a single-threaded
    // run of the same algorithm choice.
    let choices = [AlgoChoice::Auto, "f4".parse().unwrap()];
    let expected: Vec<Vec<Tensor>> = choices
        .iter()
        .map(|&algo| {
            let mut single = model.session(SessionOptions { threads: 1, algo, ..Default::default() }).unwrap();
            inputs.iter().map(|x| single.run(x).unwrap()).collect()
        })
        .collect();

    let runs = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        // Joined explicitly, not by the scope's end: ThreadSanitizer (tools/sanitizers.sh)
        // sees a join as synchronisation, not the scope's uninstrumented bookkeeping.
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let (model, inputs, expected, runs) = (&model, &inputs, &expected, &runs);
                scope.spawn(move || {
                    // Mix session shapes: some threads run 2-worker sessions, some force F(4,3).
                    let choice = t % 2;
                    let options = SessionOptions { threads: 1 + t / 4, algo: choices[choice], ..Default::default() };
                    let expected = &expected[choice];
                    let mut session = model.session(options).unwrap();
                    let mut i = t;
                    let mut mine = 0;
                    while mine < 6 || start.elapsed() < BUDGET {
                        let k = i % inputs.len();
                        assert_eq!(session.run(&inputs[k]).unwrap(), expected[k], "thread {t}, input {k}");
                        i += 7;
                        mine += 1;
                        runs.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker");
        }
    });
    assert!(runs.load(Ordering::Relaxed) >= 8 * 6);
}

#[test]
fn models_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Model>();
    fn check_send<T: Send>() {}
    check_send::<repvgg_runtime::Session>();
}
