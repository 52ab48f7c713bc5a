//! RepVGG network descriptions: architectures, layer shapes, parameter and MAC counts,
//! weight naming conventions, and structural re-parameterization of training-time
//! weights into the deploy form (Ding et al., "RepVGG: Making VGG-style ConvNets Great
//! Again", CVPR 2021).
//!
//! This crate does no heavy arithmetic and knows nothing about file formats: checkpoints
//! arrive through the [`TensorSource`] trait, which the runtime implements for
//! memory-mapped safetensors files.

pub mod arch;
pub mod error;
pub mod network;
pub mod synthetic;
pub mod weights;

pub use arch::ArchSpec;
pub use error::{Error, Result};
pub use network::{ConvLayer, Cost, LayerShape, Network};
pub use weights::{
    BatchNorm, BlockForm, ConvParams, Convention, DeployWeights, LayerParams, QaRepBlock, QaRepVariant, ResolveOptions,
    Resolved, Role, SeParams, TensorMap, TensorSource, TensorSpec, TrainingBlock, TrainingWeights, expected_tensors,
    fuse_block, fuse_qarep_block, infer_arch, resolve, resolve_training, resolve_with,
};
