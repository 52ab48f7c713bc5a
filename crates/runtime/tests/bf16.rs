//! BF16 mode end to end: whole networks against the f64 reference within the documented
//! bound, on every bf16 kernel set this CPU runs; thread-count invariance; the trained
//! fixture's held-out accuracy and the ONNX Runtime fixtures' top-1; and the refusals on
//! CPUs (or forced kernel sets) without AVX512-BF16.
//!
//! On a CPU without AVX512-BF16 only the refusal runs; the rest says so and passes.

mod common;

use repvgg_graph::ArchSpec;
use repvgg_graph::synthetic;
use repvgg_runtime::loader::{SafetensorsFile, read_input};
use repvgg_runtime::{
    Bf16Set, ErrorKind, Isa, IsaChoice, Limits, Model, ModelOptions, Precision, SessionOptions, Tensor,
};

/// BF16's bound on the logits: `max |bf16 - reference| <= BOUND x max(1, max |reference|)`.
///
/// Each layer rounds its input and its weights to 8 significant bits (a relative `2^-9`
/// each, random in sign), so a layer's output moves by about `2^-9 sqrt(2)` relative,
/// and the errors of the layers add (ReLU networks are close to 1-Lipschitz at these
/// scales). Measured over these tests: at most 3.6e-3 (B1g4 at 224), well inside the 1e-2
/// the BF16 issue asks for.
const BOUND: f32 = 1e-2;

fn input(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    Tensor::new(vec![n, 3, h, w], synthetic::input(n * 3 * h * w, seed)).unwrap()
}

/// The bf16 sets this CPU runs (empty without AVX512-BF16).
fn sets() -> Vec<Bf16Set> {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 1).unwrap();
    Bf16Set::ALL
        .into_iter()
        .filter(|&set| {
            model
                .session(SessionOptions {
                    precision: Some(Precision::Bf16),
                    bf16_kernels: Some(set),
                    ..Default::default()
                })
                .is_ok()
        })
        .collect()
}

fn bf16(set: Bf16Set, threads: usize) -> SessionOptions {
    SessionOptions { threads, precision: Some(Precision::Bf16), bf16_kernels: Some(set), ..Default::default() }
}

/// `max |got - want| / max(1, max |want|)`.
fn error(got: &Tensor, want: &Tensor) -> f32 {
    let diff = got.data().iter().zip(want.data()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    diff / want.max_abs().max(1.0)
}

/// A0, B0, B1g4 (groups) and D2se (squeeze-and-excitation) at odd sizes against the f64
/// reference, and at 224 against FP32 (itself within 8e-6 of the reference,
/// `tests/fast.rs`: the f64 reference of B0 and D2se at 224 would take minutes), on every
/// bf16 set.
#[test]
fn every_architecture_is_within_the_bound() {
    let sets = sets();
    if sets.is_empty() {
        eprintln!("no AVX512-BF16 on this CPU: BF16 is refused here (see the refusal test)");
        return;
    }
    for (arch, odd, size) in
        [("A0", (2, 61, 47), 224), ("B0", (1, 45, 40), 224), ("B1g4", (1, 37, 29), 224), ("D2se", (1, 33, 35), 224)]
    {
        let model = Model::synthetic(ArchSpec::builtin(arch).unwrap(), 5).unwrap();
        let (n, h, w) = odd;
        let x = input(n, h, w, 3);
        let want = model.run_reference(&x).unwrap().logits;
        let big = input(1, size, size, 4);
        let fp32 = model.session(SessionOptions { threads: 2, ..Default::default() }).unwrap().run(&big).unwrap();
        for &set in &sets {
            let mut session = model.session(bf16(set, 2)).unwrap();
            assert_eq!((session.precision(), session.bf16_kernels()), (Precision::Bf16, Some(set)));
            let e = error(&session.run(&x).unwrap(), &want);
            eprintln!("{arch} {n}x{h}x{w} {set}: {e:.2e} of the reference");
            assert!(e <= BOUND, "{arch} {n}x{h}x{w} {set}: logits off the reference by {e:.2e} (bound {BOUND:.0e})");
            let e = error(&session.run(&big).unwrap(), &fp32);
            eprintln!("{arch} 1x{size}x{size} {set}: {e:.2e} of FP32");
            assert!(e <= BOUND, "{arch} at {size} {set}: logits off FP32 by {e:.2e} (bound {BOUND:.0e})");
        }
    }
}

/// Each output element is computed by one work item in an order the shape fixes, so the
/// thread count does not change a bit; the two sets agree within the bound.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let sets = sets();
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 2).unwrap();
    let x = input(3, 67, 53, 9);
    let mut per_set = Vec::new();
    for set in sets {
        let one = model.session(bf16(set, 1)).unwrap().run(&x).unwrap();
        let two = model.session(bf16(set, 2)).unwrap().run(&x).unwrap();
        let three = model.session(bf16(set, 3)).unwrap().run(&x).unwrap();
        assert!(one.data().iter().zip(two.data()).all(|(a, b)| a.to_bits() == b.to_bits()), "{set}: 1 vs 2 threads");
        assert!(one.data().iter().zip(three.data()).all(|(a, b)| a.to_bits() == b.to_bits()), "{set}: 1 vs 3 threads");
        per_set.push(one);
    }
    for pair in per_set.windows(2) {
        assert!(error(&pair[0], &pair[1]) <= BOUND);
    }
}

/// Between two BF16 layers the producer writes the consumer's bf16 input directly; where
/// someone looks at the activations (the stage outputs) they go through floats instead.
/// Both round the same floats the same way, so the logits are the same bits, at a size
/// where every stage has several layers and with a batch of several images.
#[test]
fn handing_bf16_between_layers_gives_the_same_bits() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 6).unwrap();
    let x = input(3, 64, 72, 5);
    for set in sets() {
        let mut session = model.session(bf16(set, 2)).unwrap();
        let handed = session.run(&x).unwrap();
        let watched = session.features(&x).unwrap();
        assert_eq!(watched.stages.len(), 4);
        let same = handed.data().iter().zip(watched.logits.data()).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{set}: handing bf16 on changed the logits");
    }
}

/// `lab::layer_errors` (what `repvgg bench --precision bf16` prints per layer): one entry
/// per layer in plan order, each the layer's drift from FP32, non-zero (bf16 rounds) and
/// within a few times the logits' bound at every depth.
#[test]
fn each_layers_drift_from_fp32_is_reported() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 2).unwrap();
    let x = input(1, 64, 64, 8);
    for set in sets() {
        let errors = repvgg_runtime::lab::layer_errors(&model, bf16(set, 2), &x).unwrap();
        let plan = model.session(bf16(set, 2)).unwrap().plan(1, 64, 64).unwrap().layers.clone();
        assert_eq!(errors.len(), plan.len());
        for ((name, e), lp) in errors.iter().zip(&plan) {
            assert_eq!(name, &lp.name);
            assert!(*e > 0.0 && *e < 5.0 * BOUND as f64, "{set} {name}: {e:e}");
        }
    }
}

fn top1(logits: &Tensor) -> Vec<usize> {
    (0..logits.shape()[0]).map(|i| logits.top_k(i, 1)[0].0).collect()
}

/// The trained fixture's 297 held-out images: BF16 classifies each as FP32 does.
#[test]
fn the_trained_fixture_keeps_its_answers() {
    let dir = common::models_dir().join("fixtures/trained-digits");
    let arch = ArchSpec::from_file(&dir.join("arch.toml")).unwrap();
    let model =
        Model::load(&dir.join("train.safetensors"), &ModelOptions { arch: Some(arch), ..Default::default() }).unwrap();
    let x = read_input(&dir.join("input.safetensors"), &Limits::default()).unwrap();
    let fp32 = top1(&model.session(SessionOptions { threads: 2, ..Default::default() }).unwrap().run(&x).unwrap());
    for set in sets() {
        let got = top1(&model.session(bf16(set, 2)).unwrap().run(&x).unwrap());
        let differ: Vec<usize> = (0..got.len()).filter(|&i| got[i] != fp32[i]).collect();
        assert!(differ.is_empty(), "{set}: images {differ:?} change class");
    }
}

/// The ONNX Runtime fixtures (multi-branch graphs run by ORT in f32): the same top-1 for
/// every image, and logits within the bound.
#[test]
fn onnx_runtime_fixtures_keep_their_top1() {
    for name in ["tiny-groups", "tiny-se"] {
        let dir = common::models_dir().join("fixtures").join(name);
        let arch = ArchSpec::from_file(&dir.join("arch.toml")).unwrap();
        let model =
            Model::load(&dir.join("train.safetensors"), &ModelOptions { arch: Some(arch), ..Default::default() })
                .unwrap();
        let x = read_input(&dir.join("input.safetensors"), &Limits::default()).unwrap();
        let expected = SafetensorsFile::open(&dir.join("expected.safetensors"), "expected outputs", 1 << 30).unwrap();
        let want = {
            use repvgg_graph::TensorSource;
            Tensor::new(expected.shape("logits").unwrap().to_vec(), expected.tensor_f32("logits").unwrap().into_owned())
                .unwrap()
        };
        for set in sets() {
            let got = model.session(bf16(set, 2)).unwrap().run(&x).unwrap();
            assert_eq!(top1(&got), top1(&want), "{name} {set}");
            let e = error(&got, &want);
            assert!(e <= BOUND, "{name} {set}: {e:.2e} off ORT");
        }
    }
}

/// Without AVX512-BF16, or with the float kernels forced below AVX-512, BF16 is a CPU
/// error (the CLI's CPU exit code); forcing a bf16 set the CPU lacks is one too.
#[test]
fn bf16_is_refused_where_the_cpu_cannot_run_it() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 1).unwrap();
    let bf16 = SessionOptions { precision: Some(Precision::Bf16), ..Default::default() };
    let supported = sets();
    match model.session(bf16.clone()) {
        Ok(session) => {
            assert!(!supported.is_empty());
            assert_eq!(session.bf16_kernels(), Some(supported[0]));
        }
        Err(e) => {
            assert!(supported.is_empty());
            assert_eq!(e.kind(), ErrorKind::Cpu, "{e}");
        }
    }
    let forced = model.session(SessionOptions { isa: IsaChoice::Force(Isa::Portable), ..bf16.clone() });
    assert_eq!(forced.err().map(|e| e.kind()), Some(ErrorKind::Cpu));
    for set in Bf16Set::ALL.into_iter().filter(|s| !supported.contains(s)) {
        let e = model.session(SessionOptions { bf16_kernels: Some(set), ..bf16.clone() }).err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::Cpu, "{e}");
    }
    // FP32 and a forced set without BF16 asked for: the set is not looked at.
    let fp32 = model.session(SessionOptions { bf16_kernels: Some(Bf16Set::Amx), ..Default::default() }).unwrap();
    assert_eq!((fp32.precision(), fp32.bf16_kernels()), (Precision::F32, None));
}

/// The classifier's bf16 copy counts against `Limits::max_weight_bytes` like any packing:
/// with no room left beside the deploy weights a BF16 session is refused with the limit
/// error, and with room for it the session runs.
#[test]
fn the_bf16_classifier_is_held_to_the_weight_limit() {
    let Some(&set) = sets().first() else { return };
    let small = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 3).unwrap();
    let held = small.weights().bytes();
    let classifier = small.weights().linear_weight.len() * 2;
    let limited = |max_weight_bytes: usize| {
        let limits = Limits { max_weight_bytes, ..Limits::default() };
        Model::from_parts(small.network().clone(), small.weights().clone(), limits, "limited".into()).unwrap()
    };
    let e = limited(held + classifier - 1).session(bf16(set, 1)).err().expect("refused");
    assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    assert!(e.to_string().contains("classifier's bf16 weights"), "{e}");
    // Room for the classifier and the layers' bf16 packings (about half the deploy bytes).
    let model = limited(2 * held);
    let logits = model.session(bf16(set, 1)).unwrap().run(&input(1, 32, 32, 5)).unwrap();
    assert!(logits.data().iter().all(|v| v.is_finite()));
}
