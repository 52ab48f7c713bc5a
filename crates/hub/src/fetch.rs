//! The hub's download protocol, as `huggingface_hub` speaks it: `HEAD
//! {endpoint}/{repo}/resolve/{revision}/{file}` without following redirects answers with the
//! commit (`X-Repo-Commit`), the etag (`X-Linked-Etag` for large files, which is their
//! sha256, else `ETag`), the size (`X-Linked-Size`, else `Content-Length`) and, for large
//! files, a redirect to where the bytes are; then one `GET` fetches them.

use std::io::{Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::cache::{RepoCache, is_commit};
use crate::{CONFIG_FILE, Error, Hub, Pulled, RepoName, Result, WEIGHTS_FILE, read_config};

/// What the hub says about one file.
struct Metadata {
    commit: String,
    etag: String,
    size: u64,
    /// Where the bytes are: the resolve URL itself, or the storage a large file redirects to.
    location: String,
}

/// Relative redirects followed when asking for metadata (a renamed repository answers with one).
const MAX_REDIRECTS: u32 = 5;

pub(crate) fn fetch(hub: &Hub, name: &RepoName, repo: &RepoCache) -> Result<Pulled> {
    let limits = &hub.limits;
    let head = ureq::AgentBuilder::new().redirects(0).timeout(limits.metadata_timeout).try_proxy_from_env(true).build();
    let get = ureq::AgentBuilder::new()
        .timeout_connect(limits.metadata_timeout)
        .timeout_read(limits.read_timeout)
        .try_proxy_from_env(true)
        .build();
    let url = |revision: &str, file: &str| format!("{}/{}/resolve/{revision}/{file}", hub.endpoint, name.repo);

    let weights_meta = metadata(&head, &hub.endpoint, &url(&name.revision, WEIGHTS_FILE)).map_err(|e| match e {
        Error::Network { url, message } => Error::Unreachable { url, message },
        other => other,
    })?;
    let commit = weights_meta.commit.clone();
    let weights = download(&get, repo, &name.repo, WEIGHTS_FILE, &weights_meta, limits.max_weights_bytes)?;
    // The config of the same commit, so that the two cannot come from different pushes.
    let config = match metadata(&head, &hub.endpoint, &url(&commit, CONFIG_FILE)) {
        Ok(meta) => {
            let path = download(&get, repo, &name.repo, CONFIG_FILE, &meta, limits.max_config_bytes)?;
            Some(read_config(&path, limits.max_config_bytes)?)
        }
        Err(Error::Status { status: 404, .. }) => None,
        Err(e) => return Err(e),
    };
    repo.set_ref(&name.revision, &commit)?;
    Ok(Pulled { repo: name.repo.clone(), commit, weights, config, from_cache: false, fallback_reason: None })
}

fn network(url: &str, message: impl ToString) -> Error {
    Error::Network { url: url.to_string(), message: message.to_string() }
}

fn call(request: ureq::Request, url: &str) -> Result<ureq::Response> {
    match request.call() {
        Ok(response) => Ok(response),
        Err(ureq::Error::Status(status, _)) => {
            let hint = match status {
                401 | 403 | 404 => " (no such repository or file; private and gated repositories are not supported)",
                _ => "",
            };
            Err(Error::Status { url: url.to_string(), status, hint })
        }
        Err(ureq::Error::Transport(t)) => {
            // ureq's message starts with the URL, which the error names already.
            let text = t.to_string();
            Err(network(url, text.strip_prefix(&format!("{url}: ")).unwrap_or(&text)))
        }
    }
}

fn metadata(agent: &ureq::Agent, endpoint: &str, url: &str) -> Result<Metadata> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let response = call(agent.head(&url).set("Accept-Encoding", "identity"), &url)?;
        let location = response.header("location").map(str::to_owned);
        if (300..400).contains(&response.status()) {
            match location {
                Some(relative) if relative.starts_with('/') => {
                    url = format!("{endpoint}{relative}");
                    continue;
                }
                Some(_) => {}
                None => return Err(protocol(&url, "a redirect without a Location")),
            }
        }
        let header = |names: &[&str]| names.iter().find_map(|n| response.header(n)).map(str::trim);
        let commit = header(&["x-repo-commit"]).ok_or_else(|| protocol(&url, "no X-Repo-Commit header"))?;
        if !is_commit(commit) {
            return Err(protocol(&url, format!("X-Repo-Commit `{commit}` is not a commit hash")));
        }
        let etag = header(&["x-linked-etag", "etag"]).ok_or_else(|| protocol(&url, "no ETag header"))?;
        let etag = etag.trim_start_matches("W/").trim_matches('"');
        // The etag names the blob file: only what a hash is made of.
        if etag.is_empty() || etag.len() > 128 || !etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(protocol(&url, format!("ETag `{etag}` is not a hash")));
        }
        let size = header(&["x-linked-size", "content-length"])
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol(&url, "no size (X-Linked-Size or Content-Length)"))?;
        let location = match (response.status(), location) {
            (300..400, Some(absolute)) => absolute,
            _ => url.clone(),
        };
        return Ok(Metadata { commit: commit.to_lowercase(), etag: etag.to_string(), size, location });
    }
    Err(protocol(&url, format!("more than {MAX_REDIRECTS} redirects")))
}

fn protocol(url: &str, message: impl ToString) -> Error {
    Error::Protocol { url: url.to_string(), message: message.to_string() }
}

/// The file's blob, downloaded and verified unless the cache has it, linked into the
/// commit's snapshot. A download that fails any check is removed, never left as a blob.
fn download(
    agent: &ureq::Agent,
    repo: &RepoCache,
    repo_name: &str,
    file: &'static str,
    meta: &Metadata,
    limit: u64,
) -> Result<PathBuf> {
    if meta.size > limit {
        return Err(Error::TooLarge { repo: repo_name.to_string(), file, size: meta.size, limit });
    }
    let blob = repo.blob(&meta.etag);
    if std::fs::metadata(&blob).is_ok_and(|m| m.is_file() && m.len() == meta.size) {
        return repo.link(&meta.etag, &meta.commit, file);
    }
    let corrupt = |message: String| Error::Corrupt { repo: repo_name.to_string(), file, message };
    let response = call(agent.get(&meta.location).set("Accept-Encoding", "identity"), &meta.location)?;
    let mut temp = repo.temp_blob()?;
    // One byte more than declared, to see a server that sends too much.
    let mut reader = response.into_reader().take(meta.size + 1);
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                let message = format!("the transfer stalled after {received} of {} bytes ({e})", meta.size);
                return Err(network(&meta.location, message));
            }
            Err(e) => return Err(network(&meta.location, format!("after {received} of {} bytes: {e}", meta.size))),
        };
        hasher.update(&buffer[..n]);
        received += n as u64;
        temp.write_all(&buffer[..n]).map_err(|source| Error::Cache { path: temp.path().to_owned(), source })?;
    }
    if received != meta.size {
        return Err(corrupt(format!("received {received} bytes, the hub declared {}", meta.size)));
    }
    // Large (LFS) files' etag is their sha256; a small file's is git's hash of the blob,
    // which the size check and the parse that follows stand in for.
    if meta.etag.len() == 64 {
        let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if !got.eq_ignore_ascii_case(&meta.etag) {
            return Err(corrupt(format!("sha256 {got}, the hub declared {}", meta.etag)));
        }
    }
    repo.commit_blob(temp, &meta.etag, &meta.commit, file)
}
