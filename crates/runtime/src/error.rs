//! The runtime crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or running it.
///
/// Every message is one line naming the file, tensor or limit involved; [`Error::kind`]
/// groups them for exit codes and for callers that want to branch on the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Architecture, naming, shape or fusion problems (from the graph crate).
    #[error(transparent)]
    Graph(#[from] repvgg_graph::Error),

    /// A file could not be opened, mapped, read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A file is not a well-formed safetensors file (truncated, corrupt, lying header).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },

    /// A tensor's dtype is not one we convert (F32, F16, BF16).
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, expected F32, F16 or BF16")]
    Dtype { path: PathBuf, tensor: String, dtype: String },

    /// An input tensor or image the model cannot take.
    #[error("bad input: {0}")]
    Input(String),

    /// A request exceeds a configured resource limit; refused before allocating.
    #[error("limit exceeded: {0}")]
    Limit(String),

    /// The CPU lacks an instruction-set feature: one a forced kernel set needs
    /// (`SessionOptions::isa`, `REPVGG_ISA`), or one this binary was compiled to assume.
    #[error("{0}")]
    Cpu(String),

    /// An invalid option value (thread count, algorithm name, ...).
    #[error("invalid option: {0}")]
    Option(String),
}

/// Coarse classes of [`Error`], stable across releases, used for CLI exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Missing or unreadable file.
    Io,
    /// Malformed file contents.
    Format,
    /// Weights that do not fit the architecture, or an unknown architecture.
    Model,
    /// Bad input tensor or image.
    Input,
    /// Resource limit.
    Limit,
    /// Unsupported CPU.
    Cpu,
    /// Invalid option.
    Usage,
}

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Format { .. } => ErrorKind::Format,
            Error::Dtype { .. } => ErrorKind::Model,
            Error::Input(_) => ErrorKind::Input,
            Error::Limit(_) => ErrorKind::Limit,
            Error::Cpu(_) => ErrorKind::Cpu,
            Error::Option(_) => ErrorKind::Usage,
            Error::Graph(g) => graph_error_kind(g),
        }
    }
}

impl From<repvgg_simd::Error> for Error {
    fn from(error: repvgg_simd::Error) -> Error {
        match error {
            repvgg_simd::Error::Unknown { .. } => Error::Option(error.to_string()),
            repvgg_simd::Error::Unsupported { .. } => Error::Cpu(error.to_string()),
        }
    }
}

/// The [`ErrorKind`] of a graph-crate error.
pub fn graph_error_kind(error: &repvgg_graph::Error) -> ErrorKind {
    use repvgg_graph::Error as G;
    match error {
        G::ArchIo { .. } => ErrorKind::Io,
        G::InvalidInputSize(_) => ErrorKind::Input,
        G::UnknownArch { .. }
        | G::InvalidArch { .. }
        | G::MissingTensor { .. }
        | G::ShapeMismatch { .. }
        | G::BadWeights(_)
        | G::NonFinite { .. }
        | G::Source(_) => ErrorKind::Model,
    }
}

/// Result alias for the runtime crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
