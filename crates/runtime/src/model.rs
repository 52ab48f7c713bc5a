//! Loading a model: file -> names -> architecture -> deploy weights, and the per-layer
//! weights each algorithm needs (transformed and packed once, on first use).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use repvgg_graph::{ArchSpec, Convention, DeployWeights, Network, ResolveOptions, TensorSource};

use crate::error::{Error, Result};
use crate::exec::{LayerWeights, PackedWeights, REGISTRY};
use crate::limits::{Limits, check_output};
use crate::loader::SafetensorsFile;
use crate::plan::LayerPlan;
use crate::quant::{self, Dequantized, Quantization};
use crate::reference;
use crate::tensor::Tensor;
use repvgg_simd::layout::{CHANNEL_BLOCK, channel_blocks};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// Architecture to check the weights against; inferred from the shapes if `None`.
    pub arch: Option<ArchSpec>,
    pub limits: Limits,
    /// What a QARepVGG training checkpoint cannot say about itself (V1 or V2 blocks, the
    /// batch-norm eps); other forms ignore it.
    pub forms: ResolveOptions,
}

/// Per-layer data derived from the deploy weights.
#[derive(Debug)]
struct LayerCache {
    /// Bias padded to whole 16-channel blocks.
    bias: Vec<f32>,
    /// The weights as each executor reads them, by [`REGISTRY`] index, built on first use.
    prepared: Box<[OnceLock<Arc<dyn PackedWeights>>]>,
}

#[derive(Debug)]
struct Inner {
    network: Network,
    weights: DeployWeights,
    limits: Limits,
    description: String,
    layers: Vec<LayerCache>,
    /// Bytes of weights held: the deploy weights and every packing built so far.
    held_bytes: AtomicUsize,
    /// INT8 parameters of a quantized model.
    quant: Option<Quantization>,
    /// The classifier's weights rounded to bf16, built when a BF16 or INT8 session first needs
    /// them.
    classifier_bf16: OnceLock<Vec<u16>>,
}

/// A loaded, re-parameterized RepVGG model.
///
/// Cheap to clone (the weights are shared), `Send + Sync`: any number of threads can run
/// inferences on one model at once, each through its own [`Session`](crate::Session) (or
/// [`Model::run`](crate::Model::run)).
#[derive(Debug, Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

impl Model {
    /// Loads a safetensors file or a PyTorch zip checkpoint (`.pth`, told apart by content)
    /// in any supported naming form and dtype.
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model> {
        let file = SafetensorsFile::open_weights(path, options.limits.max_weight_bytes as u64)?;
        Model::from_safetensors(&file, options)
    }

    /// Like [`Model::load`], for a checkpoint already in memory; `name` stands for its path
    /// in messages.
    pub fn load_bytes(name: &str, bytes: Vec<u8>, options: &ModelOptions) -> Result<Model> {
        Model::from_safetensors(&SafetensorsFile::weights_from_bytes(name, bytes)?, options)
    }

    /// Builds a model from a parsed safetensors file.
    pub fn from_safetensors(file: &SafetensorsFile, options: &ModelOptions) -> Result<Model> {
        let path = file.path();
        let quantized = quant::is_quantized(file);
        let dequantized = Dequantized::new(file);
        let source: &dyn TensorSource = if quantized { &dequantized } else { file };
        let resolved =
            repvgg_graph::resolve_with(source, options.arch.as_ref(), &options.forms).map_err(|e| match e {
                // Name the file for errors that come from the names and shapes inside it.
                repvgg_graph::Error::BadWeights(msg) => {
                    Error::Graph(repvgg_graph::Error::BadWeights(format!("{}: {msg}", path.display())))
                }
                other => Error::Graph(other),
            })?;
        let convention = match resolved.convention {
            Convention::Official => "official",
            Convention::Timm => "timm",
        };
        let description = format!(
            "RepVGG-{} ({} names, {} form, {} classes) from {}",
            resolved.network.arch.name,
            convention,
            resolved.form_summary(),
            resolved.network.num_classes,
            path.display()
        );
        if quantized {
            let quantization = quant::read(file, &resolved.network)?;
            let description = format!(
                "{description}, INT8 ({} calibration, {} samples)",
                quantization.info.calibration, quantization.info.samples
            );
            return Model::from_parts_quantized(
                resolved.network,
                resolved.weights,
                options.limits.clone(),
                description,
                Some(quantization),
            );
        }
        Model::from_parts(resolved.network, resolved.weights, options.limits.clone(), description)
    }

    /// Builds a model from a network and deploy weights already in memory.
    pub fn from_parts(network: Network, weights: DeployWeights, limits: Limits, description: String) -> Result<Model> {
        Model::from_parts_quantized(network, weights, limits, description, None)
    }

    /// [`Model::from_parts`] with INT8 parameters (whose dequantized weights `weights` holds).
    pub(crate) fn from_parts_quantized(
        network: Network,
        weights: DeployWeights,
        limits: Limits,
        description: String,
        quant: Option<Quantization>,
    ) -> Result<Model> {
        if weights.layers.len() != network.layers.len() {
            return Err(Error::Option(format!(
                "{} layers of weights for a network of {} layers",
                weights.layers.len(),
                network.layers.len()
            )));
        }
        for (layer, params) in network.layers.iter().zip(&weights.layers) {
            let expected = layer.out_channels * layer.in_channels / layer.groups * 9;
            if params.conv.weight.len() != expected || params.conv.bias.len() != layer.out_channels {
                return Err(Error::Option(format!("weights of {} do not match the layer shape", layer.name())));
            }
        }
        let held = weights.bytes();
        if held > limits.max_weight_bytes {
            return Err(Error::Limit(format!(
                "the weights take {} MiB, over the limit of {} MiB of weights",
                held >> 20,
                limits.max_weight_bytes >> 20
            )));
        }
        let layers = network
            .layers
            .iter()
            .zip(&weights.layers)
            .map(|(layer, params)| {
                let mut bias = vec![0f32; channel_blocks(layer.out_channels) * CHANNEL_BLOCK];
                bias[..layer.out_channels].copy_from_slice(&params.conv.bias);
                LayerCache { bias, prepared: REGISTRY.iter().map(|_| OnceLock::new()).collect() }
            })
            .collect();
        let held_bytes = AtomicUsize::new(held);
        if let Some(q) = &quant {
            for (layer, int8) in network.layers.iter().zip(&q.layers) {
                let Some(int8) = int8 else { continue };
                let (k, per) = (layer.out_channels, layer.in_channels / layer.groups * 9);
                if int8.weight.len() != k * per || int8.weight_scale.len() != k {
                    return Err(Error::Option(format!(
                        "INT8 weights of {} do not match the layer shape",
                        layer.name()
                    )));
                }
            }
        }
        let classifier_bf16 = OnceLock::new();
        let inner = Inner { network, weights, limits, description, layers, held_bytes, quant, classifier_bf16 };
        Ok(Model { inner: Arc::new(inner) })
    }

    /// A model with deterministic synthetic weights (the embedded default of `repvgg bench`),
    /// refused before anything is generated if they would exceed the default
    /// [`Limits::max_weight_bytes`].
    pub fn synthetic(arch: ArchSpec, seed: u64) -> Result<Model> {
        let network = Network::new(arch);
        let limit = Limits::default().max_weight_bytes;
        let bytes = network.params().saturating_mul(4);
        if bytes > limit as u64 {
            return Err(Error::Limit(format!(
                "synthetic weights for {} take {} MiB ({} parameters), over the limit of {} MiB of weights",
                network.arch.name,
                bytes >> 20,
                network.params(),
                limit >> 20
            )));
        }
        let map =
            repvgg_graph::synthetic::checkpoint(&network, Convention::Official, repvgg_graph::BlockForm::Deploy, seed);
        let resolved = repvgg_graph::resolve(&map, Some(&network.arch))?;
        let description = format!("RepVGG-{} with synthetic weights (seed {seed})", network.arch.name);
        Model::from_parts(resolved.network, resolved.weights, Limits::default(), description)
    }

    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    pub fn weights(&self) -> &DeployWeights {
        &self.inner.weights
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// One line saying what was loaded.
    pub fn description(&self) -> &str {
        &self.inner.description
    }

    /// Runs the f64 reference executor (the oracle; slow). Logits beyond f32 are an
    /// error, as in [`Session::run`](crate::Session::run).
    pub fn run_reference(&self, input: &Tensor) -> Result<reference::Outputs> {
        self.limits().check_input(self.network(), input.shape())?;
        let outputs = reference::forward(self.network(), self.weights(), input)?;
        check_output("logits", outputs.logits.data(), outputs.logits.shape())?;
        Ok(outputs)
    }

    /// Bytes of a planned layer's weights as its executor reads them on every run
    /// (transformed and packed for Winograd, packed for direct, the deploy kernel for
    /// generic), preparing them if no plan has. At batch 1 a network's Winograd filters
    /// exceed the L3 cache, so this is the layer's DRAM stream per run.
    pub fn weight_bytes(&self, layer: &LayerPlan) -> Result<usize> {
        Ok(self.prepare(layer)?.bytes())
    }

    /// The model's INT8 parameters, if it is quantized.
    pub(crate) fn quant(&self) -> Option<&Quantization> {
        self.inner.quant.as_ref()
    }

    /// Padded bias of layer `index`.
    pub(crate) fn bias(&self, index: usize) -> &[f32] {
        &self.inner.layers[index].bias
    }

    /// A planned layer's weights packed by its executor: built on first use, after
    /// checking that they fit [`Limits::max_weight_bytes`] with everything already held,
    /// and shared.
    pub(crate) fn prepare(&self, lp: &LayerPlan) -> Result<Arc<dyn PackedWeights>> {
        let (key, executor) = lp.executor();
        let slot = &self.inner.layers[lp.index].prepared[key];
        if let Some(prepared) = slot.get() {
            return Ok(prepared.clone());
        }
        let shape = lp.shape(1);
        let floats = executor.packed_len(&shape);
        let (held, limit) = (self.inner.held_bytes.load(Ordering::Relaxed), self.limits().max_weight_bytes);
        if held.saturating_add(4 * floats) > limit {
            return Err(Error::Limit(format!(
                "packing {} for {} takes {} MiB, which with the {} MiB of weights held exceeds the limit of {} MiB",
                lp.name,
                lp.algo.name(),
                (4 * floats) >> 20,
                held >> 20,
                limit >> 20
            )));
        }
        let mut built = false;
        let prepared = slot
            .get_or_init(|| {
                built = true;
                let int8 = self.quant().and_then(|q| q.layers[lp.index].as_ref());
                let weights = LayerWeights { deploy: &self.weights().layers[lp.index].conv.weight, int8 };
                Arc::from(executor.pack(&shape, weights))
            })
            .clone();
        if built {
            self.inner.held_bytes.fetch_add(4 * floats, Ordering::Relaxed);
        }
        Ok(prepared)
    }

    /// The classifier's weights rounded to bf16 (half the bytes a BF16 or INT8 session streams per
    /// run): built on first use, after checking that they fit
    /// [`Limits::max_weight_bytes`] with everything already held, and shared.
    pub(crate) fn prepare_classifier_bf16(&self) -> Result<&[u16]> {
        if let Some(rounded) = self.inner.classifier_bf16.get() {
            return Ok(rounded);
        }
        let weight = &self.weights().linear_weight;
        let (held, limit) = (self.inner.held_bytes.load(Ordering::Relaxed), self.limits().max_weight_bytes);
        if held.saturating_add(2 * weight.len()) > limit {
            return Err(Error::Limit(format!(
                "the classifier's bf16 weights take {} MiB, which with the {} MiB of weights held exceeds the limit of {} MiB",
                (2 * weight.len()) >> 20,
                held >> 20,
                limit >> 20
            )));
        }
        let mut built = false;
        let rounded = self.inner.classifier_bf16.get_or_init(|| {
            built = true;
            weight.iter().map(|&w| crate::kernels::bf16::to_bf16(w)).collect()
        });
        if built {
            self.inner.held_bytes.fetch_add(2 * rounded.len(), Ordering::Relaxed);
        }
        Ok(rounded)
    }

    /// The classifier's bf16 weights, which the BF16 or INT8 session running them has prepared.
    pub(crate) fn classifier_bf16(&self) -> &[u16] {
        self.inner.classifier_bf16.get().expect("BF16 and INT8 sessions prepare the classifier")
    }

    /// A planned layer's weights, which the plan running it has prepared.
    pub(crate) fn prepared(&self, lp: &LayerPlan) -> Arc<dyn PackedWeights> {
        let key = lp.executor().0;
        self.inner.layers[lp.index].prepared[key].get().expect("plans prepare their weights").clone()
    }
}
