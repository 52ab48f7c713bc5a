//! The files crate's single error type.

use std::path::PathBuf;

/// Why a file could not be read or written. Every message is one line that starts with
/// what the file is for (`weights file`, `output`, ...) and its path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused an open, read, write or rename.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },

    /// An input is not a regular file (a FIFO, a device, a directory, ...).
    #[error("{what} {path} is {found}, not a regular file")]
    NotRegular { what: &'static str, path: PathBuf, found: &'static str },

    /// An input is larger than the bound for its kind; nothing was read.
    #[error("{what} {path} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { what: &'static str, path: PathBuf, size: u64, limit: u64 },

    /// An output resolves to the same file as one of the command's inputs.
    #[error("output {output} is the same file as the input {input}; refusing to overwrite an input")]
    SameFile { output: PathBuf, input: PathBuf },

    /// An output cannot be written safely (read-only, a directory, a FIFO nobody reads, ...).
    #[error("{what} {path}: {reason}")]
    Refused { what: &'static str, path: PathBuf, reason: String },
}

impl Error {
    /// True when the error is a size bound rather than a missing or unusable file.
    pub fn is_limit(&self) -> bool {
        matches!(self, Error::TooLarge { .. })
    }

    /// True when the error is a refused combination of arguments rather than a file problem.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::SameFile { .. })
    }
}

/// Result alias for the files crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
