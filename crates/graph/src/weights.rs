//! Weight naming conventions, architecture inference and structural re-parameterization.
//!
//! Four naming forms are accepted (a leading `module.` is stripped by the loader):
//!
//! | form | block prefix | deploy conv | training branches | SE | head |
//! |---|---|---|---|---|---|
//! | official | `stage0`, `stageS.J` | `rbr_reparam` | `rbr_dense`, `rbr_1x1`, `rbr_identity` | `se.down`, `se.up` | `linear` |
//! | timm | `stem`, `stages.{S-1}.J` | `reparam_conv` | `conv_kxk`, `conv_1x1`, `identity` | `attn.fc1`, `attn.fc2` | `head.fc` |
//!
//! Under the official prefixes a block may also be a QARepVGG block (Chu et al., "Make
//! RepVGG Greater Again: A Quantization-aware Approach", arXiv 2212.01593, in the form of
//! YOLOv6's `QARepVGGBlock` / `QARepVGGBlockV2`, `yolov6/layers/common.py`):
//!
//! | form | tensors under the block prefix |
//! |---|---|
//! | QARepVGG training | `rbr_dense.conv.weight`, `rbr_dense.bn.*`, `rbr_1x1.weight` (no BN, no bias), `bn.*` |
//! | QARepVGG deploy (YOLOv6 keeps the BN "for QAT") | `rbr_reparam.{weight,bias}`, `bn.*` |
//!
//! Only the block naming is supported, under our stage names: YOLOv6's own networks put
//! these blocks under detector prefixes (`backbone.stem`, `backbone.ERBlock_2.0`, ...)
//! that are not RepVGG classifiers.
//!
//! Each block is read in deploy form if its deploy kernel is present and in training form
//! otherwise, so partially converted checkpoints load too. A block is QARepVGG if it has
//! `rbr_1x1.weight` or any `bn.*` tensor directly under its prefix (then every QARepVGG
//! tensor must be there, so a missing one is reported by name).
//!
//! # Re-parameterization (Ding et al. 2021, Sec. 3.3)
//!
//! A training-time block computes `BN_d(K3 * x) + BN_1(K1 * x) + BN_id(x)`. With
//! `t = gamma / sqrt(var + eps)` (eps = 1e-5) each branch `BN(K * x)` equals
//! `(K t) * x + (beta - mean t)`. The identity branch is a 3x3 kernel holding 1 at
//! `[i, i mod (C_in / groups), 1, 1]`, the 1x1 kernel is zero-padded to 3x3 at the centre,
//! and the deploy kernel and bias are the sums over the three branches. The arithmetic is
//! done in f64 and rounded to f32 once, so the fused kernel is within one rounding of the
//! exact sum.
//!
//! # QARepVGG (Chu et al. 2022; YOLOv6 `QARepVGGBlock`, `QARepVGGBlockV2`)
//!
//! A QARepVGG block computes `BN(BN_d(K3 * x) + K1 * x + x + avg3(x))`: only the dense
//! branch has its own BN, the 1x1 conv has neither BN nor bias, the identity (in == out,
//! stride 1 only) has no BN, and one BN follows the sum. V2 adds `avg3`, a 3x3 average
//! pool with stride 1 and padding 1 that YOLOv6 creates under the same condition as the
//! identity (in == out, stride 1), so stride-2 and width-changing blocks of V1 and V2 are
//! identical. PyTorch's `AvgPool2d` counts the zero padding (`count_include_pad=True`,
//! YOLOv6 keeps the default), so `avg3` is exactly a 3x3 conv holding 1/9 at every tap of
//! `[i, i mod (C_in / groups)]`. The branch sum is the kernel
//! `K = K3 t_d + pad(K1) + I + A` with bias `b = beta_d - mean_d t_d`, and the outer BN
//! (`t = gamma / sqrt(var + eps)`) gives `K' = K t`, `b' = (b - mean) t + beta`, which is
//! YOLOv6's `_fuse_extra_bn_tensor`. YOLOv6's `switch_to_deploy` keeps that outer BN after
//! `rbr_reparam`; such a block is folded the same way with `K` and `b` read from the file.
//!
//! The state dict cannot tell V1 from V2 (the average pool and identity hold no tensors)
//! nor carry eps (a module attribute, not a tensor): both come from [`ResolveOptions`],
//! by default V1 and eps = 1e-5 (PyTorch's `BatchNorm2d` default, which the block classes
//! use). YOLOv6's detector `Model` sets eps = 1e-3 on every BN (`initialize_weights` in
//! `yolov6/utils/torch_utils.py`) and its QARepVGG configs use V2: weights trained that way
//! need `ResolveOptions { qarep_variant: QaRepVariant::V2, qarep_eps: 1e-3 }`. The eps
//! option applies to both BNs of QARepVGG blocks only; the other forms keep [`BN_EPS`].
//! A QARepVGG block cannot carry squeeze-and-excitation: YOLOv6 does not implement it, and
//! a BN after SE (where its `forward` would put it) does not fold into the conv.

use std::borrow::Cow;
use std::collections::BTreeSet;

use crate::arch::ArchSpec;
use crate::error::{Error, Result};
use crate::network::{ConvLayer, Network};

/// BatchNorm epsilon used by the PyTorch training side.
pub const BN_EPS: f64 = 1e-5;

/// A read-only collection of named tensors, converted to f32 on demand.
///
/// Implemented by the runtime's safetensors loader (memory-mapped, zero-copy for aligned
/// F32 data) and by [`TensorMap`] for in-memory use.
pub trait TensorSource {
    /// All tensor names.
    fn names(&self) -> Vec<&str>;
    /// The shape of a tensor, if present.
    fn shape(&self, name: &str) -> Option<&[usize]>;
    /// The tensor's elements as f32 (borrowed when stored as aligned F32).
    fn to_f32(&self, name: &str) -> Result<Cow<'_, [f32]>>;
}

/// A simple owned tensor collection (tests, converters, synthetic weights).
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    entries: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl TensorMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a tensor; panics if `data` does not match `shape` (a programming error).
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match its shape");
        self.entries.insert(name.into(), (shape, data));
    }

    pub fn remove(&mut self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        self.entries.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.entries.get(name).map(|(s, d)| (s.as_slice(), d.as_slice()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.entries.iter().map(|(n, (s, d))| (n.as_str(), s.as_slice(), d.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl TensorSource for TensorMap {
    fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }
    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|(s, _)| s.as_slice())
    }
    fn to_f32(&self, name: &str) -> Result<Cow<'_, [f32]>> {
        self.entries
            .get(name)
            .map(|(_, d)| Cow::Borrowed(d.as_slice()))
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), hint: String::new() })
    }
}

/// Which project's parameter names a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Convention {
    /// The official RepVGG repository (DingXiaoH/RepVGG).
    Official,
    /// timm's `byobnet` RepVGG models.
    Timm,
}

/// Whether a block's weights are the fused deploy conv or the training-time branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BlockForm {
    Deploy,
    Training,
    /// YOLOv6's `QARepVGGBlock` in training form (see the module docs).
    QaRep,
    /// YOLOv6's `QARepVGGBlockV2` in training form: [`BlockForm::QaRep`] plus a 3x3
    /// average-pool branch where the identity exists.
    QaRepV2,
    /// YOLOv6's QARepVGG deploy form: `rbr_reparam` followed by the kept outer BN `bn`.
    QaRepDeploy,
}

impl BlockForm {
    /// True for the three QARepVGG forms.
    pub fn is_qarep(self) -> bool {
        matches!(self, BlockForm::QaRep | BlockForm::QaRepV2 | BlockForm::QaRepDeploy)
    }
}

/// Which YOLOv6 QARepVGG block a checkpoint's training-form QARepVGG blocks are; their
/// state dicts are identical, since the V2 average pool holds no tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum QaRepVariant {
    /// `QARepVGGBlock`: dense + 1x1 + identity.
    #[default]
    V1,
    /// `QARepVGGBlockV2`: dense + 1x1 + identity + 3x3 average pool.
    V2,
}

/// What a checkpoint cannot say about itself; see the module docs on QARepVGG.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResolveOptions {
    /// Variant of the training-form QARepVGG blocks.
    pub qarep_variant: QaRepVariant,
    /// BatchNorm eps of the QARepVGG blocks (both the dense and the outer BN).
    pub qarep_eps: f64,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        Self { qarep_variant: QaRepVariant::V1, qarep_eps: BN_EPS }
    }
}

impl Convention {
    /// Tensor-name prefix of a block, e.g. `stage2.3` / `stages.1.3`.
    pub fn block_prefix(self, layer: &ConvLayer) -> String {
        match (self, layer.stage) {
            (Convention::Official, 0) => "stage0".into(),
            (Convention::Official, s) => format!("stage{s}.{}", layer.block),
            (Convention::Timm, 0) => "stem".into(),
            (Convention::Timm, s) => format!("stages.{}.{}", s - 1, layer.block),
        }
    }
    fn deploy(self) -> &'static str {
        match self {
            Convention::Official => "rbr_reparam",
            Convention::Timm => "reparam_conv",
        }
    }
    fn dense(self) -> &'static str {
        match self {
            Convention::Official => "rbr_dense",
            Convention::Timm => "conv_kxk",
        }
    }
    fn one_by_one(self) -> &'static str {
        match self {
            Convention::Official => "rbr_1x1",
            Convention::Timm => "conv_1x1",
        }
    }
    fn identity(self) -> &'static str {
        match self {
            Convention::Official => "rbr_identity",
            Convention::Timm => "identity",
        }
    }
    fn se_down(self) -> &'static str {
        match self {
            Convention::Official => "se.down",
            Convention::Timm => "attn.fc1",
        }
    }
    fn se_up(self) -> &'static str {
        match self {
            Convention::Official => "se.up",
            Convention::Timm => "attn.fc2",
        }
    }
    /// Name prefix of the classifier.
    pub fn linear(self) -> &'static str {
        match self {
            Convention::Official => "linear",
            Convention::Timm => "head.fc",
        }
    }

    /// Detects the convention from the names present; refuses a mix of both.
    pub fn detect(names: &[&str]) -> Result<Convention> {
        let official = names.iter().any(|n| n.starts_with("stage0.") || n.starts_with("linear."));
        let timm =
            names.iter().any(|n| n.starts_with("stem.") || n.starts_with("stages.") || n.starts_with("head.fc."));
        match (official, timm) {
            (true, false) => Ok(Convention::Official),
            (false, true) => Ok(Convention::Timm),
            (true, true) => Err(Error::BadWeights(
                "names mix the official (`stage0`, `linear`) and timm (`stem`, `stages`, `head.fc`) conventions".into(),
            )),
            (false, false) => Err(Error::BadWeights(format!(
                "no RepVGG tensors found (expected names like `stage0.rbr_reparam.weight` or `stem.conv_kxk.conv.weight`; found {})",
                sample_names(names)
            ))),
        }
    }

    /// Number of blocks per stage 1..=4, read off the names.
    fn blocks_per_stage(self, names: &[&str]) -> Result<[usize; 4]> {
        let mut seen: [BTreeSet<usize>; 4] = Default::default();
        for name in names {
            let (stage, rest) = match self {
                Convention::Official => {
                    let Some(rest) = name.strip_prefix("stage") else { continue };
                    let Some((s, rest)) = rest.split_once('.') else { continue };
                    let Ok(s) = s.parse::<usize>() else { continue };
                    (s, rest)
                }
                Convention::Timm => {
                    let Some(rest) = name.strip_prefix("stages.") else { continue };
                    let Some((s, rest)) = rest.split_once('.') else { continue };
                    let Ok(s) = s.parse::<usize>() else { continue };
                    (s + 1, rest)
                }
            };
            if stage == 0 {
                continue;
            }
            if stage > 4 {
                return Err(Error::BadWeights(format!(
                    "tensor `{name}` belongs to stage {stage}; RepVGG has stages 0-4"
                )));
            }
            let Some((block, _)) = rest.split_once('.') else { continue };
            if let Ok(b) = block.parse::<usize>() {
                seen[stage - 1].insert(b);
            }
        }
        let mut blocks = [0; 4];
        for (s, set) in seen.iter().enumerate() {
            if set.is_empty() {
                return Err(Error::BadWeights(format!("no tensors for stage{}", s + 1)));
            }
            let n = set.len();
            if set.iter().copied().ne(0..n) {
                return Err(Error::BadWeights(format!(
                    "stage{} blocks are not numbered 0..{}: found {:?}",
                    s + 1,
                    n - 1,
                    set
                )));
            }
            blocks[s] = n;
        }
        Ok(blocks)
    }
}

fn sample_names(names: &[&str]) -> String {
    if names.is_empty() {
        return "no tensors at all".into();
    }
    let mut sample: Vec<_> = names.iter().take(3).map(|n| format!("`{n}`")).collect();
    if names.len() > 3 {
        sample.push(format!("and {} more", names.len() - 3));
    }
    sample.join(", ")
}

/// BatchNorm statistics and affine parameters of one branch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

impl BatchNorm {
    /// The per-channel affine map `x -> x t + shift` this BN applies in eval mode, in f64.
    pub fn scale_shift(&self, channel: usize) -> (f64, f64) {
        self.scale_shift_eps(channel, BN_EPS)
    }

    /// [`BatchNorm::scale_shift`] with `t = gamma / sqrt(var + eps)` for a given eps.
    pub fn scale_shift_eps(&self, channel: usize, eps: f64) -> (f64, f64) {
        let t = self.gamma[channel] as f64 / (self.var[channel] as f64 + eps).sqrt();
        (t, self.beta[channel] as f64 - self.mean[channel] as f64 * t)
    }
}

/// A convolution kernel `[out][in/groups][k][k]` with its bias.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvParams {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Squeeze-and-excitation parameters: `down` is `[r][c]`, `up` is `[c][r]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeParams {
    pub down_weight: Vec<f32>,
    pub down_bias: Vec<f32>,
    pub up_weight: Vec<f32>,
    pub up_bias: Vec<f32>,
}

/// One deploy-form block.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerParams {
    /// `[out][in/groups][3][3]` kernel and bias.
    pub conv: ConvParams,
    pub se: Option<SeParams>,
}

/// Deploy-form weights of a whole network.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployWeights {
    pub layers: Vec<LayerParams>,
    /// `[classes][features]`.
    pub linear_weight: Vec<f32>,
    pub linear_bias: Vec<f32>,
}

/// One training-time block (three branches before fusion).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingBlock {
    /// `[out][in/groups][3][3]`.
    pub dense: Vec<f32>,
    pub dense_bn: BatchNorm,
    /// `[out][in/groups]` (1x1 kernel).
    pub one_by_one: Vec<f32>,
    pub one_by_one_bn: BatchNorm,
    /// Present iff in == out and stride 1.
    pub identity_bn: Option<BatchNorm>,
    pub se: Option<SeParams>,
}

/// One QARepVGG block before fusion (Chu et al. 2022; YOLOv6 `QARepVGGBlock[V2]`).
#[derive(Debug, Clone, PartialEq)]
pub struct QaRepBlock {
    /// `[out][in/groups][3][3]`, followed by `dense_bn`.
    pub dense: Vec<f32>,
    pub dense_bn: BatchNorm,
    /// `[out][in/groups]` 1x1 kernel without BN or bias.
    pub one_by_one: Vec<f32>,
    /// The identity branch (no BN); YOLOv6 has it iff in == out and stride 1.
    pub identity: bool,
    /// The V2 3x3 average-pool branch (stride 1, padding 1, zero padding counted).
    pub avg_pool: bool,
    /// The BN after the branch sum.
    pub bn: BatchNorm,
    /// eps of `dense_bn` and `bn`.
    pub eps: f64,
}

/// Training-form weights of a whole network (every block multi-branch).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingWeights {
    pub blocks: Vec<TrainingBlock>,
    pub linear_weight: Vec<f32>,
    pub linear_bias: Vec<f32>,
}

/// The outcome of reading a checkpoint: the network it describes and its deploy weights.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub network: Network,
    pub convention: Convention,
    /// Form of each block as found in the file.
    pub forms: Vec<BlockForm>,
    pub weights: DeployWeights,
}

impl Resolved {
    /// `deploy`, `training`, `qarepvgg`, `qarepvgg-v2`, `qarepvgg-deploy` when every block
    /// has that form, `mixed` otherwise, for reports.
    pub fn form_summary(&self) -> &'static str {
        let Some(&first) = self.forms.first() else { return "deploy" };
        if self.forms.iter().any(|f| *f != first) {
            return "mixed";
        }
        match first {
            BlockForm::Deploy => "deploy",
            BlockForm::Training => "training",
            BlockForm::QaRep => "qarepvgg",
            BlockForm::QaRepV2 => "qarepvgg-v2",
            BlockForm::QaRepDeploy => "qarepvgg-deploy",
        }
    }
}

/// What a tensor is, so that tools (synthetic weights, reports) can treat it by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A convolution kernel `[out, in/groups, k, k]` (3x3 or 1x1).
    Kernel,
    /// A convolution or linear bias.
    Bias,
    BnGamma,
    BnBeta,
    BnMean,
    BnVar,
    /// An SE 1x1 convolution kernel.
    SeKernel,
    /// The classifier matrix `[classes, features]`.
    Linear,
}

/// A tensor the network needs: its name, canonical shape and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// The canonical shape (what [`DeployWeights::named_tensors`] and the PyTorch side write).
    pub shape: Vec<usize>,
    pub role: Role,
    /// A 1x1 kernel may also be stored 2-D `[out, in]`.
    pub pointwise: bool,
}

impl TensorSpec {
    fn new(name: String, shape: Vec<usize>, role: Role) -> Self {
        Self { name, shape, role, pointwise: false }
    }
    fn pointwise(name: String, out: usize, inp: usize, role: Role) -> Self {
        Self { name, shape: vec![out, inp, 1, 1], role, pointwise: true }
    }
    fn accepts(&self, found: &[usize]) -> bool {
        found == self.shape || (self.pointwise && found == &self.shape[..2])
    }
}

/// Every tensor `network` needs in `convention`, with each block in `form`.
pub fn expected_tensors(network: &Network, convention: Convention, form: BlockForm) -> Vec<TensorSpec> {
    let mut out: Vec<TensorSpec> = network.layers.iter().flat_map(|l| block_tensors(convention, l, form)).collect();
    out.extend(head_tensors(convention, network));
    out
}

/// The tensors one block needs in the given form.
fn block_tensors(c: Convention, layer: &ConvLayer, form: BlockForm) -> Vec<TensorSpec> {
    let p = c.block_prefix(layer);
    let (o, i) = (layer.out_channels, layer.in_channels / layer.groups);
    let mut out = Vec::new();
    let bn = |out: &mut Vec<TensorSpec>, prefix: String, n: usize| {
        for (field, role) in [
            ("weight", Role::BnGamma),
            ("bias", Role::BnBeta),
            ("running_mean", Role::BnMean),
            ("running_var", Role::BnVar),
        ] {
            out.push(TensorSpec::new(format!("{prefix}.{field}"), vec![n], role));
        }
    };
    match form {
        BlockForm::Deploy => {
            out.push(TensorSpec::new(format!("{p}.{}.weight", c.deploy()), vec![o, i, 3, 3], Role::Kernel));
            out.push(TensorSpec::new(format!("{p}.{}.bias", c.deploy()), vec![o], Role::Bias));
        }
        BlockForm::Training => {
            out.push(TensorSpec::new(format!("{p}.{}.conv.weight", c.dense()), vec![o, i, 3, 3], Role::Kernel));
            bn(&mut out, format!("{p}.{}.bn", c.dense()), o);
            out.push(TensorSpec::pointwise(format!("{p}.{}.conv.weight", c.one_by_one()), o, i, Role::Kernel));
            bn(&mut out, format!("{p}.{}.bn", c.one_by_one()), o);
            if layer.has_identity() {
                bn(&mut out, format!("{p}.{}", c.identity()), layer.in_channels);
            }
        }
        BlockForm::QaRep | BlockForm::QaRepV2 => {
            out.push(TensorSpec::new(format!("{p}.{}.conv.weight", c.dense()), vec![o, i, 3, 3], Role::Kernel));
            bn(&mut out, format!("{p}.{}.bn", c.dense()), o);
            out.push(TensorSpec::pointwise(format!("{p}.{}.weight", c.one_by_one()), o, i, Role::Kernel));
            bn(&mut out, format!("{p}.bn"), o);
        }
        BlockForm::QaRepDeploy => {
            out.push(TensorSpec::new(format!("{p}.{}.weight", c.deploy()), vec![o, i, 3, 3], Role::Kernel));
            out.push(TensorSpec::new(format!("{p}.{}.bias", c.deploy()), vec![o], Role::Bias));
            bn(&mut out, format!("{p}.bn"), o);
        }
    }
    if let Some(r) = layer.se_channels {
        out.push(TensorSpec::pointwise(format!("{p}.{}.weight", c.se_down()), r, o, Role::SeKernel));
        out.push(TensorSpec::new(format!("{p}.{}.bias", c.se_down()), vec![r], Role::Bias));
        out.push(TensorSpec::pointwise(format!("{p}.{}.weight", c.se_up()), o, r, Role::SeKernel));
        out.push(TensorSpec::new(format!("{p}.{}.bias", c.se_up()), vec![o], Role::Bias));
    }
    out
}

fn head_tensors(c: Convention, network: &Network) -> [TensorSpec; 2] {
    let l = c.linear();
    [
        TensorSpec::new(format!("{l}.weight"), vec![network.num_classes, network.feature_channels()], Role::Linear),
        TensorSpec::new(format!("{l}.bias"), vec![network.num_classes], Role::Bias),
    ]
}

/// Reads the per-block form and checks/loads tensors for one network + convention.
struct Reader<'a, S: TensorSource + ?Sized> {
    source: &'a S,
    convention: Convention,
    arch_name: String,
    /// Appended to missing-tensor errors when the weights look like another architecture.
    hint: String,
    options: ResolveOptions,
}

impl<S: TensorSource + ?Sized> Reader<'_, S> {
    fn form(&self, layer: &ConvLayer) -> BlockForm {
        let c = self.convention;
        let p = c.block_prefix(layer);
        let has = |name: String| self.source.shape(&name).is_some();
        // QARepVGG names exist only in the official convention (YOLOv6 follows it).
        let qarep = c == Convention::Official
            && (has(format!("{p}.{}.weight", c.one_by_one()))
                || ["weight", "bias", "running_mean", "running_var"].iter().any(|f| has(format!("{p}.bn.{f}"))));
        match (has(format!("{p}.{}.weight", c.deploy())), qarep) {
            (true, false) => BlockForm::Deploy,
            (true, true) => BlockForm::QaRepDeploy,
            (false, false) => BlockForm::Training,
            (false, true) => match self.options.qarep_variant {
                QaRepVariant::V1 => BlockForm::QaRep,
                QaRepVariant::V2 => BlockForm::QaRepV2,
            },
        }
    }

    fn check(&self, expect: &TensorSpec) -> Result<()> {
        match self.source.shape(&expect.name) {
            None => Err(Error::MissingTensor { name: expect.name.clone(), hint: self.hint.clone() }),
            Some(found) if expect.accepts(found) => Ok(()),
            Some(found) => Err(Error::ShapeMismatch {
                name: expect.name.clone(),
                expected: expect.shape.clone(),
                found: found.to_vec(),
                context: format!(" (architecture {}){}", self.arch_name, self.hint),
            }),
        }
    }

    /// Loads a tensor, refusing NaN and infinity (a corrupt or diverged checkpoint).
    fn load(&self, name: &str) -> Result<Vec<f32>> {
        let data = self.source.to_f32(name)?;
        if let Some((index, &value)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite { name: name.to_string(), index, value });
        }
        Ok(data.into_owned())
    }

    fn batch_norm(&self, prefix: &str) -> Result<BatchNorm> {
        let var_name = format!("{prefix}.running_var");
        let var = self.load(&var_name)?;
        // A variance is a mean of squares; a negative one would make sqrt(var + eps) NaN.
        if let Some((index, &value)) = var.iter().enumerate().find(|(_, v)| **v < 0.0) {
            return Err(Error::NegativeVariance { name: var_name, index, value });
        }
        Ok(BatchNorm {
            gamma: self.load(&format!("{prefix}.weight"))?,
            beta: self.load(&format!("{prefix}.bias"))?,
            mean: self.load(&format!("{prefix}.running_mean"))?,
            var,
        })
    }

    fn se(&self, layer: &ConvLayer) -> Result<Option<SeParams>> {
        if layer.se_channels.is_none() {
            return Ok(None);
        }
        let p = self.convention.block_prefix(layer);
        let (down, up) = (self.convention.se_down(), self.convention.se_up());
        Ok(Some(SeParams {
            down_weight: self.load(&format!("{p}.{down}.weight"))?,
            down_bias: self.load(&format!("{p}.{down}.bias"))?,
            up_weight: self.load(&format!("{p}.{up}.weight"))?,
            up_bias: self.load(&format!("{p}.{up}.bias"))?,
        }))
    }

    fn training_block(&self, layer: &ConvLayer) -> Result<TrainingBlock> {
        let c = self.convention;
        let p = c.block_prefix(layer);
        Ok(TrainingBlock {
            dense: self.load(&format!("{p}.{}.conv.weight", c.dense()))?,
            dense_bn: self.batch_norm(&format!("{p}.{}.bn", c.dense()))?,
            one_by_one: self.load(&format!("{p}.{}.conv.weight", c.one_by_one()))?,
            one_by_one_bn: self.batch_norm(&format!("{p}.{}.bn", c.one_by_one()))?,
            identity_bn: if layer.has_identity() {
                Some(self.batch_norm(&format!("{p}.{}", c.identity()))?)
            } else {
                None
            },
            se: self.se(layer)?,
        })
    }

    fn qarep_block(&self, layer: &ConvLayer, avg_pool: bool) -> Result<QaRepBlock> {
        let c = self.convention;
        let p = c.block_prefix(layer);
        Ok(QaRepBlock {
            dense: self.load(&format!("{p}.{}.conv.weight", c.dense()))?,
            dense_bn: self.batch_norm(&format!("{p}.{}.bn", c.dense()))?,
            one_by_one: self.load(&format!("{p}.{}.weight", c.one_by_one()))?,
            identity: layer.has_identity(),
            // YOLOv6 creates `rbr_avg` under the identity's condition.
            avg_pool: avg_pool && layer.has_identity(),
            bn: self.batch_norm(&format!("{p}.bn"))?,
            eps: self.options.qarep_eps,
        })
    }

    fn deploy_conv(&self, layer: &ConvLayer) -> Result<ConvParams> {
        let p = self.convention.block_prefix(layer);
        let d = self.convention.deploy();
        Ok(ConvParams { weight: self.load(&format!("{p}.{d}.weight"))?, bias: self.load(&format!("{p}.{d}.bias"))? })
    }

    fn deploy_layer(&self, layer: &ConvLayer, form: BlockForm) -> Result<LayerParams> {
        match form {
            BlockForm::Deploy => Ok(LayerParams { conv: self.deploy_conv(layer)?, se: self.se(layer)? }),
            BlockForm::Training => {
                let block = self.training_block(layer)?;
                Ok(LayerParams { conv: fuse_block(layer, &block)?, se: block.se })
            }
            BlockForm::QaRep | BlockForm::QaRepV2 => {
                let block = self.qarep_block(layer, form == BlockForm::QaRepV2)?;
                Ok(LayerParams { conv: fuse_qarep_block(layer, &block)?, se: None })
            }
            BlockForm::QaRepDeploy => {
                let conv = self.deploy_conv(layer)?;
                let bn = self.batch_norm(&format!("{}.bn", self.convention.block_prefix(layer)))?;
                let kernel = conv.weight.iter().map(|&v| v as f64).collect();
                let bias = conv.bias.iter().map(|&v| v as f64).collect();
                Ok(LayerParams { conv: fold_outer_bn(layer, kernel, bias, &bn, self.options.qarep_eps)?, se: None })
            }
        }
    }

    /// Verifies every tensor of `network` is present with the right shape, then that the
    /// checkpoint holds no block the network lacks.
    fn check_network(&self, network: &Network, forms: &[BlockForm]) -> Result<()> {
        for (layer, &form) in network.layers.iter().zip(forms) {
            if form.is_qarep() && layer.se_channels.is_some() {
                return Err(Error::BadWeights(format!(
                    "block `{}` is a QARepVGG block (it has `{p}.bn.*` or `{p}.rbr_1x1.weight`) in a network with \
                     squeeze-and-excitation; QARepVGG blocks have no SE here (YOLOv6 does not implement it, and a \
                     BN after SE does not fold into the conv)",
                    layer.name(),
                    p = self.convention.block_prefix(layer)
                )));
            }
            for e in block_tensors(self.convention, layer, form) {
                self.check(&e)?;
            }
        }
        for e in head_tensors(self.convention, network) {
            self.check(&e)?;
        }
        let blocks = self.convention.blocks_per_stage(&self.source.names())?;
        for s in 0..4 {
            if blocks[s] > network.arch.blocks_per_stage[s] {
                let extra =
                    ConvLayer { stage: s + 1, block: network.arch.blocks_per_stage[s], ..network.layers[0].clone() };
                return Err(Error::BadWeights(format!(
                    "the weights have block `{}` but architecture {} has {} blocks in stage{}{}",
                    self.convention.block_prefix(&extra),
                    self.arch_name,
                    network.arch.blocks_per_stage[s],
                    s + 1,
                    self.hint
                )));
            }
        }
        Ok(())
    }
}

/// Reads the architecture a checkpoint describes from its names and shapes alone.
///
/// The result is a built-in variant (with the checkpoint's class count) when the layer
/// structure matches one, otherwise a custom architecture named `custom`.
pub fn infer_arch<S: TensorSource + ?Sized>(source: &S) -> Result<ArchSpec> {
    let names = source.names();
    let convention = Convention::detect(&names)?;
    infer_arch_with(source, convention)
}

fn infer_arch_with<S: TensorSource + ?Sized>(source: &S, convention: Convention) -> Result<ArchSpec> {
    let blocks_per_stage = convention.blocks_per_stage(&source.names())?;
    let shape_of = |name: &str| {
        source.shape(name).ok_or_else(|| Error::MissingTensor { name: name.to_string(), hint: String::new() })
    };
    let mut widths = [0usize; 5];
    let mut groups_by_layer = Vec::new();
    let mut se_by_layer = Vec::new();
    let mut in_channels: usize = 3;
    let probe = Network::new(ArchSpec {
        name: "probe".into(),
        blocks_per_stage,
        width_multipliers: None,
        widths: Some([1; 5]),
        groups: 1,
        grouped_layers: vec![],
        se: false,
        num_classes: 1,
    });
    for layer in &probe.layers {
        let p = convention.block_prefix(layer);
        let deploy = format!("{p}.{}.weight", convention.deploy());
        let dense = format!("{p}.{}.conv.weight", convention.dense());
        let kernel = if source.shape(&deploy).is_some() { deploy } else { dense };
        let shape = shape_of(&kernel)?;
        if shape.len() != 4 || shape[2] != 3 || shape[3] != 3 || shape[0] == 0 || shape[1] == 0 {
            return Err(Error::BadWeights(format!(
                "tensor `{kernel}` has shape {shape:?}, expected [out, in/groups, 3, 3]"
            )));
        }
        let (out, per_group) = (shape[0], shape[1]);
        if !in_channels.is_multiple_of(per_group) || !out.is_multiple_of(in_channels / per_group) {
            return Err(Error::BadWeights(format!(
                "tensor `{kernel}` has shape {shape:?}, which does not fit {in_channels} input channels"
            )));
        }
        let groups = in_channels / per_group;
        if layer.block == 0 {
            widths[layer.stage] = out;
        } else if widths[layer.stage] != out {
            return Err(Error::BadWeights(format!(
                "tensor `{kernel}` has {out} output channels but stage{} started with {}",
                layer.stage, widths[layer.stage]
            )));
        }
        groups_by_layer.push(groups);
        se_by_layer.push(source.shape(&format!("{p}.{}.weight", convention.se_down())).is_some());
        in_channels = out;
    }
    let group_counts: BTreeSet<usize> = groups_by_layer.iter().copied().filter(|&g| g > 1).collect();
    if group_counts.len() > 1 {
        return Err(Error::BadWeights(format!(
            "layers use several group counts {group_counts:?}; only one is supported"
        )));
    }
    let se = se_by_layer[0];
    if se_by_layer.iter().any(|&s| s != se) {
        return Err(Error::BadWeights("squeeze-and-excitation is present in some blocks but not all".into()));
    }
    let linear = format!("{}.weight", convention.linear());
    let head = shape_of(&linear)?;
    if head.len() != 2 || head[1] != widths[4] || head[0] == 0 {
        return Err(Error::BadWeights(format!(
            "tensor `{linear}` has shape {head:?}, expected [classes, {}]",
            widths[4]
        )));
    }
    let inferred = ArchSpec {
        name: "custom".into(),
        blocks_per_stage,
        width_multipliers: None,
        widths: Some(widths),
        groups: group_counts.first().copied().unwrap_or(1),
        grouped_layers: groups_by_layer.iter().enumerate().filter(|(_, g)| **g > 1).map(|(l, _)| l).collect(),
        se,
        num_classes: head[0],
    };
    let inferred = ArchSpec::from_toml(&inferred.to_toml(), "inferred from the weights")?;
    Ok(ArchSpec::builtins()
        .find(|b| b.same_body(&inferred))
        .map(|b| ArchSpec { num_classes: inferred.num_classes, ..b })
        .unwrap_or(inferred))
}

/// Resolves a checkpoint into deploy weights, fusing training-form blocks.
///
/// With `arch` given, every tensor is checked against it and the first disagreement is
/// reported by tensor name with expected and found shapes; without it, the architecture
/// is inferred from the shapes. The class count always comes from the checkpoint.
pub fn resolve<S: TensorSource + ?Sized>(source: &S, arch: Option<&ArchSpec>) -> Result<Resolved> {
    resolve_with(source, arch, &ResolveOptions::default())
}

/// [`resolve`] with what the checkpoint cannot say (QARepVGG variant and eps) given.
pub fn resolve_with<S: TensorSource + ?Sized>(
    source: &S,
    arch: Option<&ArchSpec>,
    options: &ResolveOptions,
) -> Result<Resolved> {
    let names = source.names();
    let convention = Convention::detect(&names)?;
    let inferred = infer_arch_with(source, convention);
    let (network, hint) = match arch {
        None => (Network::new(inferred?), String::new()),
        Some(given) => {
            let hint = match &inferred {
                Ok(i) if !i.same_body(given) => format!("; the weights look like {}", describe(i)),
                _ => String::new(),
            };
            // Classes are a property of the checkpoint (fine-tuned heads), not of the variant.
            let classes = inferred.as_ref().map(|i| i.num_classes).unwrap_or(given.num_classes);
            (Network::new(ArchSpec { num_classes: classes, ..given.clone() }), hint)
        }
    };
    let reader = Reader { source, convention, arch_name: network.arch.name.clone(), hint, options: *options };
    let forms: Vec<BlockForm> = network.layers.iter().map(|l| reader.form(l)).collect();
    reader.check_network(&network, &forms)?;
    let layers = network
        .layers
        .iter()
        .zip(&forms)
        .map(|(layer, &form)| reader.deploy_layer(layer, form))
        .collect::<Result<Vec<_>>>()?;
    let l = convention.linear();
    let weights = DeployWeights {
        layers,
        linear_weight: reader.load(&format!("{l}.weight"))?,
        linear_bias: reader.load(&format!("{l}.bias"))?,
    };
    Ok(Resolved { network, convention, forms, weights })
}

/// Reads a checkpoint whose blocks are all in training form, without fusing them.
pub fn resolve_training<S: TensorSource + ?Sized>(source: &S, network: &Network) -> Result<TrainingWeights> {
    let convention = Convention::detect(&source.names())?;
    let reader = Reader {
        source,
        convention,
        arch_name: network.arch.name.clone(),
        hint: String::new(),
        options: ResolveOptions::default(),
    };
    let forms = vec![BlockForm::Training; network.layers.len()];
    reader.check_network(network, &forms)?;
    let blocks = network.layers.iter().map(|l| reader.training_block(l)).collect::<Result<Vec<_>>>()?;
    let l = convention.linear();
    Ok(TrainingWeights {
        blocks,
        linear_weight: reader.load(&format!("{l}.weight"))?,
        linear_bias: reader.load(&format!("{l}.bias"))?,
    })
}

fn describe(arch: &ArchSpec) -> String {
    if arch.name == "custom" {
        format!("a custom RepVGG with blocks {:?} and widths {:?}", arch.blocks_per_stage, arch.stage_widths())
    } else {
        format!("RepVGG-{}", arch.name)
    }
}

/// Fuses a training-time block into one 3x3 kernel and bias (see the module docs).
///
/// Finite branches can still fuse to values beyond f32 (a huge `gamma` over a tiny
/// variance): those are refused, naming the layer, rather than rounded to infinity.
pub fn fuse_block(layer: &ConvLayer, block: &TrainingBlock) -> Result<ConvParams> {
    let out = layer.out_channels;
    let per_group = layer.in_channels / layer.groups;
    let mut weight = vec![0f32; out * per_group * 9];
    let mut bias = vec![0f32; out];
    for k in 0..out {
        let (t_dense, b_dense) = block.dense_bn.scale_shift(k);
        let (t_one, b_one) = block.one_by_one_bn.scale_shift(k);
        let identity = block.identity_bn.as_ref().map(|bn| bn.scale_shift(k));
        for c in 0..per_group {
            for tap in 0..9 {
                let mut v = block.dense[(k * per_group + c) * 9 + tap] as f64 * t_dense;
                if tap == 4 {
                    v += block.one_by_one[k * per_group + c] as f64 * t_one;
                    if let Some((t_id, _)) = identity
                        && c == k % per_group
                    {
                        v += t_id;
                    }
                }
                weight[(k * per_group + c) * 9 + tap] = v as f32;
            }
        }
        bias[k] = (b_dense + b_one + identity.map_or(0.0, |(_, b)| b)) as f32;
    }
    for (tensor, values) in [("kernel", &weight), ("bias", &bias)] {
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::FusedNonFinite { layer: layer.name(), tensor, index, value });
        }
    }
    Ok(ConvParams { weight, bias })
}

/// Fuses a QARepVGG block into one 3x3 kernel and bias (see the module docs): the branch
/// sum `K3 t_d + pad(K1) + I + A`, bias `beta_d - mean_d t_d`, then the outer BN.
///
/// `dense` must hold `out * in/groups * 9` values, `one_by_one` `out * in/groups` and
/// both BNs `out` (as [`resolve`] checks by name); other lengths are refused.
pub fn fuse_qarep_block(layer: &ConvLayer, block: &QaRepBlock) -> Result<ConvParams> {
    let out = layer.out_channels;
    let per_group = layer.in_channels / layer.groups;
    let bns = [&block.dense_bn, &block.bn];
    if block.dense.len() != out * per_group * 9
        || block.one_by_one.len() != out * per_group
        || bns.iter().any(|bn| [&bn.gamma, &bn.beta, &bn.mean, &bn.var].iter().any(|v| v.len() != out))
    {
        return Err(Error::BadWeights(format!(
            "QARepVGG block {} has tensors of the wrong lengths for {} -> {out} channels in {} groups",
            layer.name(),
            layer.in_channels,
            layer.groups
        )));
    }
    let mut kernel = vec![0f64; out * per_group * 9];
    let mut bias = vec![0f64; out];
    for k in 0..out {
        let (t_dense, b_dense) = block.dense_bn.scale_shift_eps(k, block.eps);
        for c in 0..per_group {
            // Identity and average pool map input channel k to output k (in == out).
            let diagonal = c == k % per_group;
            for tap in 0..9 {
                let i = (k * per_group + c) * 9 + tap;
                let mut v = block.dense[i] as f64 * t_dense;
                if tap == 4 {
                    v += block.one_by_one[k * per_group + c] as f64;
                    if block.identity && diagonal {
                        v += 1.0;
                    }
                }
                if block.avg_pool && diagonal {
                    v += 1.0 / 9.0;
                }
                kernel[i] = v;
            }
        }
        bias[k] = b_dense;
    }
    fold_outer_bn(layer, kernel, bias, &block.bn, block.eps)
}

/// Applies a BN that follows a conv: `K' = K t`, `b' = (b - mean) t + beta`, rounding to
/// f32 once and refusing values beyond f32.
fn fold_outer_bn(layer: &ConvLayer, kernel: Vec<f64>, bias: Vec<f64>, bn: &BatchNorm, eps: f64) -> Result<ConvParams> {
    let per_output = kernel.len() / bias.len().max(1);
    let mut weight = vec![0f32; kernel.len()];
    let mut fused_bias = vec![0f32; bias.len()];
    for (k, &b) in bias.iter().enumerate() {
        let (t, shift) = bn.scale_shift_eps(k, eps);
        for (w, &v) in weight[k * per_output..(k + 1) * per_output].iter_mut().zip(&kernel[k * per_output..]) {
            *w = (v * t) as f32;
        }
        // (b - mean) t + beta = b t + (beta - mean t).
        fused_bias[k] = (b * t + shift) as f32;
    }
    for (tensor, values) in [("kernel", &weight), ("bias", &fused_bias)] {
        if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::FusedNonFinite { layer: layer.name(), tensor, index, value });
        }
    }
    Ok(ConvParams { weight, bias: fused_bias })
}

impl DeployWeights {
    /// Bytes of f32 values held.
    pub fn bytes(&self) -> usize {
        let layers: usize =
            self.layers
                .iter()
                .map(|l| {
                    let se = l.se.as_ref().map_or(0, |se| {
                        se.down_weight.len() + se.down_bias.len() + se.up_weight.len() + se.up_bias.len()
                    });
                    l.conv.weight.len() + l.conv.bias.len() + se
                })
                .sum();
        4 * (layers + self.linear_weight.len() + self.linear_bias.len())
    }

    /// The tensors of the official deploy form (`rbr_reparam`, `se`, `linear`), in network order.
    pub fn named_tensors<'a>(&'a self, network: &Network) -> Vec<(String, Vec<usize>, &'a [f32])> {
        let c = Convention::Official;
        let mut out = Vec::new();
        for (layer, params) in network.layers.iter().zip(&self.layers) {
            let p = c.block_prefix(layer);
            let (o, i) = (layer.out_channels, layer.in_channels / layer.groups);
            out.push((format!("{p}.rbr_reparam.weight"), vec![o, i, 3, 3], params.conv.weight.as_slice()));
            out.push((format!("{p}.rbr_reparam.bias"), vec![o], params.conv.bias.as_slice()));
            if let (Some(se), Some(r)) = (&params.se, layer.se_channels) {
                out.push((format!("{p}.se.down.weight"), vec![r, o, 1, 1], se.down_weight.as_slice()));
                out.push((format!("{p}.se.down.bias"), vec![r], se.down_bias.as_slice()));
                out.push((format!("{p}.se.up.weight"), vec![o, r, 1, 1], se.up_weight.as_slice()));
                out.push((format!("{p}.se.up.bias"), vec![o], se.up_bias.as_slice()));
            }
        }
        let classes = network.num_classes;
        out.push(("linear.weight".into(), vec![classes, network.feature_channels()], self.linear_weight.as_slice()));
        out.push(("linear.bias".into(), vec![classes], self.linear_bias.as_slice()));
        out
    }
}
