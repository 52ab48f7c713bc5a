//! Embedding repvgg-rs as a library: load a model, run batches, take backbone features.
//!
//! ```sh
//! cargo run --release --example embed                      # synthetic A0 weights
//! cargo run --release --example embed -- weights.safetensors
//! ```

use repvgg::{ArchSpec, Model, ModelOptions, SessionOptions, Tensor};

fn main() -> anyhow::Result<()> {
    // A checkpoint in any naming form and dtype, or deterministic synthetic weights.
    let model = match std::env::args().nth(1) {
        Some(path) => Model::load(path.as_ref(), &ModelOptions::default())?,
        None => Model::synthetic(ArchSpec::builtin("A0")?, 0)?,
    };
    println!("{}", model.description());

    // A session owns a thread pool and working memory; keep it for many runs.
    let mut session = model.session(SessionOptions { threads: 2, ..Default::default() })?;
    let batch = Tensor::new(vec![2, 3, 224, 224], vec![0.5; 2 * 3 * 224 * 224])?;
    let logits = session.run(&batch)?;
    for image in 0..2 {
        let top = logits.top_k(image, 3);
        println!("image {image}: top classes {top:?}");
    }

    // Backbone use: the four stage outputs (C2..C5), NCHW.
    let features = session.features(&batch)?;
    for (i, stage) in features.stages.iter().enumerate() {
        println!("stage{}: {:?}", i + 1, stage.shape());
    }

    // `Model` is Send + Sync and cheap to clone: serve from several threads, each with its
    // own session.
    std::thread::scope(|scope| {
        for t in 0..2 {
            let model = model.clone();
            scope.spawn(move || -> anyhow::Result<()> {
                let mut session = model.session(SessionOptions { threads: 1, ..Default::default() })?;
                let x = Tensor::zeros(vec![1, 3, 160, 160]);
                println!("thread {t}: logits {:?}", session.run(&x)?.shape());
                Ok(())
            });
        }
    });
    Ok(())
}
