//! INT8 keeps RepVGG's accuracy where naive post-training quantization loses it: the two
//! digits fixtures (`tools/train_tiny.py`), calibrated on their training-split samples
//! (`calibration.safetensors`), evaluated on the held-out images. `spread-digits` was
//! trained so that an identity branch's batch norm over a dead channel folds into a weight
//! hundreds of times the others (docs/precision.md): per-tensor weights with min-max
//! calibration drop it from 295 to 253 of 297 (the numpy study, `int8_study.json`, finds
//! the same), our defaults keep FP32's answers.

mod common;

use repvgg_graph::{ArchSpec, TensorSource};
use repvgg_runtime::loader::{SafetensorsFile, read_input};
use repvgg_runtime::{
    Calibration, KeepFp32, Limits, Model, ModelOptions, Precision, QuantizeOptions, SessionOptions, Tensor,
};

struct Fixture {
    model: Model,
    calibration: Tensor,
    input: Tensor,
    labels: Vec<usize>,
}

fn fixture(name: &str) -> Fixture {
    let dir = common::models_dir().join("fixtures").join(name);
    let arch = ArchSpec::from_file(&dir.join("arch.toml")).unwrap();
    let model =
        Model::load(&dir.join("train.safetensors"), &ModelOptions { arch: Some(arch), ..Default::default() }).unwrap();
    let calibration = read_input(&dir.join("calibration.safetensors"), &Limits::default()).unwrap();
    let input = read_input(&dir.join("input.safetensors"), &Limits::default()).unwrap();
    let expected = SafetensorsFile::open(&dir.join("expected.safetensors"), "expected outputs", 1 << 24).unwrap();
    let labels = expected.tensor_f32("labels").unwrap().iter().map(|&v| v as usize).collect();
    assert!(expected.shape("labels").is_some());
    Fixture { model, calibration, input, labels }
}

/// The top-1 class of every held-out image.
fn evaluate(model: &Model, precision: Precision, f: &Fixture) -> Vec<usize> {
    let options = SessionOptions { threads: 2, precision: Some(precision), ..Default::default() };
    let logits = model.session(options).unwrap().run(&f.input).unwrap();
    let classes = logits.shape()[1];
    logits.data().chunks(classes).map(|row| (0..classes).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()).collect()
}

fn correct(answers: &[usize], f: &Fixture) -> usize {
    answers.iter().zip(&f.labels).filter(|(a, l)| a == l).count()
}

fn naive() -> QuantizeOptions {
    QuantizeOptions {
        calibration: Calibration::MinMax,
        keep_fp32: KeepFp32::None,
        per_tensor_weights: true,
        prune_dead_inputs: false,
        ..Default::default()
    }
}

#[test]
fn our_defaults_keep_fp32_answers_where_naive_int8_collapses() {
    for (name, fp32_correct, naive_at_most) in [("trained-digits", 296, 297), ("spread-digits", 295, 270)] {
        let f = fixture(name);
        let fp32 = evaluate(&f.model, Precision::F32, &f);
        assert_eq!(correct(&fp32, &f), fp32_correct, "{name}: FP32");

        let (ours, report) = f.model.quantize(&f.calibration, &QuantizeOptions::default()).unwrap();
        let int8 = evaluate(&ours, Precision::Int8, &f);
        let differ: Vec<usize> = (0..fp32.len()).filter(|&i| fp32[i] != int8[i]).collect();
        assert!(differ.is_empty(), "{name}: INT8 answers images {differ:?} differently from FP32");
        assert_eq!(report.top1_agreement, 1.0, "{name}: calibration-set agreement");

        let (bad, _) = f.model.quantize(&f.calibration, &naive()).unwrap();
        let naive_correct = correct(&evaluate(&bad, Precision::Int8, &f), &f);
        assert!(naive_correct <= naive_at_most, "{name}: naive INT8 kept {naive_correct} of 297");
    }
}

/// On spread-digits each of our two measures alone repairs the collapse: per-channel
/// scales, or zeroing the dead channel's weights before a per-tensor scale.
#[test]
fn per_channel_scales_and_dead_input_pruning_each_repair_spread_digits() {
    let f = fixture("spread-digits");
    let fp32 = correct(&evaluate(&f.model, Precision::F32, &f), &f);
    for (what, options) in [
        ("per-channel, no pruning", QuantizeOptions { per_tensor_weights: false, ..naive() }),
        ("per-tensor, pruned", QuantizeOptions { prune_dead_inputs: true, ..naive() }),
    ] {
        let (model, report) = f.model.quantize(&f.calibration, &options).unwrap();
        let got = correct(&evaluate(&model, Precision::Int8, &f), &f);
        assert_eq!(got, fp32, "{what}");
        let dead: usize = report.layers.iter().map(|l| l.dead_inputs).sum();
        assert!(dead > 0, "the fixture's dead channel was not seen");
    }
}
