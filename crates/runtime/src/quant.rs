//! INT8 quantization: per-channel weights, calibrated activation scales, measured FP32
//! fallback, the quantized file format and the error report.
//!
//! Why RepVGG needs care (Chu et al. 2022, "Make RepVGG Greater Again: A
//! Quantization-aware Approach", arXiv 2212.01593): re-parameterization folds three
//! branches' batch norms into one 3x3 kernel, whose output channels then span very
//! different ranges, and the activations carry outliers; one scale per weight tensor
//! wastes most of the 8 bits on the widest channel. So:
//!
//! - weights: symmetric s8 per output channel, `s_w[k] = max_c |w[k][c]| / 127`;
//! - activations: u8 with zero point 0 at every layer input after the stem (each reads a
//!   ReLU's output), `s_x = t / 255` for a clipping threshold `t` calibrated on sample
//!   inputs ([`Calibration`]: the maximum, a percentile, or the KL-divergence choice of
//!   Migacz 2017, "8-bit inference with TensorRT"); the stem's input (the network's,
//!   signed) with zero point 128 and `s_x = t / 127`, `t` calibrated on its magnitudes;
//! - SE blocks stay FP32, the classifier sums in f32 over its weights rounded to bf16, and
//!   layers whose INT8 alone moves the logits by more than a threshold stay FP32 too
//!   ([`KeepFp32::Auto`]).
//!
//! # File format
//!
//! A quantized model is a safetensors file in the official deploy naming, loaded by
//! [`Model::load`] like any checkpoint. For each INT8 layer `P` (e.g. `stage1.0`):
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `P.rbr_reparam.weight` | I8 | `[K, C/g, 3, 3]` | `w_q` |
//! | `P.rbr_reparam.weight_scale` | F32 | `[K]` | `s_w`, positive normal floats |
//! | `P.rbr_reparam.input_scale` | F32 | `[1]` | `s_x`, a positive normal float (the first layer's input codes carry zero point 128) |
//! | `P.rbr_reparam.bias` | F32 | `[K]` | as in FP32 |
//!
//! Every other tensor is F32 as in a deploy checkpoint. The metadata holds
//! `repvgg.quantization` = `int8`, `repvgg.calibration` (method), `repvgg.samples`,
//! `repvgg.calibration_sha256` (of the calibration tensor's little-endian f32 bytes and
//! shape) and `repvgg.fp32_layers`.
//!
//! Loading checks what the kernels rely on, and refuses anything else with an
//! [`ErrorKind::Model`](crate::ErrorKind::Model) error naming the tensor: both scales
//! present next to every I8 weight, of exactly the shapes above, each a positive normal
//! float (not 0, negative, NaN, infinite or subnormal); no scale tensor next to a float
//! weight or anywhere else; I8 only for `*.rbr_reparam.weight` (an I8 bias or classifier
//! is a dtype error). The codes may be -128 although quantization never writes it (the
//! kernels' sums are exact for it). A file whose metadata says `int8` but that holds no
//! I8 tensor is accepted as what it is, a float model ([`Model::precision`] F32), and
//! keeps its [`QuantInfo`] with every layer in `fp32_layers` ([`Model::quantize`] itself
//! refuses to leave every layer in FP32: there would be nothing to quantize).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use repvgg_graph::{Convention, DeployWeights, Network, TensorSource};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::exec;
use crate::kernels::int8::WEIGHT_MAX;
use crate::loader::{SafetensorsFile, TensorData};
use crate::model::Model;
use crate::plan::{Algo, LayerPlan, Precision};
use crate::session::SessionOptions;
use crate::tensor::Tensor;
use repvgg_simd::Isa;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// One layer's INT8 parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Layer {
    /// `s_x`: the input's activation scale (code = `round(x / s_x)`, clamped to 0..255).
    pub input_scale: f32,
    /// `s_w[k]`, one per output channel.
    pub weight_scale: Vec<f32>,
    /// `w_q`, `[K][C/groups][3][3]`.
    pub weight: Vec<i8>,
}

impl Int8Layer {
    /// The weights as floats, `w_q[k][..] * s_w[k]`: what an FP32 run of a quantized model
    /// multiplies by.
    pub fn dequantized(&self) -> Vec<f32> {
        let per = self.weight.len() / self.weight_scale.len().max(1);
        self.weight.iter().enumerate().map(|(i, &q)| q as f32 * self.weight_scale[i / per]).collect()
    }
}

/// A model's INT8 parameters: one entry per network layer, `None` for FP32 layers.
#[derive(Debug, Clone)]
pub(crate) struct Quantization {
    pub layers: Vec<Option<Int8Layer>>,
    pub info: QuantInfo,
}

/// How a model was quantized (stored in the file's metadata).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantInfo {
    /// The calibration method's name.
    pub calibration: String,
    /// Calibration images.
    pub samples: usize,
    /// SHA-256 of the calibration tensor (shape, then little-endian f32 values).
    pub calibration_sha256: String,
    /// Layers kept in FP32 (those the INT8 executor cannot run included).
    pub fp32_layers: Vec<String>,
}

/// How an activation's clipping threshold `t` (`s_x = t / 255`) is chosen from its values
/// on the calibration set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Calibration {
    /// The largest value.
    MinMax,
    /// The 99.99th percentile of the values (zeros included).
    #[default]
    Percentile,
    /// The threshold whose 255-level quantization of the histogram is nearest to it in
    /// KL divergence (Migacz 2017), over the positive values (a ReLU's zeros left out).
    Entropy,
}

impl Calibration {
    pub const ALL: [Calibration; 3] = [Calibration::MinMax, Calibration::Percentile, Calibration::Entropy];

    pub fn name(self) -> &'static str {
        match self {
            Calibration::MinMax => "minmax",
            Calibration::Percentile => "percentile",
            Calibration::Entropy => "entropy",
        }
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Calibration {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let name = s.trim().to_ascii_lowercase();
        Calibration::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::Option(format!("unknown calibration method `{s}` (minmax, percentile, entropy)")))
    }
}

/// Which layers stay FP32 (the stem always does).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeepFp32 {
    /// Those whose INT8 alone moves the calibration logits by more than
    /// [`QuantizeOptions::auto_threshold`].
    #[default]
    Auto,
    /// None: every layer the INT8 executor can run is INT8.
    None,
    /// These layers, by name (`stage1.0`, as `repvgg info` shows them).
    Layers(Vec<String>),
}

impl FromStr for KeepFp32 {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(KeepFp32::Auto),
            "none" => Ok(KeepFp32::None),
            _ => Ok(KeepFp32::Layers(s.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect())),
        }
    }
}

/// How [`Model::quantize`] works.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub calibration: Calibration,
    pub keep_fp32: KeepFp32,
    /// The relative L2 change of the logits (over the calibration set) above which
    /// [`KeepFp32::Auto`] keeps a layer in FP32.
    pub auto_threshold: f64,
    /// Per-tensor weight scales instead of per-channel (the naive scheme, for comparison).
    pub per_tensor_weights: bool,
    /// Zero the weights that read input channels which were 0 on every calibration image
    /// (a ReLU that never fires) before quantizing ([`zero_inputs`]).
    pub prune_dead_inputs: bool,
    /// Threads of the calibration sessions (0: one per core).
    pub threads: usize,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            calibration: Calibration::default(),
            keep_fp32: KeepFp32::default(),
            auto_threshold: DEFAULT_AUTO_THRESHOLD,
            per_tensor_weights: false,
            prune_dead_inputs: true,
            threads: 0,
        }
    }
}

/// Default [`QuantizeOptions::auto_threshold`].
pub const DEFAULT_AUTO_THRESHOLD: f64 = 0.02;

/// Percentile of [`Calibration::Percentile`].
const PERCENTILE: f64 = 0.9999;

/// Histogram bins per activation over `[0, max]`.
const BINS: usize = 2048;

/// Calibration images per run.
const BATCH: usize = 8;

/// One layer of the error report.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub precision: Precision,
    /// `s_x` (INT8 layers).
    pub input_scale: Option<f32>,
    /// Largest over smallest per-channel `max |w|` of the deploy kernel (all-zero channels
    /// left out): how much one scale per tensor would waste.
    pub weight_spread: f64,
    /// Input channels that were 0 on every calibration image (their weights are zeroed
    /// when [`QuantizeOptions::prune_dead_inputs`] is on).
    pub dead_inputs: usize,
    /// The relative L2 change of the logits when this layer alone runs INT8 (what
    /// `KeepFp32::Auto` decides on; `None` where it was not measured).
    pub alone_logit_error: Option<f64>,
    /// Signal-to-quantization-noise ratio of the layer's output in the quantized model
    /// against FP32, in dB (errors accumulate from the layers before).
    pub sqnr_db: f64,
}

/// What quantization did to the network on its calibration set.
#[derive(Debug, Clone, Serialize)]
pub struct QuantReport {
    pub info: QuantInfo,
    pub layers: Vec<LayerReport>,
    /// Images whose top-1 class is the FP32 one.
    pub top1_agreement: f64,
    /// Mean over images of the cosine between INT8 and FP32 logits.
    pub cosine: f64,
    /// `max |int8 - f32| / max |f32|` over all logits.
    pub max_rel_error: f64,
}

/// Per-layer activation statistics on the calibration set.
struct Stats {
    max: f32,
    /// Largest value per channel.
    channel_max: Vec<f32>,
    /// Values of 0 (and below), counted apart: after a ReLU they are often half of all
    /// values, and in the first bin they would swamp the small positive values there.
    zeros: u64,
    /// The positive values in [`BINS`] bins over `(0, max]`.
    histogram: Vec<u64>,
}

/// Every value of a layer's real channels in its channel-blocked output.
/// Every value of a layer's real channels in its channel-blocked output, with its channel.
fn for_each_value(lp: &LayerPlan, n: usize, output: &[f32], mut f: impl FnMut(usize, f32)) {
    let (c, plane) = (lp.out_channels, lp.oh * lp.ow);
    let blocks = channel_blocks(c);
    for b in 0..n {
        for blk in 0..blocks {
            let lanes = (c - blk * CHANNEL_BLOCK).min(CHANNEL_BLOCK);
            let base = (b * blocks + blk) * plane * CHANNEL_BLOCK;
            for p in 0..plane {
                let values = &output[base + p * CHANNEL_BLOCK..][..lanes];
                values.iter().enumerate().for_each(|(l, v)| f(blk * CHANNEL_BLOCK + l, *v));
            }
        }
    }
}

/// The calibration images in batches of at most [`BATCH`].
fn batches(calibration: &Tensor) -> Vec<Tensor> {
    let [n, c, h, w]: [usize; 4] = calibration.shape().try_into().expect("checked [N, 3, H, W]");
    let image = c * h * w;
    (0..n)
        .step_by(BATCH)
        .map(|start| {
            let count = BATCH.min(n - start);
            Tensor::new(vec![count, c, h, w], calibration.data()[start * image..(start + count) * image].to_vec())
                .expect("a slice of a valid tensor")
        })
        .collect()
}

/// The clipping threshold of one activation.
fn threshold(method: Calibration, stats: &Stats) -> f32 {
    let width = stats.max / BINS as f32;
    let positive: u64 = stats.histogram.iter().sum();
    match method {
        Calibration::MinMax => stats.max,
        _ if positive == 0 || stats.max <= 0.0 => stats.max,
        Calibration::Percentile => {
            let wanted = (PERCENTILE * (positive + stats.zeros) as f64).ceil() as u64;
            let mut seen = stats.zeros;
            let bin = stats.histogram.iter().position(|&c| {
                seen += c;
                seen >= wanted
            });
            (bin.unwrap_or(BINS - 1) + 1) as f32 * width
        }
        // Zeros left out: a spike in the first bin, which the coarser levels of a wide
        // threshold must spread over their bins, would make every threshold but the
        // narrowest look lossy (and the narrowest clips all but an eighth of the range).
        Calibration::Entropy => (entropy_bins(&stats.histogram) as f32) * width,
    }
}

/// The number of histogram bins to keep whose 255-level quantization loses the least
/// information (KL divergence of the clipped distribution `P` from its quantized `Q`),
/// searched from 255 bins to all.
fn entropy_bins(histogram: &[u64]) -> usize {
    const LEVELS: usize = 255;
    let bins = histogram.len();
    let mut best = (f64::INFINITY, bins);
    for keep in LEVELS..=bins {
        let mut p: Vec<f64> = histogram[..keep].iter().map(|&c| c as f64).collect();
        p[keep - 1] += histogram[keep..].iter().sum::<u64>() as f64;
        let mut q = vec![0f64; keep];
        for level in 0..LEVELS {
            let (start, end) = (level * keep / LEVELS, ((level + 1) * keep / LEVELS).max(level * keep / LEVELS + 1));
            let sum: f64 = histogram[start..end].iter().map(|&c| c as f64).sum();
            let nonzero = histogram[start..end].iter().filter(|&&c| c > 0).count();
            if nonzero > 0 {
                for (i, &c) in histogram[start..end].iter().enumerate() {
                    if c > 0 {
                        q[start + i] = sum / nonzero as f64;
                    }
                }
            }
        }
        let (ps, qs) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
        if ps <= 0.0 || qs <= 0.0 {
            continue;
        }
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, q)| {
                let (p, q) = (p / ps, (q / qs).max(1e-12));
                p * (p / q).ln()
            })
            .sum();
        if kl < best.0 {
            best = (kl, keep);
        }
    }
    best.1
}

/// Symmetric s8 codes of a `[K][..]` kernel, one scale per output channel (or one for all
/// with `per_tensor`): `s = max |w| / 127`, `q = round_half_even(w / s)` computed in f64.
/// An all-zero channel gets scale 1 and codes 0.
pub(crate) fn quantize_weights(weight: &[f32], out_channels: usize, per_tensor: bool) -> (Vec<i8>, Vec<f32>) {
    let per = weight.len() / out_channels;
    let channel_max: Vec<f32> =
        weight.chunks(per).map(|w| w.iter().fold(0f32, |m, v| m.max(v.abs()))).collect::<Vec<_>>();
    let tensor_max = channel_max.iter().fold(0f32, |m, v| m.max(*v));
    let scales: Vec<f32> = channel_max
        .iter()
        .map(|&m| {
            let m = if per_tensor { tensor_max } else { m };
            if m > 0.0 { (m as f64 / WEIGHT_MAX as f64) as f32 } else { 1.0 }
        })
        .collect();
    let codes = weight
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let q = (w as f64 / scales[i / per] as f64).round_ties_even();
            q.clamp(-(WEIGHT_MAX as f64), WEIGHT_MAX as f64) as i8
        })
        .collect();
    (codes, scales)
}

/// The input channels that were 0 on every calibration image.
fn dead_inputs(stats: &Stats) -> Vec<usize> {
    stats.channel_max.iter().enumerate().filter(|(_, m)| **m <= 0.0).map(|(c, _)| c).collect()
}

/// Zeroes the weights of a `[K][C/groups][k][k]` kernel that read the input channels
/// `dead`: exact wherever those channels are 0, and it keeps a dead channel's weights (an
/// identity branch's batch norm over a channel of variance ~0 folds into a weight
/// hundreds of times the others) from setting the scale of the output channels.
fn zero_inputs(weight: &mut [f32], out_channels: usize, in_channels: usize, groups: usize, dead: &[usize]) {
    let (cg, kg) = (in_channels / groups, out_channels / groups);
    let taps = weight.len() / (out_channels * cg);
    for &c in dead {
        let (g, local) = (c / cg, c % cg);
        for k in g * kg..(g + 1) * kg {
            weight[(k * cg + local) * taps..][..taps].fill(0.0);
        }
    }
}

/// Largest over smallest nonzero per-channel `max |w|`.
fn weight_spread(weight: &[f32], out_channels: usize) -> f64 {
    let per = weight.len() / out_channels;
    let maxes: Vec<f64> =
        weight.chunks(per).map(|w| w.iter().fold(0f64, |m, v| m.max(v.abs() as f64))).filter(|m| *m > 0.0).collect();
    let (lo, hi) = maxes.iter().fold((f64::INFINITY, 0f64), |(lo, hi), m| (lo.min(*m), hi.max(*m)));
    if maxes.is_empty() { 1.0 } else { hi / lo }
}

/// SHA-256 of a tensor's shape and values.
fn tensor_hash(t: &Tensor) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for d in t.shape() {
        hasher.update((*d as u64).to_le_bytes());
    }
    for v in t.data() {
        hasher.update(v.to_le_bytes());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Logits of `model` on every calibration batch, concatenated.
fn logits(model: &Model, precision: Precision, threads: usize, batches: &[Tensor]) -> Result<Vec<f32>> {
    let mut session = model.session(SessionOptions { threads, precision: Some(precision), ..Default::default() })?;
    let mut out = Vec::new();
    for batch in batches {
        out.extend_from_slice(session.run(batch)?.data());
    }
    Ok(out)
}

/// `||a - b|| / ||b||`.
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        diff += (*x as f64 - *y as f64).powi(2);
        norm += (*y as f64).powi(2);
    }
    if norm > 0.0 { (diff / norm).sqrt() } else { diff.sqrt() }
}

/// Top-1 agreement, mean cosine and max relative error of `got` against `want`.
fn agreement(got: &[f32], want: &[f32], classes: usize) -> (f64, f64, f64) {
    let argmax = |row: &[f32]| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    let rows = want.len() / classes;
    let (mut same, mut cosine) = (0usize, 0f64);
    for (g, w) in got.chunks(classes).zip(want.chunks(classes)) {
        same += usize::from(argmax(g) == argmax(w));
        let dot: f64 = g.iter().zip(w).map(|(a, b)| *a as f64 * *b as f64).sum();
        let (ng, nw) =
            (g.iter().map(|a| (*a as f64).powi(2)).sum::<f64>(), w.iter().map(|a| (*a as f64).powi(2)).sum::<f64>());
        cosine += if ng > 0.0 && nw > 0.0 { dot / (ng * nw).sqrt() } else { f64::from(u8::from(ng == nw)) };
    }
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let worst = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    (same as f64 / rows as f64, cosine / rows as f64, if scale > 0.0 { worst / scale } else { worst })
}

impl Model {
    /// The arithmetic this model runs in by default: INT8 if it has INT8 layers.
    pub fn precision(&self) -> Precision {
        if self.int8_layers().is_some() { Precision::Int8 } else { Precision::F32 }
    }

    /// How the model was quantized, if it was.
    pub fn quantization(&self) -> Option<&QuantInfo> {
        self.quant().map(|q| &q.info)
    }

    /// Which layers (by network index) have INT8 parameters; `None` if none does.
    pub(crate) fn int8_layers(&self) -> Option<Vec<bool>> {
        let q = self.quant()?;
        let mask: Vec<bool> = q.layers.iter().map(Option::is_some).collect();
        mask.iter().any(|&b| b).then_some(mask)
    }

    /// Quantizes this FP32 model to INT8 ([`QuantizeOptions`]), calibrating the
    /// activation scales on `calibration` (`[N, 3, H, W]`, the preprocessed images the
    /// model will see), and reports the error on the calibration set.
    pub fn quantize(&self, calibration: &Tensor, options: &QuantizeOptions) -> Result<(Model, QuantReport)> {
        if self.quant().is_some() {
            return Err(Error::Option("the model is already quantized".into()));
        }
        if !(options.auto_threshold.is_finite() && options.auto_threshold >= 0.0) {
            return Err(Error::Option(format!(
                "the FP32 fallback threshold is {}; it must be a finite number of at least 0",
                options.auto_threshold
            )));
        }
        self.limits().check_input(self.network(), calibration.shape())?;
        let network = self.network();
        let [_, _, h, w]: [usize; 4] = calibration.shape().try_into().expect("checked [N, 3, H, W]");
        let batches = batches(calibration);
        let threads = options.threads;
        let count = network.layers.len();

        // Statistics of every layer's input (the previous layer's output), FP32 model.
        let mut fp32 =
            self.session(SessionOptions { threads, precision: Some(Precision::F32), ..Default::default() })?;
        let mut stats: Vec<Stats> = (0..count)
            .map(|_| Stats { max: 0.0, channel_max: Vec::new(), zeros: 0, histogram: vec![0; BINS] })
            .collect();
        // The stem's input is the calibration tensor itself, signed: its magnitudes.
        let magnitude = calibration.data().iter().fold(0f32, |m, v| m.max(v.abs()));
        stats[0].max = if magnitude.is_finite() { magnitude } else { 0.0 };
        if stats[0].max > 0.0 {
            let per_bin = BINS as f32 / stats[0].max;
            for v in calibration.data().iter().map(|v| v.abs()) {
                if v > 0.0 {
                    stats[0].histogram[((v * per_bin) as usize).min(BINS - 1)] += 1;
                } else {
                    stats[0].zeros += 1;
                }
            }
        }
        let mut reference = Vec::new();
        for batch in &batches {
            let n = batch.shape()[0];
            let logits = fp32.run_observed(batch, &mut |lp, out| {
                if let Some(s) = stats.get_mut(lp.index + 1) {
                    s.channel_max.resize(lp.out_channels, 0.0);
                    for_each_value(lp, n, out, |c, v| s.channel_max[c] = s.channel_max[c].max(v));
                    s.max = s.channel_max.iter().fold(0f32, |m, v| m.max(*v));
                }
            })?;
            reference.extend_from_slice(logits.data());
        }
        if options.calibration != Calibration::MinMax {
            for batch in &batches {
                let n = batch.shape()[0];
                fp32.run_observed(batch, &mut |lp, out| {
                    if let Some(s) = stats.get_mut(lp.index + 1)
                        && s.max > 0.0
                    {
                        let per_bin = BINS as f32 / s.max;
                        for_each_value(lp, n, out, |_, v| {
                            if v > 0.0 {
                                s.histogram[((v * per_bin) as usize).min(BINS - 1)] += 1;
                            } else {
                                s.zeros += 1;
                            }
                        });
                    }
                })?;
            }
        }

        // Each layer the INT8 executor can run, quantized.
        let plan = fp32.plan(1, h, w)?.clone();
        let int8 = exec::lookup(Algo::Direct, Precision::Int8).1;
        let candidates: Vec<Option<Int8Layer>> = plan
            .layers
            .iter()
            .map(|lp| {
                if !int8.supports(&lp.shape(1), Isa::Portable) {
                    return None;
                }
                // The network input is signed: 127 steps each way of the zero point.
                let steps = if lp.index == 0 { 127.0 } else { 255.0 };
                let t = threshold(options.calibration, &stats[lp.index]);
                let input_scale = if t > 0.0 && (t / steps).is_normal() { t / steps } else { 1.0 };
                let mut deploy = self.weights().layers[lp.index].conv.weight.clone();
                if options.prune_dead_inputs {
                    let dead = dead_inputs(&stats[lp.index]);
                    zero_inputs(&mut deploy, lp.out_channels, lp.in_channels, lp.groups, &dead);
                }
                let (weight, weight_scale) = quantize_weights(&deploy, lp.out_channels, options.per_tensor_weights);
                Some(Int8Layer { input_scale, weight_scale, weight })
            })
            .collect();
        let names: Vec<String> = plan.layers.iter().map(|lp| lp.name.clone()).collect();
        let info = |fp32_layers: Vec<String>| QuantInfo {
            calibration: options.calibration.name().to_string(),
            samples: calibration.shape()[0],
            calibration_sha256: tensor_hash(calibration),
            fp32_layers,
        };

        // The layers that stay FP32.
        let mut alone = vec![None; count];
        let keep: Vec<bool> = match &options.keep_fp32 {
            KeepFp32::None => vec![false; count],
            KeepFp32::Layers(wanted) => {
                for name in wanted {
                    if !names.contains(name) {
                        return Err(Error::Option(format!(
                            "--keep-fp32 names `{name}`, which is not a layer of {} (layers: {})",
                            network.arch.name,
                            names.join(", ")
                        )));
                    }
                }
                names.iter().map(|n| wanted.contains(n)).collect()
            }
            KeepFp32::Auto => {
                let mut keep = vec![false; count];
                for (i, candidate) in candidates.iter().enumerate() {
                    let Some(layer) = candidate else { continue };
                    let mut only = vec![None; count];
                    only[i] = Some(layer.clone());
                    let model = self.with_int8(only, info(Vec::new()))?;
                    let error = relative_l2(&logits(&model, Precision::Int8, threads, &batches)?, &reference);
                    alone[i] = Some(error);
                    keep[i] = error > options.auto_threshold;
                }
                keep
            }
        };
        let layers: Vec<Option<Int8Layer>> =
            candidates.into_iter().zip(&keep).map(|(c, &k)| if k { None } else { c }).collect();
        if layers.iter().all(Option::is_none) {
            return Err(Error::Option(format!(
                "no layer is left to run in INT8 (each moves the calibration logits by more than the threshold of \
                 {}; raise it or keep fewer layers in FP32)",
                options.auto_threshold
            )));
        }
        let fp32_layers: Vec<String> =
            names.iter().zip(&layers).filter(|(_, l)| l.is_none()).map(|(n, _)| n.clone()).collect();
        let quantized = self.with_int8(layers.clone(), info(fp32_layers))?;

        // The report: each layer's output against FP32, and the logits.
        // (FP32 if every layer stayed FP32.)
        let mut int8s = quantized.session(SessionOptions {
            threads,
            precision: Some(quantized.precision()),
            ..Default::default()
        })?;
        let (mut signal, mut noise) = (vec![0f64; count], vec![0f64; count]);
        let mut got = Vec::new();
        for batch in &batches {
            let n = batch.shape()[0];
            let mut outputs: Vec<Vec<f32>> = vec![Vec::new(); count];
            fp32.run_observed(batch, &mut |lp, out| outputs[lp.index] = out.to_vec())?;
            let logits = int8s.run_observed(batch, &mut |lp, out| {
                // Padding lanes are 0 in both, so the whole buffers compare.
                let len = n * channel_blocks(lp.out_channels) * lp.oh * lp.ow * CHANNEL_BLOCK;
                for (r, q) in outputs[lp.index][..len].iter().zip(&out[..len]) {
                    signal[lp.index] += (*r as f64).powi(2);
                    noise[lp.index] += (*r as f64 - *q as f64).powi(2);
                }
            })?;
            got.extend_from_slice(logits.data());
        }
        let (top1_agreement, cosine, max_rel_error) = agreement(&got, &reference, network.num_classes);
        let layer_reports = plan
            .layers
            .iter()
            .map(|lp| LayerReport {
                name: lp.name.clone(),
                precision: if layers[lp.index].is_some() { Precision::Int8 } else { Precision::F32 },
                input_scale: layers[lp.index].as_ref().map(|l| l.input_scale),
                weight_spread: weight_spread(&self.weights().layers[lp.index].conv.weight, lp.out_channels),
                dead_inputs: if lp.index == 0 { 0 } else { dead_inputs(&stats[lp.index]).len() },
                alone_logit_error: alone[lp.index],
                sqnr_db: if noise[lp.index] > 0.0 {
                    10.0 * (signal[lp.index] / noise[lp.index]).log10()
                } else {
                    f64::INFINITY
                },
            })
            .collect();
        let report = QuantReport {
            info: quantized.quantization().expect("quantized").clone(),
            layers: layer_reports,
            top1_agreement,
            cosine,
            max_rel_error,
        };
        Ok((quantized, report))
    }

    /// This model with `layers` (one entry per network layer) as its INT8 parameters:
    /// their dequantized weights replace the deploy kernels.
    pub(crate) fn with_int8(&self, layers: Vec<Option<Int8Layer>>, info: QuantInfo) -> Result<Model> {
        let mut weights: DeployWeights = self.weights().clone();
        for (params, layer) in weights.layers.iter_mut().zip(&layers) {
            if let Some(layer) = layer {
                params.conv.weight = layer.dequantized();
            }
        }
        let description =
            format!("{} quantized to INT8 ({}, {} samples)", self.description(), info.calibration, info.samples);
        Model::from_parts_quantized(
            self.network().clone(),
            weights,
            self.limits().clone(),
            description,
            Some(Quantization { layers, info }),
        )
    }

    /// The tensors and metadata of this model as a file: the official deploy form, with
    /// the INT8 layers' tensors of the quantized format.
    pub fn write(&self, output: &repvgg_files::Output) -> Result<()> {
        let network = self.network();
        let mut tensors: Vec<(String, Vec<usize>, TensorData<'_>)> = Vec::new();
        let quant = self.quant();
        let scales: Vec<[f32; 1]> = network
            .layers
            .iter()
            .map(|l| [quant.and_then(|q| q.layers[l.index].as_ref()).map_or(0.0, |q| q.input_scale)])
            .collect();
        for (name, shape, data) in self.weights().named_tensors(network) {
            let layer = network
                .layers
                .iter()
                .find(|l| name == format!("{}.rbr_reparam.weight", Convention::Official.block_prefix(l)));
            match layer.and_then(|l| quant.and_then(|q| q.layers[l.index].as_ref()).map(|q| (l, q))) {
                Some((l, q)) => {
                    let p = Convention::Official.block_prefix(l);
                    tensors.push((name, shape, TensorData::I8(&q.weight)));
                    tensors.push((
                        format!("{p}.rbr_reparam.weight_scale"),
                        vec![l.out_channels],
                        TensorData::F32(&q.weight_scale),
                    ));
                    tensors.push((format!("{p}.rbr_reparam.input_scale"), vec![1], TensorData::F32(&scales[l.index])));
                }
                None => tensors.push((name, shape, TensorData::F32(data))),
            }
        }
        let mut metadata = BTreeMap::new();
        if let Some(q) = quant {
            metadata.insert("repvgg.quantization".to_string(), "int8".to_string());
            metadata.insert("repvgg.calibration".to_string(), q.info.calibration.clone());
            metadata.insert("repvgg.samples".to_string(), q.info.samples.to_string());
            metadata.insert("repvgg.calibration_sha256".to_string(), q.info.calibration_sha256.clone());
            metadata.insert("repvgg.fp32_layers".to_string(), q.info.fp32_layers.join(","));
        }
        crate::loader::write_safetensors(output, &metadata, tensors)
    }
}

/// True if the file holds INT8 layers (any `*.input_scale` tensor, or the metadata says so).
pub(crate) fn is_quantized(file: &SafetensorsFile) -> bool {
    file.metadata().get("repvgg.quantization").is_some_and(|v| v == "int8")
        || file.names().iter().any(|n| n.ends_with(".input_scale") || n.ends_with(".weight_scale"))
}

/// A quantized file seen as a float checkpoint: the INT8 kernels dequantized (after the
/// checks of [`read_layer`]), the scale tensors hidden, so the ordinary resolver reads it.
pub(crate) struct Dequantized<'a> {
    file: &'a SafetensorsFile,
}

impl<'a> Dequantized<'a> {
    pub fn new(file: &'a SafetensorsFile) -> Dequantized<'a> {
        Dequantized { file }
    }
}

impl TensorSource for Dequantized<'_> {
    fn names(&self) -> Vec<&str> {
        self.file
            .names()
            .into_iter()
            .filter(|n| !n.ends_with(".weight_scale") && !n.ends_with(".input_scale"))
            .collect()
    }

    fn shape(&self, name: &str) -> Option<&[usize]> {
        self.file.shape(name)
    }

    /// Only a deploy kernel (`*.rbr_reparam.weight`) may be I8; any other I8 tensor is
    /// refused by the file's own conversion, as a dtype error naming it.
    fn to_f32(&self, name: &str) -> repvgg_graph::Result<std::borrow::Cow<'_, [f32]>> {
        if let Some(prefix) = name.strip_suffix(".weight").filter(|p| p.ends_with(".rbr_reparam"))
            && self.file.dtype(name).as_deref() == Some("I8")
        {
            return read_layer(self.file, prefix).map(|l| std::borrow::Cow::Owned(l.dequantized())).map_err(
                |e| match e {
                    Error::Graph(g) => g,
                    other => repvgg_graph::Error::Source(other.to_string()),
                },
            );
        }
        self.file.to_f32(name)
    }
}

/// A scale tensor's values, checked: F32 (or F16/BF16), `len` of them, each a positive
/// normal float.
fn read_scales(file: &SafetensorsFile, name: &str, len: usize) -> Result<Vec<f32>> {
    let bad = |why: String| invalid(file, format!("`{name}` {why}"));
    let shape = file.shape(name).ok_or_else(|| bad("is missing (every I8 weight needs its scales)".into()))?;
    if shape != [len] {
        return Err(bad(format!("has shape {shape:?}, expected [{len}]")));
    }
    let values = file.tensor_f32(name)?.into_owned();
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !(v.is_normal() && **v > 0.0)) {
        return Err(bad(format!("[{i}] is {v}: scales must be positive, finite and normal")));
    }
    Ok(values)
}

/// A quantized file's contents that are not a valid model (a [`ErrorKind::Model`] error,
/// as for any other bad weight): `why` names the tensor.
///
/// [`ErrorKind::Model`]: crate::ErrorKind::Model
fn invalid(file: &SafetensorsFile, why: String) -> Error {
    Error::Graph(repvgg_graph::Error::Source(format!("{}: {why}", file.path().display())))
}

/// The INT8 parameters of the layer whose tensors start with `prefix` (`stage1.0.rbr_reparam`).
pub(crate) fn read_layer(file: &SafetensorsFile, prefix: &str) -> Result<Int8Layer> {
    let name = format!("{prefix}.weight");
    let shape = file.shape(&name).map(<[usize]>::to_vec).unwrap_or_default();
    let weight = file.tensor_i8(&name)?.to_vec();
    let out_channels = shape.first().copied().unwrap_or(0);
    if shape.len() != 4 || out_channels == 0 {
        return Err(invalid(file, format!("`{name}` has shape {shape:?}, expected [K, C, 3, 3]")));
    }
    let weight_scale = read_scales(file, &format!("{prefix}.weight_scale"), out_channels)?;
    let input_scale = read_scales(file, &format!("{prefix}.input_scale"), 1)?[0];
    Ok(Int8Layer { input_scale, weight_scale, weight })
}

/// The INT8 parameters of a quantized file, for the network it resolved to.
pub(crate) fn read(file: &SafetensorsFile, network: &Network) -> Result<Quantization> {
    let mut layers = Vec::with_capacity(network.layers.len());
    for layer in &network.layers {
        let prefix = format!("{}.rbr_reparam", Convention::Official.block_prefix(layer));
        layers.push(match file.dtype(&format!("{prefix}.weight")).as_deref() {
            Some("I8") => Some(read_layer(file, &prefix)?),
            _ => {
                for scale in ["weight_scale", "input_scale"] {
                    if file.shape(&format!("{prefix}.{scale}")).is_some() {
                        return Err(invalid(
                            file,
                            format!("`{prefix}.{scale}` scales a float weight (only I8 weights have scales)"),
                        ));
                    }
                }
                None
            }
        });
    }
    // A scale anywhere else scales nothing the network reads.
    let scaled: Vec<String> = network
        .layers
        .iter()
        .zip(&layers)
        .filter(|(_, l)| l.is_some())
        .map(|(layer, _)| format!("{}.rbr_reparam", Convention::Official.block_prefix(layer)))
        .collect();
    for name in file.names() {
        let prefix = name.strip_suffix(".weight_scale").or_else(|| name.strip_suffix(".input_scale"));
        if let Some(prefix) = prefix
            && !scaled.iter().any(|p| p == prefix)
        {
            return Err(invalid(
                file,
                format!("`{name}` scales no I8 weight of the network (only I8 weights have scales)"),
            ));
        }
    }
    let meta = file.metadata();
    let names: Vec<String> = network.layers.iter().map(|l| Convention::Official.block_prefix(l)).collect();
    let info = QuantInfo {
        calibration: meta.get("repvgg.calibration").cloned().unwrap_or_else(|| "unknown".into()),
        samples: meta.get("repvgg.samples").and_then(|s| s.parse().ok()).unwrap_or(0),
        calibration_sha256: meta.get("repvgg.calibration_sha256").cloned().unwrap_or_default(),
        fp32_layers: names.iter().zip(&layers).filter(|(_, l)| l.is_none()).map(|(n, _)| n.clone()).collect(),
    };
    Ok(Quantization { layers, info })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_symmetric_per_channel_and_round_half_even() {
        // Channel 0: max 2.54 -> scale 0.02; 0.01 / 0.02 = 0.5 rounds to 0, 0.03 to 2 (1.5).
        let w = [2.54, 0.01, 0.03, -2.54, 0.0, 0.0, 0.0, 0.0];
        let (q, s) = quantize_weights(&w, 2, false);
        assert_eq!(s[0], (2.54f32 as f64 / 127.0) as f32);
        assert_eq!(&q[..4], &[127, 0, 2, -127]);
        // The all-zero channel: scale 1, codes 0.
        assert_eq!((s[1], &q[4..]), (1.0, &[0i8, 0, 0, 0][..]));
        // Per tensor: one scale, the small channel loses its resolution.
        let (q, s) = quantize_weights(&[100.0, -100.0, 0.3, 0.2], 2, true);
        assert_eq!(s[0], s[1]);
        assert_eq!(q, vec![127, -127, 0, 0]);
    }

    fn stats_of(values: &[f32]) -> Stats {
        let max = values.iter().fold(0f32, |m, v| m.max(*v));
        let mut histogram = vec![0u64; BINS];
        let mut zeros = 0;
        for v in values {
            if *v > 0.0 {
                histogram[((v * (BINS as f32 / max)) as usize).min(BINS - 1)] += 1;
            } else {
                zeros += 1;
            }
        }
        Stats { max, channel_max: vec![max], zeros, histogram }
    }

    /// Calibration on known distributions: uniform values keep their maximum under every
    /// method; a few outliers at 10x the bulk of a million values move min-max to them,
    /// while the percentile and entropy thresholds stay near the bulk.
    #[test]
    fn calibration_methods_on_known_distributions() {
        let uniform: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0 * 6.0).collect();
        let s = stats_of(&uniform);
        for method in Calibration::ALL {
            let t = threshold(method, &s);
            assert!((t - 6.0).abs() < 0.02, "{method}: {t}");
        }
        // A bulk decaying from 0 to 4 (the shape of post-ReLU activations), five outliers.
        let mut outlier: Vec<f32> = (0..1_000_000).map(|i| 4.0 * ((i % 1000) as f32 / 1000.0).powi(3)).collect();
        outlier.extend([40.0, 38.0, 35.0, 30.0, 25.0]);
        let s = stats_of(&outlier);
        assert_eq!(threshold(Calibration::MinMax, &s), 40.0);
        let percentile = threshold(Calibration::Percentile, &s);
        assert!((3.9..4.1).contains(&percentile), "percentile: {percentile}");
        let entropy = threshold(Calibration::Entropy, &s);
        assert!((3.0..10.0).contains(&entropy), "entropy: {entropy}");
        // After a ReLU: the same bulk and outliers with as many exact zeros. The zeros
        // move no threshold (with them in the first bin, entropy chose 255 of 2048 bins:
        // 5.0, an eighth of the maximum, whatever the values).
        outlier.extend(std::iter::repeat_n(0.0, 1_000_005));
        let z = stats_of(&outlier);
        assert_eq!(threshold(Calibration::Entropy, &z), entropy);
        let with_zeros = threshold(Calibration::Percentile, &z);
        assert!((3.9..4.1).contains(&with_zeros) && with_zeros <= percentile, "percentile: {with_zeros}");
    }

    #[test]
    fn dead_inputs_are_zeroed_in_their_group_only() {
        // K = 4, C = 4, two groups (2 channels each), 1x1: input channel 3 is dead.
        let mut w: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let stats = Stats { max: 1.0, channel_max: vec![1.0, 2.0, 0.5, 0.0], zeros: 0, histogram: vec![] };
        zero_inputs(&mut w, 4, 4, 2, &dead_inputs(&stats));
        // Group 1's outputs (k = 2, 3) read channels 2 and 3 as their locals 0 and 1.
        assert_eq!(w, vec![1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 7.0, 0.0]);
    }

    #[test]
    fn names_parse() {
        for c in Calibration::ALL {
            assert_eq!(c.name().parse::<Calibration>().unwrap(), c);
        }
        assert!("kl".parse::<Calibration>().is_err());
        assert_eq!("auto".parse::<KeepFp32>().unwrap(), KeepFp32::Auto);
        assert_eq!("none".parse::<KeepFp32>().unwrap(), KeepFp32::None);
        assert_eq!(
            "stage1.0, stage2.1".parse::<KeepFp32>().unwrap(),
            KeepFp32::Layers(vec!["stage1.0".into(), "stage2.1".into()])
        );
    }
}
