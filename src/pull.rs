//! `repvgg pull` and `--weights hf:NAME`: pretrained weights from the Hugging Face hub,
//! kept in its shared cache (the protocol and the cache: crates/hub; the resolution the
//! Python package shares: src/hub.rs).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use repvgg::files::Output;
use repvgg::hub::{Pulled, RepoName};

/// `repvgg pull` flags.
#[derive(Args)]
pub struct PullArgs {
    /// A timm RepVGG variant (`a0`, `repvgg_b1g4`, ...) or `owner/repo[@revision]`, with or
    /// without `hf:`.
    name: String,
    /// Also copy the weights to this file (the cached copy stays where it is).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Says on stderr when the cache stood in for an unreachable hub.
fn warn_fallback(pulled: &Pulled) {
    if let Some(reason) = &pulled.fallback_reason {
        eprintln!("warning: {reason}; using the cached {} at commit {}", pulled.repo, pulled.commit);
    }
}

/// Downloads (or finds in the cache) the weights and prints their path, or `--out`'s.
pub fn pull(args: &PullArgs) -> Result<()> {
    let name = RepoName::parse(&args.name)?;
    let out = args.out.as_deref().map(|p| Output::new(p, &[])).transpose()?;
    let pulled = repvgg::hub::from_env()?.pull(&name)?;
    warn_fallback(&pulled);
    let shown = match out {
        Some(out) => {
            let mut file = repvgg::files::open(&pulled.weights, "weights file", u64::MAX)?.0;
            out.write_with(|w| std::io::copy(&mut file, w).map(drop))?;
            out.path().to_owned()
        }
        None => pulled.weights,
    };
    crate::print(&format!("{}\n", shown.display()))
}

/// Replaces a `--weights hf:NAME` by the cached file, pulling it first if needed, and
/// fills an absent `--arch` with the architecture timm's config names when it is one of
/// ours. Returns the repository's name (without its owner), or `None` for a path, which is
/// left as it is.
pub fn resolve(weights: &mut PathBuf, arch: &mut Option<String>) -> Result<Option<String>> {
    let Some(pulled) = weights.to_str().map(repvgg::hub::resolve).transpose()?.flatten() else { return Ok(None) };
    warn_fallback(&pulled);
    if arch.is_none() {
        *arch = repvgg::hub::config_arch(&pulled);
    }
    *weights = pulled.weights;
    Ok(Some(pulled.repo.rsplit('/').next().unwrap_or(&pulled.repo).to_ascii_lowercase()))
}

/// [`resolve`] for an optional `--weights`.
pub fn resolve_opt(weights: &mut Option<PathBuf>, arch: &mut Option<String>) -> Result<Option<String>> {
    match weights {
        Some(w) => resolve(w, arch),
        None => Ok(None),
    }
}
