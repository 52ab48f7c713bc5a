//! `hf:NAME` weights from the Hugging Face hub (feature `hub`): the CLI and the Python
//! package resolve a hub name here, so both read the same cache the same way.

use repvgg_graph::ArchSpec;
pub use repvgg_hub::{Config, Error, Hub, Pulled, RepoName, hub_name};
use repvgg_runtime::{ErrorKind, Limits};

/// The hub and cache the environment names, downloads bounded by the loader's weight limit
/// (a larger file could not be loaded anyway).
pub fn from_env() -> Result<Hub, Error> {
    let limits =
        repvgg_hub::Limits { max_weights_bytes: Limits::default().max_weight_bytes as u64, ..Default::default() };
    Hub::from_env(limits)
}

/// For a weights argument that is a hub name (`hf:NAME`), the pulled (or cached) weights;
/// `None` for a path, which is left to the loader.
pub fn resolve(arg: &str) -> Result<Option<Pulled>, Error> {
    let Some(name) = hub_name(arg) else { return Ok(None) };
    Ok(Some(from_env()?.pull(&RepoName::parse(name)?)?))
}

/// The architecture timm's config names, when it is one of ours (`repvgg_a0`); else the
/// loader infers it from the tensor shapes.
pub fn config_arch(pulled: &Pulled) -> Option<String> {
    let named = pulled.config.as_ref()?.architecture.as_deref()?;
    ArchSpec::builtin(named).is_ok().then(|| named.to_string())
}

/// The kind (the CLI's exit code, the Python exception) of a pull's error: a file the hub
/// or the cache cannot give is missing (`Io`), one that arrives wrong is malformed
/// (`Format`), one over the size limit a `Limit`, a name that is none a `Usage` error.
pub fn error_kind(error: &Error) -> ErrorKind {
    match error {
        Error::Name(_) => ErrorKind::Usage,
        Error::NotCached { .. }
        | Error::Unreachable { .. }
        | Error::Network { .. }
        | Error::Status { .. }
        | Error::Cache { .. } => ErrorKind::Io,
        Error::Protocol { .. } | Error::Corrupt { .. } | Error::Config { .. } => ErrorKind::Format,
        Error::TooLarge { .. } => ErrorKind::Limit,
    }
}
