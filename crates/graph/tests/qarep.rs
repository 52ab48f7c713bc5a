//! QARepVGG blocks (Chu et al. 2022, arXiv 2212.01593; YOLOv6 `QARepVGGBlock[V2]`): the
//! fusion against a direct f64 evaluation of the branches, reading through `resolve_with`,
//! and hostile checkpoints.

use repvgg_graph::synthetic::{self, SplitMix64};
use repvgg_graph::{
    ArchSpec, BatchNorm, BlockForm, ConvLayer, Convention, Error, Network, QaRepBlock, QaRepVariant, ResolveOptions,
    TensorMap, fuse_qarep_block, resolve, resolve_with,
};

/// A feature map `[c][h][w]` in f64.
struct Map {
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f64>,
}

impl Map {
    /// The value at `(ch, y, x)`, zero outside the map (zero padding).
    fn at(&self, ch: usize, y: isize, x: isize) -> f64 {
        if y < 0 || x < 0 || y >= self.h as isize || x >= self.w as isize {
            return 0.0;
        }
        self.data[(ch * self.h + y as usize) * self.w + x as usize]
    }
}

/// Direct grouped convolution, `k` x `k` kernel `[out][in/groups][k][k]`, padding `k / 2`.
fn conv(x: &Map, kernel: &[f32], bias: Option<&[f32]>, out: usize, k: usize, stride: usize, groups: usize) -> Map {
    let per_group = x.c / groups;
    let out_per_group = out / groups;
    let (oh, ow) = ((x.h - 1) / stride + 1, (x.w - 1) / stride + 1);
    let pad = (k / 2) as isize;
    let mut data = vec![0f64; out * oh * ow];
    for o in 0..out {
        let g = o / out_per_group;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                for c in 0..per_group {
                    for ky in 0..k {
                        for kx in 0..k {
                            let y = (oy * stride + ky) as isize - pad;
                            let xx = (ox * stride + kx) as isize - pad;
                            acc +=
                                kernel[((o * per_group + c) * k + ky) * k + kx] as f64 * x.at(g * per_group + c, y, xx);
                        }
                    }
                }
                data[(o * oh + oy) * ow + ox] = acc;
            }
        }
    }
    Map { c: out, h: oh, w: ow, data }
}

/// Eval-mode BatchNorm `gamma (x - mean) / sqrt(var + eps) + beta`, written out.
fn batch_norm(x: &mut Map, bn: &BatchNorm, eps: f64) {
    let hw = x.h * x.w;
    for (ch, plane) in x.data.chunks_mut(hw).enumerate() {
        let (g, b, m, v) = (bn.gamma[ch] as f64, bn.beta[ch] as f64, bn.mean[ch] as f64, bn.var[ch] as f64);
        for value in plane {
            *value = g * (*value - m) / (v + eps).sqrt() + b;
        }
    }
}

/// PyTorch's `AvgPool2d(3, stride=1, padding=1)` with `count_include_pad=True`: the sum
/// over the 3x3 window, zero padding included, divided by 9 everywhere.
fn avg_pool3(x: &Map) -> Map {
    let mut data = vec![0f64; x.data.len()];
    for ch in 0..x.c {
        for y in 0..x.h {
            for xx in 0..x.w {
                let mut sum = 0.0;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        sum += x.at(ch, y as isize + dy, xx as isize + dx);
                    }
                }
                data[(ch * x.h + y) * x.w + xx] = sum / 9.0;
            }
        }
    }
    Map { c: x.c, h: x.h, w: x.w, data }
}

/// The block as YOLOv6's `forward` computes it (before the ReLU):
/// `bn(rbr_dense(x) + rbr_1x1(x) + x + rbr_avg(x))`.
fn branches(layer: &ConvLayer, block: &QaRepBlock, x: &Map) -> Map {
    let (out, s, g) = (layer.out_channels, layer.stride, layer.groups);
    let mut y = conv(x, &block.dense, None, out, 3, s, g);
    batch_norm(&mut y, &block.dense_bn, block.eps);
    let one = conv(x, &block.one_by_one, None, out, 1, s, g);
    for (a, b) in y.data.iter_mut().zip(&one.data) {
        *a += b;
    }
    if block.identity {
        for (a, b) in y.data.iter_mut().zip(&x.data) {
            *a += b;
        }
    }
    if block.avg_pool {
        for (a, b) in y.data.iter_mut().zip(&avg_pool3(x).data) {
            *a += b;
        }
    }
    batch_norm(&mut y, &block.bn, block.eps);
    y
}

fn random_bn(rng: &mut SplitMix64, n: usize) -> BatchNorm {
    BatchNorm {
        gamma: rng.uniforms(n, 0.5, 1.5),
        beta: rng.normals(n, 0.3),
        mean: rng.normals(n, 0.3),
        // Small variances make a wrong eps visible.
        var: rng.uniforms(n, 0.01, 2.0),
    }
}

fn layer(in_channels: usize, out_channels: usize, stride: usize, groups: usize) -> ConvLayer {
    ConvLayer { index: 1, stage: 1, block: 1, in_channels, out_channels, groups, stride, se_channels: None }
}

fn random_block(rng: &mut SplitMix64, layer: &ConvLayer, v2: bool, eps: f64) -> QaRepBlock {
    let (o, i) = (layer.out_channels, layer.in_channels / layer.groups);
    QaRepBlock {
        dense: rng.normals(o * i * 9, 0.3),
        dense_bn: random_bn(rng, o),
        one_by_one: rng.normals(o * i, 0.3),
        identity: layer.has_identity(),
        avg_pool: v2 && layer.has_identity(),
        bn: random_bn(rng, o),
        eps,
    }
}

/// Largest difference relative to the largest reference value.
fn rel_diff(a: &Map, reference: &Map) -> f64 {
    assert_eq!((a.c, a.h, a.w), (reference.c, reference.h, reference.w));
    let scale = reference.data.iter().fold(0f64, |m, v| m.max(v.abs()));
    a.data.iter().zip(&reference.data).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// The fused conv against the branches: only the fused weights' rounding to f32 separates
/// them (2^-24 relative per value, summed over at most 6 * 9 taps), so 1e-6 relative to
/// the largest output. Dropping the 1/9 average-pool taps, the identity, or using eps 1e-5
/// instead of 1e-3 each moves the output by more than 1e-3.
#[test]
fn fusion_matches_the_branches() {
    let mut rng = SplitMix64::new(2212);
    let cases = [
        // (in, out, stride, groups, v2, eps)
        (6, 6, 1, 1, false, 1e-5),
        (6, 6, 1, 1, true, 1e-5),
        (6, 6, 1, 1, true, 1e-3),
        (6, 6, 1, 2, true, 1e-3),
        (6, 6, 1, 3, false, 1e-5),
        (4, 6, 2, 1, true, 1e-5),
        (6, 6, 2, 1, true, 1e-3),
        (4, 6, 1, 2, true, 1e-5),
    ];
    for (cin, cout, stride, groups, v2, eps) in cases {
        let layer = layer(cin, cout, stride, groups);
        let block = random_block(&mut rng, &layer, v2, eps);
        let x = Map { c: cin, h: 7, w: 9, data: rng.normals(cin * 63, 1.0).into_iter().map(f64::from).collect() };
        let want = branches(&layer, &block, &x);
        let fused = fuse_qarep_block(&layer, &block).unwrap();
        let got = conv(&x, &fused.weight, Some(&fused.bias), cout, 3, stride, groups);
        let err = rel_diff(&got, &want);
        let case = format!("{cin}->{cout} stride {stride} groups {groups} v2 {v2} eps {eps}");
        assert!(err < 1e-6, "{case}: fused conv differs from the branches by {err:e}");

        // The test can fail: each branch and the eps matter.
        if block.avg_pool {
            let wrong = fuse_qarep_block(&layer, &QaRepBlock { avg_pool: false, ..block.clone() }).unwrap();
            let err = rel_diff(&conv(&x, &wrong.weight, Some(&wrong.bias), cout, 3, stride, groups), &want);
            assert!(err > 1e-3, "{case}: the average-pool branch made no difference ({err:e})");
        }
        if block.identity {
            let wrong = fuse_qarep_block(&layer, &QaRepBlock { identity: false, ..block.clone() }).unwrap();
            let err = rel_diff(&conv(&x, &wrong.weight, Some(&wrong.bias), cout, 3, stride, groups), &want);
            assert!(err > 1e-3, "{case}: the identity branch made no difference ({err:e})");
        }
        if eps == 1e-3 {
            let wrong = fuse_qarep_block(&layer, &QaRepBlock { eps: 1e-5, ..block.clone() }).unwrap();
            let err = rel_diff(&conv(&x, &wrong.weight, Some(&wrong.bias), cout, 3, stride, groups), &want);
            assert!(err > 1e-4, "{case}: eps made no difference ({err:e})");
        }
    }
}

/// The PyTorch fixture's architecture (tools/gen_qarepvgg.py): stage2.0 keeps 16 channels
/// at stride 2, stage1.1 and stage2.1 are grouped identity blocks.
fn tiny() -> Network {
    let text = "name = \"tiny-qarep\"\nblocks_per_stage = [2, 2, 2, 1]\nwidths = [8, 16, 16, 24, 32]\ngroups = 2\n\
                grouped_layers = [2, 4]\nnum_classes = 5\n";
    Network::new(ArchSpec::from_toml(text, "test").unwrap())
}

fn checkpoint(network: &Network, form: BlockForm) -> TensorMap {
    synthetic::checkpoint(network, Convention::Official, form, 11)
}

#[test]
fn variant_is_an_option_and_shows_in_the_summary() {
    let network = tiny();
    let map = checkpoint(&network, BlockForm::QaRep);
    assert!(map.get("stage1.1.rbr_1x1.weight").is_some() && map.get("stage1.1.bn.running_var").is_some());
    assert!(map.iter().all(|(n, _, _)| !n.contains("rbr_identity") && !n.contains("rbr_1x1.conv")));

    let v1 = resolve(&map, None).unwrap();
    assert!(v1.network.arch.same_body(&network.arch), "the architecture is inferred from QARepVGG names");
    assert_eq!(v1.form_summary(), "qarepvgg");
    assert!(v1.forms.iter().all(|f| *f == BlockForm::QaRep));

    let options = ResolveOptions { qarep_variant: QaRepVariant::V2, ..Default::default() };
    let v2 = resolve_with(&map, None, &options).unwrap();
    assert_eq!(v2.form_summary(), "qarepvgg-v2");
    // V1 and V2 differ exactly where the identity (and so the average pool) exists.
    for (layer, (a, b)) in network.layers.iter().zip(v1.weights.layers.iter().zip(&v2.weights.layers)) {
        assert_eq!(a.conv.bias, b.conv.bias, "{}", layer.name());
        assert_eq!(a.conv.weight == b.conv.weight, !layer.has_identity(), "{}", layer.name());
    }
    // stage2.0 keeps its width at stride 2: no identity, no average pool.
    assert!(!network.layers[3].has_identity() && network.layers[3].in_channels == network.layers[3].out_channels);

    let eps = ResolveOptions { qarep_eps: 1e-3, ..Default::default() };
    let e = resolve_with(&map, None, &eps).unwrap();
    assert_ne!(e.weights.layers[1].conv.weight, v1.weights.layers[1].conv.weight);
}

#[test]
fn forms_mix_per_block() {
    let network = tiny();
    let mut map = checkpoint(&network, BlockForm::QaRep);
    // stage1.0 official training form, stage2.1 deploy, stage3.0 YOLOv6's deploy + BN.
    for (name, shape, data) in checkpoint(&network, BlockForm::Training).iter() {
        if name.starts_with("stage1.0.") {
            map.insert(name, shape.to_vec(), data.to_vec());
        }
    }
    let deploy = checkpoint(&network, BlockForm::Deploy);
    let deploy_bn = checkpoint(&network, BlockForm::QaRepDeploy);
    let mut names: Vec<String> = map.iter().map(|(n, _, _)| n.to_string()).collect();
    names.retain(|n| n.starts_with("stage1.0.") || n.starts_with("stage2.1.") || n.starts_with("stage3.0."));
    for n in names {
        if !(n.starts_with("stage1.0.rbr_dense")
            || n.starts_with("stage1.0.rbr_1x1.conv")
            || n.starts_with("stage1.0.rbr_1x1.bn"))
        {
            map.remove(&n);
        }
    }
    for (name, shape, data) in deploy.iter().filter(|(n, _, _)| n.starts_with("stage2.1.")) {
        map.insert(name, shape.to_vec(), data.to_vec());
    }
    for (name, shape, data) in deploy_bn.iter().filter(|(n, _, _)| n.starts_with("stage3.0.")) {
        map.insert(name, shape.to_vec(), data.to_vec());
    }
    let r = resolve(&map, None).unwrap();
    assert_eq!(r.forms[1], BlockForm::Training);
    assert_eq!(r.forms[2], BlockForm::QaRep);
    assert_eq!(r.forms[4], BlockForm::Deploy);
    assert_eq!(r.forms[5], BlockForm::QaRepDeploy);
    assert_eq!(r.form_summary(), "mixed");
    // Deploy + BN: K t, (b - mean) t + beta.
    let (k, b) = (
        deploy_bn.get("stage3.0.rbr_reparam.weight").unwrap().1,
        deploy_bn.get("stage3.0.rbr_reparam.bias").unwrap().1,
    );
    let bn = |f: &str| deploy_bn.get(&format!("stage3.0.bn.{f}")).unwrap().1;
    let per_output = k.len() / b.len();
    for o in 0..b.len() {
        let t = bn("weight")[o] as f64 / (bn("running_var")[o] as f64 + 1e-5).sqrt();
        let want = ((b[o] as f64 - bn("running_mean")[o] as f64) * t + bn("bias")[o] as f64) as f32;
        assert_eq!(r.weights.layers[5].conv.bias[o], want);
        assert_eq!(r.weights.layers[5].conv.weight[o * per_output], (k[o * per_output] as f64 * t) as f32);
    }
}

fn edited(edit: impl FnOnce(&mut TensorMap)) -> Error {
    let mut map = checkpoint(&tiny(), BlockForm::QaRep);
    edit(&mut map);
    resolve(&map, None).expect_err("a hostile checkpoint was accepted")
}

#[test]
fn hostile_checkpoints_name_the_tensor() {
    // A missing outer-BN tensor: the block is still recognised as QARepVGG.
    for field in ["running_var", "weight", "bias", "running_mean"] {
        let name = format!("stage1.1.bn.{field}");
        let e = edited(|m| {
            m.remove(&name).unwrap();
        });
        assert!(matches!(&e, Error::MissingTensor { name: n, .. } if *n == name), "{e}");
        assert!(e.to_string().contains(&name), "{e}");
    }
    // Outer BN present, 1x1 missing.
    let e = edited(|m| {
        m.remove("stage2.1.rbr_1x1.weight").unwrap();
    });
    assert!(matches!(&e, Error::MissingTensor { name, .. } if name == "stage2.1.rbr_1x1.weight"), "{e}");

    // A 1x1 weight of the wrong shape (full channels in a grouped block, or 3x3).
    for shape in [vec![16, 16, 1, 1], vec![16, 8, 3, 3], vec![16]] {
        let n: usize = shape.iter().product();
        let e = edited(|m| {
            m.remove("stage1.1.rbr_1x1.weight").unwrap();
            m.insert("stage1.1.rbr_1x1.weight", shape.clone(), vec![0.1; n]);
        });
        match &e {
            Error::ShapeMismatch { name, expected, found, .. } => {
                assert_eq!(name, "stage1.1.rbr_1x1.weight");
                assert_eq!((expected.as_slice(), found), ([16, 8, 1, 1].as_slice(), &shape));
            }
            other => panic!("expected a shape mismatch, got {other}"),
        }
    }
    // The 2-D form of a 1x1 kernel is accepted.
    let mut map = checkpoint(&tiny(), BlockForm::QaRep);
    let (_, data) = map.remove("stage1.1.rbr_1x1.weight").unwrap();
    map.insert("stage1.1.rbr_1x1.weight", vec![16, 8], data);
    resolve(&map, None).unwrap();

    // Negative variances, outer and dense BN.
    for name in ["stage1.1.bn.running_var", "stage3.0.rbr_dense.bn.running_var"] {
        let e = edited(|m| {
            let (shape, mut data) = m.remove(name).unwrap();
            data[3] = -0.5;
            m.insert(name, shape, data);
        });
        assert!(matches!(&e, Error::NegativeVariance { name: n, index: 3, .. } if n == name), "{e}");
    }
    // Non-finite 1x1 weight.
    let e = edited(|m| {
        let (shape, mut data) = m.remove("stage4.0.rbr_1x1.weight").unwrap();
        data[5] = f32::NAN;
        m.insert("stage4.0.rbr_1x1.weight", shape, data);
    });
    assert!(matches!(&e, Error::NonFinite { name, index: 5, .. } if name == "stage4.0.rbr_1x1.weight"), "{e}");

    // A huge outer gamma over a zero variance fuses beyond f32.
    let e = edited(|m| {
        for (name, value) in [("stage2.0.bn.weight", 3e38), ("stage2.0.bn.running_var", 0.0)] {
            let (shape, mut data) = m.remove(name).unwrap();
            data[0] = value;
            m.insert(name, shape, data);
        }
    });
    assert!(matches!(&e, Error::FusedNonFinite { layer, .. } if layer == "stage2.0"), "{e}");
}

#[test]
fn fusing_wrong_lengths_is_an_error() {
    let layer = layer(6, 6, 1, 1);
    let block = random_block(&mut SplitMix64::new(5), &layer, true, 1e-5);
    let short = QaRepBlock { one_by_one: vec![0.0; 35], ..block.clone() };
    assert!(matches!(fuse_qarep_block(&layer, &short), Err(Error::BadWeights(m)) if m.contains("stage1.1")));
    let mut bn = block.bn.clone();
    bn.var.pop();
    assert!(fuse_qarep_block(&layer, &QaRepBlock { bn, ..block }).is_err());
}

#[test]
fn qarep_with_se_is_refused() {
    let text =
        "name = \"se\"\nblocks_per_stage = [1, 2, 1, 1]\nwidths = [16, 16, 16, 32, 32]\nse = true\nnum_classes = 3\n";
    let network = Network::new(ArchSpec::from_toml(text, "test").unwrap());
    let map = synthetic::checkpoint(&network, Convention::Official, BlockForm::QaRep, 3);
    let e = resolve(&map, None).expect_err("QARepVGG with SE was accepted");
    assert!(matches!(e, Error::BadWeights(_)), "{e}");
    assert!(e.to_string().contains("stage0") && e.to_string().contains("QARepVGG"), "{e}");
}
