//! Weights that gradient descent produced: a small RepVGG trained in PyTorch on
//! scikit-learn's handwritten digits (`tools/train_tiny.py`, fixture
//! `models/fixtures/trained-digits/`), with real BatchNorm statistics. Our runtime on the
//! training-form file, and on the deploy file fused from it, must reproduce PyTorch's
//! held-out accuracy exactly and its logits within 1e-4 relative, with every kernel set
//! this CPU runs and every algorithm.

mod common;

use repvgg_graph::{ArchSpec, TensorSource};
use repvgg_runtime::loader::{SafetensorsFile, read_input};
use repvgg_runtime::{Algo, AlgoChoice, IsaChoice, Limits, Model, ModelOptions, SessionOptions, Tensor};

/// PyTorch (f32, eval mode) against our fused f32 network: both round differently at
/// every layer, a few 1e-7 relative each over 7 layers; 1e-4 is the bound and a
/// wide margin (the measured worst is in the test's failure message if it is ever hit).
const TOLERANCE: f32 = 1e-4;

struct Fixture {
    dir: std::path::PathBuf,
    arch: ArchSpec,
    input: Tensor,
    logits: Tensor,
    labels: Vec<usize>,
    correct: usize,
}

fn fixture(name: &str) -> Fixture {
    let dir = common::models_dir().join("fixtures").join(name);
    let arch = ArchSpec::from_file(&dir.join("arch.toml")).unwrap();
    let input = read_input(&dir.join("input.safetensors"), &Limits::default()).unwrap();
    let expected = SafetensorsFile::open(&dir.join("expected.safetensors"), "expected outputs", 1 << 24).unwrap();
    let logits =
        Tensor::new(expected.shape("logits").unwrap().to_vec(), expected.tensor_f32("logits").unwrap().into_owned())
            .unwrap();
    let labels = expected.tensor_f32("labels").unwrap().iter().map(|&v| v as usize).collect();
    let accuracy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("accuracy.json")).unwrap()).unwrap();
    let correct = accuracy["correct"].as_u64().unwrap() as usize;
    Fixture { dir, arch, input, logits, labels, correct }
}

fn correct(logits: &Tensor, labels: &[usize]) -> usize {
    let classes = logits.shape()[1];
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &label)| {
            let row = &logits.data()[i * classes..(i + 1) * classes];
            let best = (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
            best == label
        })
        .count()
}

fn check(model: &Model, f: &Fixture, what: &str) {
    for isa in repvgg_simd::Dispatch::all_supported() {
        for algo in [Algo::Direct, Algo::F2, Algo::F4, Algo::F6, Algo::P2] {
            let options = SessionOptions {
                threads: 2,
                isa: IsaChoice::Force(isa.isa()),
                algo: AlgoChoice::Force(algo),
                ..Default::default()
            };
            let logits = model.session(options).unwrap().run(&f.input).unwrap();
            let err = logits.rel_diff(&f.logits);
            assert!(err < TOLERANCE, "{what}, {} {algo:?}: logits differ from PyTorch's by {err:e}", isa.isa());
            assert_eq!(correct(&logits, &f.labels), f.correct, "{what}, {} {algo:?}: accuracy", isa.isa());
        }
    }
}

#[test]
fn trained_weights_reproduce_pytorch() {
    reproduce("trained-digits");
}

/// The same network trained so that a dead channel gives an identity BN a fused weight of
/// ~196 (the INT8 fixture: `tools/train_tiny.py --spread`, docs/precision.md).
#[test]
fn spread_weights_reproduce_pytorch() {
    reproduce("spread-digits");
}

/// The calibration splits for INT8 are inputs our loader reads: training images, not the
/// held-out ones.
#[test]
fn calibration_splits_load() {
    for (name, n) in [("trained-digits", 128), ("spread-digits", 64)] {
        let f = fixture(name);
        let calib = read_input(&f.dir.join("calibration.safetensors"), &Limits::default()).unwrap();
        assert_eq!(calib.shape(), &[n, 3, 24, 24], "{name}");
        let image = 3 * 24 * 24;
        for c in calib.data().chunks(image) {
            assert!(f.input.data().chunks(image).all(|h| h != c), "{name}: a calibration image is a held-out one");
        }
    }
}

fn reproduce(name: &str) {
    let f = fixture(name);
    assert!(f.correct * 10 > f.labels.len() * 9, "the fixture's network learned the digits ({} right)", f.correct);
    let options = ModelOptions { arch: Some(f.arch.clone()), ..Default::default() };
    let trained = Model::load(&f.dir.join("train.safetensors"), &options).unwrap();
    check(&trained, &f, "training form");

    // The deploy file `repvgg convert` would write, loaded back.
    let dir = tempfile::tempdir().unwrap();
    let deploy = dir.path().join("deploy.safetensors");
    let output = repvgg_files::Output::new(&deploy, &[]).unwrap();
    repvgg_runtime::loader::write_tensors(&output, trained.weights().named_tensors(trained.network())).unwrap();
    let fused = Model::load(&deploy, &options).unwrap();
    check(&fused, &f, "deploy form");

    // And the f64 reference, which the fast paths are measured against elsewhere.
    let reference = trained.run_reference(&f.input).unwrap();
    assert!(reference.logits.rel_diff(&f.logits) < TOLERANCE);
    assert_eq!(correct(&reference.logits, &f.labels), f.correct);
}
