//! PyTorch zip checkpoints (`.pth`): the files torch.save wrote
//! (`tools/make_pth_fixtures.py`) load as the safetensors file they came from, bit for
//! bit; hostile ones are refused with one clear line, without panicking or allocating
//! what they declare.

mod common;

use std::io::{Cursor, Write};

use repvgg_graph::{ArchSpec, TensorSource};
use repvgg_runtime::loader::{SafetensorsFile, read_input};
use repvgg_runtime::{Error, ErrorKind, Limits, Model, ModelOptions, SessionOptions};
use zip::write::SimpleFileOptions;

fn dir() -> std::path::PathBuf {
    common::models_dir().join("fixtures").join("tiny-groups")
}

const CHECKPOINTS: [&str; 3] = ["train.pth", "train-wrapped.pth", "train-module.pth"];

#[test]
fn checkpoints_hold_the_safetensors_tensors_bit_for_bit() {
    let st = SafetensorsFile::open_weights(&dir().join("train.safetensors"), 1 << 30).unwrap();
    for name in CHECKPOINTS {
        let pth = SafetensorsFile::open_weights(&dir().join(name), 1 << 30).unwrap();
        assert_eq!(pth.names(), st.names(), "{name}");
        let mut ints = 0;
        for tensor in st.names() {
            assert_eq!(pth.shape(tensor), st.shape(tensor), "{name}: {tensor}");
            assert_eq!(pth.dtype(tensor), st.dtype(tensor), "{name}: {tensor}");
            if st.dtype(tensor).as_deref() == Some("I64") {
                ints += 1;
                continue;
            }
            let (a, b) = (pth.tensor_f32(tensor).unwrap(), st.tensor_f32(tensor).unwrap());
            assert!(a.iter().map(|v| v.to_bits()).eq(b.iter().map(|v| v.to_bits())), "{name}: {tensor}");
        }
        // Every BatchNorm's int64 `num_batches_tracked` is there, and ignored by loading.
        assert!(ints > 10, "{name}: {ints} integer tensors");
    }
}

#[test]
fn checkpoints_load_the_same_model_and_logits() {
    let arch = ArchSpec::from_file(&dir().join("arch.toml")).unwrap();
    let options = ModelOptions { arch: Some(arch), ..Default::default() };
    let input = read_input(&dir().join("input.safetensors"), &Limits::default()).unwrap();
    let reference = Model::load(&dir().join("train.safetensors"), &options).unwrap();
    let logits = |model: &Model| {
        let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
        session.run(&input).unwrap().data().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    let want = logits(&reference);
    for name in CHECKPOINTS {
        let model = Model::load(&dir().join(name), &options).unwrap();
        assert_eq!(model.weights(), reference.weights(), "{name}");
        assert_eq!(logits(&model), want, "{name}");
        assert!(model.description().contains(name), "{}", model.description());
        // The same from bytes in memory (the Python and C interfaces' other entry).
        let bytes = std::fs::read(dir().join(name)).unwrap();
        let model = Model::load_bytes(name, bytes, &options).unwrap();
        assert_eq!(logits(&model), want, "{name} from bytes");
    }
}

/// The error loading `bytes` as a weights file gives, which must be a format error.
fn refusal(bytes: Vec<u8>) -> String {
    let error = SafetensorsFile::weights_from_bytes("x.pth", bytes).expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::Format, "{error}");
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    message
}

/// A zip of stored entries, as torch.save writes.
fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, options).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn unicode(s: &str) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
    out
}

fn int(v: i64) -> Vec<u8> {
    let mut out = vec![0x8a, 8];
    out.extend(v.to_le_bytes());
    out
}

/// One state dict entry as torch.save pickles it (protocol 2): `name` -> a tensor of
/// `size` and `stride` at `offset` in storage `0`, declared as `numel` elements of `storage`.
fn entry(name: &str, storage: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = unicode(name);
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend(unicode("storage"));
    p.extend(format!("ctorch\n{storage}\n").as_bytes());
    p.extend(unicode("0"));
    p.extend(unicode("cpu"));
    p.extend(int(numel));
    p.extend(b"tQ");
    p.extend(int(offset));
    p.push(b'(');
    size.iter().for_each(|&d| p.extend(int(d)));
    p.extend(b"t(");
    stride.iter().for_each(|&d| p.extend(int(d)));
    p.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
    p
}

/// The pickle of `{"linear.bias": tensor}` (see [`entry`]).
fn state_pickle(storage: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    [&[0x80, 2, b'}', b'('][..], &entry("linear.bias", storage, numel, offset, size, stride), b"u."].concat()
}

fn checkpoint(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    zip(&[("archive/data.pkl", pickle), ("archive/byteorder", b"little"), ("archive/data/0", storage)])
}

#[test]
fn a_hand_made_checkpoint_loads() {
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let bytes = checkpoint(&state_pickle("FloatStorage", 6, 2, &[2, 2], &[2, 1]), &data);
    let file = SafetensorsFile::weights_from_bytes("x.pth", bytes).unwrap();
    assert_eq!(file.shape("linear.bias"), Some(&[2, 2][..]));
    assert_eq!(&*file.tensor_f32("linear.bias").unwrap(), &[2.0, 3.0, 4.0, 5.0]);
    let data: Vec<u8> = (0..3).flat_map(|i| (i as f64 * 0.5).to_le_bytes()).collect();
    let bytes = checkpoint(&state_pickle("DoubleStorage", 3, 0, &[3], &[1]), &data);
    let file = SafetensorsFile::weights_from_bytes("x.pth", bytes).unwrap();
    assert_eq!(&*file.tensor_f32("linear.bias").unwrap(), &[0.0, 0.5, 1.0]);
}

#[test]
fn forbidden_globals_are_refused_unexecuted() {
    // torch.save of an object whose pickle calls os.system (`posix.system` on Linux).
    let error = Model::load(&dir().join("hostile-os-system.pth"), &ModelOptions::default()).expect_err("refused");
    let message = error.to_string();
    assert_eq!(error.kind(), ErrorKind::Format, "{message}");
    assert!(message.contains("global `posix.system`") && message.contains("refused"), "{message}");
    for (global, shown) in [
        (&b"cbuiltins\neval\n"[..], "`builtins.eval`"),
        (b"ctorch\nload\n", "`torch.load`"),
        (b"ctorch._utils\n_rebuild_tensor\n", "`torch._utils._rebuild_tensor`"),
    ] {
        let mut p = vec![0x80, 2];
        p.extend(global);
        p.extend(unicode("print(1)"));
        p.extend(b"\x85R.");
        let message = refusal(checkpoint(&p, b""));
        assert!(message.contains(shown), "{message}");
    }
    // STACK_GLOBAL (protocol 4) names are checked the same way.
    let mut p = vec![0x80, 4];
    p.extend(unicode("os"));
    p.extend(unicode("system"));
    p.extend(b"\x93.");
    assert!(refusal(checkpoint(&p, b"")).contains("`os.system`"));
    // Opcodes torch.save does not write for a state dict.
    let message = refusal(checkpoint(b"\x80\x02cos\nsystem\n", b""));
    assert!(message.contains("os.system"), "{message}");
    let message = refusal(checkpoint(b"\x80\x02(ios\nsystem\n.", b""));
    assert!(message.contains("INST"), "{message}");
}

#[test]
fn broken_and_lying_checkpoints_are_refused() {
    let good = std::fs::read(dir().join("train.pth")).unwrap();
    // Truncated anywhere: the zip's directory is at the end, so every cut is refused.
    for cut in (8..good.len()).step_by(997) {
        refusal(good[..cut].to_vec());
    }
    let floats = |n: usize| vec![0u8; 4 * n];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // The storage entry is shorter than the storage it is declared as.
        (checkpoint(&state_pickle("FloatStorage", 6, 0, &[6], &[1]), &floats(4)), "holds 16 bytes"),
        // Two views of one storage, the second declaring it larger than the first.
        (
            checkpoint(
                &[
                    &[0x80, 2, b'}', b'('][..],
                    &entry("a", "FloatStorage", 4, 0, &[4], &[1]),
                    &entry("b", "FloatStorage", 1 << 40, 1 << 39, &[4], &[1]),
                    b"u.",
                ]
                .concat(),
                &floats(4),
            ),
            "tensor `b` declares it as 1099511627776 elements",
        ),
        // The tensor reaches past its storage.
        (checkpoint(&state_pickle("FloatStorage", 4, 2, &[4], &[1]), &floats(4)), "reaches past its storage"),
        // Huge declared sizes: nothing of them is allocated.
        (
            checkpoint(&state_pickle("FloatStorage", 1 << 62, 0, &[1 << 40, 1 << 40], &[1 << 40, 1]), &floats(1)),
            "overflows",
        ),
        (checkpoint(&state_pickle("FloatStorage", 1 << 40, 0, &[1 << 40], &[1]), &floats(1)), "holds 4 bytes"),
        (checkpoint(&state_pickle("FloatStorage", -1, 0, &[1], &[1]), &floats(1)), "negative size"),
        (checkpoint(b"\x80\x02X\xff\xff\xff\xff", b""), "truncated"),
        (checkpoint(b"\x80\x02\x8a\xc8", b""), "LONG1"),
        // A transposed view.
        (checkpoint(&state_pickle("FloatStorage", 6, 0, &[2, 3], &[1, 2]), &floats(6)), "not contiguous"),
        // Deep nesting, a memo read before it is written, stack underflow.
        (checkpoint(&[&[0x80, 2][..], &[b'('; 100_000]].concat(), b""), "nests deeper than 1024"),
        (checkpoint(b"\x80\x02h\x07.", b""), "memo entry 7"),
        (checkpoint(b"\x80\x02t.", b""), "TUPLE without a MARK"),
        (checkpoint(b"\x80\x02.", b""), "STOP on an empty stack"),
        (checkpoint(b"\x80\x02}", b""), "no STOP"),
        (checkpoint(b"\x80\x01}.", b""), "protocol 1"),
        // Not a state dict, or a storage the zip lacks.
        (checkpoint(b"\x80\x02]K\x01a.", b""), "holds a list"),
        (zip(&[("archive/data.pkl", &state_pickle("FloatStorage", 1, 0, &[1], &[1]))]), "which the zip lacks"),
        (zip(&[("data.pkl", b"\x80\x02}.")]), "no `<name>/data.pkl`"),
        (zip(&[("a/data.pkl", b"\x80\x02}."), ("a/byteorder", b"big")]), "byte order is `big`"),
        // A storage type torch does not have.
        (checkpoint(&state_pickle("QuadStorage", 1, 0, &[1], &[1]), &floats(1)), "`torch.QuadStorage`"),
    ];
    for (bytes, phrase) in cases {
        let message = refusal(bytes);
        assert!(message.contains("not a valid PyTorch checkpoint"), "{message}");
        assert!(message.contains(phrase), "wanted {phrase:?}: {message}");
    }
    // A billion laughs: one list referenced 2^20 times per tuple builds nothing large.
    let mut p = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..8 {
        p.push(b'(');
        p.extend(std::iter::repeat_n([b'h', 0], 1 << 19).flatten());
        p.push(b't');
    }
    assert!(refusal(checkpoint(&p, b"")).contains("objects and items"));
}

#[test]
fn other_files_are_named_for_what_they_are_not() {
    let message = refusal(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01 a photo".to_vec());
    assert!(message.starts_with("x.pth: not a safetensors file or a PyTorch zip checkpoint"), "{message}");
    let mut legacy = vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    legacy.extend(b"rest of a legacy file");
    assert!(refusal(legacy).contains("legacy torch.save file"));
    // A CLI-facing load names the path, one line, exit code 4.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notes.pth");
    std::fs::write(&path, "just some text, long enough").unwrap();
    let error: Error = Model::load(&path, &ModelOptions::default()).err().unwrap();
    assert_eq!(error.kind().code(), 4);
    assert!(error.to_string().contains("notes.pth: not a safetensors file or a PyTorch zip checkpoint"), "{error}");
}
