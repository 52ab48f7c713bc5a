//! The PyTorch-checkpoint reader alone (zip container and pickle subset), faster than the
//! weights target that also reaches it end to end: every input is read or refused, never
//! a panic, and every tensor it reads lies within the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = repvgg::runtime::pth::read(data) {
        for t in tensors {
            assert!(t.start <= t.end && t.end <= data.len(), "{t:?}");
        }
    }
});
