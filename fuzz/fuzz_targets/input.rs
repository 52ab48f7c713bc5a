//! The input-tensor reader of `repvgg infer`: safetensors parsing, the `input` tensor's
//! dtype and shape checks, the resource limits, and a forward pass of a small network.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use repvgg::runtime::loader::input_from_bytes;
use repvgg::{ArchSpec, Limits, Model, Network, SessionOptions};

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let arch = ArchSpec::from_toml(
            "name='fuzz'\nblocks_per_stage=[1,1,1,1]\nwidths=[16,16,16,32,32]\nnum_classes=5\n",
            "fuzz",
        )
        .expect("valid arch");
        let synthetic = Model::synthetic(arch.clone(), 1).expect("model");
        // Small limits keep every accepted input cheap to run.
        let limits = Limits {
            max_side: 64,
            max_batch: 4,
            max_input_elements: 1 << 16,
            max_arena_bytes: 64 << 20,
            max_weight_bytes: 64 << 20,
        };
        Model::from_parts(Network::new(arch), synthetic.weights().clone(), limits, "fuzz".into()).expect("model")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = input_from_bytes("fuzz", data.to_vec()) else { return };
    let Ok(mut session) = model().session(SessionOptions { threads: 1, ..Default::default() }) else { return };
    if let Ok(logits) = session.run(&input) {
        assert_eq!(logits.shape(), &[input.shape()[0], 5]);
    }
});
