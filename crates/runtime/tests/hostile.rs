//! Hostile inputs: lying safetensors headers, absurd shapes, resource limits, non-finite
//! values. Each must be refused with a clear error before any large allocation.

mod common;

use std::path::Path;

use repvgg_graph::ArchSpec;
use repvgg_runtime::loader::{SafetensorsFile, read_input};
use repvgg_runtime::{Error, ErrorKind, Model, ModelOptions, SessionOptions, Tensor};

/// A safetensors file from a raw JSON header and data bytes.
fn raw_file(dir: &Path, name: &str, header: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn refused(path: &Path) -> Error {
    SafetensorsFile::open(path).err().unwrap_or_else(|| panic!("{} was accepted", path.display()))
}

#[test]
fn lying_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&str, &str, &[u8], &str)] = &[
        // Element count overflows usize: 2^40 * 2^40 elements.
        (
            "overflow.safetensors",
            r#"{"x":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}}"#,
            &[0; 4],
            "overflows",
        ),
        // Claims 4 GB of data in a 16-byte file.
        (
            "past_end.safetensors",
            r#"{"x":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}"#,
            &[0; 16],
            "end",
        ),
        // Offsets that do not match dtype x shape.
        ("size.safetensors", r#"{"x":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}"#, &[0; 12], "byte size"),
        // Overlapping tensors.
        (
            "overlap.safetensors",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
            "overlap",
        ),
        // Not JSON, not UTF-8, empty.
        ("json.safetensors", "{not json", &[], "JSON"),
        ("utf8.safetensors", "\u{0}\u{1}", &[0xff, 0xfe], ""),
        ("negative.safetensors", r#"{"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, &[0; 4], "JSON"),
        ("dtype.safetensors", r#"{"x":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#, &[0; 16], "JSON"),
    ];
    for (name, header, data, phrase) in cases {
        let err = refused(&raw_file(d, name, header, data));
        let msg = err.to_string();
        assert_eq!(err.kind(), ErrorKind::Format, "{name}: {msg}");
        assert!(msg.contains(phrase) && msg.contains(name), "{name}: `{msg}` lacks `{phrase}`");
        assert!(!msg.contains('\n'), "{name}: multi-line message {msg}");
    }
    // A header length beyond the file and beyond any sane size.
    let huge = d.join("huge_header.safetensors");
    std::fs::write(&huge, [&(u64::MAX / 2).to_le_bytes()[..], b"{}"].concat()).unwrap();
    assert_eq!(refused(&huge).kind(), ErrorKind::Format);
    let long = d.join("long_header.safetensors");
    std::fs::write(&long, [&1000u64.to_le_bytes()[..], b"{}"].concat()).unwrap();
    assert!(refused(&long).to_string().contains("truncated"));
    // Two names that collide once `module.` is stripped.
    let dup = raw_file(
        d,
        "dup.safetensors",
        r#"{"module.x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
        &[0; 8],
    );
    assert!(refused(&dup).to_string().contains("both resolve to `x`"));
}

#[test]
fn input_files_with_absurd_shapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A 100000 x 100000 image declared with no data behind it: refused by validation,
    // not by trying to read 120 GB.
    let big = raw_file(
        dir.path(),
        "big.safetensors",
        r#"{"input":{"dtype":"F32","shape":[1,3,100000,100000],"data_offsets":[0,16]}}"#,
        &[0; 16],
    );
    assert_eq!(read_input(&big).unwrap_err().kind(), ErrorKind::Format);
    let i64s = raw_file(
        dir.path(),
        "i64.safetensors",
        r#"{"input":{"dtype":"I64","shape":[1,3,1,1],"data_offsets":[0,24]}}"#,
        &[0; 24],
    );
    assert!(read_input(&i64s).unwrap_err().to_string().contains("dtype I64"));
}

#[test]
fn resource_limits_refuse_before_allocating() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 1).unwrap();
    let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    for (shape, phrase) in [
        ([1usize, 3, 100_000, 100_000], "exceeds the limit of 8192 pixels per side"),
        ([1_000_000, 3, 8, 8], "batch 1000000 exceeds the limit of 1024"),
        ([1024, 3, 8192, 8192], "exceeds the limit of 268435456 elements"),
        ([20, 3, 2048, 2048], "working memory"),
    ] {
        let err = session.plan(shape[0], shape[2], shape[3]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Limit, "{shape:?}: {err}");
        assert!(err.to_string().contains(phrase), "{shape:?}: `{err}` lacks `{phrase}`");
    }
    assert_eq!(session.arena_bytes(), 0, "nothing was allocated for refused requests");
}

#[test]
fn non_finite_inputs_are_refused_and_named() {
    let model = Model::synthetic(ArchSpec::builtin("A0").unwrap(), 1).unwrap();
    let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = Tensor::zeros(vec![2, 3, 16, 20]);
        // Image 1, channel 2, row 5, column 7.
        x.data_mut()[((3 + 2) * 16 + 5) * 20 + 7] = bad;
        let err = session.run(&x).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Input);
        assert!(err.to_string().contains("input[1, 2, 5, 7] is"), "{err}");
    }
    // Subnormal inputs are fine (flushed to zero inside the workers).
    let x = Tensor::new(vec![1, 3, 16, 16], vec![1e-40; 3 * 16 * 16]).unwrap();
    assert!(session.run(&x).unwrap().data().iter().all(|v| v.is_finite()));
}

#[test]
fn non_finite_weights_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let network = repvgg_graph::Network::new(common::tiny_arch(false));
    let mut map = repvgg_graph::synthetic::checkpoint(
        &network,
        repvgg_graph::Convention::Official,
        repvgg_graph::BlockForm::Training,
        1,
    );
    let (shape, mut data) = map.remove("stage2.1.rbr_identity.running_var").unwrap();
    data[3] = f32::INFINITY;
    map.insert("stage2.1.rbr_identity.running_var", shape, data);
    let path = dir.path().join("inf.safetensors");
    common::write_map(&path, &map, common::Storage::F32, "");
    let err = Model::load(&path, &ModelOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(
        err.to_string()
            .contains("`stage2.1.rbr_identity.running_var` contains a non-finite value (inf) at flat index 3")
    );
}
