//! `repvgg quantize`: an FP32 model to INT8, calibrated on sample inputs, with the error
//! report (`Model::quantize` does the work).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use repvgg::files::Output;
use repvgg::runtime::{Calibration, DEFAULT_AUTO_THRESHOLD, KeepFp32, QuantReport, QuantizeOptions, loader};
use repvgg::{Model, Tensor};

use crate::{WeightsArgs, inputs, print, thread_count};

#[derive(Args)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub(crate) model: WeightsArgs,
    /// Calibration inputs: a safetensors file holding `input` [N, 3, H, W] (preprocessed),
    /// or a folder of JPEG/PNG images (searched recursively, preprocessed as `classify`
    /// does). Never the images you evaluate on.
    #[arg(long)]
    calibration: PathBuf,
    /// The quantized weights file to write.
    #[arg(long)]
    out: PathBuf,
    /// Activation thresholds: minmax, percentile (99.99th), entropy (KL divergence).
    #[arg(long, default_value = "percentile")]
    method: String,
    /// Calibrate on the first N inputs only.
    #[arg(long)]
    samples: Option<usize>,
    /// Layers kept in FP32: auto (those whose INT8 alone moves the calibration logits by
    /// more than --keep-threshold), none, or layer names (stage1.0,stage4.0).
    #[arg(long, default_value = "auto")]
    keep_fp32: String,
    /// Relative L2 change of the logits above which `--keep-fp32 auto` keeps a layer FP32.
    #[arg(long, default_value_t = DEFAULT_AUTO_THRESHOLD)]
    keep_threshold: f64,
    /// One weight scale per tensor instead of per output channel (the naive scheme that
    /// loses RepVGG's accuracy; for comparison).
    #[arg(long)]
    per_tensor: bool,
    /// Keep the weights that read input channels which were 0 on every calibration image
    /// (by default they are zeroed before quantizing, which is exact where the channel is
    /// 0 and keeps such weights from setting a channel's scale).
    #[arg(long)]
    keep_dead_inputs: bool,
    /// Print the per-layer error report.
    #[arg(long)]
    report: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Most images read from a calibration folder without `--samples`.
const DEFAULT_FOLDER_SAMPLES: usize = 256;

/// The calibration tensor: a safetensors `input`, or the images of a folder.
fn calibration(path: &Path, samples: Option<usize>, model: &Model) -> Result<Tensor> {
    if samples == Some(0) {
        return Err(repvgg::Error::Option("--samples must be at least 1".into()).into());
    }
    let tensor = if path.is_dir() {
        let mut failures = 0;
        let mut files = crate::classify::collect(&[path.to_path_buf()], &mut failures, &|line| eprintln!("{line}"));
        if files.is_empty() {
            return Err(
                repvgg::Error::Option(format!("{}: no JPEG or PNG images to calibrate on", path.display())).into()
            );
        }
        files.truncate(samples.unwrap_or(DEFAULT_FOLDER_SAMPLES));
        repvgg::imagenet::load_batch(&files)?
    } else {
        let t = loader::read_input(path, model.limits())?;
        match samples {
            Some(n) if n < t.shape()[0] => {
                let image: usize = t.shape()[1..].iter().product();
                let mut shape = t.shape().to_vec();
                shape[0] = n;
                Tensor::new(shape, t.data()[..n * image].to_vec())?
            }
            _ => t,
        }
    };
    Ok(tensor)
}

pub fn run(args: &QuantizeArgs) -> Result<()> {
    let read = inputs(&[Some(&args.model.weights), Some(&args.calibration), args.model.arch_path()]);
    let output = Output::new(&args.out, &read)?;
    let options = QuantizeOptions {
        calibration: args.method.parse::<Calibration>()?,
        keep_fp32: args.keep_fp32.parse::<KeepFp32>()?,
        auto_threshold: args.keep_threshold,
        per_tensor_weights: args.per_tensor,
        prune_dead_inputs: !args.keep_dead_inputs,
        threads: thread_count(args.threads)?,
    };
    let model = args.model.load()?;
    let calibration = calibration(&args.calibration, args.samples, &model)?;
    let (quantized, report) = model.quantize(&calibration, &options)?;
    quantized.write(&output)?;
    let mut out = Vec::new();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        if args.report {
            print_report(&report, &mut out)?;
        }
        summary(&report, &mut out)?;
        writeln!(out, "wrote {}", output.path().display())?;
    }
    print(&String::from_utf8(out).expect("reports are UTF-8"))
}

/// One line: what was kept in FP32 and how the logits agree.
fn summary(report: &QuantReport, out: &mut dyn Write) -> std::io::Result<()> {
    let kept = if report.info.fp32_layers.is_empty() { "none".to_string() } else { report.info.fp32_layers.join(", ") };
    writeln!(
        out,
        "INT8 ({} calibration, {} samples); FP32 kept: {kept}; on the calibration set: top-1 {:.1}% as FP32, \
         logits cosine {:.5}, max relative error {:.3e}",
        report.info.calibration,
        report.info.samples,
        100.0 * report.top1_agreement,
        report.cosine,
        report.max_rel_error
    )
}

fn print_report(report: &QuantReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:>9} {:>12} {:>10} {:>5} {:>12} {:>9}",
        "layer", "precision", "input scale", "w spread", "dead", "alone err", "SQNR dB"
    )?;
    for l in &report.layers {
        writeln!(
            out,
            "{:<10} {:>9} {:>12} {:>10.1} {:>5} {:>12} {:>9.1}",
            l.name,
            l.precision,
            l.input_scale.map_or("-".into(), |s| format!("{s:.4e}")),
            l.weight_spread,
            l.dead_inputs,
            l.alone_logit_error.map_or("-".into(), |e| format!("{e:.2e}")),
            l.sqnr_db
        )?;
    }
    Ok(())
}

/// Calibration images `repvgg bench --precision int8` uses for a float model.
pub const SYNTHETIC_SAMPLES: usize = 8;

/// `model` quantized with default options on [`SYNTHETIC_SAMPLES`] synthetic inputs
/// (uniform in [-1, 1), like the benchmark's own input but other draws).
pub fn synthetic(model: &Model, h: usize, w: usize, threads: usize) -> Result<Model> {
    let image = 3 * h * w;
    let data: Vec<f32> =
        (0..SYNTHETIC_SAMPLES).flat_map(|i| repvgg::graph::synthetic::input(image, 1000 + i as u64)).collect();
    let calibration = Tensor::new(vec![SYNTHETIC_SAMPLES, 3, h, w], data)?;
    let options = QuantizeOptions { threads, ..QuantizeOptions::default() };
    Ok(model.quantize(&calibration, &options)?.0)
}
