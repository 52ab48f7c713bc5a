//! QARepVGG golden fixture from PyTorch (`tools/gen_qarepvgg.py`): blocks shaped and named
//! like YOLOv6's `QARepVGGBlock` / `QARepVGGBlockV2`, run in eval mode in f32.
//!
//! `train.safetensors` mixes forms (official training, deploy, QARepVGG V1 training and
//! YOLOv6's deploy + outer BN) at BN eps 1e-5 and loads with the defaults;
//! `train-v2.safetensors` is all `QARepVGGBlockV2` at eps 1e-3 (YOLOv6's detector setting),
//! which the checkpoint cannot say, so it is read with explicit `ResolveOptions`.

mod common;

use std::path::PathBuf;

use repvgg_graph::{ArchSpec, QaRepVariant, ResolveOptions, TensorSource};
use repvgg_runtime::loader::{SafetensorsFile, read_input};
use repvgg_runtime::{Limits, Model, ModelOptions, SessionOptions, Tensor};

/// PyTorch runs the multi-branch blocks in f32; the generator measured its error against
/// the same model in f64 at most 1.1e-6 relative to the largest output (stage3 of the V1
/// file), the reference executor computes the fused graph in f64: 1e-5 leaves a 9x margin,
/// as tests/golden.rs does for the ONNX Runtime fixtures. A wrong eps (1e-5 for 1e-3)
/// moves the logits by more than 1e-4, a missing average pool by far more.
const TOLERANCE: f32 = 1e-5;

fn dir() -> PathBuf {
    common::models_dir().join("fixtures").join("tiny-qarep")
}

fn arch() -> ArchSpec {
    ArchSpec::from_file(&dir().join("arch.toml")).unwrap()
}

fn input() -> Tensor {
    read_input(&dir().join("input.safetensors"), &Limits::default()).unwrap()
}

/// `logits`, `stage1` .. `stage4` of an expected-outputs file.
fn expected(file: &str) -> Vec<Tensor> {
    let f = SafetensorsFile::open(&dir().join(file), "expected outputs", 1 << 30).unwrap();
    ["logits", "stage1", "stage2", "stage3", "stage4"]
        .iter()
        .map(|n| Tensor::new(f.shape(n).unwrap().to_vec(), f.tensor_f32(n).unwrap().into_owned()).unwrap())
        .collect()
}

/// Largest relative difference of the reference executor's logits and stages from `want`.
fn reference_error(model: &Model, want: &[Tensor]) -> f32 {
    let out = model.run_reference(&input()).unwrap();
    let mut err = out.logits.rel_diff(&want[0]);
    for (s, w) in out.stages.iter().zip(&want[1..]) {
        err = err.max(s.rel_diff(w));
    }
    err
}

/// Loads the V2 file through `Model::load` with `options` (the file cannot say them).
fn load_v2(options: &ResolveOptions) -> Model {
    let options = ModelOptions { arch: Some(arch()), forms: *options, ..Default::default() };
    Model::load(&dir().join("train-v2.safetensors"), &options).unwrap()
}

#[test]
fn mixed_forms_match_pytorch_through_model_load() {
    let path = dir().join("train.safetensors");
    let model = Model::load(&path, &ModelOptions { arch: Some(arch()), ..Default::default() }).unwrap();
    assert!(model.description().contains("mixed form"), "{}", model.description());
    let err = reference_error(&model, &expected("expected.safetensors"));
    assert!(err < TOLERANCE, "V1 mixed-form fixture differs from PyTorch by {err:e}");

    // The architecture is inferred from the QARepVGG names as well.
    let inferred = Model::load(&path, &ModelOptions::default()).unwrap();
    assert!(inferred.network().arch.same_body(&arch()));
    assert_eq!(inferred.weights(), model.weights());

    // The fast executor too (Auto picks Winograd where it pays; its bound is golden.rs's).
    let mut session = model.session(SessionOptions { threads: 2, ..Default::default() }).unwrap();
    let out = session.features(&input()).unwrap();
    let err = out.logits.rel_diff(&expected("expected.safetensors")[0]);
    assert!(err < 2e-5, "fast executor differs from PyTorch by {err:e}");
}

#[test]
fn v2_matches_pytorch_with_its_options() {
    let want = expected("expected-v2.safetensors");
    let options = ResolveOptions { qarep_variant: QaRepVariant::V2, qarep_eps: 1e-3 };
    let model = load_v2(&options);
    assert!(model.description().contains("qarepvgg-v2 form"), "{}", model.description());
    let err = reference_error(&model, &want);
    assert!(err < TOLERANCE, "V2 fixture differs from PyTorch by {err:e}");

    // What the file cannot say matters: the wrong variant or eps misses PyTorch.
    let wrong_variant = reference_error(&load_v2(&ResolveOptions { qarep_eps: 1e-3, ..Default::default() }), &want);
    assert!(wrong_variant > 1e-2, "reading V2 blocks as V1 changed little ({wrong_variant:e})");
    let wrong_eps =
        reference_error(&load_v2(&ResolveOptions { qarep_variant: QaRepVariant::V2, ..Default::default() }), &want);
    assert!(wrong_eps > 10.0 * TOLERANCE, "eps 1e-5 for 1e-3 changed little ({wrong_eps:e})");
}
