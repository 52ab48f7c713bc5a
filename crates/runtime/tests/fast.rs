//! The fast executor against the f64 reference: every algorithm, several architectures
//! and odd sizes; thread-count invariance; concurrent use of one model; the arena.

mod common;

use repvgg_graph::ArchSpec;
use repvgg_graph::synthetic;
use repvgg_runtime::{Algo, AlgoChoice, DEFAULT_SPIN, Error, Isa, IsaChoice, Limits, Model, SessionOptions, Tensor};
use std::time::Duration;

fn input(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    Tensor::new(vec![n, 3, h, w], synthetic::input(n * 3 * h * w, seed)).unwrap()
}

fn custom(text: &str) -> ArchSpec {
    ArchSpec::from_toml(text, "test").unwrap()
}

/// Bound on max|fast - reference| / max|reference| for logits and stage outputs.
///
/// The reference runs in f64, so this is the fast path's own fp32 error through the
/// whole network. Direct convolution rounds each product once (~6e-8 relative per layer,
/// growing like sqrt of the reduction length); Winograd adds its transform error
/// (crates/winograd docs: about 1e-6 for F(2,3), 1e-6 to 4e-6 for F(4,3) with the
/// sqrt(2) points and 6e-6 to 3e-5 for F(6,3) at these channel counts). Errors of
/// successive layers add rather than multiply (ReLU networks are roughly 1-Lipschitz
/// here). The worst cases measured over these tests are 1.5e-6 (direct), 1.0e-6 (F(2,3)),
/// 1.8e-6 (F(4,3)), 8.1e-6 (F(6,3)) and 1.5e-6 (auto); the bounds leave a 3-4x margin.
fn tolerance(choice: AlgoChoice) -> f32 {
    match choice {
        AlgoChoice::Force(Algo::Direct) | AlgoChoice::Force(Algo::Generic) => 5e-6,
        AlgoChoice::Force(Algo::F2) => 4e-6,
        AlgoChoice::Force(Algo::F4) | AlgoChoice::Auto => 8e-6,
        AlgoChoice::Force(Algo::F6) => 3e-5,
        // Polyphase on the stride-2 layers: transform coefficients 0 and +-1, direct's error.
        AlgoChoice::Force(Algo::P2) => 5e-6,
    }
}

const CHOICES: [AlgoChoice; 6] = [
    AlgoChoice::Auto,
    AlgoChoice::Force(Algo::Direct),
    AlgoChoice::Force(Algo::F2),
    AlgoChoice::Force(Algo::F4),
    AlgoChoice::Force(Algo::F6),
    AlgoChoice::Force(Algo::P2),
];

/// Every algorithm choice on the kernel set `REPVGG_ISA` selects (CI runs the suite once
/// per set), against the reference.
fn check_against_reference(model: &Model, x: &Tensor, what: &str) {
    check_isa_against_reference(model, x, what, IsaChoice::Auto)
}

fn check_isa_against_reference(model: &Model, x: &Tensor, what: &str, isa: IsaChoice) {
    let want = model.run_reference(x).unwrap();
    for choice in CHOICES {
        let mut session =
            model.session(SessionOptions { threads: 2, algo: choice, isa, ..Default::default() }).unwrap();
        let got = session.features(x).unwrap();
        let tol = tolerance(choice);
        let err = got.logits.rel_diff(&want.logits);
        assert!(err < tol, "{what} {choice:?}: logits differ by {err:.2e} (tolerance {tol:.0e})");
        for (s, (a, b)) in got.stages.iter().zip(&want.stages).enumerate() {
            let err = a.rel_diff(b);
            assert!(err < tol, "{what} {choice:?}: stage{} differs by {err:.2e} (tolerance {tol:.0e})", s + 1);
        }
    }
}

#[test]
fn a0_at_odd_sizes_matches_the_reference() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 3).unwrap();
    check_against_reference(&model, &input(2, 61, 47, 1), "A0 2x61x47");
    check_against_reference(&model, &input(1, 5, 9, 2), "A0 1x5x9");
}

/// Every kernel set this CPU runs, in one process, whatever `REPVGG_ISA` says: a plain and
/// a grouped SE network at odd sizes. The portable set rounds each product before adding
/// it, which the tolerances absorb.
#[test]
fn every_kernel_set_matches_the_reference() {
    let a0 = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 3).unwrap();
    let se = Model::synthetic(
        custom(
            "name='se'\nblocks_per_stage=[2,2,2,1]\nwidths=[32,48,64,96,160]\ngroups=2\ngrouped_layers=[2,4]\nse=true\nnum_classes=21\n",
        ),
        8,
    )
    .unwrap();
    for isa in Isa::supported() {
        check_isa_against_reference(&a0, &input(2, 37, 29, 1), &format!("{isa} A0 2x37x29"), IsaChoice::Force(isa));
        check_isa_against_reference(&se, &input(1, 29, 34, 4), &format!("{isa} SE 1x29x34"), IsaChoice::Force(isa));
    }
}

/// The FMA kernel sets (AVX-512 and AVX2) perform the same operations in the same order on
/// every value, whatever their vector width: bitwise the same logits and stage outputs.
/// On a CPU with only one of them there is nothing to compare (the test says so).
#[test]
fn the_fma_kernel_sets_agree_bitwise() {
    let sets: Vec<Isa> = Isa::supported().into_iter().filter(|isa| *isa != Isa::Portable).collect();
    if sets.len() < 2 {
        eprintln!("only {sets:?} on this CPU: no second FMA kernel set to compare with");
        return;
    }
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 12).unwrap();
    let x = input(2, 45, 38, 13);
    for choice in CHOICES {
        let run = |isa| {
            let options = SessionOptions { threads: 2, algo: choice, isa: IsaChoice::Force(isa), ..Default::default() };
            model.session(options).unwrap().features(&x).unwrap()
        };
        let first = run(sets[0]);
        for &isa in &sets[1..] {
            let other = run(isa);
            assert_eq!(first.logits, other.logits, "{choice:?}: {:?} vs {isa:?}", sets[0]);
            assert_eq!(first.stages, other.stages, "{choice:?}: {:?} vs {isa:?} stages", sets[0]);
        }
    }
}

#[test]
fn grouped_b1g4_matches_the_reference() {
    let model = Model::synthetic(ArchSpec::builtin("B1g4").unwrap(), 4).unwrap();
    check_against_reference(&model, &input(1, 37, 45, 3), "B1g4 1x37x45");
}

#[test]
fn squeeze_excitation_matches_the_reference() {
    let arch = custom(
        "name='se'\nblocks_per_stage=[2,3,4,1]\nwidths=[32,48,64,96,160]\ngroups=2\ngrouped_layers=[2,4,6]\nse=true\nnum_classes=21\n",
    );
    let model = Model::synthetic(arch, 5).unwrap();
    check_against_reference(&model, &input(3, 29, 34, 4), "SE 3x29x34");
}

#[test]
fn odd_widths_and_groups_take_the_padded_and_generic_paths() {
    // 24 and 40 channels are not multiples of 16; groups of 3 give 8 or 40/3... use widths
    // divisible by 3 for the grouped layers: 24/3 = 8 and 72/3 = 24 channels per group.
    let arch = custom(
        "name='odd'\nblocks_per_stage=[2,2,2,1]\nwidths=[24,24,40,72,88]\ngroups=3\ngrouped_layers=[2,6]\nnum_classes=13\n",
    );
    let model = Model::synthetic(arch, 6).unwrap();
    check_against_reference(&model, &input(2, 23, 19, 5), "odd 2x23x19");
    let plan = model.session(SessionOptions::default()).unwrap().plan(2, 23, 19).unwrap().clone();
    assert_eq!(plan.layers[2].algo, Algo::Generic, "8 channels per group have no whole blocks");
    assert_eq!(plan.layers[6].algo, Algo::Generic, "24 channels per group have no whole blocks");
}

#[test]
fn forced_algorithms_fall_back_where_they_cannot_run() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 1).unwrap();
    let mut session =
        model.session(SessionOptions { threads: 1, algo: AlgoChoice::Force(Algo::F6), ..Default::default() }).unwrap();
    let plan = session.plan(1, 64, 64).unwrap();
    for lp in &plan.layers {
        let expected = if lp.stride == 2 { Algo::Direct } else { Algo::F6 };
        assert_eq!(lp.algo, expected, "{}", lp.name);
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 7).unwrap();
    let x = input(2, 67, 53, 9);
    for choice in CHOICES {
        let run = |threads, spin| {
            let mut s = model.session(SessionOptions { threads, algo: choice, spin, ..Default::default() }).unwrap();
            s.features(&x).unwrap()
        };
        let one = run(1, DEFAULT_SPIN);
        // Zero spin: helpers park between loops and join late, so the split between
        // threads differs from run to run; the results must not.
        for (threads, spin) in [(2, DEFAULT_SPIN), (3, DEFAULT_SPIN), (2, Duration::ZERO)] {
            let many = run(threads, spin);
            assert_eq!(one.logits, many.logits, "{choice:?} with {threads} threads, spin {spin:?}");
            for (a, b) in one.stages.iter().zip(&many.stages) {
                assert_eq!(a, b, "{choice:?} stage outputs with {threads} threads, spin {spin:?}");
            }
        }
    }
}

#[test]
fn a_session_on_a_callers_rayon_pool_gives_the_teams_results() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 7).unwrap();
    let x = input(2, 67, 53, 9);
    let own = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap().features(&x).unwrap();
    for threads in [1, 2, 3] {
        let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap());
        let options = SessionOptions { pool: Some(pool.clone()), ..Default::default() };
        let mut session = model.session(options).unwrap();
        assert_eq!(session.threads(), threads);
        let on_pool = session.features(&x).unwrap();
        assert_eq!(own.logits, on_pool.logits, "{threads}-thread pool");
        assert_eq!(own.stages, on_pool.stages, "{threads}-thread pool stage outputs");
        // Called from one of the pool's own workers, as a rayon embedder would.
        let logits = pool.install(|| session.run(&x).unwrap());
        assert_eq!(own.logits, logits, "{threads}-thread pool, from inside it");
        // Several sessions sharing one pool, run from its workers at once.
        let runs: Vec<Tensor> = pool.install(|| {
            use rayon::prelude::*;
            (0..4)
                .into_par_iter()
                .map(|_| {
                    let options = SessionOptions { pool: Some(pool.clone()), ..Default::default() };
                    model.session(options).unwrap().run(&x).unwrap()
                })
                .collect()
        });
        assert!(runs.iter().all(|l| *l == own.logits), "{threads}-thread pool shared by four sessions");
    }
}

#[test]
fn one_model_serves_many_threads_at_once() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 11).unwrap();
    let inputs: Vec<Tensor> = (0..4).map(|i| input(1 + i % 2, 48 + 8 * i, 40 + 4 * i, 20 + i as u64)).collect();
    let expected: Vec<Tensor> = inputs
        .iter()
        .map(|x| model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap().run(x).unwrap())
        .collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (model, inputs, expected) = (&model, &inputs, &expected);
            scope.spawn(move || {
                let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
                for round in 0..6 {
                    let i = (t + round) % inputs.len();
                    assert_eq!(session.run(&inputs[i]).unwrap(), expected[i], "thread {t} round {round}");
                }
            });
        }
    });
    // `Model::run` takes a fresh session each call; it is a convenience, not a fast path.
    assert_eq!(model.run(&inputs[0]).unwrap(), expected[0]);
}

#[test]
fn the_arena_does_not_grow_across_runs() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 2).unwrap();
    let mut session = model.session(SessionOptions { threads: 2, ..Default::default() }).unwrap();
    let x = input(2, 96, 80, 3);
    let mut logits = Tensor::zeros(vec![2, 1000]);
    session.run_into(&x, &mut logits).unwrap();
    let bytes = session.arena_bytes();
    assert!(bytes > 0);
    for _ in 0..3 {
        session.run_into(&x, &mut logits).unwrap();
        assert_eq!(session.arena_bytes(), bytes);
    }
    // A smaller input fits in what is already there.
    session.run(&input(1, 64, 64, 4)).unwrap();
    assert_eq!(session.arena_bytes(), bytes);
}

#[test]
fn oversized_requests_are_refused_before_allocating() {
    let arch = ArchSpec::builtin("A0").unwrap();
    let network = repvgg_graph::Network::new(arch.clone());
    let weights = Model::synthetic(arch, 1).unwrap().weights().clone();
    let limits = Limits { max_arena_bytes: 64 << 20, ..Limits::default() };
    let model = Model::from_parts(network, weights, limits, String::new()).unwrap();
    let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let err = session.plan(8, 512, 512).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    assert!(err.to_string().contains("working memory"), "{err}");
    assert_eq!(session.arena_bytes(), 0, "nothing was allocated");
    let err = session.plan(2000, 32, 32).unwrap_err();
    assert!(matches!(err, Error::Limit(_)), "{err}");
    let err = session.run(&Tensor::zeros(vec![1, 3, 9000, 4])).unwrap_err();
    assert!(err.to_string().contains("exceeds the limit of 8192 pixels per side"), "{err}");
}

#[test]
fn autotuning_picks_working_algorithms() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 5).unwrap();
    let x = input(1, 40, 40, 6);
    let mut tuned = model
        .session(SessionOptions { threads: 2, algo: AlgoChoice::Auto, autotune: true, ..Default::default() })
        .unwrap();
    let plan = tuned.plan(1, 40, 40).unwrap().clone();
    // Stride-2 layers have two candidates: direct and polyphase Winograd.
    assert!(plan.layers.iter().all(|l| l.stride == 1 || matches!(l.algo, Algo::Direct | Algo::P2)));
    let want = model.run_reference(&x).unwrap();
    let err = tuned.run(&x).unwrap().rel_diff(&want.logits);
    assert!(err < tolerance(AlgoChoice::Force(Algo::F6)), "{err:e}");
}
