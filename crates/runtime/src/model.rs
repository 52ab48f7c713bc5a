//! Loading a model: file -> names -> architecture -> deploy weights, and the per-layer
//! weights each algorithm needs (transformed and packed once, on first use).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use repvgg_graph::{ArchSpec, Convention, DeployWeights, Network};
use repvgg_winograd::PackedFilters;

use crate::error::{Error, Result};
use crate::exec::direct::{DirectWeights, InputLayout};
use crate::kernels::gemm::MR;
use crate::kernels::{CHANNEL_BLOCK, channel_blocks};
use crate::loader::SafetensorsFile;
use crate::plan::Algo;
use crate::reference;
use crate::tensor::Tensor;

/// Resource limits applied to every request before anything large is allocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input height or width.
    pub max_side: usize,
    /// Largest accepted batch.
    pub max_batch: usize,
    /// Largest accepted input tensor, in elements (`N * 3 * H * W`).
    pub max_input_elements: usize,
    /// Largest working memory (activations, transforms, scratch) a session may allocate
    /// for one request, in bytes.
    pub max_arena_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_side: 8192, max_batch: 1024, max_input_elements: 1 << 28, max_arena_bytes: 8 << 30 }
    }
}

impl Limits {
    /// Checks an input shape against the limits and the network's needs.
    pub fn check_input(&self, network: &Network, shape: &[usize]) -> Result<[usize; 4]> {
        let [n, c, h, w] = <[usize; 4]>::try_from(shape)
            .map_err(|_| Error::Input(format!("input has shape {shape:?}, expected [N, 3, H, W]")))?;
        if c != 3 {
            return Err(Error::Input(format!("input has shape {shape:?}, expected 3 channels in [N, 3, H, W]")));
        }
        if n == 0 {
            return Err(Error::Input(format!("input has shape {shape:?}: the batch is empty")));
        }
        if n > self.max_batch {
            return Err(Error::Limit(format!("batch {n} exceeds the limit of {}", self.max_batch)));
        }
        if h > self.max_side || w > self.max_side {
            return Err(Error::Limit(format!("input {h}x{w} exceeds the limit of {} pixels per side", self.max_side)));
        }
        let elements = [n, c, h, w].iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elements.is_none_or(|e| e > self.max_input_elements) {
            return Err(Error::Limit(format!(
                "input {shape:?} exceeds the limit of {} elements",
                self.max_input_elements
            )));
        }
        network.check_input_size(h, w, self.max_side)?;
        Ok([n, c, h, w])
    }
}

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// Architecture to check the weights against; inferred from the shapes if `None`.
    pub arch: Option<ArchSpec>,
    pub limits: Limits,
}

/// Weights of one layer prepared for one algorithm.
#[derive(Debug)]
pub enum Prepared {
    Winograd(PackedFilters),
    Direct(DirectWeights),
    /// The generic path reads the deploy kernel as is.
    Generic,
}

/// Per-layer data derived from the deploy weights.
#[derive(Debug)]
struct LayerCache {
    /// Bias padded to whole 16-channel blocks.
    bias: Vec<f32>,
    prepared: [OnceLock<Arc<Prepared>>; Algo::ALL.len()],
}

#[derive(Debug)]
struct Inner {
    network: Network,
    weights: DeployWeights,
    limits: Limits,
    description: String,
    layers: Vec<LayerCache>,
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
    /// Loads a safetensors checkpoint in any supported naming form and dtype.
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model> {
        Model::from_safetensors(&SafetensorsFile::open(path)?, options)
    }

    /// Like [`Model::load`], for a checkpoint already in memory; `name` stands for its path
    /// in messages.
    pub fn load_bytes(name: &str, bytes: Vec<u8>, options: &ModelOptions) -> Result<Model> {
        Model::from_safetensors(&SafetensorsFile::from_bytes(name, bytes)?, options)
    }

    /// Builds a model from a parsed safetensors file.
    pub fn from_safetensors(file: &SafetensorsFile, options: &ModelOptions) -> Result<Model> {
        let path = file.path();
        let resolved = repvgg_graph::resolve(file, options.arch.as_ref()).map_err(|e| match e {
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
        Model::from_parts(resolved.network, resolved.weights, options.limits.clone(), description)
    }

    /// Builds a model from a network and deploy weights already in memory.
    pub fn from_parts(network: Network, weights: DeployWeights, limits: Limits, description: String) -> Result<Model> {
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
        let layers = network
            .layers
            .iter()
            .zip(&weights.layers)
            .map(|(layer, params)| {
                let mut bias = vec![0f32; channel_blocks(layer.out_channels) * CHANNEL_BLOCK];
                bias[..layer.out_channels].copy_from_slice(&params.conv.bias);
                LayerCache { bias, prepared: Default::default() }
            })
            .collect();
        Ok(Model { inner: Arc::new(Inner { network, weights, limits, description, layers }) })
    }

    /// A model with deterministic synthetic weights (the embedded default of `repvgg bench`).
    pub fn synthetic(arch: ArchSpec, seed: u64) -> Result<Model> {
        let network = Network::new(arch);
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

    /// Runs the f64 reference executor (the oracle; slow).
    pub fn run_reference(&self, input: &Tensor) -> Result<reference::Outputs> {
        self.limits().check_input(self.network(), input.shape())?;
        reference::forward(self.network(), self.weights(), input)
    }

    /// Bytes of layer `index`'s weights as `algo` reads them on every run (transformed and
    /// packed for Winograd, packed for direct, the deploy kernel for generic). At batch 1
    /// a network's Winograd filters exceed the L3 cache, so this is the layer's DRAM
    /// stream per run.
    pub fn weight_bytes(&self, index: usize, algo: Algo) -> usize {
        match &*self.prepared(index, algo) {
            Prepared::Winograd(filters) => filters.bytes(),
            Prepared::Direct(weights) => weights.bytes(),
            Prepared::Generic => std::mem::size_of_val(self.weights().layers[index].conv.weight.as_slice()),
        }
    }

    /// Padded bias of layer `index`.
    pub(crate) fn bias(&self, index: usize) -> &[f32] {
        &self.inner.layers[index].bias
    }

    /// Layer `index`'s weights prepared for `algo`, built on first use and shared.
    pub(crate) fn prepared(&self, index: usize, algo: Algo) -> Arc<Prepared> {
        self.inner.layers[index].prepared[algo.index()]
            .get_or_init(|| {
                let layer = &self.network().layers[index];
                let weight = &self.weights().layers[index].conv.weight;
                let cg = layer.in_channels / layer.groups;
                Arc::new(match algo.variant() {
                    Some(v) => Prepared::Winograd(
                        PackedFilters::new(v, weight, layer.out_channels, cg, layer.groups, MR)
                            .expect("layer shapes were validated"),
                    ),
                    None if algo == Algo::Direct => {
                        let layout = InputLayout::for_layer(index);
                        Prepared::Direct(DirectWeights::new(layout, weight, layer.out_channels, cg, layer.groups))
                    }
                    None => Prepared::Generic,
                })
            })
            .clone()
    }
}
