//! Bounded reads of regular files.

use std::fs::{File, FileType, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Opens a regular file for reading and returns it with its size.
///
/// `what` names the file in messages (`"weights file"`); `limit` is the largest size
/// accepted, in bytes. A FIFO, device, directory or socket is refused without blocking
/// and without reading from it.
pub fn open(path: &Path, what: &'static str, limit: u64) -> Result<(File, u64)> {
    let io = |source| Error::Io { what, path: path.to_path_buf(), source };
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Opening a FIFO for reading blocks until a writer appears, unless non-blocking.
        options.custom_flags(libc::O_NONBLOCK);
    }
    #[cfg(not(unix))]
    {
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(Error::NotRegular { what, path: path.to_path_buf(), found: describe(&meta.file_type()) });
        }
    }
    let file = options.open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(Error::NotRegular { what, path: path.to_path_buf(), found: describe(&meta.file_type()) });
    }
    #[cfg(unix)]
    set_blocking(&file).map_err(io)?;
    let size = meta.len();
    if size > limit {
        return Err(Error::TooLarge { what, path: path.to_path_buf(), size, limit });
    }
    Ok((file, size))
}

/// Reads a whole regular file of at most `limit` bytes (see [`open`]).
pub fn read(path: &Path, what: &'static str, limit: u64) -> Result<Vec<u8>> {
    let (file, size) = open(path, what, limit)?;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // A file that grows while it is read is still held to the bound.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge { what, path: path.to_path_buf(), size: bytes.len() as u64, limit });
    }
    Ok(bytes)
}

/// Clears `O_NONBLOCK` again: for regular files it changes nothing today, but the file is
/// handed to code (mmap, readers) that expects ordinary blocking semantics.
#[cfg(unix)]
pub(crate) fn set_blocking(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open descriptor owned by `file` for the duration of both calls;
    // F_GETFL and F_SETFL only read and set its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// "a FIFO", "a directory", ... for messages.
pub(crate) fn describe(kind: &FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"twelve bytes").unwrap();
        assert_eq!(read(&path, "test file", 12).unwrap(), b"twelve bytes");
        let err = read(&path, "test file", 11).unwrap_err();
        assert!(err.is_limit());
        assert_eq!(err.to_string(), format!("test file {} is 12 bytes, over the limit of 11 bytes", path.display()));
    }

    #[test]
    fn a_missing_file_names_what_it_was_for() {
        let err = read(Path::new("/nonexistent/w.safetensors"), "weights file", 1 << 20).unwrap_err();
        assert!(matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
        assert!(err.to_string().starts_with("weights file /nonexistent/w.safetensors: "), "{err}");
    }

    #[test]
    fn directories_and_devices_are_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path(), "image", 1 << 20).unwrap_err();
        assert!(matches!(err, Error::NotRegular { found: "a directory", .. }), "{err}");
        #[cfg(unix)]
        {
            // /dev/zero would otherwise be read until memory runs out.
            let err = read(Path::new("/dev/zero"), "image", u64::MAX).unwrap_err();
            assert_eq!(err.to_string(), "image /dev/zero is a character device, not a regular file");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = open(&fifo, "architecture file", 1 << 20).unwrap_err();
        assert!(matches!(err, Error::NotRegular { found: "a FIFO", .. }), "{err}");
    }
}
