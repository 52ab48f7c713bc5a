//! `repvgg classify`: top-k classes for files and folders of images, streamed in batches.
//!
//! Memory is bounded by a few batches whatever the number of files (the old one-batch run
//! grew with the file count and refused more than 1024 files), and a file that cannot be
//! read or decoded is reported and skipped: one bad file in a folder of thousands should
//! not cost the rest their results. The run still exits non-zero at the end, with the count.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::Result;
use clap::Args;
use rayon::prelude::*;
use repvgg::runtime::Tensor;

use crate::{RunArgs, stdout_error, weights_or_synthetic};

/// `repvgg classify` flags.
#[derive(Args)]
pub struct ClassifyArgs {
    /// Weights (.safetensors or .pth, or `hf:NAME` from the hub), any supported naming form.
    #[arg(long, required_unless_present = "synthetic")]
    pub(crate) weights: Option<PathBuf>,
    /// Classify with deterministic synthetic weights of --arch (default A0): for timing
    /// the pipeline; the classes mean nothing.
    #[arg(long, conflicts_with = "weights")]
    synthetic: bool,
    /// Architecture (built-in name or .toml path): checked against --weights, or the one
    /// --synthetic builds.
    #[arg(long)]
    pub(crate) arch: Option<String>,
    #[command(flatten)]
    run: RunArgs,
    /// Images per batch; memory holds a few batches, whatever the number of files.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Classes printed per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Class names, one per line; as many lines as the model has classes. Without it an
    /// ImageNet-1k model gets the ImageNet names and any other model class indices.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// One JSON object per image and line: {"path", "top_k": [{"index", "label", "score"}]}.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// CSV with a header: path,rank,index,label,score (one row per image and rank).
    #[arg(long)]
    csv: bool,
    /// Image files and folders (searched recursively for .jpg, .jpeg and .png, in sorted order).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Text,
    Json,
    Csv,
}

/// True for the extensions a folder search picks up, in any case.
fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpg", "jpeg", "png"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The files to classify: files named on the command line as given (whatever their
/// extension: the user chose them), folders searched recursively for images, each
/// folder's images in sorted path order so that runs are repeatable. Folders that cannot
/// be listed are reported and counted as failures.
pub(crate) fn collect(paths: &[PathBuf], failures: &mut usize, report: &dyn Fn(&str)) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, failures: &mut usize, report: &dyn Fn(&str)) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                report(&format!("error: folder {}: {e}", dir.display()));
                *failures += 1;
                return;
            }
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        children.sort();
        for child in children {
            // Follows symbolic links to folders; `metadata` fails on a dangling one, skipped.
            match std::fs::metadata(&child) {
                Ok(m) if m.is_dir() => walk(&child, out, failures, report),
                Ok(m) if m.is_file() && is_image(&child) => out.push(child),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut out, failures, report);
        } else {
            // Missing or unreadable files fail when read, with the reader's message.
            out.push(path.clone());
        }
    }
    out
}

/// Reads one label per line; the count must match the model's classes, since a shifted
/// or truncated list would silently misname every result.
fn read_labels(path: &Path, classes: usize) -> Result<Vec<String>> {
    let bytes = repvgg::files::read(path, "labels file", 64 << 20)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| repvgg::Error::Option(format!("--labels {}: not UTF-8 text", path.display())))?;
    let labels: Vec<String> = text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect();
    if labels.len() != classes {
        return Err(repvgg::Error::Option(format!(
            "--labels {} has {} lines; the model has {classes} classes (one label per line)",
            path.display(),
            labels.len()
        ))
        .into());
    }
    Ok(labels)
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

/// One batch's files and, per file, its preprocessed image or the reason it has none.
type Decoded = (Vec<PathBuf>, Vec<Result<Vec<f32>, String>>);

/// Reads and preprocesses one batch, its files in parallel on the global rayon pool.
fn decode(paths: &[PathBuf]) -> Vec<Result<Vec<f32>, String>> {
    paths
        .par_iter()
        .map(|path| {
            let bytes = repvgg::files::read(path, "image", repvgg::imagenet::MAX_IMAGE_FILE_BYTES)
                .map_err(|e| e.to_string())?;
            repvgg::imagenet::preprocess(&bytes, &format!("image {}", path.display())).map_err(|e| e.to_string())
        })
        .collect()
}

pub fn classify(args: &ClassifyArgs) -> Result<()> {
    let options = args.run.options(false)?;
    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else {
        Format::Text
    };
    let model = weights_or_synthetic(args.weights.as_deref(), args.arch.as_deref())?;
    let max_batch = model.limits().max_batch;
    if args.batch == 0 || args.batch > max_batch {
        return Err(repvgg::Error::Option(format!("--batch must be from 1 to {max_batch}")).into());
    }
    if args.top_k == 0 {
        return Err(repvgg::Error::Option("--top-k must be at least 1".into()).into());
    }
    let classes = model.network().num_classes;
    let labels: Option<Vec<String>> = match &args.labels {
        Some(path) => Some(read_labels(path, classes)?),
        None => {
            let imagenet = repvgg::imagenet::labels();
            (imagenet.len() == classes).then(|| imagenet.into_iter().map(String::from).collect())
        }
    };
    let k = args.top_k.min(classes);

    let progress = std::io::stderr().is_terminal().then(indicatif::ProgressBar::hidden);
    // Messages go above the bar, when there is one, instead of through it.
    let report = |line: &str| match &progress {
        Some(bar) => bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    };
    let mut folder_failures = 0usize;
    let files = collect(&args.paths, &mut folder_failures, &report);
    let mut failures = folder_failures;
    if files.is_empty() {
        return Err(
            repvgg::Error::Input("no images found (folders are searched for .jpg, .jpeg and .png)".into()).into()
        );
    }
    if let Some(bar) = &progress {
        bar.set_length(files.len() as u64);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
    let mut session = model.session(options)?;
    let mut out = std::io::stdout().lock();
    if format == Format::Csv {
        writeln!(out, "path,rank,index,label,score").map_err(stdout_error)?;
    }
    let chunks: Vec<Vec<PathBuf>> = files.chunks(args.batch).map(<[PathBuf]>::to_vec).collect();
    // The next batch is decoded on the rayon pool while the session runs this one: a
    // one-slot channel holds at most one decoded batch ahead, so memory stays a few batches.
    let (sender, receiver) = mpsc::sync_channel::<Decoded>(1);
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            for chunk in chunks {
                let images = decode(&chunk);
                if sender.send((chunk, images)).is_err() {
                    break; // The consumer stopped (an error): nothing more to decode.
                }
            }
        });
        for (paths, images) in receiver {
            let mut good = Vec::new();
            let mut data = Vec::new();
            for (path, image) in paths.iter().zip(images) {
                match image {
                    Ok(pixels) => {
                        good.push(path);
                        data.extend_from_slice(&pixels);
                    }
                    Err(e) => {
                        report(&format!("error: {e}"));
                        failures += 1;
                    }
                }
            }
            if !good.is_empty() {
                let side = repvgg::imagenet::CROP as usize;
                let logits = session.run(&Tensor::new(vec![good.len(), 3, side, side], data)?)?;
                let mut text = String::new();
                for (i, path) in good.iter().enumerate() {
                    write_image(&mut text, format, path, &logits, i, k, labels.as_deref())?;
                }
                out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(stdout_error)?;
            }
            if let Some(bar) = &progress {
                bar.inc(paths.len() as u64);
            }
        }
        Ok(())
    })?;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    if failures > 0 {
        return Err(repvgg::Error::Input(format!(
            "{failures} of {} inputs could not be classified (each is named above)",
            files.len() + folder_failures
        ))
        .into());
    }
    Ok(())
}

/// One image's top-k in `format`; scores are softmax probabilities over all classes.
fn write_image(
    out: &mut String,
    format: Format,
    path: &Path,
    logits: &Tensor,
    row: usize,
    k: usize,
    labels: Option<&[String]>,
) -> Result<()> {
    use std::fmt::Write as _;
    let classes = logits.shape()[1];
    let values = &logits.data()[row * classes..(row + 1) * classes];
    let max = values.iter().fold(f32::MIN, |m, v| m.max(*v));
    let total: f32 = values.iter().map(|v| (v - max).exp()).sum();
    let top: Vec<(usize, f32)> =
        logits.top_k(row, k).into_iter().map(|(class, logit)| (class, (logit - max).exp() / total)).collect();
    let label = |class: usize| labels.map(|l| l[class].as_str());
    let shown = path.display().to_string();
    match format {
        Format::Text => {
            writeln!(out, "{shown}:")?;
            for (class, p) in top {
                match label(class) {
                    Some(name) => writeln!(out, "  {:>6.2}%  {:>4}  {name}", 100.0 * p, class)?,
                    None => writeln!(out, "  {:>6.2}%  {:>4}", 100.0 * p, class)?,
                }
            }
        }
        Format::Json => {
            let top: Vec<serde_json::Value> = top
                .iter()
                .map(|&(class, p)| serde_json::json!({"index": class, "label": label(class), "score": p}))
                .collect();
            writeln!(out, "{}", serde_json::json!({"path": shown, "top_k": top}))?;
        }
        Format::Csv => {
            for (rank, (class, p)) in top.into_iter().enumerate() {
                let name = label(class).map(csv_field).unwrap_or_default();
                writeln!(out, "{},{},{class},{name},{p}", csv_field(&shown), rank + 1)?;
            }
        }
    }
    Ok(())
}
