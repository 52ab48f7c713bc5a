//! What streaming Winograd filters from DRAM costs a 14x14 stage-3 layer at batch 1.
//!
//! Runs one F(4,3) layer 400 times per setting (after 200 untimed runs), its transformed filters either the same
//! copy every time (hot in L3) or rotating through 16 copies (too big for L3, so they come
//! from DRAM as they do in a whole network), on 1 and 2 threads, and prints medians.
//!
//! ```sh
//! cargo run --release -p repvgg-runtime --example filter_stream -- 256   # B0 stage 3
//! cargo run --release -p repvgg-runtime --example filter_stream -- 192   # A0 stage 3
//! ```

use std::time::{Duration, Instant};

use repvgg_runtime::Algo;
use repvgg_runtime::lab::{Conv, ConvSpec, Team};
use repvgg_simd::Dispatch;

const COPIES: usize = 16;
const RUNS: usize = 400;
const WARMUP: usize = 200;

fn main() -> anyhow::Result<()> {
    let channels: usize = std::env::args().nth(1).map_or(Ok(256), |s| s.parse())?;
    let side = 14;
    let spec = ConvSpec {
        n: 1,
        kernel: 3,
        in_channels: channels,
        out_channels: channels,
        groups: 1,
        stride: 1,
        h: side,
        w: side,
    };
    let isa = Dispatch::auto()?;
    let bias = vec![0.01f32; channels];
    let input: Vec<f32> = (0..spec.input_len()).map(|i| (i % 13) as f32 * 0.05).collect();
    let mut output = vec![0f32; spec.output_len()];
    for threads in [1, 2] {
        let team = Team::new(threads, Duration::from_millis(5))?;
        let mut copies = (0..COPIES)
            .map(|copy| {
                let weights: Vec<f32> =
                    (0..channels * channels * 9).map(|i| (((i + copy) * 31 % 97) as f32 - 48.0) * 1e-3).collect();
                Conv::new(Algo::F4, spec, &weights, &bias, &team)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if threads == 1 {
            println!(
                "{channels}->{channels} at {side}x{side}, F(4,3), {} kernels: {:.1} MB of filters per copy",
                isa.isa(),
                copies[0].weight_bytes() as f64 / 1e6
            );
        }
        for (label, rotate) in [("hot in L3", false), ("from DRAM", true)] {
            // The first WARMUP runs are not timed: on a VM a vCPU that idled for a while
            // (during the one-thread runs) takes some time to run at full speed again.
            let mut times: Vec<f64> = (0..WARMUP + RUNS)
                .map(|run| {
                    let conv = &mut copies[if rotate { run % COPIES } else { 0 }];
                    let start = Instant::now();
                    conv.run(&team, isa, &input, &mut output);
                    start.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            let mut times = times.split_off(WARMUP);
            times.sort_by(f64::total_cmp);
            println!("{threads} thread(s), filters {label}: median {:.3} ms", times[RUNS / 2]);
        }
    }
    Ok(())
}
