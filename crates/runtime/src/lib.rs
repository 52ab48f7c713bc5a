//! RepVGG execution: safetensors loading, the f64 reference executor, and (with the
//! winograd crate) the fast executor behind the [`Model`] / [`Session`] API.

pub mod cpu;
pub mod error;
pub mod loader;
pub mod model;
pub mod reference;
pub mod tensor;

pub use error::{Error, ErrorKind, Result};
pub use model::{Limits, Model, ModelOptions};
pub use tensor::Tensor;
