//! Pretrained RepVGG weights from the Hugging Face hub, in the hub's own cache.
//!
//! `repvgg pull NAME` and every `--weights hf:NAME` go through [`Hub::pull`]: it asks the
//! hub (`HF_ENDPOINT`, default `https://huggingface.co`) for a repository's
//! `model.safetensors` and `config.json`, checks the declared size against a limit before
//! downloading, verifies the bytes against the size and sha256 the hub declared, and stores
//! them in the layout `huggingface_hub` (Python) uses, so both share one copy:
//!
//! ```text
//! $HF_HUB_CACHE (default $HF_HOME/hub, default ~/.cache/huggingface/hub)
//!   models--timm--repvgg_a0.rvgg_in1k/
//!     blobs/<sha256 or git etag>            the bytes, named by the hub's etag
//!     refs/main                             the commit `main` pointed at
//!     snapshots/<commit>/model.safetensors  -> ../../blobs/<etag>
//! ```
//!
//! Offline (`HF_HUB_OFFLINE=1`, or the hub unreachable) the cached snapshot of the ref is
//! used; a name that is not cached is then [`Error::NotCached`].
//!
//! The HTTP client is `ureq` 2 directly rather than the `hf-hub` crate: `hf-hub`'s blocking
//! API (0.4) sets no timeouts on its agent (a stalled server hangs the caller), neither
//! bounds nor verifies what it downloads (no size limit, no sha256 check), and unwraps
//! server-controlled values (a status code, a `Location` header). `ureq` 2 has a per-read
//! timeout, which bounds a stall without bounding a slow but moving download (ureq 3's
//! body timeout is for the whole body).

mod cache;
mod fetch;
mod name;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use name::{RepoName, hub_name};

/// Files a RepVGG repository holds: the weights, and timm's pretrained config (optional).
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";

/// The hub's public endpoint, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Errors of a pull. Each names the repository or file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name that is neither a known short name nor `owner/repo[@revision]`.
    #[error("{0}")]
    Name(String),
    /// Offline (or the hub unreachable) and the file is not in the cache.
    #[error("{repo}: {file} is not in the cache {cache} and {why}")]
    NotCached { repo: String, file: &'static str, cache: PathBuf, why: String },
    /// The hub could not be asked about the repository (no connection, no answer in time):
    /// the one failure after which the cache is used instead, as `huggingface_hub` does.
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    /// A transfer failed or stalled after the hub had answered.
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    /// The hub answered with an error status (404: no such repository or file).
    #[error("{url}: the hub answered {status}{hint}")]
    Status { url: String, status: u16, hint: &'static str },
    /// The hub's answer lacks what the protocol promises (a commit, an etag, a size).
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
    /// The declared size is over the limit: refused before downloading.
    #[error("{repo}/{file} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { repo: String, file: &'static str, size: u64, limit: u64 },
    /// The bytes received are not those the hub declared (size or sha256): nothing is cached.
    #[error("{repo}/{file}: {message}; the download was discarded")]
    Corrupt { repo: String, file: &'static str, message: String },
    /// The cache directory could not be read or written.
    #[error("cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
    /// `config.json` is not the JSON object timm writes.
    #[error("{path}: not a timm config: {message}")]
    Config { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Bounds on what a pull may download and how long it may wait.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest weights file accepted, checked against the hub's declared size before any
    /// byte is downloaded and enforced while reading (the CLI passes the loader's
    /// `max_weight_bytes`, since a larger file could not be loaded anyway).
    pub max_weights_bytes: u64,
    /// Largest `config.json` (timm's are about 1 KB).
    pub max_config_bytes: u64,
    /// Connecting, and waiting for the answer to the metadata request
    /// (`HF_HUB_ETAG_TIMEOUT`, default 10 s as in `huggingface_hub`).
    pub metadata_timeout: Duration,
    /// Longest wait for any read of a download; a stalled transfer fails after it, a slow
    /// one that keeps moving does not (`HF_HUB_DOWNLOAD_TIMEOUT`, default 10 s).
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_weights_bytes: 8 << 30,
            max_config_bytes: 1 << 20,
            metadata_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
        }
    }
}

/// Where to fetch from and cache into, and whether the network may be used.
#[derive(Clone, Debug)]
pub struct Hub {
    pub endpoint: String,
    pub cache: PathBuf,
    pub offline: bool,
    pub limits: Limits,
}

/// What a pull produced: local paths inside the cache's snapshot of the resolved commit.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub repo: String,
    pub commit: String,
    pub weights: PathBuf,
    /// timm's config, when the repository has one.
    pub config: Option<Config>,
    /// True when the network was not used (offline, or the hub unreachable).
    pub from_cache: bool,
    /// Why the cache was used although online (the hub's error), for a warning.
    pub fallback_reason: Option<String>,
}

/// The parts of timm's `config.json` the runtime uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    /// timm's model name, e.g. `repvgg_a0`: our architecture names accept it.
    pub architecture: Option<String>,
    pub num_classes: Option<u64>,
    /// `pretrained_cfg.mean` / `std`: the normalization the weights were trained with.
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

impl Hub {
    /// The hub and cache the environment names, as `huggingface_hub` reads them:
    /// `HF_ENDPOINT`, `HF_HUB_CACHE` / `HF_HOME` / `XDG_CACHE_HOME` / `HOME`,
    /// `HF_HUB_OFFLINE`, `HF_HUB_ETAG_TIMEOUT`, `HF_HUB_DOWNLOAD_TIMEOUT`.
    pub fn from_env(limits: Limits) -> Result<Hub> {
        Self::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()), limits)
    }

    /// [`Hub::from_env`] over any variable source (tests pass a map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, mut limits: Limits) -> Result<Hub> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let endpoint = set("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string();
        let cache = if let Some(dir) = set("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = set("HF_HOME") {
            Path::new(&home).join("hub")
        } else if let Some(xdg) = set("XDG_CACHE_HOME") {
            Path::new(&xdg).join("huggingface").join("hub")
        } else if let Some(home) = set("HOME") {
            Path::new(&home).join(".cache").join("huggingface").join("hub")
        } else {
            return Err(Error::Name("no cache directory: set HF_HOME (or HOME)".into()));
        };
        let offline = set("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        for (name, slot) in [
            ("HF_HUB_ETAG_TIMEOUT", &mut limits.metadata_timeout),
            ("HF_HUB_DOWNLOAD_TIMEOUT", &mut limits.read_timeout),
        ] {
            if let Some(text) = set(name) {
                let secs: f64 = text
                    .trim()
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| Error::Name(format!("{name}=`{text}` is not a positive number of seconds")))?;
                *slot = Duration::from_secs_f64(secs.min(86_400.0));
            }
        }
        Ok(Hub { endpoint, cache, offline, limits })
    }

    /// The weights (and config) of `name`, downloaded if the cache lacks the commit its
    /// revision points at now, or from the cache when offline or the hub is unreachable.
    pub fn pull(&self, name: &RepoName) -> Result<Pulled> {
        let repo = cache::RepoCache::new(&self.cache, name, self.limits.max_config_bytes);
        if self.offline {
            return repo.cached(name, "HF_HUB_OFFLINE is set", None);
        }
        match fetch::fetch(self, name, &repo) {
            Err(Error::Unreachable { url, message }) => {
                let why = format!("the hub is unreachable ({url}: {message})");
                repo.cached(name, &why, Some(why.clone()))
            }
            other => other,
        }
    }
}

/// Reads timm's `config.json` (bounded by `limit`).
pub fn read_config(path: &Path, limit: u64) -> Result<Config> {
    let bad = |message: String| Error::Config { path: path.to_owned(), message };
    let len = std::fs::metadata(path).map_err(|source| Error::Cache { path: path.to_owned(), source })?.len();
    if len > limit {
        return Err(bad(format!("{len} bytes, over the limit of {limit}")));
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Cache { path: path.to_owned(), source })?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let object = json.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    let triple = |key: &str| -> Result<Option<[f32; 3]>> {
        let Some(value) = object.get("pretrained_cfg").and_then(|p| p.get(key)) else { return Ok(None) };
        let numbers: Option<Vec<f32>> =
            value.as_array().and_then(|a| a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect());
        match numbers.as_deref() {
            Some(&[a, b, c]) => Ok(Some([a, b, c])),
            _ => Err(bad(format!("pretrained_cfg.{key} is not three numbers"))),
        }
    };
    Ok(Config {
        path: path.to_owned(),
        architecture: object.get("architecture").and_then(|a| a.as_str()).map(str::to_owned),
        num_classes: object.get("num_classes").and_then(|n| n.as_u64()),
        mean: triple("mean")?,
        std: triple("std")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn hub(vars: &[(&str, &str)]) -> Result<Hub> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Hub::from_vars(|k| map.get(k).cloned(), Limits::default())
    }

    /// The cache directory is found where `huggingface_hub` looks, in its order.
    #[test]
    fn cache_and_endpoint_follow_huggingface_hub() {
        let h = hub(&[("HOME", "/h")]).unwrap();
        assert_eq!(h.cache, Path::new("/h/.cache/huggingface/hub"));
        assert_eq!(h.endpoint, DEFAULT_ENDPOINT);
        assert!(!h.offline);
        let h = hub(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x"), ("HF_ENDPOINT", "http://127.0.0.1:9/")]).unwrap();
        assert_eq!(h.cache, Path::new("/x/huggingface/hub"));
        assert_eq!(h.endpoint, "http://127.0.0.1:9");
        let h = hub(&[("HOME", "/h"), ("HF_HOME", "/hf"), ("HF_HUB_OFFLINE", "1")]).unwrap();
        assert_eq!(h.cache, Path::new("/hf/hub"));
        assert!(h.offline);
        let h = hub(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c"), ("HF_HUB_DOWNLOAD_TIMEOUT", "0.5")]).unwrap();
        assert_eq!(h.cache, Path::new("/c"));
        assert_eq!(h.limits.read_timeout, Duration::from_millis(500));
        assert!(hub(&[("HOME", "/h"), ("HF_HUB_ETAG_TIMEOUT", "soon")]).is_err());
        assert!(hub(&[]).is_err());
    }

    #[test]
    fn timm_config_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"architecture": "repvgg_a0", "num_classes": 1000, "pretrained_cfg":
                {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}}"#,
        )
        .unwrap();
        let config = read_config(&path, 1 << 20).unwrap();
        assert_eq!(config.architecture.as_deref(), Some("repvgg_a0"));
        assert_eq!(config.num_classes, Some(1000));
        assert_eq!(config.mean, Some([0.485, 0.456, 0.406]));
        assert!(read_config(&path, 10).is_err());
        std::fs::write(&path, r#"{"pretrained_cfg": {"mean": [0.5]}}"#).unwrap();
        assert!(read_config(&path, 1 << 20).is_err());
    }
}
