//! `repvgg bench`: per-layer and whole-network timing of one configuration.

use repvgg::files::Output;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use repvgg::runtime::lab::{self, MixedPeaks};

use crate::samples::{Samples, noise_line, percent_of_peak};
use repvgg::runtime::{Bf16Set, Int8Set, IsaChoice, Precision, Profile, Session, SessionOptions};
use repvgg::{Model, Tensor};

/// What to measure.
pub struct Config {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub runs: usize,
    pub warmup: usize,
    /// A line for the header (how an INT8 model was calibrated, when `bench` did it).
    pub note: Option<String>,
}

/// Per-layer results.
#[derive(serde::Serialize)]
pub struct LayerRow {
    pub name: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub stride: usize,
    pub input: [usize; 2],
    pub output: [usize; 2],
    pub algo: String,
    /// 2 x direct multiply-accumulates for the batch.
    pub flops: u64,
    /// Multiplies the chosen algorithm performs for the batch.
    pub multiplies: u64,
    pub median_ms: f64,
    /// Bytes of the packed weights the layer reads per run, in MB (10^6 bytes).
    pub weight_mb: f64,
    /// The layer's multiplies at the measured peak of its instruction (FMA for FP32; AMX
    /// or `VPDPBUSD` for INT8, the FMA peak for the other int8 sets): the time it cannot
    /// go below with its algorithm on these threads.
    pub floor_ms: f64,
    /// The packed weights read from DRAM at the measured bandwidth: the layer's time if
    /// nothing else limited it and its weights were not cached from the previous run.
    pub stream_ms: f64,
    /// 2 x multiplies / time.
    pub gflops: f64,
    /// 2 x direct MACs / time (direct-equivalent).
    pub effective_gflops: f64,
    /// Share of the summed layer time.
    pub share: f64,
    /// In INT8 or BF16: `max |output - FP32 output| / max |FP32 output|` of this layer on
    /// the benchmark's input, accumulated through the layers before (`lab::layer_errors`).
    pub error: Option<f64>,
}

/// The whole report.
#[derive(serde::Serialize)]
pub struct Report {
    pub model: String,
    pub arch: String,
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub threads: usize,
    pub runs: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub images_per_s: f64,
    pub flops: u64,
    pub effective_gflops: f64,
    /// The best of the FMA-peak probes taken before, between and after the timed runs.
    pub peak_gflops: f64,
    /// The lowest of them: far below the best, the host was busy during the run.
    pub peak_gflops_lowest: f64,
    /// Measured bf16 and int8 dot-product peaks of the same threads (`VDPBF16PS`,
    /// `VPDPBUSD`, AMX), where the CPU has them.
    pub mixed_peaks: MixedPeaks,
    /// The kernel set that ran (`avx512`, `avx2`, `portable`).
    pub isa: &'static str,
    /// The session's arithmetic (`f32`, `int8`, `bf16`) and, in INT8 or BF16, its int8 or
    /// bf16 kernel set.
    pub precision: Precision,
    pub int8_kernels: Option<&'static str>,
    pub bf16_kernels: Option<&'static str>,
    pub note: Option<String>,
    pub head_ms: f64,
    /// Summed layer times (without the head).
    pub layers_ms: f64,
    /// Summed per-layer floors: all multiplies at their instruction's measured peak.
    pub floor_ms: f64,
    /// Summed per-layer `max(floor, stream)`: the roofline of the layers with their
    /// weights from DRAM.
    pub roofline_ms: f64,
    /// Packed weights read per run, in MB.
    pub weight_mb: f64,
    /// Measured DRAM read bandwidth of the session's threads, GB/s (the best of three
    /// probes spread over the run, as the FMA peak).
    pub read_gbps: f64,
    pub read_gbps_lowest: f64,
    /// The probes disagreed by more than `samples::STEADY`, or a layer ran above the best
    /// FMA probe: the floor, stream and peak columns are then bounds.
    pub noisy: bool,
    pub layers: Vec<LayerRow>,
}

pub fn median(times: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    if ms.len() % 2 == 1 { ms[mid] } else { (ms[mid - 1] + ms[mid]) / 2.0 }
}

/// Runs the benchmark, with a progress bar on stderr.
pub fn run(model: &Model, session: &mut Session, config: &Config) -> Result<Report> {
    let (n, h, w) = (config.batch, config.height, config.width);
    let elements = n * 3 * h * w;
    let input = Tensor::new(vec![n, 3, h, w], repvgg::graph::synthetic::input(elements, 42))?;
    let progress = indicatif::ProgressBar::new((config.warmup + config.runs) as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} runs")
            .expect("static template")
            .progress_chars("=> "),
    );
    progress.set_message("planning");
    session.plan(n, h, w)?;
    progress.set_message("warm-up");
    for _ in 0..config.warmup {
        session.run(&input)?;
        progress.inc(1);
    }
    // Per worker, a buffer well beyond its share of any L3, without gigabytes on big hosts.
    let mib = (1024 / session.threads()).clamp(16, 64);
    let (mut peaks, mut reads) = (Samples::default(), Samples::default());
    let mut probe = |session: &Session, progress: &indicatif::ProgressBar| {
        progress.set_message("measuring the FMA peak and the DRAM bandwidth");
        peaks.push(lab::peak_gflops(session, 100));
        reads.push(lab::read_gbps(session, mib, 100));
        progress.set_message("timing");
    };
    // Before, between and after the timed runs: the best of the three is the machine's.
    probe(session, &progress);
    let mut profile: Option<Profile> = None;
    for run in 0..config.runs {
        if run == config.runs / 2 {
            probe(session, &progress);
        }
        let p = session.profile(&input, 1)?;
        profile = Some(match profile {
            None => p,
            Some(mut acc) => {
                for (l, t) in acc.layers.iter_mut().zip(p.layers) {
                    l.extend(t);
                }
                acc.head.extend(p.head);
                acc.total.extend(p.total);
                acc
            }
        });
        progress.inc(1);
    }
    probe(session, &progress);
    progress.set_message("measuring the bf16 and int8 peaks");
    let mixed_peaks = lab::mixed_peaks(session.threads(), 200);
    progress.finish_and_clear();
    let (peak, read_gbps) = (peaks.best(), reads.best());
    let profile = profile.expect("at least one run");

    // An INT8 layer's floor is its multiplies at its own instruction's measured peak
    // (the AMX one with resident tiles, or `VPDPBUSD`); the AVX2 and portable int8 sets
    // have no probe of their own and are set against the FP32 peak.
    let int8_peak = match session.int8_kernels() {
        Some(Int8Set::Amx) => mixed_peaks.amx_int8_gops,
        Some(Int8Set::Vnni512) => mixed_peaks.vnni_gops,
        _ => None,
    }
    .unwrap_or(peak);
    // A BF16 layer's floor: its multiplies at the bf16 instruction's measured peak.
    let bf16_peak = match session.bf16_kernels() {
        Some(Bf16Set::Amx) => mixed_peaks.amx_bf16_gflops,
        Some(Bf16Set::Avx512) => mixed_peaks.bf16_gflops,
        None => None,
    }
    .unwrap_or(peak);
    let layer_ms: Vec<f64> = profile.layers.iter().map(|t| median(t)).collect();
    let head_ms = median(&profile.head);
    let layers_ms: f64 = layer_ms.iter().sum();
    let summed = layers_ms + head_ms;
    // In a reduced precision, how far each layer's output is from FP32's on the same input.
    let errors = match session.precision() {
        Precision::F32 => None,
        precision => {
            progress.set_message("comparing each layer with FP32");
            let options = SessionOptions {
                threads: session.threads(),
                isa: IsaChoice::Force(session.isa()),
                precision: Some(precision),
                int8_kernels: session.int8_kernels(),
                bf16_kernels: session.bf16_kernels(),
                ..Default::default()
            };
            Some(lab::layer_errors(model, options, &input)?)
        }
    };
    let layers: Vec<LayerRow> = profile
        .plan
        .layers
        .iter()
        .zip(&layer_ms)
        .enumerate()
        .map(|(i, (lp, &ms))| {
            let flops = 2 * lp.macs * n as u64;
            let multiplies = lp.multiplies() * n as u64;
            let weight_bytes = model.weight_bytes(lp)?;
            Ok(LayerRow {
                name: lp.name.clone(),
                in_channels: lp.in_channels,
                out_channels: lp.out_channels,
                groups: lp.groups,
                stride: lp.stride,
                input: [lp.h, lp.w],
                output: [lp.oh, lp.ow],
                algo: match lp.precision {
                    Precision::F32 => lp.algo.name().to_string(),
                    precision => format!("{}-{precision}", lp.algo),
                },
                flops,
                multiplies,
                median_ms: ms,
                weight_mb: weight_bytes as f64 / 1e6,
                floor_ms: 2.0 * multiplies as f64
                    / match lp.precision {
                        Precision::Int8 => int8_peak,
                        Precision::Bf16 => bf16_peak,
                        Precision::F32 => peak,
                    }
                    / 1e6,
                stream_ms: weight_bytes as f64 / read_gbps / 1e6,
                gflops: 2.0 * multiplies as f64 / ms / 1e6,
                effective_gflops: flops as f64 / ms / 1e6,
                share: ms / summed,
                error: errors.as_ref().map(|e| e[i].1),
            })
        })
        .collect::<Result<_>>()?;
    let median_ms = median(&profile.total);
    // A layer whose multiplies ran faster than the best probe means the probes were slowed.
    let beaten = layers.iter().any(|l| l.gflops > peak);
    let min_ms = profile.total.iter().min().expect("runs").as_secs_f64() * 1e3;
    let flops = 2 * model.network().cost(h, w)?.macs * n as u64;
    Ok(Report {
        model: model.description().to_string(),
        arch: model.network().arch.name.clone(),
        batch: n,
        height: h,
        width: w,
        threads: session.threads(),
        runs: config.runs,
        median_ms,
        min_ms,
        images_per_s: n as f64 / median_ms * 1e3,
        flops,
        effective_gflops: flops as f64 / median_ms / 1e6,
        peak_gflops: peak,
        peak_gflops_lowest: peaks.lowest(),
        mixed_peaks,
        isa: session.isa().name(),
        precision: session.precision(),
        int8_kernels: session.int8_kernels().map(|k| k.name()),
        bf16_kernels: session.bf16_kernels().map(|k| k.name()),
        note: config.note.clone(),
        head_ms,
        layers_ms,
        floor_ms: layers.iter().map(|l| l.floor_ms).sum(),
        roofline_ms: layers.iter().map(|l| l.floor_ms.max(l.stream_ms)).sum(),
        weight_mb: layers.iter().map(|l| l.weight_mb).sum(),
        read_gbps,
        read_gbps_lowest: reads.lowest(),
        noisy: beaten || !peaks.steady() || !reads.steady(),
        layers,
    })
}

/// Prints the report as a table.
pub fn print_table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{}", report.model)?;
    if let Some(note) = &report.note {
        writeln!(out, "{note}")?;
    }
    writeln!(
        out,
        "batch {} at {}x{}, {} thread{}, {} timed runs, {} kernels, {}{}",
        report.batch,
        report.height,
        report.width,
        report.threads,
        if report.threads == 1 { "" } else { "s" },
        report.runs,
        report.isa,
        report.precision,
        match (report.int8_kernels, report.bf16_kernels) {
            (Some(k), _) => format!(" ({k} int8 kernels)"),
            (_, Some(k)) => format!(" ({k} bf16 kernels)"),
            _ => String::new(),
        }
    )?;
    writeln!(
        out,
        "{:<10} {:>16} {:>13} {:>7} {:>8} {:>8} {:>7} {:>8} {:>7} {:>7} {:>6} {:>8} {:>7} {:>6}{}",
        "layer",
        "channels",
        "output",
        "algo",
        "GFLOPs",
        "Gmul",
        "MB",
        "ms",
        "floor",
        "stream",
        "peak",
        "GFLOP/s",
        "eff",
        "share",
        if report.precision == Precision::F32 { "" } else { "  vs f32" }
    )?;
    for l in &report.layers {
        writeln!(
            out,
            "{:<10} {:>16} {:>13} {:>7} {:>8.3} {:>8.3} {:>7.2} {:>8.3} {:>7.3} {:>7.3} {:>5.0}% {:>8.1} {:>7.1} {:>5.1}%{}",
            l.name,
            format!(
                "{}->{}{}",
                l.in_channels,
                l.out_channels,
                if l.groups > 1 { format!("/g{}", l.groups) } else { String::new() }
            ),
            format!("{}x{} s{}", l.output[0], l.output[1], l.stride),
            l.algo,
            l.flops as f64 / 1e9,
            l.multiplies as f64 / 1e9,
            l.weight_mb,
            l.median_ms,
            l.floor_ms,
            l.stream_ms,
            percent_of_peak(l.floor_ms / l.median_ms),
            l.gflops,
            l.effective_gflops,
            100.0 * l.share,
            l.error.map(|e| format!(" {e:>9.1e}")).unwrap_or_default()
        )?;
    }
    writeln!(out, "{:<10} {:>73.3}", "head", report.head_ms)?;
    writeln!(
        out,
        "layers {:.3} ms: multiplies at the measured peaks {:.3} ms ({:.0}%), roofline with weights from DRAM {:.3} ms ({:.0}%); \
         weights {:.1} MB per run, DRAM {:.1} GB/s",
        report.layers_ms,
        report.floor_ms,
        percent_of_peak(report.floor_ms / report.layers_ms),
        report.roofline_ms,
        percent_of_peak(report.roofline_ms / report.layers_ms),
        report.weight_mb,
        report.read_gbps
    )?;
    let p = &report.mixed_peaks;
    let mut mixed = String::new();
    for (name, rate, unit) in [
        ("bf16 VDPBF16PS", p.bf16_gflops, "GFLOP/s"),
        ("AMX bf16", p.amx_bf16_gflops, "GFLOP/s"),
        ("int8 VPDPBUSD", p.vnni_gops, "GOP/s"),
        ("AMX int8", p.amx_int8_gops, "GOP/s"),
    ] {
        if let Some(rate) = rate {
            mixed += &format!(", {name} {rate:.1} {unit} ({:.1}x)", rate / report.peak_gflops);
        }
    }
    if report.noisy {
        let mut peaks = Samples::default();
        peaks.push(report.peak_gflops_lowest);
        peaks.push(report.peak_gflops);
        writeln!(out, "{}", noise_line("FMA peak", &peaks, "GFLOP/s"))?;
    }
    writeln!(
        out,
        "median {:.3} ms (min {:.3}), {:.1} images/s, {:.1} effective GFLOP/s; measured FMA peak {:.1} GFLOP/s \
         (best of 3, lowest {:.1}){} on {} thread{}",
        report.median_ms,
        report.min_ms,
        report.images_per_s,
        report.effective_gflops,
        report.peak_gflops,
        report.peak_gflops_lowest,
        mixed,
        report.threads,
        if report.threads == 1 { "" } else { "s" }
    )
}

/// Draws per-layer effective GFLOP/s against FLOPs (log scale) as an SVG.
pub fn write_plot(report: &Report, output: &Output) -> Result<()> {
    let (width, height, margin) = (760.0, 440.0, 60.0);
    let xs: Vec<f64> = report.layers.iter().map(|l| (l.flops as f64).log10()).collect();
    let (xmin, xmax) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let (xmin, xmax) = (xmin.floor(), xmax.ceil().max(xmin.floor() + 1.0));
    let ymax = report.layers.iter().map(|l| l.effective_gflops).fold(report.peak_gflops, f64::max) * 1.1;
    let px = |x: f64| margin + (x - xmin) / (xmax - xmin) * (width - 2.0 * margin);
    let py = |y: f64| height - margin - y / ymax * (height - 2.0 * margin);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'>\n\
         <rect width='100%' height='100%' fill='white'/>\n\
         <text x='{}' y='20' text-anchor='middle' font-size='14'>RepVGG-{} batch {} at {}x{}, {} threads: per-layer throughput</text>\n",
        width / 2.0,
        report.arch,
        report.batch,
        report.height,
        report.width,
        report.threads
    );
    svg += &format!(
        "<line x1='{m}' y1='{b}' x2='{r}' y2='{b}' stroke='black'/><line x1='{m}' y1='{b}' x2='{m}' y2='{m}' stroke='black'/>\n",
        m = margin,
        b = height - margin,
        r = width - margin
    );
    for decade in xmin as i32..=xmax as i32 {
        let x = px(decade as f64);
        svg += &format!("<text x='{x}' y='{}' text-anchor='middle'>1e{decade}</text>\n", height - margin + 16.0);
    }
    for step in 0..=5 {
        let y = ymax / 1.1 * step as f64 / 5.0;
        svg += &format!("<text x='{}' y='{}' text-anchor='end'>{y:.0}</text>\n", margin - 6.0, py(y) + 4.0);
    }
    svg += &format!(
        "<text x='{}' y='{}' text-anchor='middle'>FLOPs per layer (2 x direct MACs, log scale)</text>\n",
        width / 2.0,
        height - 18.0
    );
    svg += &format!(
        "<text transform='translate(16,{}) rotate(-90)' text-anchor='middle'>effective GFLOP/s</text>\n",
        height / 2.0
    );
    let peak_y = py(report.peak_gflops);
    svg += &format!(
        "<line x1='{margin}' y1='{peak_y}' x2='{}' y2='{peak_y}' stroke='gray' stroke-dasharray='4'/>\n\
         <text x='{}' y='{}' text-anchor='end' fill='gray'>measured FMA peak {:.0}</text>\n",
        width - margin,
        width - margin,
        peak_y - 4.0,
        report.peak_gflops
    );
    for (l, x) in report.layers.iter().zip(&xs) {
        let color = match l.algo.as_str() {
            "f2" => "#1f77b4",
            "f4" => "#2ca02c",
            "f6" => "#d62728",
            "p2" => "#9467bd",
            "direct" => "#ff7f0e",
            _ => "#7f7f7f",
        };
        svg += &format!(
            "<circle cx='{:.1}' cy='{:.1}' r='5' fill='{color}'><title>{} ({}): {:.1} GFLOP/s</title></circle>\n",
            px(*x),
            py(l.effective_gflops),
            l.name,
            l.algo,
            l.effective_gflops
        );
    }
    for (i, (name, color)) in
        [("direct", "#ff7f0e"), ("f2", "#1f77b4"), ("f4", "#2ca02c"), ("f6", "#d62728"), ("p2", "#9467bd")]
            .iter()
            .enumerate()
    {
        let y = 40.0 + 16.0 * i as f64;
        svg += &format!(
            "<circle cx='{}' cy='{y}' r='5' fill='{color}'/><text x='{}' y='{}'>{name}</text>\n",
            margin + 10.0,
            margin + 20.0,
            y + 4.0
        );
    }
    svg += "</svg>\n";
    Ok(output.write(svg.as_bytes())?)
}
