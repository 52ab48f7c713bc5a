//! Reading and writing files without surprises: the one way the runtime and the `repvgg`
//! CLI touch the file system.
//!
//! - [`open`] and [`read`] take regular files only. They open without blocking (a FIFO
//!   given as an input is refused at once instead of waiting for a writer), and check the
//!   size against a bound for the kind of file before reading a byte, so `/dev/zero` or a
//!   mistyped path to a disk image cannot exhaust memory.
//! - [`Output`] writes a file so that a failure never leaves a half-written target: the
//!   content goes to a temporary file in the target's directory (on Linux an unnamed
//!   `O_TMPFILE`, which disappears with the process even on `SIGKILL`) and replaces the
//!   target only when complete and synced. An output that is the same file as an input
//!   of the command (same device and inode, through links) is refused before anything
//!   is read. A FIFO or character device is written in place, never replaced by a
//!   regular file; directories, block devices and sockets are refused. Symlinks are
//!   followed; an existing file keeps its permissions (and owner, when run as root), a new
//!   one gets mode 0666 under the umask; a file the user may not write is refused.

mod error;
mod read;
mod write;

pub use error::{Error, Result};
pub use read::{open, read};
pub use write::Output;
