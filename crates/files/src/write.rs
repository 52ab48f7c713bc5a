//! Atomic, identity-checked writes.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::read::describe;

const WHAT: &str = "output";

/// Symlink hops followed before giving up (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// A checked destination for one output file.
///
/// [`Output::new`] does every check that can be done before the command reads its
/// inputs; [`Output::write`] then writes atomically. See the crate docs for the rules.
#[derive(Debug)]
pub struct Output {
    /// The path as the user gave it, for messages.
    shown: PathBuf,
    /// The path after following symlinks: the file that is replaced or written.
    target: PathBuf,
    how: How,
}

#[derive(Debug)]
enum How {
    /// Write a temporary file beside the target and rename it over the target.
    Replace { existing: Option<Metadata> },
    /// A FIFO or character device: write into it, never replace the node.
    InPlace,
}

impl Output {
    /// Checks that `path` can receive a new file and is none of `inputs`.
    ///
    /// Call it before reading the inputs, so that a refused output costs nothing. Inputs
    /// that do not exist are skipped: reading them fails later with its own message.
    pub fn new(path: &Path, inputs: &[&Path]) -> Result<Output> {
        let refused = |reason: String| Error::Refused { what: WHAT, path: path.to_path_buf(), reason };
        let io = |source| Error::Io { what: WHAT, path: path.to_path_buf(), source };
        let target = follow_links(path).map_err(io)?;
        let how = match std::fs::metadata(&target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => How::Replace { existing: None },
            Err(e) => return Err(io(e)),
            Ok(meta) => {
                for input in inputs {
                    if let Ok(other) = std::fs::metadata(input)
                        && same_file(&meta, &other)
                    {
                        return Err(Error::SameFile { output: path.to_path_buf(), input: input.to_path_buf() });
                    }
                }
                let kind = meta.file_type();
                if meta.is_file() {
                    if !may_write(&target) {
                        return Err(refused(format!(
                            "the file is not writable{}; refusing to replace it",
                            mode_note(&meta)
                        )));
                    }
                    How::Replace { existing: Some(meta) }
                } else if is_fifo_or_char_device(&kind) {
                    How::InPlace
                } else {
                    return Err(refused(format!("it is {}; give the path of a file", describe(&kind))));
                }
            }
        };
        if let How::Replace { .. } = how {
            let dir = directory_of(&target);
            match std::fs::metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(refused(format!("{} is not a directory", dir.display()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(refused(format!("the directory {} does not exist", dir.display())));
                }
                Err(e) => return Err(io(e)),
            }
            if !may_write(&dir) {
                return Err(refused(format!("cannot create files in the directory {}", dir.display())));
            }
        }
        Ok(Output { shown: path.to_path_buf(), target, how })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.shown
    }

    /// Writes `bytes` as the whole new content.
    pub fn write(&self, bytes: &[u8]) -> Result<()> {
        self.write_with(|w| w.write_all(bytes))
    }

    /// Streams the new content through `fill`; the target changes only if `fill` and every
    /// step after it succeed. A replaced file is synced before the rename.
    pub fn write_with(&self, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
        let io = |source| Error::Io { what: WHAT, path: self.shown.clone(), source };
        match &self.how {
            How::InPlace => {
                let file = open_in_place(&self.target).map_err(|e| match e.raw_os_error() {
                    #[cfg(unix)]
                    Some(libc::ENXIO) => Error::Refused {
                        what: WHAT,
                        path: self.shown.clone(),
                        reason: "it is a FIFO that no process is reading".into(),
                    },
                    _ => io(e),
                })?;
                let mut writer = BufWriter::new(file);
                fill(&mut writer).and_then(|()| writer.flush()).map_err(io)
            }
            How::Replace { existing } => {
                let dir = directory_of(&self.target);
                let mut temp = Temp::create(&dir, &self.target).map_err(io)?;
                if let Some(meta) = existing {
                    keep_owner_and_mode(&temp.file, meta).map_err(io)?;
                }
                {
                    let mut writer = BufWriter::new(&temp.file);
                    fill(&mut writer).and_then(|()| writer.flush()).map_err(io)?;
                }
                temp.file.sync_all().map_err(io)?;
                // The node may have changed since `new`: never rename over a FIFO or device.
                if let Ok(meta) = std::fs::symlink_metadata(&self.target)
                    && !meta.is_file()
                {
                    return Err(Error::Refused {
                        what: WHAT,
                        path: self.shown.clone(),
                        reason: format!("it became {} while it was being written", describe(&meta.file_type())),
                    });
                }
                temp.persist(&dir, &self.target).map_err(io)?;
                // Make the rename itself durable; a failure here does not undo the write.
                if let Ok(d) = File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
        }
    }
}

/// Follows symlinks to the final path, which need not exist (a dangling link names the
/// file to create).
fn follow_links(path: &Path) -> io::Result<PathBuf> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&current)?;
                current = if link.is_absolute() { link } else { directory_of(&current).join(link) };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!("more than {MAX_LINKS} levels of symbolic links")))
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(unix)]
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &Metadata, _: &Metadata) -> bool {
    false
}

#[cfg(unix)]
fn is_fifo_or_char_device(kind: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    kind.is_fifo() || kind.is_char_device()
}

#[cfg(not(unix))]
fn is_fifo_or_char_device(_: &std::fs::FileType) -> bool {
    false
}

/// Whether this process may write `path`, as the kernel decides (root may write a
/// read-only file, as `cp` run as root would).
#[cfg(unix)]
fn may_write(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a NUL-terminated path that outlives the call; access only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

#[cfg(not(unix))]
fn may_write(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.permissions().readonly())
}

#[cfg(unix)]
fn mode_note(meta: &Metadata) -> String {
    use std::os::unix::fs::PermissionsExt;
    format!(" (mode {:04o})", meta.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn mode_note(_: &Metadata) -> String {
    " (read-only)".into()
}

fn open_in_place(target: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO nobody reads fails with ENXIO instead of blocking.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(target)?;
    #[cfg(unix)]
    crate::read::set_blocking(&file)?;
    Ok(file)
}

/// Gives the new file the replaced file's permission bits and, when run as root, its owner.
#[cfg(unix)]
fn keep_owner_and_mode(file: &File, meta: &Metadata) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777))
}

#[cfg(not(unix))]
fn keep_owner_and_mode(file: &File, meta: &Metadata) -> io::Result<()> {
    file.set_permissions(meta.permissions())
}

/// Distinguishes the temporary names of one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file in the target's directory, removed unless persisted.
struct Temp {
    file: File,
    /// The name it has in the directory, if any (an `O_TMPFILE` has none until linked).
    name: Option<PathBuf>,
}

impl Temp {
    fn create(dir: &Path, target: &Path) -> io::Result<Temp> {
        #[cfg(target_os = "linux")]
        if Path::new("/proc/self/fd").is_dir()
            && let Some(file) = unnamed(dir)?
        {
            return Ok(Temp { file, name: None });
        }
        Temp::named(dir, target)
    }

    /// A temporary file with a name: where `O_TMPFILE` is missing (not Linux, no /proc,
    /// a file system without it). Unlike an unnamed one it survives a `SIGKILL`.
    fn named(dir: &Path, target: &Path) -> io::Result<Temp> {
        for _ in 0..100 {
            let name = temp_name(dir, target);
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o666);
            }
            match options.open(&name) {
                Ok(file) => return Ok(Temp { file, name: Some(name) }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("no free temporary file name in {}", dir.display())))
    }

    /// Gives the content the target's name, atomically replacing what was there.
    fn persist(&mut self, dir: &Path, target: &Path) -> io::Result<()> {
        if self.name.is_none() {
            #[cfg(target_os = "linux")]
            {
                self.name = Some(link_unnamed(&self.file, dir, target)?);
            }
            #[cfg(not(target_os = "linux"))]
            unreachable!("unnamed temporary files exist only on Linux ({})", dir.display());
        }
        std::fs::rename(self.name.as_ref().expect("named above"), target)?;
        self.name = None;
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let _ = std::fs::remove_file(name);
        }
    }
}

fn temp_name(dir: &Path, target: &Path) -> PathBuf {
    let base = target.file_name().map_or_else(|| "output".into(), |n| n.to_string_lossy().into_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{base}.{}-{n}.tmp", std::process::id()))
}

/// An unnamed file in `dir`, or `None` where the file system does not support them.
#[cfg(target_os = "linux")]
fn unnamed(dir: &Path) -> io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new().write(true).mode(0o666).custom_flags(libc::O_TMPFILE).open(dir) {
        Ok(file) => Ok(Some(file)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Links an `O_TMPFILE` into `dir` under a fresh temporary name and returns the name.
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, dir: &Path, target: &Path) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    for _ in 0..100 {
        let name = temp_name(dir, target);
        let to = std::ffi::CString::new(name.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
        // SAFETY: both paths are NUL-terminated and outlive the call; linkat only reads
        // them. AT_SYMLINK_FOLLOW resolves the /proc link to the open file itself.
        let rc = unsafe {
            libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW)
        };
        if rc == 0 {
            return Ok(name);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    Err(io::Error::other(format!("no free temporary file name in {}", dir.display())))
}

#[cfg(all(test, unix))]
mod tests;
