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

    /// A file could not be opened, mapped, read or written, is not a regular file, or is
    /// over its size bound; or an output would overwrite an input.
    #[error(transparent)]
    File(#[from] repvgg_files::Error),

    /// Reading standard input or writing standard output failed.
    #[error("{stream}: {source}")]
    Stream { stream: &'static str, source: std::io::Error },

    /// A file is not a well-formed safetensors file (truncated, corrupt, lying header).
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format { path: PathBuf, reason: String },

    /// A file is not a well-formed PyTorch zip checkpoint, or holds more than a state dict
    /// needs (a global other than the tensor-rebuilding ones, an unknown pickle opcode).
    #[error("{path}: not a valid PyTorch checkpoint: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    /// A weights file that is neither safetensors nor a PyTorch zip checkpoint.
    #[error("{path}: not a safetensors file or a PyTorch zip checkpoint ({detail})")]
    Unrecognized { path: PathBuf, detail: String },

    /// A tensor's dtype is not one we convert (F32, F16, BF16, F64).
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, expected F32, F16, BF16 or F64")]
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

    /// Finite weights and input produced a non-finite output: some value overflowed f32.
    #[error("{0}")]
    NonFiniteOutput(String),
}

/// Coarse classes of [`Error`], stable across releases, used for CLI exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Missing, unreadable or unwritable file, or standard input/output.
    Io,
    /// Malformed file contents.
    Format,
    /// Weights that do not fit the architecture, or fuse to non-finite values.
    Model,
    /// An unknown architecture name or an invalid architecture file.
    Arch,
    /// Bad input tensor or image.
    Input,
    /// Resource limit.
    Limit,
    /// Unsupported CPU.
    Cpu,
    /// Invalid option or combination of arguments.
    Usage,
    /// A non-finite result from finite weights and input.
    Numeric,
}

impl ErrorKind {
    /// The kind's stable number: the `repvgg` CLI's exit code and the C ABI's status (table:
    /// docs/hardening.md). 0 is success, 1 an unexpected failure (no kind).
    pub fn code(self) -> u8 {
        match self {
            ErrorKind::Usage => 2,
            ErrorKind::Io => 3,
            ErrorKind::Format => 4,
            ErrorKind::Model => 5,
            ErrorKind::Input => 6,
            ErrorKind::Limit => 7,
            ErrorKind::Cpu => 8,
            ErrorKind::Arch => 9,
            ErrorKind::Numeric => 10,
        }
    }
}

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::File(f) => file_error_kind(f),
            Error::Stream { .. } => ErrorKind::Io,
            Error::NonFiniteOutput(_) => ErrorKind::Numeric,
            Error::Format { .. } | Error::Checkpoint { .. } | Error::Unrecognized { .. } => ErrorKind::Format,
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
        G::ArchFile(f) => file_error_kind(f),
        G::InvalidInputSize(_) => ErrorKind::Input,
        G::UnknownArch { .. } | G::InvalidArch { .. } => ErrorKind::Arch,
        G::MissingTensor { .. }
        | G::ShapeMismatch { .. }
        | G::BadWeights(_)
        | G::NonFinite { .. }
        | G::NegativeVariance { .. }
        | G::FusedNonFinite { .. }
        | G::Source(_) => ErrorKind::Model,
    }
}

/// The [`ErrorKind`] of a files-crate error: a size bound is a limit, an output that is
/// an input is a usage error, the rest are I/O.
pub fn file_error_kind(error: &repvgg_files::Error) -> ErrorKind {
    if error.is_limit() {
        ErrorKind::Limit
    } else if error.is_usage() {
        ErrorKind::Usage
    } else {
        ErrorKind::Io
    }
}

/// Result alias for the runtime crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
