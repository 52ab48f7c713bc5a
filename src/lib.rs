//! repvgg-rs: a pure-Rust FP32 CPU inference runtime for RepVGG networks.
//!
//! This facade re-exports the public API of the workspace crates:
//!
//! - [`graph`]: architectures, layer shapes, parameter/MAC counts, weight naming,
//!   re-parameterization (Ding et al. 2021);
//! - [`runtime`]: safetensors loading, the reference executor and the fast executor;
//! - [`winograd`]: the Winograd F(m,3) transforms (Lavin & Gray 2016);
//! - [`simd`]: the per-instruction-set vector types and the run-time kernel choice;
//! - [`imagenet`]: image decoding, ImageNet preprocessing and class labels;
//! - [`files`]: bounded reads of regular files and atomic, identity-checked writes;
//! - `hub` (feature `hub`): `hf:NAME` weights from the Hugging Face hub and its cache.
//!
//! ```no_run
//! use repvgg::{Model, ModelOptions, SessionOptions, Tensor};
//! let model = Model::load("RepVGG-A0-deploy.safetensors".as_ref(), &ModelOptions::default())?;
//! let input = Tensor::zeros(vec![1, 3, 224, 224]);
//! let mut session = model.session(SessionOptions::default())?;
//! let logits = session.run(&input)?;
//! assert_eq!(logits.shape(), &[1, 1000]);
//! # Ok::<(), repvgg::Error>(())
//! ```

#[cfg(feature = "hub")]
pub mod hub;

pub use repvgg_files as files;
pub use repvgg_graph as graph;
pub use repvgg_imagenet as imagenet;
pub use repvgg_runtime as runtime;
pub use repvgg_simd as simd;
pub use repvgg_winograd as winograd;

pub use repvgg_graph::{ArchSpec, Network};
pub use repvgg_runtime::{
    Algo, AlgoChoice, Error, ErrorKind, Features, Isa, IsaChoice, Limits, Model, ModelOptions, Result, Session,
    SessionOptions, Tensor,
};
