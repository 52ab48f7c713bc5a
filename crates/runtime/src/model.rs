//! Loading a model: file -> names -> architecture -> deploy weights.

use std::path::Path;

use repvgg_graph::{ArchSpec, Convention, DeployWeights, Network};

use crate::error::{Error, Result};
use crate::loader::SafetensorsFile;
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_side: 8192, max_batch: 1024, max_input_elements: 1 << 28 }
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

/// A loaded, re-parameterized RepVGG model. Immutable, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Model {
    network: Network,
    weights: DeployWeights,
    limits: Limits,
    description: String,
}

impl Model {
    /// Loads a safetensors checkpoint in any supported naming form and dtype.
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model> {
        let file = SafetensorsFile::open(path)?;
        let resolved = repvgg_graph::resolve(&file, options.arch.as_ref()).map_err(|e| match e {
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
        Ok(Model { network, weights, limits, description })
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
        &self.network
    }

    pub fn weights(&self) -> &DeployWeights {
        &self.weights
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// One line saying what was loaded.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Runs the f64 reference executor (the oracle; slow).
    pub fn run_reference(&self, input: &Tensor) -> Result<reference::Outputs> {
        self.limits.check_input(&self.network, input.shape())?;
        reference::forward(&self.network, &self.weights, input)
    }
}
