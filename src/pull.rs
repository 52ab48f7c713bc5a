//! `repvgg pull` and `--weights hf:NAME`: pretrained weights from the Hugging Face hub,
//! kept in its shared cache (the protocol and the cache: crates/hub).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use repvgg::files::Output;
use repvgg::graph::ArchSpec;
use repvgg::runtime::Limits;
use repvgg_hub::{Hub, Pulled, RepoName, hub_name};

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

/// The hub as the environment configures it, downloads bounded by the loader's weight limit
/// (a larger file could not be loaded anyway).
fn hub() -> Result<Hub> {
    let limits =
        repvgg_hub::Limits { max_weights_bytes: Limits::default().max_weight_bytes as u64, ..Default::default() };
    Ok(Hub::from_env(limits)?)
}

fn pull_name(name: &RepoName) -> Result<Pulled> {
    let pulled = hub()?.pull(name)?;
    if let Some(reason) = &pulled.fallback_reason {
        eprintln!("warning: {reason}; using the cached {} at commit {}", pulled.repo, pulled.commit);
    }
    Ok(pulled)
}

/// Downloads (or finds in the cache) the weights and prints their path, or `--out`'s.
pub fn pull(args: &PullArgs) -> Result<()> {
    let name = RepoName::parse(&args.name)?;
    let out = args.out.as_deref().map(|p| Output::new(p, &[])).transpose()?;
    let pulled = pull_name(&name)?;
    let shown = match out {
        Some(out) => {
            let mut file = repvgg::files::open(&pulled.weights, "weights file", u64::MAX)?.0;
            out.write_with(|w| std::io::copy(&mut file, w).map(drop))?;
            out.path().to_owned()
        }
        None => pulled.weights.clone(),
    };
    crate::print(&format!("{}\n", shown.display()))
}

/// Replaces a `--weights hf:NAME` by the cached file, pulling it first if needed, and
/// fills an absent `--arch` with the architecture timm's config names when it is one of
/// ours (else the loader infers it from the tensor shapes). Returns the repository's name,
/// or `None` for a path, which is left as it is.
pub fn resolve(weights: &mut PathBuf, arch: &mut Option<String>) -> Result<Option<String>> {
    let Some(name) = weights.to_str().and_then(hub_name) else { return Ok(None) };
    let name = RepoName::parse(name)?;
    let pulled = pull_name(&name)?;
    if arch.is_none() {
        let named = pulled.config.as_ref().and_then(|c| c.architecture.as_deref());
        *arch = named.filter(|a| ArchSpec::builtin(a).is_ok()).map(str::to_owned);
    }
    *weights = pulled.weights;
    Ok(Some(name.repo.rsplit('/').next().unwrap_or(&name.repo).to_ascii_lowercase()))
}

/// [`resolve`] for an optional `--weights`.
pub fn resolve_opt(weights: &mut Option<PathBuf>, arch: &mut Option<String>) -> Result<Option<String>> {
    match weights {
        Some(w) => resolve(w, arch),
        None => Ok(None),
    }
}
