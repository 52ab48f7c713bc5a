//! Image decoding and ImageNet preprocessing of `repvgg classify`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(values) = repvgg::imagenet::preprocess(data, "fuzz") {
        assert_eq!(values.len(), 3 * 224 * 224);
        assert!(values.iter().all(|v| v.is_finite()));
    }
});
