//! The C ABI from C: `examples/c/run.c` compiled with `cc` against the static library
//! that this test's build produced, run on a fixture, its logits compared with a Rust
//! session's bit for bit; and the header checked against the exported functions.

use std::path::{Path, PathBuf};
use std::process::Command;

use repvgg_runtime::{Model, ModelOptions, SessionOptions, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory of this test binary (`target/<profile>/deps`), where cargo also puts
/// the crate's static library.
fn deps_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_path_buf()
}

/// Compiles `source` with `cc -Wall -Wextra -Werror` against the header and the static
/// library this test's build produced, into `dir`.
fn compile(source: &Path, dir: &Path) -> PathBuf {
    let lib = deps_dir().join("librepvgg_capi.a");
    assert!(lib.exists(), "{} missing: cargo builds the staticlib with the tests", lib.display());
    let exe = dir.join(source.file_stem().unwrap());
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .arg(source)
        .arg("-I")
        .arg(repo().join("crates/capi/include"))
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror"])
        .arg(&lib)
        .args(["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl", "-lc", "-o"])
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(status.success(), "{cc} failed on {}", source.display());
    exe
}

#[test]
fn the_c_example_compiles_runs_and_matches_rust() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(&repo().join("examples/c/run.c"), dir.path());

    let weights = repo().join("models/fixtures/tiny-groups/train.safetensors");
    let (h, w) = (19, 23);
    let out = Command::new(&exe).arg(&weights).args([&h.to_string(), &w.to_string(), "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got: Vec<f32> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();

    // The same weights as a PyTorch checkpoint (`{"model": ...}`, `module.` names) through
    // the same call give the same logits.
    let pth = repo().join("models/fixtures/tiny-groups/train-module.pth");
    let out2 = Command::new(&exe).arg(&pth).args([&h.to_string(), &w.to_string(), "1"]).output().unwrap();
    assert!(out2.status.success(), "{}", String::from_utf8_lossy(&out2.stderr));
    let from_pth: Vec<f32> = String::from_utf8(out2.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(from_pth, got, "a .pth through the C ABI");

    let model = Model::load(&weights, &ModelOptions::default()).unwrap();
    let len = 2 * 3 * h * w;
    let x: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as i32 - 50) as f32 / 64.0).collect();
    let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let want = session.run(&Tensor::new(vec![2, 3, h, w], x).unwrap()).unwrap();
    assert_eq!(got, want.data(), "the C ABI gives the Rust session's logits");

    let classes = model.network().num_classes;
    for line in [
        format!("short buffer: 2 logits_len is 1, the batch needs 2 x {classes}"),
        format!("short input: 2 input_len is {}, the shape [2, 3, {h}, {w}] needs {len} floats", len - 1),
        "null input: 2 input is NULL".to_string(),
        "missing file: 3 weights file /nonexistent/w.safetensors: No such file".to_string(),
        "classes of NULL: -1".to_string(),
        format!("version {}", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(stderr.contains(&line), "stderr lacks `{line}`:\n{stderr}");
    }
}

/// `tests/run2.c`: from C, `repvgg_session_run2` refuses an input length that does not
/// match the shape and overlapping buffers with `REPVGG_USAGE` before touching either,
/// and with the right length gives `repvgg_session_run`'s logits bit for bit.
#[test]
fn run2_from_c_checks_the_length_and_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(&repo().join("crates/capi/tests/run2.c"), dir.path());
    let weights = repo().join("models/fixtures/tiny-groups/train.safetensors");
    let out = Command::new(&exe).arg(&weights).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for check in [
        "abi version >= 2",
        "old path runs",
        "short input_len refused: 2 input_len is 857, the shape [2, 3, 11, 13] needs 858 floats",
        "long input_len refused: 2 input_len is 859",
        "refused calls wrote no logits",
        "overlap refused: 2 input (858 floats) and logits (20 floats) overlap",
        "in place refused: 2",
        "overlap refused by the old path: 2",
        "refused calls wrote nothing into the input",
        "run2 equals run bitwise: 0",
        "adjacent buffers run: 0",
    ] {
        assert!(stderr.contains(&format!("ok {check}")), "no `ok {check}`:\n{stderr}");
    }
    assert!(stderr.contains("0 failed"), "{stderr}");
}

/// `tests/precision.c`: from C, a quantized model (the trained-digits fixture quantized
/// here and written with `Model::write`) says `int8` and runs INT8 by default, giving a
/// Rust INT8 session's logits bit for bit; `f32` and the refusals behave as documented.
#[test]
fn precision_from_c() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(&repo().join("crates/capi/tests/precision.c"), dir.path());
    let fixture = repo().join("models/fixtures/trained-digits");
    let arch = repvgg_graph::ArchSpec::from_file(&fixture.join("arch.toml")).unwrap();
    let options = ModelOptions { arch: Some(arch), ..ModelOptions::default() };
    let float = Model::load(&fixture.join("train.safetensors"), &options).unwrap();
    let images =
        repvgg_runtime::loader::read_input(&fixture.join("input.safetensors"), &repvgg_runtime::Limits::default())
            .unwrap();
    let calibration = Tensor::new(vec![16, 3, 24, 24], images.data()[..16 * 3 * 24 * 24].to_vec()).unwrap();
    let quantize = repvgg_runtime::QuantizeOptions { threads: 1, ..Default::default() };
    let (quantized, _) = float.quantize(&calibration, &quantize).unwrap();
    let path = dir.path().join("digits-int8.safetensors");
    quantized.write(&repvgg_files::Output::new(&path, &[]).unwrap()).unwrap();

    let out = Command::new(&exe)
        .arg(&path)
        .arg(fixture.join("train.safetensors"))
        .arg(fixture.join("arch.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for check in [
        "abi version 3",
        "quantized model is int8",
        "float model is f32",
        "NULL model",
        "old constructor runs int8",
        "NULL precision is the model's",
        "int8 kernels named",
        "f32 on a quantized model",
        "int8 on a float model refused: 2 invalid option: INT8 needs a quantized model",
        "unknown precision refused: 2 invalid option: unknown precision `fp16` (f32, int8, bf16)",
        "bf16 runs or is a CPU status",
        "negative threads refused: 2 threads is -1, not >= 0",
        "NULL session",
        "int8 runs",
        "both int8 sessions agree bitwise",
        "f32 runs, and differently",
    ] {
        assert!(stderr.contains(&format!("ok {check}")), "no `ok {check}`:\n{stderr}");
    }
    assert!(stderr.contains("0 failed"), "{stderr}");

    let got: Vec<f32> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let loaded = Model::load(&path, &options).unwrap();
    let mut session = loaded.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    assert_eq!(session.precision(), repvgg_runtime::Precision::Int8);
    let kernels = session.int8_kernels().unwrap().name();
    assert!(stderr.contains(&format!("int8 kernels {kernels}\n")), "{stderr}");
    let len: usize = 2 * 3 * 24 * 24;
    let x: Vec<f32> = (0..len).map(|i| ((i * 29 % 97) as i32 - 48) as f32 / 32.0).collect();
    let want = session.run(&Tensor::new(vec![2, 3, 24, 24], x).unwrap()).unwrap();
    assert_eq!(got, want.data(), "the C ABI gives the Rust INT8 session's logits");
}

/// Every function the crate exports is declared in the header and every declaration is
/// exported, and the header's status numbers are the error kinds' codes.
#[test]
fn the_header_is_current() {
    let header = std::fs::read_to_string(repo().join("crates/capi/include/repvgg.h")).unwrap();
    let source = std::fs::read_to_string(repo().join("crates/capi/src/lib.rs")).unwrap();
    let exported: Vec<&str> =
        source.split("extern \"C\" fn ").skip(1).map(|rest| rest.split('(').next().unwrap()).collect();
    let declared: Vec<&str> = header
        .lines()
        .filter(|l| !l.trim_start().starts_with('*') && !l.trim_start().starts_with("/*"))
        .filter_map(|l| l.split_once("repvgg_").and_then(|(_, rest)| rest.split_once('(')).map(|(name, _)| name))
        .collect();
    let mut exported_sorted: Vec<String> = exported.iter().map(|s| s.to_string()).collect();
    let mut declared_sorted: Vec<String> = declared.iter().map(|s| format!("repvgg_{s}")).collect();
    exported_sorted.sort();
    declared_sorted.sort();
    assert_eq!(exported_sorted, declared_sorted, "header and exports differ");
    let version = format!("#define REPVGG_ABI_VERSION {}", repvgg_capi::ABI_VERSION);
    assert!(header.contains(&version), "header lacks `{version}`");
    for (kind, name) in repvgg_capi::STATUSES {
        let line = format!("{name} = {}", kind.code());
        assert!(header.contains(&line), "header lacks `{line}`");
    }
}
