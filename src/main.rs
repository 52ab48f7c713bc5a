//! The `repvgg` command-line tool.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use repvgg::files::Output;
use repvgg::graph::{ArchSpec, Network};
use repvgg::runtime::{
    Algo, AlgoChoice, ErrorKind, IsaChoice, Limits, Model, ModelOptions, Plan, Precision, SessionOptions,
    check_build_features, loader, worker_count,
};

mod bench;
mod classify;
mod density;
mod exit;
mod pull;
mod quantize;
mod samples;
mod serve;

#[derive(Parser)]
#[command(name = "repvgg", version, about = "Fast CPU inference for RepVGG networks: FP32, INT8 and BF16")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A checkpoint to load.
#[derive(Args)]
struct WeightsArgs {
    /// Weights: .safetensors (dtype F32/F16/BF16) or a PyTorch zip checkpoint (.pth/.pt, a state
    /// dict, plain or under `state_dict` / `model`), any supported naming form; or
    /// `hf:NAME`, pulled from the Hugging Face hub (`repvgg pull`).
    #[arg(long)]
    weights: PathBuf,
    /// Architecture to check the weights against (inferred from shapes if omitted).
    #[arg(long)]
    arch: Option<String>,
    #[command(flatten)]
    forms: FormArgs,
}

/// What a QARepVGG training checkpoint cannot say about itself.
#[derive(Args, Default)]
struct FormArgs {
    /// QARepVGG training blocks: v1 (`QARepVGGBlock`) or v2 (`QARepVGGBlockV2`, with the
    /// average-pool branch); a state dict looks the same either way.
    #[arg(long, default_value = "v1")]
    qarep: String,
    /// Batch-norm eps of QARepVGG blocks (YOLOv6's detectors train with 1e-3).
    #[arg(long, default_value_t = repvgg::graph::weights::BN_EPS)]
    bn_eps: f64,
}

impl FormArgs {
    fn options(&self) -> Result<repvgg::graph::ResolveOptions> {
        let qarep_variant = match self.qarep.trim().to_ascii_lowercase().as_str() {
            "v1" => repvgg::graph::QaRepVariant::V1,
            "v2" => repvgg::graph::QaRepVariant::V2,
            other => return Err(repvgg::Error::Option(format!("--qarep: unknown variant `{other}` (v1, v2)")).into()),
        };
        if !(self.bn_eps.is_finite() && self.bn_eps > 0.0) {
            return Err(
                repvgg::Error::Option(format!("--bn-eps must be a positive number, not {}", self.bn_eps)).into()
            );
        }
        Ok(repvgg::graph::ResolveOptions { qarep_variant, qarep_eps: self.bn_eps })
    }
}

impl WeightsArgs {
    fn load(&self) -> Result<Model> {
        let options = ModelOptions { forms: self.forms.options()?, ..model_options(self.arch.as_deref())? };
        Ok(Model::load(&self.weights, &options)?)
    }

    /// A hub name in `--weights` replaced by the cached file (see [`pull::resolve`]).
    fn resolve_hub(&mut self) -> Result<()> {
        pull::resolve(&mut self.weights, &mut self.arch).map(drop)
    }

    /// `--arch` as a path, in case it names a file.
    fn arch_path(&self) -> Option<&Path> {
        self.arch.as_deref().map(Path::new)
    }
}

/// How a session runs.
#[derive(Args)]
struct RunArgs {
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Convolution algorithm: auto, direct, f2, f4, f6, p2 (polyphase, stride-2 layers only).
    #[arg(long, default_value = "auto")]
    algo: String,
    /// Kernel set: auto (REPVGG_ISA if set, else the best this CPU runs), avx512, avx2, portable.
    #[arg(long, default_value = "auto")]
    isa: String,
    /// Run the parallel loops on a rayon pool of --threads threads instead of the
    /// session's own team (what an embedder that lends its rayon pool gets).
    #[arg(long)]
    rayon: bool,
    /// Arithmetic: f32, int8 or bf16 (default: the weights file's; int8 needs a file
    /// written by `repvgg quantize`, except in `bench`, which calibrates on synthetic
    /// inputs; bf16 needs a CPU with AVX512-BF16).
    #[arg(long)]
    precision: Option<String>,
    /// Int8 kernel set of INT8 layers: auto (the best that goes with --isa), amx,
    /// avx512-vnni, avx2, portable.
    #[arg(long, default_value = "auto")]
    int8_kernels: String,
    /// Bf16 kernel set of BF16 layers: auto (AMX where the CPU has it, else AVX512-BF16),
    /// amx, avx512-bf16.
    #[arg(long, default_value = "auto")]
    bf16_kernels: String,
}

impl RunArgs {
    fn options(&self, autotune: bool) -> Result<SessionOptions> {
        let threads = thread_count(self.threads)?;
        let algo: AlgoChoice = self.algo.parse()?;
        let pool = if self.rayon {
            let workers = worker_count(threads)?;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .thread_name(|i| format!("repvgg-rayon-{i}"))
                .build()
                .map_err(|e| repvgg::Error::Option(format!("cannot start a rayon pool of {workers} threads: {e}")))?;
            Some(std::sync::Arc::new(pool))
        } else {
            None
        };
        let precision = self
            .precision
            .as_deref()
            .map(str::parse::<Precision>)
            .transpose()
            .map_err(|e| repvgg::Error::Option(format!("--precision: {e}")))?;
        let int8_kernels = match self.int8_kernels.trim() {
            "auto" => None,
            name => Some(name.parse().map_err(|e| repvgg::Error::Option(format!("--int8-kernels: {e}")))?),
        };
        let bf16_kernels = match self.bf16_kernels.trim() {
            "auto" => None,
            name => Some(name.parse().map_err(|e| repvgg::Error::Option(format!("--bf16-kernels: {e}")))?),
        };
        Ok(SessionOptions {
            threads,
            algo,
            autotune,
            isa: isa_choice(&self.isa)?,
            pool,
            precision,
            int8_kernels,
            bf16_kernels,
            ..Default::default()
        })
    }
}

/// `--threads`: at least 1; 0 (the default) means all cores.
fn thread_count(threads: Option<usize>) -> Result<usize> {
    if threads == Some(0) {
        return Err(repvgg::Error::Option("--threads must be at least 1".into()).into());
    }
    Ok(threads.unwrap_or(0))
}

fn isa_choice(name: &str) -> Result<IsaChoice> {
    Ok(name.parse().map_err(|e| repvgg::Error::Option(format!("--isa: {e}")))?)
}

#[derive(Subcommand)]
enum Command {
    /// Per-layer shapes, parameters and multiply-accumulates of an architecture.
    Info {
        /// Built-in variant (A0 ... B3g4, D2se) or path to an architecture .toml file.
        #[arg(long, default_value = "A0")]
        arch: String,
        /// Input size: `224` or `HxW` such as `224x160`.
        #[arg(long, default_value = "224", value_parser = parse_size)]
        size: (usize, usize),
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a model on an input tensor and write the logits.
    Infer {
        #[command(flatten)]
        model: WeightsArgs,
        /// Input .safetensors holding `input`, F32 [N, 3, H, W].
        #[arg(long)]
        input: PathBuf,
        /// Output .safetensors receiving `logits`, F32 [N, classes].
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Time a model per layer and as a whole (defaults: A0, synthetic weights, batch 1, 224).
    Bench {
        /// Architecture (built-in name or .toml path); with --weights, checked against them.
        #[arg(long)]
        arch: Option<String>,
        /// Weights to load (a file or `hf:NAME`); without them, deterministic synthetic weights of --arch.
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Input size: `224` or `HxW`.
        #[arg(long, default_value = "224", value_parser = parse_size)]
        size: (usize, usize),
        #[command(flatten)]
        run: RunArgs,
        /// Time every algorithm on each layer first and keep the fastest (with --algo auto).
        #[arg(long)]
        autotune: bool,
        /// Timed runs (after warm-up).
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Untimed warm-up runs.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also draw per-layer effective GFLOP/s against FLOPs into this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Classify JPEG/PNG files and folders of them: top-k classes per image, streamed in
    /// batches; unreadable images are reported and skipped (exit 6 at the end).
    Classify(classify::ClassifyArgs),
    /// Serve the model over the Open Inference Protocol (KServe v2): HTTP and gRPC, with
    /// dynamic batching, until SIGTERM or SIGINT (then drain and exit 0).
    Serve(serve::ServeArgs),
    /// Timing server for side-by-side comparisons (benches/compare): loads a model and an
    /// input, prints `ready DESCRIPTION (ISA kernels)`, then answers stdin lines: `run` times one inference and prints its
    /// milliseconds; `write PATH` writes the logits to PATH; `quit` (or EOF) exits.
    Time {
        #[command(flatten)]
        model: WeightsArgs,
        /// Input .safetensors holding `input`, F32 [N, 3, H, W].
        #[arg(long)]
        input: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Effective TFLOPS of convolution kinds at equal channels and size (Ding et al., Table 1).
    Density {
        /// Input and output channels of every layer.
        #[arg(long, default_value_t = density::Config::DEFAULT.channels)]
        channels: usize,
        /// Map side (stride 1, so also the output side).
        #[arg(long, default_value_t = density::Config::DEFAULT.size)]
        size: usize,
        #[arg(long, default_value_t = density::Config::DEFAULT.batch)]
        batch: usize,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Timed runs per layer (after warm-up).
        #[arg(long, default_value_t = density::Config::DEFAULT.runs)]
        runs: usize,
        /// Kernel set: auto, avx512, avx2, portable.
        #[arg(long, default_value = "auto")]
        isa: String,
        /// The paper's setting: 2048 channels at 56x56, batch 1, 3 runs (minutes on 2 cores).
        #[arg(long, conflicts_with_all = ["channels", "size", "batch", "runs"])]
        paper: bool,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also draw the effective TFLOPS per kind into this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Quantize a model to INT8: per-channel s8 weights, u8 activation scales calibrated
    /// on sample inputs, measured FP32 fallback; writes a weights file every command loads.
    Quantize(quantize::QuantizeArgs),
    /// Download pretrained weights from the Hugging Face hub into its cache and print their
    /// path (`--weights hf:NAME` does the same on the way to loading them).
    Pull(pull::PullArgs),
    /// Convert training-time weights to the deploy form (official names, F32).
    Convert {
        /// Input weights in any supported form.
        train: PathBuf,
        /// Output deploy-form .safetensors.
        deploy: PathBuf,
        /// Architecture to check the weights against (inferred from shapes if omitted).
        #[arg(long)]
        arch: Option<String>,
        #[command(flatten)]
        forms: FormArgs,
    },
}

fn parse_size(text: &str) -> Result<(usize, usize), String> {
    let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("`{text}` is not a size like 224 or 224x160"));
    match text.split_once(['x', 'X']) {
        Some((h, w)) => Ok((parse(h)?, parse(w)?)),
        None => parse(text).map(|s| (s, s)),
    }
}

/// The model `--weights` names (checked against `--arch`), or without weights the
/// deterministic synthetic weights (seed 0) of `--arch`, A0 by default.
fn weights_or_synthetic(weights: Option<&Path>, arch: Option<&str>) -> Result<Model> {
    Ok(match weights {
        Some(path) => Model::load(path, &model_options(arch)?)?,
        None => Model::synthetic(ArchSpec::resolve(arch.unwrap_or("A0")).map_err(repvgg::Error::from)?, 0)?,
    })
}

fn model_options(arch: Option<&str>) -> Result<ModelOptions> {
    let arch = arch.map(ArchSpec::resolve).transpose().map_err(repvgg::Error::from)?;
    Ok(ModelOptions { arch, ..ModelOptions::default() })
}

/// Writes a whole report to standard output at once, naming the stream if that fails.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(stdout_error)?;
    Ok(())
}

fn stdout_error(source: std::io::Error) -> repvgg::Error {
    repvgg::Error::Stream { stream: "standard output", source }
}

/// The files a command reads, which no output of it may be: the weights or input paths,
/// and `--arch` when it names a file.
fn inputs<'a>(paths: &[Option<&'a Path>]) -> Vec<&'a Path> {
    paths.iter().flatten().copied().collect()
}

fn info(arch: &str, (h, w): (usize, usize), json: bool) -> Result<()> {
    let network = Network::from_name(arch).map_err(repvgg::Error::from)?;
    network.check_input_size(h, w, Limits::default().max_side).map_err(repvgg::Error::from)?;
    let shapes = network.shapes(h, w).map_err(repvgg::Error::from)?;
    let cost = network.cost(h, w).map_err(repvgg::Error::from)?;
    // Multiplies under the plan a session would run at batch 1, and with F(2,3) on every
    // layer it applies to (the count behind the paper's Winograd MULs).
    let isa = repvgg::simd::Dispatch::choose(repvgg::simd::IsaChoice::Auto).map_err(repvgg::Error::from)?.isa();
    let chosen = Plan::for_choice(&network, 1, h, w, AlgoChoice::Auto, isa);
    let f2 = Plan::for_choice(&network, 1, h, w, AlgoChoice::Force(Algo::F2), isa);
    let se_macs: Vec<u64> = network.layers.iter().map(|l| l.se_macs()).collect();
    let muls = |plan: &Plan| -> Vec<u64> { plan.layers.iter().map(|lp| lp.multiplies() + se_macs[lp.index]).collect() };
    let (muls_chosen, muls_f2) = (muls(&chosen), muls(&f2));
    let head_macs = (network.feature_channels() * network.num_classes) as u64;
    let total = |m: &[u64]| m.iter().sum::<u64>() + head_macs;
    let mut out = String::new();
    if json {
        let layers: Vec<serde_json::Value> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v = serde_json::to_value(s).expect("shapes serialize");
                v["algo"] = chosen.layers[i].algo.name().into();
                v["muls"] = muls_chosen[i].into();
                v["muls_f2"] = muls_f2[i].into();
                v
            })
            .collect();
        let value = serde_json::json!({
            "arch": network.arch.name,
            "height": h,
            "width": w,
            "params": cost.params,
            "macs": cost.macs,
            "flops": 2 * cost.macs,
            "muls": total(&muls_chosen),
            "muls_f2": total(&muls_f2),
            "layers": layers,
            "head": {
                "in_features": network.feature_channels(),
                "classes": network.num_classes,
                "params": network.head_params(),
                "macs": (network.feature_channels() * network.num_classes) as u64,
            },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return print(&out);
    }
    let row = |out: &mut String, cells: [&dyn std::fmt::Display; 12]| {
        writeln!(
            out,
            "{:<10} {:>6} {:>6} {:>6} {:>6} {:>11} {:>11} {:>12} {:>14} {:>6} {:>14} {:>14}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10],
            cells[11]
        )
    };
    writeln!(out, "RepVGG-{} at {h}x{w}", network.arch.name)?;
    row(
        &mut out,
        [
            &"layer",
            &"in",
            &"out",
            &"groups",
            &"stride",
            &"input",
            &"output",
            &"params",
            &"MACs",
            &"algo",
            &"muls",
            &"muls F(2,3)",
        ],
    )?;
    for (i, s) in shapes.iter().enumerate() {
        row(
            &mut out,
            [
                &format!("{}{}", s.name, if s.se { "+se" } else { "" }),
                &s.in_channels,
                &s.out_channels,
                &s.groups,
                &s.stride,
                &format!("{}x{}", s.in_h, s.in_w),
                &format!("{}x{}", s.out_h, s.out_w),
                &s.params,
                &s.macs,
                &chosen.layers[i].algo.name(),
                &muls_chosen[i],
                &muls_f2[i],
            ],
        )?;
    }
    let (features, classes) = (network.feature_channels(), network.num_classes);
    row(
        &mut out,
        [
            &"linear",
            &features,
            &classes,
            &"",
            &"",
            &"gap",
            &"",
            &network.head_params(),
            &head_macs,
            &"",
            &head_macs,
            &head_macs,
        ],
    )?;
    writeln!(
        out,
        "total: {:.2} M parameters, {:.3} G multiply-accumulates ({:.3} GFLOPs); multiplies {:.3} G as run at batch 1, {:.3} G with F(2,3) wherever it applies",
        cost.params as f64 / 1e6,
        cost.macs as f64 / 1e9,
        2.0 * cost.macs as f64 / 1e9,
        total(&muls_chosen) as f64 / 1e9,
        total(&muls_f2) as f64 / 1e9
    )?;
    print(&out)
}

fn infer(model: &WeightsArgs, input: &Path, output: &Path, run: &RunArgs) -> Result<()> {
    let options = run.options(false)?;
    let output = Output::new(output, &inputs(&[Some(&model.weights), Some(input), model.arch_path()]))?;
    let model = model.load()?;
    let x = loader::read_input(input, model.limits())?;
    let logits = model.session(options)?.run(&x)?;
    loader::write_tensors(&output, [("logits".to_string(), logits.shape().to_vec(), logits.data())])?;
    eprintln!("{}: wrote logits {:?} to {}", model.description(), logits.shape(), output.path().display());
    Ok(())
}

fn bench(
    arch: Option<&str>,
    weights: Option<&Path>,
    mut config: bench::Config,
    options: SessionOptions,
    json: bool,
    plot: Option<&Path>,
) -> Result<()> {
    if config.runs == 0 {
        return Err(repvgg::Error::Option("--runs must be at least 1".into()).into());
    }
    let plot = plot.map(|p| Output::new(p, &inputs(&[weights, arch.map(Path::new)]))).transpose()?;
    let mut model = weights_or_synthetic(weights, arch)?;
    let limits = model.limits();
    limits.check_input(model.network(), &[config.batch, 3, config.height, config.width])?;
    if options.precision == Some(Precision::Int8) && model.precision() == Precision::F32 {
        model = quantize::synthetic(&model, config.height, config.width, options.threads)?;
        config.note = Some(format!(
            "INT8 calibrated on {} synthetic inputs (uniform in [-1, 1)): timings are real, accuracy is not \
             measured; quantize real weights on real images with `repvgg quantize`",
            quantize::SYNTHETIC_SAMPLES
        ));
    }
    let mut session = model.session(options)?;
    let report = bench::run(&model, &mut session, &config)?;
    let mut out = Vec::new();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        bench::print_table(&report, &mut out)?;
    }
    print(&String::from_utf8(out).expect("reports are UTF-8"))?;
    if let Some(plot) = &plot {
        bench::write_plot(&report, plot)?;
    }
    Ok(())
}

/// The `time` protocol: one command per line, one answer line each. A failed `write`
/// answers `error: ...` and the server keeps going; only a failed inference, or standard
/// input or output failing, ends it.
fn time_server(model_args: &WeightsArgs, input: &Path, options: SessionOptions) -> Result<()> {
    use std::io::BufRead;
    let model = model_args.load()?;
    let x = loader::read_input(input, model.limits())?;
    let mut session = model.session(options)?;
    let mut logits = session.run(&x)?;
    let mut out = std::io::stdout().lock();
    let kernels = match (session.int8_kernels(), session.bf16_kernels()) {
        (Some(int8), _) => format!("{} kernels, int8 {}", session.isa(), int8.name()),
        (_, Some(bf16)) => format!("{} kernels, bf16 {}", session.isa(), bf16.name()),
        _ => format!("{} kernels", session.isa()),
    };
    writeln!(out, "ready {} ({kernels})", model.description()).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)?;
    let read_only = inputs(&[Some(&model_args.weights), Some(input), model_args.arch_path()]);
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|source| repvgg::Error::Stream { stream: "standard input", source })?;
        let answer = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("run", "") => {
                let start = std::time::Instant::now();
                session.run_into(&x, &mut logits)?;
                format!("{:.6}", start.elapsed().as_secs_f64() * 1e3)
            }
            // The path is the rest of the line, spaces included.
            ("write", path) if !path.is_empty() => {
                let written = Output::new(Path::new(path), &read_only).map_err(repvgg::Error::from).and_then(|o| {
                    loader::write_tensors(&o, [("logits".to_string(), logits.shape().to_vec(), logits.data())])
                });
                match written {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("error: {e}"),
                }
            }
            ("quit", "") => break,
            _ => format!("error: unknown command `{line}` (run, write PATH, quit)"),
        };
        writeln!(out, "{answer}").and_then(|()| out.flush()).map_err(stdout_error)?;
    }
    Ok(())
}

fn density(config: density::Config, threads: Option<usize>, isa: &str, json: bool, plot: Option<&Path>) -> Result<()> {
    let limits = Limits::default();
    let density::Config { channels, size, batch, runs, .. } = config;
    if runs == 0 || channels == 0 || size == 0 || batch == 0 {
        return Err(repvgg::Error::Option("--channels, --size, --batch and --runs must be at least 1".into()).into());
    }
    if size > limits.max_side || batch > limits.max_batch {
        return Err(repvgg::Error::Limit(format!(
            "--size {size} or --batch {batch} exceeds the limit of {} pixels per side or a batch of {}",
            limits.max_side, limits.max_batch
        ))
        .into());
    }
    // The largest buffers: the 7x7 layer's packed weights (49 C^2) and F(6,3)'s (64 C^2),
    // and the maps; refused before any is allocated.
    let bytes = [64 * channels as u128 * channels as u128, 4 * (batch * size * size) as u128 * channels as u128]
        .iter()
        .sum::<u128>()
        * 4;
    let limit = limits.max_weight_bytes.min(limits.max_arena_bytes) as u128;
    if bytes > limit {
        return Err(repvgg::Error::Limit(format!(
            "--channels {channels} at {size}x{size}, batch {batch} needs about {} MiB, over the limit of {} MiB",
            bytes >> 20,
            limit >> 20
        ))
        .into());
    }
    let plot = plot.map(|p| Output::new(p, &[])).transpose()?;
    let isa = repvgg::simd::Dispatch::choose(isa_choice(isa)?).map_err(repvgg::Error::from)?;
    let threads = worker_count(thread_count(threads)?)?;
    let report = density::run(&config, isa, threads)?;
    if json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        print(&density::table(&report))?;
    }
    if let Some(plot) = &plot {
        plot.write(density::svg(&report).as_bytes())?;
    }
    Ok(())
}

fn convert(train: &Path, deploy: &Path, arch: Option<&str>, forms: &FormArgs) -> Result<()> {
    let output = Output::new(deploy, &inputs(&[Some(train), arch.map(Path::new)]))?;
    let options = ModelOptions { forms: forms.options()?, ..model_options(arch)? };
    let model = Model::load(train, &options)?;
    model.write(&output)?;
    eprintln!("{}: wrote deploy weights to {}", model.description(), output.path().display());
    Ok(())
}

/// Replaces every `--weights hf:NAME` (and `convert`'s input) by the cached file, pulled
/// first if needed, before any command looks at its paths.
fn resolve_hub_names(command: &mut Command) -> Result<()> {
    match command {
        Command::Infer { model, .. } | Command::Time { model, .. } => model.resolve_hub()?,
        Command::Quantize(args) => args.model.resolve_hub()?,
        Command::Bench { arch, weights, .. } => drop(pull::resolve_opt(weights, arch)?),
        Command::Classify(args) => drop(pull::resolve_opt(&mut args.weights, &mut args.arch)?),
        Command::Serve(args) => {
            let repo = pull::resolve_opt(&mut args.weights, &mut args.arch)?;
            // The model's name is the repository's, not the cached file's stem (`model`).
            args.model_name = args.model_name.take().or(repo);
        }
        Command::Convert { train, arch, .. } => drop(pull::resolve(train, arch)?),
        Command::Info { .. } | Command::Density { .. } | Command::Pull(_) => {}
    }
    Ok(())
}

fn run(mut cli: Cli) -> Result<()> {
    resolve_hub_names(&mut cli.command)?;
    match cli.command {
        Command::Pull(args) => pull::pull(&args),
        Command::Info { arch, size, json } => info(&arch, size, json),
        Command::Infer { model, input, output, run } => infer(&model, &input, &output, &run),
        Command::Bench { arch, weights, batch, size, run, autotune, runs, warmup, json, plot } => {
            let options = run.options(autotune)?;
            let config = bench::Config { batch, height: size.0, width: size.1, runs, warmup, note: None };
            bench(arch.as_deref(), weights.as_deref(), config, options, json, plot.as_deref())
        }
        Command::Classify(args) => classify::classify(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Time { model, input, run } => time_server(&model, &input, run.options(false)?),
        Command::Quantize(args) => quantize::run(&args),
        Command::Convert { train, deploy, arch, forms } => convert(&train, &deploy, arch.as_deref(), &forms),
        Command::Density { channels, size, batch, threads, runs, isa, paper, json, plot } => {
            let config = if paper {
                density::Config::PAPER
            } else {
                density::Config { channels, size, batch, runs, ..density::Config::DEFAULT }
            };
            density(config, threads, &isa, json, plot.as_deref())
        }
    }
}

fn main() -> ExitCode {
    if let Err(e) = check_build_features() {
        eprintln!("error: {e}");
        return exit::code(ErrorKind::Cpu);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            eprintln!("{}", exit::usage_line(&e.to_string()));
            return exit::code(ErrorKind::Usage);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`repvgg info | head`) is the reader's choice, not our failure.
        Err(e) if exit::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", exit::one_line(&e));
            exit::for_error(&e)
        }
    }
}
