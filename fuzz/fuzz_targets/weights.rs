//! Weight loading end to end: safetensors and PyTorch-checkpoint parsing, name and shape resolution, architecture
//! inference, re-parameterization, and (for whatever network the bytes describe) one
//! forward pass through the fast executor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use repvgg::runtime::loader::SafetensorsFile;
use repvgg::{Model, ModelOptions, SessionOptions, Tensor};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::weights_from_bytes("fuzz", data.to_vec()) else { return };
    let Ok(model) = Model::from_safetensors(&file, &ModelOptions::default()) else { return };
    // Refused requests are fine; panics, hangs and crashes are not.
    let input = Tensor::new(vec![1, 3, 9, 7], (0..189).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect()).expect("shape");
    if let Ok(mut session) = model.session(SessionOptions { threads: 1, ..Default::default() }) {
        let _ = session.run(&input);
    }
});
