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

use repvgg_runtime::buffers::Scratch;
use repvgg_runtime::exec::winograd::{self as wino, WinogradShape};
use repvgg_runtime::kernels::gemm::MR;
use repvgg_runtime::kernels::{CHANNEL_BLOCK, channel_blocks};
use repvgg_runtime::team::Team;
use repvgg_simd::Dispatch;
use repvgg_winograd::{PackedFilters, Variant};

const COPIES: usize = 16;
const RUNS: usize = 400;
const WARMUP: usize = 200;

fn main() -> anyhow::Result<()> {
    let channels: usize = std::env::args().nth(1).map_or(Ok(256), |s| s.parse())?;
    let (side, variant) = (14, Variant::F4);
    let copies = (0..COPIES)
        .map(|copy| {
            let weights: Vec<f32> =
                (0..channels * channels * 9).map(|i| (((i + copy) * 31 % 97) as f32 - 48.0) * 1e-3).collect();
            PackedFilters::new(variant, &weights, channels, channels, 1, MR)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let isa = Dispatch::auto()?;
    println!(
        "{channels}->{channels} at {side}x{side}, F(4,3), {} kernels: {:.1} MB of filters per copy",
        isa.isa(),
        copies[0].bytes() as f64 / 1e6
    );
    let bias = vec![0.01f32; channel_blocks(channels) * CHANNEL_BLOCK];
    let input: Vec<f32> =
        (0..channel_blocks(channels) * CHANNEL_BLOCK * side * side).map(|i| (i % 13) as f32 * 0.05).collect();
    let mut output = vec![0f32; channel_blocks(channels) * CHANNEL_BLOCK * side * side];
    let shape = WinogradShape { n: 1, in_channels: channels, out_channels: channels, groups: 1, h: side, w: side };
    let mut shared = vec![0f32; wino::shared_len(variant, &shape)];
    for threads in [1, 2] {
        let team = Team::new(threads, Duration::from_millis(5))?;
        let scratch = Scratch::new(threads, wino::scratch_len(variant, &shape));
        for (label, rotate) in [("hot in L3", false), ("from DRAM", true)] {
            // The first WARMUP runs are not timed: on a VM a vCPU that idled for a while
            // (during the one-thread runs) takes some time to run at full speed again.
            let mut times: Vec<f64> = (0..WARMUP + RUNS)
                .map(|run| {
                    let filters = &copies[if rotate { run % COPIES } else { 0 }];
                    let start = Instant::now();
                    team.install(|| {
                        wino::run(isa, filters, &bias, true, &shape, &input, &mut output, &mut shared, &scratch)
                    });
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
