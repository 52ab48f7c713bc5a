//! The graph crate's single error type.

/// Everything that can go wrong while describing a network or resolving its weights.
///
/// Messages are one line and name the offending item (file, tensor, expected vs found),
/// because they end up verbatim in front of a user of the `repvgg` CLI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--arch` named neither a built-in variant nor a readable architecture file.
    #[error("unknown architecture `{name}` (built-in: {known}; or give a path to a .toml architecture file)")]
    UnknownArch { name: String, known: String },

    /// An architecture file could not be read (missing, not a regular file, too large).
    #[error(transparent)]
    ArchFile(#[from] repvgg_files::Error),

    /// An architecture description is syntactically or semantically invalid.
    #[error("invalid architecture {origin}: {reason}")]
    InvalidArch { origin: String, reason: String },

    /// An input size the network cannot process or that exceeds a configured limit.
    #[error("invalid input size: {0}")]
    InvalidInputSize(String),

    /// A tensor the network needs is absent.
    #[error("missing tensor `{name}`{hint}")]
    MissingTensor { name: String, hint: String },

    /// A tensor is present with a shape that does not fit the architecture.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}{context}")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize>, context: String },

    /// The tensor names follow no known convention, or mix conventions, or the
    /// architecture cannot be inferred from them.
    #[error("cannot interpret weights: {0}")]
    BadWeights(String),

    /// A weight tensor holds NaN or infinity.
    #[error("tensor `{name}` contains a non-finite value ({value}) at flat index {index}")]
    NonFinite { name: String, index: usize, value: f32 },

    /// A BatchNorm `running_var` holds a negative value.
    #[error("tensor `{name}` holds a negative BatchNorm variance ({value}) at flat index {index}; variances are >= 0")]
    NegativeVariance { name: String, index: usize, value: f32 },

    /// Fusing a training-time block's finite branches overflowed f32.
    #[error(
        "fusing the branches of {layer} gives a {tensor} value of {value} at flat index {index}, beyond f32 \
         (BatchNorm scale gamma / sqrt(var + eps) too large)"
    )]
    FusedNonFinite { layer: String, tensor: &'static str, index: usize, value: f32 },

    /// The tensor source failed to produce data (dtype, I/O); the message comes from the source.
    #[error("{0}")]
    Source(String),
}

/// Result alias for the graph crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
