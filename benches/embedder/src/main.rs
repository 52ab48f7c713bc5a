//! Times one configuration the way an embedding application runs it: a session with the
//! default options (kernel set `auto`), `run_into` in a loop. Prints one line:
//! `isa median_ms min_ms`, the median over `runs` after 5 warm-up runs.
//!
//! ```sh
//! cargo run --release --manifest-path benches/embedder/Cargo.toml -- A0 1 2 30   # arch batch threads runs
//! ```

use std::time::Instant;

use repvgg::{ArchSpec, Model, SessionOptions, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (arch, batch, threads, runs) =
        (arg(0, "A0"), arg(1, "1").parse::<usize>()?, arg(2, "2").parse::<usize>()?, arg(3, "30").parse::<usize>()?);
    let model = Model::synthetic(ArchSpec::builtin(&arch)?, 0)?;
    let input = Tensor::new(vec![batch, 3, 224, 224], repvgg::graph::synthetic::input(batch * 3 * 224 * 224, 42))?;
    let mut session = model.session(SessionOptions { threads, ..Default::default() })?;
    let mut logits = session.run(&input)?;
    for _ in 0..5 {
        session.run_into(&input, &mut logits)?;
    }
    let mut ms: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            session.run_into(&input, &mut logits).expect("run");
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!("{} {:.3} {:.3}", session.isa(), ms[ms.len() / 2], ms[0]);
    Ok(())
}
