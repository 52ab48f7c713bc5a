//! `repvgg density`: the computational density of convolution kinds on this CPU.
//!
//! Ding et al. (2021), Table 1, set the theoretical FLOPs of a layer against its measured
//! speed on a GPU: at the same channels and resolution a 3x3 convolution reached about 4x
//! the effective TFLOPS of a 1x1 (cuDNN's Winograd and the 1x1's low arithmetic
//! intensity), which is why a plain stack of 3x3s runs fast. This measures the same table
//! with our kernels: one layer of each kind, stride 1, the same `C -> C` channels and
//! `S x S` map, timed as the median of whole layer runs.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use repvgg::runtime::Algo;
use repvgg::runtime::lab::{self, Conv, ConvSpec, Depthwise, Team};
use repvgg::simd::Dispatch;
use repvgg::winograd::Variant;

use crate::bench::median;
use crate::samples::{Samples, noise_line, percent_of_peak};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub channels: usize,
    pub size: usize,
    pub batch: usize,
    pub runs: usize,
    pub warmup: usize,
}

impl Config {
    /// The defaults: a few seconds on two cores.
    pub const DEFAULT: Config = Config { channels: 128, size: 56, batch: 1, runs: 10, warmup: 2 };
    /// Ding et al.'s Table 1 setting (2048 -> 2048 channels at 56 x 56), scaled from the
    /// paper's batch to one image: one such 7x7 layer is 1.3 TFLOP.
    pub const PAPER: Config = Config { channels: 2048, size: 56, batch: 1, runs: 3, warmup: 1 };
}

/// One convolution kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A dense `k x k` convolution by the implicit-im2col GEMM.
    Direct(usize),
    /// A dense 3x3 convolution by Winograd F(m, 3).
    Winograd(Variant),
    /// A 3x3 depthwise convolution.
    Depthwise,
}

/// The rows, in the order of the table.
pub const KINDS: [Kind; 8] = [
    Kind::Direct(1),
    Kind::Direct(3),
    Kind::Winograd(Variant::F2),
    Kind::Winograd(Variant::F4),
    Kind::Winograd(Variant::F6),
    Kind::Direct(5),
    Kind::Direct(7),
    Kind::Depthwise,
];

impl Kind {
    /// `1x1`, `3x3`, ..., `3x3 dw`.
    pub fn kernel(self) -> String {
        match self {
            Kind::Direct(k) => format!("{k}x{k}"),
            Kind::Winograd(_) => "3x3".into(),
            Kind::Depthwise => "3x3 dw".into(),
        }
    }

    pub fn algo(self) -> &'static str {
        match self {
            Kind::Direct(_) => "direct",
            Kind::Winograd(Variant::F2) => "f2",
            Kind::Winograd(Variant::F4 | Variant::F4Textbook) => "f4",
            Kind::Winograd(Variant::F6) => "f6",
            Kind::Winograd(Variant::P2) => "p2",
            Kind::Winograd(Variant::P3) => "p3",
            Kind::Depthwise => "depthwise",
        }
    }

    /// Theoretical FLOPs of a stride-1 `c -> c` layer on `n` maps of `s x s`: 2 x the
    /// multiply-accumulates of the direct convolution (the paper's count).
    pub fn flops(self, c: usize, s: usize, n: usize) -> u64 {
        let pixels = (n * s * s) as u64;
        let (c, taps) = (c as u64, self.taps());
        match self {
            Kind::Depthwise => 2 * c * taps * pixels,
            _ => 2 * c * c * taps * pixels,
        }
    }

    /// Multiplies the algorithm performs: the direct count, or Winograd's `alpha^2` per
    /// channel pair and output tile (tile overhang included).
    pub fn multiplies(self, c: usize, s: usize, n: usize) -> u64 {
        match self {
            Kind::Winograd(v) => n as u64 * v.multiplies((c * c) as u64, s, s),
            _ => self.flops(c, s, n) / 2,
        }
    }

    fn taps(self) -> u64 {
        match self {
            Kind::Direct(k) => (k * k) as u64,
            Kind::Winograd(_) | Kind::Depthwise => 9,
        }
    }
}

/// One row of the table.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub kernel: String,
    pub algo: String,
    /// Theoretical FLOPs for the batch (2 x direct MACs).
    pub flops: u64,
    /// Multiplies the algorithm performs for the batch.
    pub muls: u64,
    pub median_ms: f64,
    /// Effective TFLOPS: theoretical FLOPs / time.
    pub tflops: f64,
    /// Achieved multiply rate, 2 x muls / time, in GFLOP/s.
    pub mul_gflops: f64,
    /// `mul_gflops` over the FMA peak measured in the same run.
    pub peak_share: f64,
}

/// The whole table.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub channels: usize,
    pub size: usize,
    pub batch: usize,
    pub threads: usize,
    pub isa: String,
    pub runs: usize,
    /// FMA peak of the threads with the kernel set, GFLOP/s: the best of two probes,
    /// before and after timing (`crate::samples`).
    pub peak_gflops: f64,
    /// The lower of the two.
    pub peak_gflops_lowest: f64,
    /// The probes disagreed, or a row ran above the best: shares are bounds.
    pub noisy: bool,
    pub rows: Vec<Row>,
}

/// Deterministic values in [-1, 1): weights and inputs need only be finite and varied.
fn values(len: usize, seed: u64) -> Vec<f32> {
    repvgg::graph::synthetic::input(len, seed)
}

/// Times one layer of each kind.
pub fn run(config: &Config, isa: Dispatch, threads: usize) -> Result<Report> {
    let Config { channels: c, size: s, batch: n, runs, warmup } = *config;
    let team = Team::new(threads, repvgg::runtime::DEFAULT_SPIN)?;
    let bias = vec![0.01f32; c];
    let dense =
        |kernel: usize| ConvSpec { n, kernel, in_channels: c, out_channels: c, groups: 1, stride: 1, h: s, w: s };
    let input = values(dense(3).input_len(), 1);
    let mut output = vec![0f32; dense(3).output_len()];
    let mut rows = Vec::new();
    let mut peaks = Samples::default();
    peaks.push(lab::peak_gflops_on(isa, threads, 150));
    for kind in KINDS {
        let time = |f: &mut dyn FnMut()| {
            for _ in 0..warmup {
                f();
            }
            let times: Vec<_> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed()
                })
                .collect();
            median(&times)
        };
        let ms = match kind {
            Kind::Direct(k) => {
                let mut conv = Conv::new(Algo::Direct, dense(k), &values(c * c * k * k, 2), &bias, &team)?;
                time(&mut || conv.run(&team, isa, &input, &mut output))
            }
            Kind::Winograd(v) => {
                let algo = match v {
                    Variant::F2 => Algo::F2,
                    Variant::F4 | Variant::F4Textbook => Algo::F4,
                    Variant::F6 => Algo::F6,
                    Variant::P2 | Variant::P3 => anyhow::bail!("density times stride-1 layers, not the stride-2 {v:?}"),
                };
                let mut conv = Conv::new(algo, dense(3), &values(c * c * 9, 3), &bias, &team)?;
                time(&mut || conv.run(&team, isa, &input, &mut output))
            }
            Kind::Depthwise => {
                let spec = ConvSpec { groups: c, ..dense(3) };
                let depthwise = Depthwise::new(spec, &values(c * 9, 4), &bias)?;
                time(&mut || depthwise.run(&team, isa, &input, &mut output))
            }
        };
        let (flops, muls) = (kind.flops(c, s, n), kind.multiplies(c, s, n));
        rows.push(Row {
            kernel: kind.kernel(),
            algo: kind.algo().into(),
            flops,
            muls,
            median_ms: ms,
            tflops: flops as f64 / ms / 1e9,
            mul_gflops: 2.0 * muls as f64 / ms / 1e6,
            peak_share: 0.0,
        });
    }
    peaks.push(lab::peak_gflops_on(isa, threads, 150));
    let peak_gflops = peaks.best();
    for row in &mut rows {
        row.peak_share = row.mul_gflops / peak_gflops;
    }
    let noisy = !peaks.steady() || rows.iter().any(|r| r.peak_share > 1.0);
    Ok(Report {
        channels: c,
        size: s,
        batch: n,
        threads,
        isa: isa.isa().to_string(),
        runs,
        peak_gflops,
        peak_gflops_lowest: peaks.lowest(),
        noisy,
        rows,
    })
}

/// The table as text.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let r = report;
    let _ = writeln!(
        out,
        "{} -> {} channels at {}x{}, batch {}, stride 1, {} threads, {} kernels, median of {} runs",
        r.channels, r.channels, r.size, r.size, r.batch, r.threads, r.isa, r.runs
    );
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>10} {:>10} {:>10} {:>8} {:>9} {:>6}",
        "kernel", "algo", "GFLOPs", "Gmul", "ms", "TFLOPS", "mul GF/s", "peak"
    );
    for row in &r.rows {
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>10.3} {:>10.3} {:>10.3} {:>8.3} {:>9.1} {:>5.0}%",
            row.kernel,
            row.algo,
            row.flops as f64 / 1e9,
            row.muls as f64 / 1e9,
            row.median_ms,
            row.tflops,
            row.mul_gflops,
            percent_of_peak(row.peak_share)
        );
    }
    if r.noisy {
        let mut peaks = Samples::default();
        peaks.push(r.peak_gflops_lowest);
        peaks.push(r.peak_gflops);
        let _ = writeln!(out, "{}", noise_line("FMA peak", &peaks, "GFLOP/s"));
    }
    let _ = writeln!(
        out,
        "measured FMA peak {:.1} GFLOP/s (best of 2, lowest {:.1}) on {} threads",
        r.peak_gflops, r.peak_gflops_lowest, r.threads
    );
    out
}

/// Effective TFLOPS per kind as horizontal bars, the FMA peak as a line.
pub fn svg(report: &Report) -> String {
    let (left, top, bar, gap, width) = (110.0, 40.0, 22.0, 8.0, 520.0);
    let peak = report.peak_gflops / 1e3;
    let most = report.rows.iter().map(|r| r.tflops).fold(peak, f64::max) * 1.1;
    let x = |t: f64| left + t / most * width;
    let height = top + report.rows.len() as f64 * (bar + gap) + 40.0;
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{height}' font-family='sans-serif' font-size='12'>\n\
         <text x='{left}' y='20'>effective TFLOPS (theoretical FLOPs / time), {} -> {} channels at {}x{}, {} threads, {}</text>\n",
        left + width + 80.0,
        report.channels,
        report.channels,
        report.size,
        report.size,
        report.threads,
        report.isa
    );
    for (i, row) in report.rows.iter().enumerate() {
        let y = top + i as f64 * (bar + gap);
        let color = if row.algo.starts_with('f') { "#2ca02c" } else { "#1f77b4" };
        let _ = writeln!(
            svg,
            "<text x='{}' y='{}' text-anchor='end'>{} {}</text><rect x='{left}' y='{y}' width='{:.1}' height='{bar}' fill='{color}'/>\
             <text x='{:.1}' y='{}'>{:.3}</text>",
            left - 6.0,
            y + 15.0,
            row.kernel,
            row.algo,
            x(row.tflops) - left,
            x(row.tflops) + 4.0,
            y + 15.0,
            row.tflops
        );
    }
    let bottom = top + report.rows.len() as f64 * (bar + gap);
    let _ = writeln!(
        svg,
        "<line x1='{0:.1}' y1='{top}' x2='{0:.1}' y2='{bottom}' stroke='#d62728' stroke-dasharray='4'/>\
         <text x='{0:.1}' y='{1}' fill='#d62728' text-anchor='middle'>FMA peak {2:.3}</text>",
        x(peak),
        bottom + 16.0,
        peak
    );
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts against their closed forms, by hand for C = 64, S = 10, N = 2.
    #[test]
    fn flops_and_multiplies_follow_the_closed_forms() {
        let (c, s, n) = (64u64, 10u64, 2u64);
        let pixels = n * s * s;
        for (kind, flops, muls) in [
            (Kind::Direct(1), 2 * c * c * pixels, c * c * pixels),
            (Kind::Direct(3), 2 * c * c * 9 * pixels, c * c * 9 * pixels),
            (Kind::Direct(5), 2 * c * c * 25 * pixels, c * c * 25 * pixels),
            (Kind::Direct(7), 2 * c * c * 49 * pixels, c * c * 49 * pixels),
            // 10 x 10 in 2 x 2 tiles: 25 tiles of 16 multiplies per pair.
            (Kind::Winograd(Variant::F2), 2 * c * c * 9 * pixels, n * c * c * 25 * 16),
            // In 4 x 4 tiles: 3 x 3 = 9 tiles (overhang included) of 36.
            (Kind::Winograd(Variant::F4), 2 * c * c * 9 * pixels, n * c * c * 9 * 36),
            // In 6 x 6 tiles: 2 x 2 tiles of 64.
            (Kind::Winograd(Variant::F6), 2 * c * c * 9 * pixels, n * c * c * 4 * 64),
            (Kind::Depthwise, 2 * c * 9 * pixels, c * 9 * pixels),
        ] {
            assert_eq!(kind.flops(c as usize, s as usize, n as usize), flops, "{kind:?}");
            assert_eq!(kind.multiplies(c as usize, s as usize, n as usize), muls, "{kind:?}");
        }
    }

    /// A small run: every kind appears once, with consistent derived fields.
    #[test]
    fn a_small_run_fills_every_row() {
        let config = Config { channels: 16, size: 8, batch: 1, runs: 1, warmup: 0 };
        let report = run(&config, Dispatch::auto().unwrap(), 1).unwrap();
        let kinds: Vec<(&str, &str)> = report.rows.iter().map(|r| (r.kernel.as_str(), r.algo.as_str())).collect();
        assert_eq!(
            kinds,
            [
                ("1x1", "direct"),
                ("3x3", "direct"),
                ("3x3", "f2"),
                ("3x3", "f4"),
                ("3x3", "f6"),
                ("5x5", "direct"),
                ("7x7", "direct"),
                ("3x3 dw", "depthwise")
            ]
        );
        for row in &report.rows {
            assert!(row.median_ms > 0.0);
            assert!((row.tflops - row.flops as f64 / row.median_ms / 1e9).abs() < 1e-12);
            assert!((row.peak_share * report.peak_gflops - row.mul_gflops).abs() < 1e-6 * row.mul_gflops);
        }
        assert!(svg(&report).matches("<rect").count() == 8);
        // A header, eight rows and a footer of two lines, plus a line naming the noise
        // when the FMA peak swung during the run (a busy host).
        assert_eq!(table(&report).lines().count(), if report.noisy { 12 } else { 11 });
    }
}
