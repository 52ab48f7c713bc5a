//! Hub names: `hf:` in front of a repository, or a short name for timm's RepVGG repositories.

use crate::{Error, Result};

/// The variants timm publishes, each as `timm/repvgg_{variant}.rvgg_in1k`.
const TIMM_VARIANTS: [&str; 11] = ["a0", "a1", "a2", "b0", "b1", "b1g4", "b2", "b2g4", "b3", "b3g4", "d2se"];

/// The hub name in a `--weights` argument: the text after `hf:`, or `None` for a path.
/// The prefix is what tells them apart, so that a file that happens to be called `a0` is
/// still a file (a file literally named `hf:x` is `./hf:x`).
pub fn hub_name(arg: &str) -> Option<&str> {
    arg.strip_prefix("hf:")
}

/// A repository and the revision to resolve (`main` unless `@revision` is given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoName {
    /// `owner/name`.
    pub repo: String,
    pub revision: String,
}

impl RepoName {
    /// Parses `owner/repo[@revision]`, a timm repository name without its owner
    /// (`repvgg_a0.rvgg_in1k`), or a short variant name (`a0`, `A0`, `repvgg_a0`, `RepVGG-A0`),
    /// with or without a leading `hf:`.
    pub fn parse(text: &str) -> Result<RepoName> {
        let text = hub_name(text).unwrap_or(text).trim();
        let (name, revision) = match text.split_once('@') {
            Some((n, r)) => (n, r),
            None => (text, "main"),
        };
        let bad = |why: &str| {
            Error::Name(format!(
                "`{text}` is not a hub name: {why} (use `owner/repo[@revision]` or a timm RepVGG variant: {})",
                TIMM_VARIANTS.join(" ")
            ))
        };
        if revision.is_empty() || !revision.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(bad("the revision must be a branch, tag or commit of letters, digits, `.`, `_`, `-`"));
        }
        let repo = if let Some((owner, repo)) = name.split_once('/') {
            for part in [owner, repo] {
                if !valid_part(part) {
                    return Err(bad("owner and repository are letters, digits, `.`, `_` and `-`"));
                }
            }
            format!("{owner}/{repo}")
        } else {
            let lower = name.to_ascii_lowercase();
            let short = lower.strip_prefix("repvgg-").or_else(|| lower.strip_prefix("repvgg_")).unwrap_or(&lower);
            if TIMM_VARIANTS.contains(&short) {
                format!("timm/repvgg_{short}.rvgg_in1k")
            } else if name.starts_with("repvgg_") && valid_part(name) {
                format!("timm/{name}")
            } else {
                return Err(bad("unknown short name"));
            }
        };
        Ok(RepoName { repo, revision: revision.to_string() })
    }

    /// The cache folder's name, as `huggingface_hub` spells it.
    pub fn folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// One part of a repository id: no separators, no `..`, nothing a URL or a path would read.
fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= 96
        && !part.starts_with('.')
        && !part.contains("..")
        && !part.contains("--")
        && part.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_map_to_timm_repositories() {
        for text in ["a0", "A0", "repvgg_a0", "RepVGG-A0", "hf:a0", "repvgg_a0.rvgg_in1k", "timm/repvgg_a0.rvgg_in1k"] {
            let name = RepoName::parse(text).unwrap();
            assert_eq!(name.repo, "timm/repvgg_a0.rvgg_in1k", "{text}");
            assert_eq!(name.revision, "main");
        }
        assert_eq!(RepoName::parse("B1g4").unwrap().repo, "timm/repvgg_b1g4.rvgg_in1k");
        assert_eq!(RepoName::parse("d2se").unwrap().repo, "timm/repvgg_d2se.rvgg_in1k");
        let pinned = RepoName::parse("hf:me/my-repvgg@v1.0").unwrap();
        assert_eq!((pinned.repo.as_str(), pinned.revision.as_str()), ("me/my-repvgg", "v1.0"));
        assert_eq!(pinned.folder(), "models--me--my-repvgg");
    }

    /// Nothing that could climb out of the cache or into another URL is a name.
    #[test]
    fn bad_names_are_refused() {
        for text in ["", "q7", "a/b/c", "../x/y", "me/..", "me/x@", "me/x@a/b", "me/a b", "me--x/y", "/abs/path"] {
            assert!(RepoName::parse(text).is_err(), "{text}");
        }
        assert_eq!(hub_name("hf:a0"), Some("a0"));
        assert_eq!(hub_name("a0"), None);
        assert_eq!(hub_name("./hf:a0"), None);
    }
}
