//! RepVGG execution: safetensors loading, the f64 reference executor, and the fast
//! executor (Winograd F(m,3) and direct convolution over a channel-blocked layout,
//! parallel on a spin-waiting fork-join team) behind the [`Model`] / [`Session`] API.
//!
//! Layout, from the bottom up: [`kernels`] (the per-instruction-set hot code), [`exec`]
//! (layer executors and their schedules), [`team`] and [`buffers`] (the thread team and
//! what its workers share), [`plan`] (per-layer algorithm and buffer sizes), [`model`]
//! (loaded weights, packed per algorithm on first use), [`session`] (team, plans and
//! arena of one user), beside [`loader`], [`reference`] and [`cpu`].
//!
//! ```no_run
//! use repvgg_runtime::{Model, ModelOptions, SessionOptions, Tensor};
//!
//! let model = Model::load("RepVGG-A0-deploy.safetensors".as_ref(), &ModelOptions::default())?;
//! let mut session = model.session(SessionOptions { threads: 2, ..Default::default() })?;
//! let logits = session.run(&Tensor::zeros(vec![1, 3, 224, 224]))?;
//! assert_eq!(logits.shape(), &[1, 1000]);
//! # Ok::<(), repvgg_runtime::Error>(())
//! ```

pub mod buffers;
pub mod cpu;
pub mod error;
pub(crate) mod exec;
pub mod kernels;
pub mod lab;
pub mod limits;
pub mod loader;
pub mod model;
pub mod plan;
pub mod reference;
pub mod session;
pub mod team;
pub mod tensor;

pub use error::{Error, ErrorKind, Result};
pub use limits::{Limits, check_finite};
pub use model::{Model, ModelOptions};
pub use plan::{Algo, AlgoChoice, LayerPlan, Plan, Precision};
pub use repvgg_simd::{Isa, IsaChoice};
pub use session::{DEFAULT_SPIN, Features, MAX_CACHED_PLANS, Profile, Session, SessionOptions};
pub use tensor::Tensor;
