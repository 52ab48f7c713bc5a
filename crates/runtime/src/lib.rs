//! Fast CPU inference for RepVGG networks (FP32, INT8, BF16), in pure Rust: load a
//! checkpoint into a [`Model`], run batches through a [`Session`].
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
//!
//! - [`Model`] is a loaded network: a safetensors checkpoint in the official or timm
//!   naming, deploy or training form (fused on load), F32, F16 or BF16, its architecture
//!   inferred or checked ([`ModelOptions`]). It refuses what exceeds its [`Limits`]. Cheap
//!   to clone and `Send + Sync`: share one between threads.
//! - [`Session`] is one user's thread team, plans and working memory ([`SessionOptions`]:
//!   threads, [`AlgoChoice`], kernel set [`IsaChoice`] / [`Isa`], or a caller's rayon
//!   pool). [`Session::run`] gives logits, [`Session::run_slice`] works on borrowed
//!   memory, [`Session::run_rows`] fails bad images of a merged batch alone,
//!   [`Session::features`] adds the stage outputs ([`Features`]), [`Session::profile`]
//!   times each layer ([`Profile`]). After the first run at a size, a run allocates
//!   nothing but its result, and its results are bitwise the same for any thread count.
//! - [`Tensor`]: a shape and `f32` data, `NCHW`.
//! - [`Plan`] and [`LayerPlan`], read-only: each layer's algorithm ([`Algo`]: direct,
//!   Winograd F(2,3), F(4,3), F(6,3), generic) and [`Precision`], as [`Session::plan`]
//!   shows them.
//! - [`Error`] and its [`ErrorKind`]; [`check_finite`], the input check every run makes,
//!   for a server's admission.
//!
//! Modules: [`loader`] reads and writes safetensors files (input tensors, deploy
//! weights), [`reference`](mod@reference) is the f64 reference executor the tests trust, [`error`]
//! classifies errors, and [`lab`] holds instruments for benchmarks (not a stable API).

mod buffers;
mod cpu;
pub mod error;
mod exec;
mod kernels;
pub mod lab;
mod limits;
pub mod loader;
mod model;
mod plan;
pub mod pth;
mod quant;
pub mod reference;
mod session;
mod team;
mod tensor;

pub use cpu::check_build_features;

pub use error::{Error, ErrorKind, Result};
pub use kernels::bf16::Bf16Set;
pub use kernels::int8::Int8Set;
pub use limits::{Limits, check_finite};
pub use model::{Model, ModelOptions};
pub use plan::{Algo, AlgoChoice, LayerPlan, Plan, Precision};
pub use quant::{
    Calibration, DEFAULT_AUTO_THRESHOLD, Int8Layer, KeepFp32, LayerReport, QuantInfo, QuantReport, QuantizeOptions,
};
pub use repvgg_simd::{Isa, IsaChoice};
pub use session::{DEFAULT_SPIN, Features, MAX_CACHED_PLANS, Profile, Session, SessionOptions, worker_count};
pub use tensor::Tensor;
