//! Exit codes of the `repvgg` CLI, one per error kind (table: docs/hardening.md).

use std::process::ExitCode;

use repvgg::runtime::ErrorKind;
use repvgg::runtime::error::{file_error_kind, graph_error_kind};

/// Exit status of an error kind: [`ErrorKind::code`]. 1 is reserved for unexpected
/// failures, 2 for usage errors (clap uses 2 for bad arguments too). The table in
/// docs/hardening.md lists these; a test keeps the two in step.
pub fn code(kind: ErrorKind) -> ExitCode {
    ExitCode::from(kind.code())
}

/// clap's message for a bad command line, on one line: its first paragraph, which says
/// what is wrong and, for missing arguments, lists them on the lines that follow, then
/// its tips in parentheses (`a similar subcommand exists: 'bench'`), which are the
/// answer to a typo and would be lost with the usage paragraphs around them.
pub fn usage_line(rendered: &str) -> String {
    let mut paragraphs: Vec<Vec<&str>> = Vec::new();
    let mut fresh = true;
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() {
            fresh = true;
        } else if fresh {
            paragraphs.push(vec![line]);
            fresh = false;
        } else if let Some(last) = paragraphs.last_mut() {
            last.push(line);
        }
    }
    let Some((first, rest)) = paragraphs.split_first() else { return "error: invalid arguments".to_string() };
    let mut line = first.join(" ");
    for tip in rest.iter().flatten().filter(|l| l.starts_with("tip:")) {
        line.push_str(&format!(" ({tip})"));
    }
    line
}

/// The error and its causes on one line, each cause once: library errors already quote
/// their source (`path: No such file ...`), and printing the chain as well would repeat it.
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
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
                .or_else(|| cause.downcast_ref::<repvgg::files::Error>().map(file_error_kind))
                .or_else(|| cause.downcast_ref::<repvgg_serve::Error>().and_then(repvgg_serve::Error::kind))
                .or_else(|| cause.downcast_ref::<repvgg_hub::Error>().map(repvgg::hub::error_kind))
        })
        .map_or(ExitCode::from(1), code)
}

/// True if the error is a write to a closed pipe.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exit-code table in docs/hardening.md names the same code for every kind.
    #[test]
    fn documented_table_matches_the_codes() {
        let doc = include_str!("../docs/hardening.md");
        let table = doc.split("## Errors and exit codes").nth(1).expect("docs/hardening.md has the exit-code table");
        let rows = [
            (ErrorKind::Usage, "usage"),
            (ErrorKind::Io, "missing/unreadable file"),
            (ErrorKind::Format, "malformed file"),
            (ErrorKind::Model, "weights do not fit"),
            (ErrorKind::Input, "bad input"),
            (ErrorKind::Limit, "resource limit"),
            (ErrorKind::Cpu, "unsupported CPU"),
            (ErrorKind::Arch, "invalid architecture"),
            (ErrorKind::Numeric, "non-finite result"),
        ];
        for (kind, label) in rows {
            let row = format!("| {} | {label} |", kind.code());
            assert!(table.contains(&row), "docs/hardening.md lacks `{row}`");
        }
    }

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let file = repvgg::files::Error::Io { what: "weights file", path: "w.safetensors".into(), source: io };
        let e = anyhow::Error::from(repvgg::Error::from(file));
        assert_eq!(one_line(&e), "weights file w.safetensors: No such file");
        let wrapped = e.context("loading failed");
        assert_eq!(one_line(&wrapped), "loading failed: weights file w.safetensors: No such file");
    }

    #[test]
    fn a_missing_argument_is_named_on_the_one_line() {
        let rendered = "error: the following required arguments were not provided:\n  --weights <WEIGHTS>\n\n\
                        Usage: repvgg infer --weights <WEIGHTS>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_line(rendered),
            "error: the following required arguments were not provided: --weights <WEIGHTS>"
        );
        assert_eq!(
            usage_line("error: unexpected argument '--x' found\n\n  tip: ...\n\nUsage: repvgg\n"),
            "error: unexpected argument '--x' found (tip: ...)"
        );
        assert_eq!(usage_line("\n\n"), "error: invalid arguments");
    }
}
