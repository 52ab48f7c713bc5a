//! Exit codes of the `repvgg` CLI, one per error kind (documented in the README).

use std::process::ExitCode;

use repvgg::runtime::ErrorKind;
use repvgg::runtime::error::graph_error_kind;

/// Exit code of an error kind. 1 is reserved for unexpected failures, 2 for usage errors
/// (clap uses 2 for bad arguments too).
pub fn code(kind: ErrorKind) -> ExitCode {
    ExitCode::from(match kind {
        ErrorKind::Usage => 2,
        ErrorKind::Io => 3,
        ErrorKind::Format => 4,
        ErrorKind::Model => 5,
        ErrorKind::Input => 6,
        ErrorKind::Limit => 7,
        ErrorKind::Cpu => 8,
    })
}

/// Exit code of any error reaching `main`: the kind of the first library error in its chain.
pub fn for_error(error: &anyhow::Error) -> ExitCode {
    error
        .chain()
        .find_map(|cause| {
            cause
                .downcast_ref::<repvgg::Error>()
                .map(repvgg::Error::kind)
                .or_else(|| cause.downcast_ref::<repvgg::graph::Error>().map(graph_error_kind))
        })
        .map_or(ExitCode::from(1), code)
}

/// True if the error is a write to a closed pipe.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}
