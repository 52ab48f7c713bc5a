//! The `huggingface_hub` cache layout: blobs named by etag, refs naming commits,
//! snapshots of symlinks into the blobs.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{CONFIG_FILE, Error, Pulled, RepoName, Result, WEIGHTS_FILE, read_config};

/// One repository's folder in the cache.
pub(crate) struct RepoCache {
    pub root: PathBuf,
    /// The whole cache, named in errors.
    cache: PathBuf,
    repo: String,
    config_limit: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Cache { path: path.to_owned(), source }
}

/// A revision that is itself a commit: it needs no ref.
pub(crate) fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

impl RepoCache {
    pub fn new(cache: &Path, name: &RepoName, config_limit: u64) -> RepoCache {
        RepoCache { root: cache.join(name.folder()), cache: cache.to_owned(), repo: name.repo.clone(), config_limit }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub fn snapshot(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join("snapshots").join(commit).join(file)
    }

    /// The pull as the cache has it for `name`'s revision, without the network; `why` says
    /// why the network is not used, for the error when the cache lacks it.
    pub fn cached(&self, name: &RepoName, why: &str, fallback_reason: Option<String>) -> Result<Pulled> {
        let missing =
            |file| Error::NotCached { repo: self.repo.clone(), file, cache: self.cache.clone(), why: why.to_string() };
        let commit = if is_commit(&name.revision) {
            name.revision.clone()
        } else {
            let path = self.root.join("refs").join(&name.revision);
            match std::fs::read_to_string(&path) {
                Ok(text) if is_commit(text.trim()) => text.trim().to_string(),
                Ok(_) => return Err(missing(WEIGHTS_FILE)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(WEIGHTS_FILE)),
                Err(e) => return Err(io(&path)(e)),
            }
        };
        let weights = self.snapshot(&commit, WEIGHTS_FILE);
        // `exists` follows the symlink: a snapshot entry whose blob is gone is not cached.
        if !weights.exists() {
            return Err(missing(WEIGHTS_FILE));
        }
        let config_path = self.snapshot(&commit, CONFIG_FILE);
        let config = if config_path.exists() { Some(read_config(&config_path, self.config_limit)?) } else { None };
        Ok(Pulled { repo: self.repo.clone(), commit, weights, config, from_cache: true, fallback_reason })
    }

    /// A temporary file among the blobs, removed unless [`RepoCache::commit_blob`] keeps it.
    pub fn temp_blob(&self) -> Result<tempfile::NamedTempFile> {
        let blobs = self.root.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        tempfile::Builder::new().prefix(".incomplete-").tempfile_in(&blobs).map_err(io(&blobs))
    }

    /// Moves a verified download to its blob and links the snapshot entry to it.
    pub fn commit_blob(&self, temp: tempfile::NamedTempFile, etag: &str, commit: &str, file: &str) -> Result<PathBuf> {
        let blob = self.blob(etag);
        temp.as_file().sync_all().map_err(io(&blob))?;
        temp.persist(&blob).map_err(|e| io(&blob)(e.error))?;
        self.link(etag, commit, file)
    }

    /// `snapshots/COMMIT/FILE -> ../../blobs/ETAG`, relative as `huggingface_hub` makes it so
    /// that the cache can be moved; replaced if it points elsewhere.
    pub fn link(&self, etag: &str, commit: &str, file: &str) -> Result<PathBuf> {
        let entry = self.snapshot(commit, file);
        let dir = entry.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let target = Path::new("../../blobs").join(etag);
        if std::fs::read_link(&entry).is_ok_and(|t| t == target) {
            return Ok(entry);
        }
        let _ = std::fs::remove_file(&entry);
        #[cfg(unix)]
        if let Err(e) = std::os::unix::fs::symlink(&target, &entry) {
            // Another pull of the same file may have linked it between the two calls.
            if !std::fs::read_link(&entry).is_ok_and(|t| t == target) {
                return Err(io(&entry)(e));
            }
        }
        // Elsewhere a copy, as `huggingface_hub` falls back to where symlinks are not allowed.
        #[cfg(not(unix))]
        std::fs::copy(self.blob(etag), &entry).map_err(io(&entry))?;
        Ok(entry)
    }

    /// `refs/REVISION` holds the commit the revision resolved to (not for a commit itself).
    pub fn set_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if is_commit(revision) {
            return Ok(());
        }
        let refs = self.root.join("refs");
        std::fs::create_dir_all(&refs).map_err(io(&refs))?;
        let path = refs.join(revision);
        let mut temp = tempfile::NamedTempFile::new_in(&refs).map_err(io(&refs))?;
        temp.write_all(commit.as_bytes()).map_err(io(&path))?;
        temp.persist(&path).map_err(|e| io(&path)(e.error))?;
        Ok(())
    }
}
