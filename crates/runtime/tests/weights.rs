//! Loading every naming form and dtype, architecture inference, and re-parameterization.

mod common;

use common::{Storage, rounded, tiny_arch, write_map};
use repvgg_graph::synthetic;
use repvgg_graph::{ArchSpec, BlockForm, Convention, Network, TensorMap, TensorSource};
use repvgg_runtime::{Model, ModelOptions, Tensor, reference};

fn input(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    Tensor::new(vec![n, 3, h, w], synthetic::input(n * 3 * h * w, seed)).unwrap()
}

/// The fused deploy network computes what the multi-branch training network computes.
///
/// Both run in f64; the only difference is that the fused kernel is rounded to f32 once,
/// a relative perturbation of at most 2^-24 per weight, so outputs agree to ~1e-6 relative
/// even after 8 layers (errors add, they do not compound beyond ~depth x 2^-24 x growth).
#[test]
fn fusion_matches_the_multi_branch_forward() {
    for se in [false, true] {
        let network = Network::new(tiny_arch(se));
        let map = synthetic::checkpoint(&network, Convention::Official, BlockForm::Training, 7);
        let training = repvgg_graph::resolve_training(&map, &network).unwrap();
        let resolved = repvgg_graph::resolve(&map, None).unwrap();
        assert_eq!(resolved.form_summary(), "training");
        for (n, h, w) in [(2, 19, 23), (1, 32, 32)] {
            let x = input(n, h, w, 3);
            let want = reference::forward_training(&network, &training, &x).unwrap();
            let got = reference::forward(&resolved.network, &resolved.weights, &x).unwrap();
            let err = got.logits.rel_diff(&want.logits);
            assert!(err < 2e-6, "se={se} {h}x{w}: fused vs multi-branch logits differ by {err:e}");
            for s in 0..4 {
                let err = got.stages[s].rel_diff(&want.stages[s]);
                assert!(err < 2e-6, "se={se}: stage{} differs by {err:e}", s + 1);
            }
        }
    }
}

/// The identity branch of a grouped block lands on the diagonal of each group.
#[test]
fn identity_kernel_respects_groups() {
    let network = Network::new(tiny_arch(false));
    let layer = &network.layers[2]; // stage1.1: 16 -> 16, 2 groups of 8, identity branch
    assert!(layer.has_identity() && layer.groups == 2);
    let per_group = layer.in_channels / layer.groups;
    let zero_bn = |n: usize| repvgg_graph::BatchNorm {
        gamma: vec![0.0; n],
        beta: vec![0.0; n],
        mean: vec![0.0; n],
        var: vec![1.0; n],
    };
    let block = repvgg_graph::TrainingBlock {
        dense: vec![0.0; 16 * per_group * 9],
        dense_bn: zero_bn(16),
        one_by_one: vec![0.0; 16 * per_group],
        one_by_one_bn: zero_bn(16),
        identity_bn: Some(repvgg_graph::BatchNorm {
            gamma: vec![1.0; 16],
            beta: vec![0.0; 16],
            mean: vec![0.0; 16],
            var: vec![1.0 - 1e-5; 16],
        }),
        se: None,
    };
    let fused = repvgg_graph::fuse_block(layer, &block).unwrap();
    for k in 0..16 {
        for c in 0..per_group {
            for tap in 0..9 {
                let v = fused.weight[(k * per_group + c) * 9 + tap];
                let want = if tap == 4 && c == k % per_group { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-6, "k={k} c={c} tap={tap}: {v}");
            }
        }
    }
}

/// Renames an official-convention map to timm names.
fn to_timm(map: &TensorMap) -> TensorMap {
    let mut out = TensorMap::new();
    for (name, shape, data) in map.iter() {
        let mut n = name.to_string();
        if let Some(rest) = n.strip_prefix("stage0.") {
            n = format!("stem.{rest}");
        } else if let Some(rest) = n.strip_prefix("stage") {
            let (s, rest) = rest.split_once('.').unwrap();
            n = format!("stages.{}.{rest}", s.parse::<usize>().unwrap() - 1);
        } else if let Some(rest) = n.strip_prefix("linear.") {
            n = format!("head.fc.{rest}");
        }
        for (a, b) in [
            ("rbr_reparam", "reparam_conv"),
            ("rbr_dense", "conv_kxk"),
            ("rbr_1x1", "conv_1x1"),
            ("rbr_identity", "identity"),
            ("se.down", "attn.fc1"),
            ("se.up", "attn.fc2"),
        ] {
            n = n.replace(a, b);
        }
        out.insert(n, shape.to_vec(), data.to_vec());
    }
    out
}

/// All four naming forms, all three dtypes, with and without `module.`, load to the same
/// deploy weights and the same logits.
#[test]
fn every_naming_form_and_dtype_loads() {
    let dir = tempfile::tempdir().unwrap();
    let network = Network::new(tiny_arch(true));
    let x = input(1, 21, 18, 5);
    for storage in [Storage::F32, Storage::F16, Storage::BF16] {
        let mut baseline: Option<Tensor> = None;
        for form in [BlockForm::Deploy, BlockForm::Training] {
            // Deploy and training checkpoints are different networks; compare within a form.
            let official = rounded(&synthetic::checkpoint(&network, Convention::Official, form, 11), storage);
            let want = Model::from_parts(
                network.clone(),
                repvgg_graph::resolve(&official, None).unwrap().weights,
                Default::default(),
                String::new(),
            )
            .unwrap()
            .run_reference(&x)
            .unwrap()
            .logits;
            for (convention, map) in [("official", official.clone()), ("timm", to_timm(&official))] {
                for prefix in ["", "module."] {
                    let path =
                        dir.path().join(format!("{convention}-{form:?}-{storage:?}-{}.safetensors", prefix.len()));
                    write_map(&path, &map, storage, prefix);
                    let model = Model::load(&path, &ModelOptions::default())
                        .unwrap_or_else(|e| panic!("{convention} {form:?} {storage:?} {prefix}: {e}"));
                    assert!(model.description().contains(convention), "{}", model.description());
                    let got = model.run_reference(&x).unwrap().logits;
                    assert_eq!(got, want, "{convention} {form:?} {storage:?} `{prefix}`");
                }
            }
            if form == BlockForm::Deploy {
                baseline = Some(want);
            }
        }
        assert!(baseline.is_some());
    }
}

/// A checkpoint that only has shapes: enough for architecture inference of big variants.
struct ShapesOnly(Vec<(String, Vec<usize>)>);

impl TensorSource for ShapesOnly {
    fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice())
    }
    fn to_f32(&self, name: &str) -> repvgg_graph::Result<std::borrow::Cow<'_, [f32]>> {
        Err(repvgg_graph::Error::Source(format!("shapes only: {name}")))
    }
}

fn shapes_of(network: &Network, convention: Convention, form: BlockForm) -> ShapesOnly {
    ShapesOnly(
        repvgg_graph::expected_tensors(network, convention, form).into_iter().map(|t| (t.name, t.shape)).collect(),
    )
}

#[test]
fn architecture_is_inferred_from_shapes() {
    for arch in ArchSpec::builtins() {
        let network = Network::new(arch.clone());
        for convention in [Convention::Official, Convention::Timm] {
            for form in [BlockForm::Deploy, BlockForm::Training] {
                let source = shapes_of(&network, convention, form);
                let inferred = repvgg_graph::infer_arch(&source).unwrap();
                assert_eq!(inferred, arch, "{convention:?} {form:?}");
            }
        }
    }
    // A custom architecture is recognised as such and keeps its class count.
    let tiny = Network::new(tiny_arch(true));
    let map = synthetic::checkpoint(&tiny, Convention::Official, BlockForm::Deploy, 1);
    let inferred = repvgg_graph::infer_arch(&map).unwrap();
    assert_eq!(inferred.name, "custom");
    assert!(inferred.same_body(&tiny.arch));
    assert_eq!(inferred.num_classes, 11);
}

#[test]
fn given_arch_mismatch_names_the_tensor() {
    let a0 = Network::from_name("A0").unwrap();
    let map = synthetic::checkpoint(&a0, Convention::Official, BlockForm::Deploy, 2);
    let err = repvgg_graph::resolve(&map, Some(&ArchSpec::builtin("A1").unwrap())).unwrap_err().to_string();
    assert!(
        err.contains("tensor `stage0.rbr_reparam.weight` has shape [48, 3, 3, 3], expected [64, 3, 3, 3]")
            && err.contains("architecture A1")
            && err.contains("look like RepVGG-A0"),
        "{err}"
    );
    let err = repvgg_graph::resolve(&map, Some(&ArchSpec::builtin("B0").unwrap())).unwrap_err().to_string();
    assert!(err.contains("missing tensor") || err.contains("has shape"), "{err}");
}
