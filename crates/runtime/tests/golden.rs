//! Golden fixtures from ONNX Runtime (`tools/gen_fixtures.py`): the training-time
//! multi-branch graph built with the onnx helper API and run by ORT in f32.

mod common;

use repvgg_graph::ArchSpec;
use repvgg_runtime::loader::{SafetensorsFile, read_input};
use repvgg_runtime::{Limits, Model, ModelOptions, Tensor};

pub struct Fixture {
    pub name: &'static str,
    pub arch: ArchSpec,
    pub model: Model,
    pub input: Tensor,
    pub logits: Tensor,
    pub stages: Vec<Tensor>,
}

fn load(name: &'static str) -> Fixture {
    let dir = common::models_dir().join("fixtures").join(name);
    let arch = ArchSpec::from_file(&dir.join("arch.toml")).unwrap();
    let model =
        Model::load(&dir.join("train.safetensors"), &ModelOptions { arch: Some(arch.clone()), ..Default::default() })
            .unwrap();
    let input = read_input(&dir.join("input.safetensors"), &Limits::default()).unwrap();
    let expected = SafetensorsFile::open(&dir.join("expected.safetensors"), "expected outputs", 1 << 30).unwrap();
    let tensor = |n: &str| {
        use repvgg_graph::TensorSource;
        Tensor::new(expected.shape(n).unwrap().to_vec(), expected.tensor_f32(n).unwrap().into_owned()).unwrap()
    };
    Fixture {
        name,
        arch,
        model,
        input,
        logits: tensor("logits"),
        stages: (1..=4).map(|s| tensor(&format!("stage{s}"))).collect(),
    }
}

const FIXTURES: [&str; 2] = ["tiny-groups", "tiny-se"];

/// ORT computes the multi-branch graph in f32 (errors ~1e-7 relative per layer), we
/// compute the fused graph in f64: 1e-5 relative to the largest output leaves a 10x margin
/// over what the generator measured between ORT and an f64 numpy forward (5e-7).
const TOLERANCE: f32 = 1e-5;

#[test]
fn reference_executor_matches_onnx_runtime() {
    for name in FIXTURES {
        let f = load(name);
        let out = f.model.run_reference(&f.input).unwrap();
        let err = out.logits.rel_diff(&f.logits);
        assert!(err < TOLERANCE, "{name}: logits differ from ORT by {err:e}");
        for (s, want) in f.stages.iter().enumerate() {
            let err = out.stages[s].rel_diff(want);
            assert!(err < TOLERANCE, "{name}: stage{} differs from ORT by {err:e}", s + 1);
        }
    }
}

#[test]
fn fixture_architecture_is_inferred() {
    for name in FIXTURES {
        let f = load(name);
        let dir = common::models_dir().join("fixtures").join(name);
        let inferred = Model::load(&dir.join("train.safetensors"), &ModelOptions::default()).unwrap();
        assert!(inferred.network().arch.same_body(&f.arch), "{}", f.name);
        assert_eq!(inferred.weights(), f.model.weights());
    }
}

/// The fast executor, every algorithm, against ONNX Runtime. The bound adds each
/// algorithm's own fp32 error (see tests/fast.rs) to ORT's: F(6,3) at these widths (at
/// most 64 channels) measures below 1e-5.
#[test]
fn fast_executor_matches_onnx_runtime() {
    use repvgg_runtime::{Algo, AlgoChoice, SessionOptions};
    for name in FIXTURES {
        let f = load(name);
        for (choice, tol) in [
            (AlgoChoice::Auto, 2e-5),
            (AlgoChoice::Force(Algo::Direct), TOLERANCE),
            (AlgoChoice::Force(Algo::F2), TOLERANCE),
            (AlgoChoice::Force(Algo::F4), 2e-5),
            (AlgoChoice::Force(Algo::F6), 4e-5),
        ] {
            let mut session =
                f.model.session(SessionOptions { threads: 2, algo: choice, ..Default::default() }).unwrap();
            let out = session.features(&f.input).unwrap();
            let err = out.logits.rel_diff(&f.logits);
            assert!(err < tol, "{name} {choice:?}: logits differ from ORT by {err:e}");
            for (s, want) in f.stages.iter().enumerate() {
                let err = out.stages[s].rel_diff(want);
                assert!(err < tol, "{name} {choice:?}: stage{} differs from ORT by {err:e}", s + 1);
            }
        }
    }
}
