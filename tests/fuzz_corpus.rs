//! Replays the fuzzers' committed seeds (fuzz/seeds/) through the same entry points the
//! fuzz targets drive, as ordinary tests: nothing may panic, and the valid seeds must load.
//! A crash a fuzzer finds is added to fuzz/seeds/<target>/ so that it stays fixed.

use std::path::{Path, PathBuf};

use repvgg::runtime::Precision;
use repvgg::runtime::loader::{SafetensorsFile, input_from_bytes};
use repvgg::{ArchSpec, ErrorKind, Model, ModelOptions, SessionOptions, Tensor};

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

fn is_mutant(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "truncated" || e == "flipped")
}

#[test]
fn weight_seeds_load_and_run_or_are_refused() {
    let input = Tensor::new(vec![1, 3, 9, 7], (0..189).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect()).unwrap();
    let (mut loaded, mut int8) = (0, 0);
    for (path, bytes) in seeds("weights") {
        let result = SafetensorsFile::weights_from_bytes("seed", bytes)
            .and_then(|file| Model::from_safetensors(&file, &ModelOptions::default()))
            .and_then(|model| {
                let mut session = model.session(SessionOptions { threads: 1, ..Default::default() })?;
                Ok((session.run(&input)?, session.precision()))
            });
        match result {
            Ok((logits, precision)) => {
                assert!(logits.data().iter().all(|v| v.is_finite()), "{}", path.display());
                loaded += 1;
                // The quantized seed runs its INT8 layers, as the fuzzer does.
                let quantized = path.to_string_lossy().contains("INT8");
                if !is_mutant(&path) {
                    assert_eq!(precision == Precision::Int8, quantized, "{}", path.display());
                    int8 += usize::from(quantized);
                }
            }
            Err(e) => {
                assert!(is_mutant(&path), "valid seed {} refused: {e}", path.display());
                assert!(!e.to_string().contains('\n'));
            }
        }
    }
    assert!(loaded >= 15, "every naming form and dtype loads ({loaded})");
    assert!(int8 >= 1, "the quantized seed loads in INT8");
}

#[test]
fn pth_seeds_are_read_or_refused() {
    let (mut read, mut refused) = (0, 0);
    for (path, bytes) in seeds("pth") {
        match repvgg::runtime::pth::read(&bytes) {
            Ok(tensors) => {
                assert!(tensors.iter().all(|t| t.start <= t.end && t.end <= bytes.len()), "{}", path.display());
                read += 1;
            }
            Err(e) => {
                assert!(path.extension().is_some_and(|e| e == "refused"), "{}: {e}", path.display());
                refused += 1;
            }
        }
    }
    assert!(read >= 1 && refused >= 1, "{read} read, {refused} refused");
}

#[test]
fn input_seeds_parse_or_are_refused() {
    let model = Model::synthetic(
        ArchSpec::from_toml("name='t'\nblocks_per_stage=[1,1,1,1]\nwidths=[16,16,16,32,32]\nnum_classes=5\n", "t")
            .unwrap(),
        1,
    )
    .unwrap();
    let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let mut ran = 0;
    for (_, bytes) in seeds("input") {
        if let Ok(x) = input_from_bytes("seed", bytes)
            && session.run(&x).is_ok()
        {
            ran += 1;
        }
    }
    assert!(ran >= 2);
}

#[test]
fn image_seeds_decode_or_are_refused() {
    let mut decoded = 0;
    for (path, bytes) in seeds("image") {
        // `.refused`: inputs the fuzzer found that a limit must refuse.
        let must_refuse = path.extension().is_some_and(|e| e == "refused");
        match repvgg::imagenet::preprocess(&bytes, "seed") {
            Ok(values) => {
                assert!(!must_refuse, "{} was accepted", path.display());
                assert_eq!(values.len(), 3 * 224 * 224);
                decoded += 1;
            }
            Err(e) if must_refuse => assert_eq!(e.kind(), ErrorKind::Limit, "{}: {e}", path.display()),
            Err(e) => assert!(is_mutant(&path), "valid image {} refused: {e}", path.display()),
        }
    }
    assert!(decoded >= 3);
}
