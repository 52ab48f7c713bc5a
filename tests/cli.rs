//! End-to-end tests of the `repvgg` binary: its commands and its refusals of bad input.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};

fn repvgg(args: &[&str]) -> Output {
    finish(Command::new(env!("CARGO_BIN_EXE_repvgg")).args(args))
}

/// Runs a command to completion, failing the test (instead of hanging it) if it takes more
/// than a minute: a hang is one of the failures these tests exist to catch.
fn finish(command: &mut Command) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Drain both pipes while waiting, so a long report cannot block the child.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("repvgg hung: {command:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

fn fixture(name: &str, file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures").join(name).join(file).display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reads a tensor from a safetensors file as (shape, f32 values).
fn read_tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32);
    (t.shape().to_vec(), t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
}

fn write_tensors(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<_> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
    values.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn info_prints_a_table_and_json() {
    let out = repvgg(&["info", "--arch", "A0"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("stage4.0") && text.contains("8.31 M parameters"), "{text}");

    let out = repvgg(&["info", "--arch", "B1g4", "--size", "160x192", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["params"].as_u64(), Some(36_125_416));
    assert_eq!(v["layers"].as_array().unwrap().len(), 28);
    assert_eq!(v["layers"][27]["out_h"].as_u64(), Some(5));
    assert_eq!(v["layers"][27]["out_w"].as_u64(), Some(6));
    assert!(v["macs"].as_u64().unwrap() > 0);

    // Multiplies with F(2,3) wherever it applies, against the closed form: 16 per
    // (input, output) channel pair and 2 x 2 output tile on stride-1 layers, the direct
    // MACs elsewhere; the totals add the classifier.
    let layers = v["layers"].as_array().unwrap();
    let mut total = v["head"]["macs"].as_u64().unwrap();
    for l in layers {
        let field = |k: &str| l[k].as_u64().unwrap();
        let want = if field("stride") == 1 {
            field("in_channels") / field("groups")
                * field("out_channels")
                * field("in_h").div_ceil(2)
                * field("in_w").div_ceil(2)
                * 16
        } else {
            field("macs")
        };
        assert_eq!(field("muls_f2"), want, "{}", l["name"]);
        let algo = l["algo"].as_str().unwrap();
        assert!(["direct", "f2", "f4", "f6"].contains(&algo), "{algo}");
        if algo == "direct" {
            assert_eq!(field("muls"), field("macs"), "{}", l["name"]);
        }
        total += field("muls_f2");
    }
    assert_eq!(v["muls_f2"].as_u64(), Some(total));
    assert!(v["muls"].as_u64().unwrap() < v["muls_f2"].as_u64().unwrap(), "the plan uses F(4,3) and F(6,3) too");
}

/// `density`: one row per kernel kind, with the documented JSON fields.
#[test]
fn density_prints_a_row_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("density.svg");
    let out = repvgg(&[
        "density",
        "--channels",
        "16",
        "--size",
        "12",
        "--runs",
        "1",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for row in rows {
        for field in ["kernel", "algo", "flops", "muls", "median_ms", "tflops", "peak_share"] {
            assert!(!row[field].is_null(), "{row} lacks {field}");
        }
    }
    assert_eq!(rows[0]["flops"].as_u64(), Some(2 * 16 * 16 * 144));
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    let out = repvgg(&["density", "--paper", "--channels", "8"]);
    assert_eq!(out.status.code(), Some(2), "--paper fixes the setting");
    let out = repvgg(&["density", "--channels", "65536", "--size", "8192"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    // The session's thread bound applies here too, before any thread starts.
    let out = repvgg(&["density", "--channels", "16", "--size", "8", "--threads", "100000"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("100000 threads requested; at most 1024"), "{}", stderr(&out));
}

/// `infer` of the tiny-groups fixture (training form) into `output`.
fn infer_tiny(output: &Path) -> Output {
    repvgg(&[
        "infer",
        "--weights",
        &fixture("tiny-groups", "train.safetensors"),
        "--input",
        &fixture("tiny-groups", "input.safetensors"),
        "--output",
        output.to_str().unwrap(),
    ])
}

#[test]
fn infer_matches_onnx_runtime_and_convert_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let logits = dir.path().join("logits.safetensors");
    let out = infer_tiny(&logits);
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, got) = read_tensor(&logits, "logits");
    let (want_shape, want) = read_tensor(Path::new(&fixture("tiny-groups", "expected.safetensors")), "logits");
    assert_eq!(shape, want_shape);
    assert!(max_rel_diff(&got, &want) < 1e-5);

    let deploy = dir.path().join("deploy.safetensors");
    let out = repvgg(&["convert", &fixture("tiny-groups", "train.safetensors"), deploy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (shape, _) = read_tensor(&deploy, "stage1.1.rbr_reparam.weight");
    assert_eq!(shape, vec![16, 8, 3, 3], "stage1.1 is 16 -> 16 in 2 groups: 8 inputs per output");
    let logits2 = dir.path().join("logits2.safetensors");
    let arch = fixture("tiny-groups", "arch.toml");
    let out = repvgg(&[
        "infer",
        "--weights",
        deploy.to_str().unwrap(),
        "--arch",
        &arch,
        "--input",
        &fixture("tiny-groups", "input.safetensors"),
        "--output",
        logits2.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, again) = read_tensor(&logits2, "logits");
    assert_eq!(again, got, "deploy weights written by convert give the same logits");
}

/// `infer --weights x.pth` gives the logits of the safetensors file the checkpoints were
/// written from, bit for bit (plain, wrapped in `state_dict`, and under `model` with
/// `module.` names); `convert` takes a `.pth` too.
#[test]
fn infer_and_convert_read_pytorch_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let want = dir.path().join("want.safetensors");
    let out = infer_tiny(&want);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, want) = read_tensor(&want, "logits");
    for name in ["train.pth", "train-wrapped.pth", "train-module.pth"] {
        let logits = dir.path().join(format!("{name}.safetensors"));
        let out = repvgg(&[
            "infer",
            "--weights",
            &fixture("tiny-groups", name),
            "--input",
            &fixture("tiny-groups", "input.safetensors"),
            "--output",
            logits.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let (_, got) = read_tensor(&logits, "logits");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{name}");
    }
    let deploy = dir.path().join("deploy.safetensors");
    let out = repvgg(&["convert", &fixture("tiny-groups", "train-module.pth"), deploy.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_tensor(&deploy, "stage1.1.rbr_reparam.weight").0, vec![16, 8, 3, 3]);
}

/// One bad-input case: the arguments, the expected exit code and a phrase of the message.
struct Refusal {
    what: &'static str,
    args: Vec<String>,
    code: i32,
    phrase: String,
}

fn check(r: &Refusal) {
    let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
    let out = repvgg(&args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(r.code), "{}: exit code; stderr: {err}", r.what);
    assert!(err.contains(&r.phrase), "{}: stderr `{err}` lacks `{}`", r.what, r.phrase);
    assert_eq!(err.trim_end().lines().count(), 1, "{}: message is not one line: {err}", r.what);
    assert!(!err.contains("panicked"), "{}: {err}", r.what);
    assert!(err.matches("os error").count() <= 1, "{}: cause repeated: {err}", r.what);
}

/// Every `--help` stands on its own: none sends the reader to the README for a default
/// or a meaning (the README is not installed with the binary).
#[test]
fn no_help_text_points_elsewhere() {
    let top = repvgg(&["--help"]);
    assert!(top.status.success(), "{}", stderr(&top));
    let text = String::from_utf8_lossy(&top.stdout).into_owned();
    let commands: Vec<String> = text
        .split("Commands:")
        .nth(1)
        .expect("--help lists the commands")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 5 && commands.iter().any(|c| c == "bench"), "{commands:?}");
    for help in std::iter::once(text).chain(commands.iter().map(|c| {
        let out = repvgg(&[c.as_str(), "--help"]);
        assert!(out.status.success(), "{c} --help: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    })) {
        assert!(!help.to_lowercase().contains("readme"), "help points to the README: {help}");
    }
}

#[test]
fn bad_input_is_refused_with_one_line_and_an_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let s = |p: &Path| p.display().to_string();
    let weights = fixture("tiny-groups", "train.safetensors");
    let input = fixture("tiny-groups", "input.safetensors");
    let good = std::fs::read(&weights).unwrap();

    std::fs::write(p("truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    std::fs::write(p("tiny.safetensors"), b"abc").unwrap();
    std::fs::write(p("garbage.safetensors"), [&16u64.to_le_bytes()[..], b"not json at all!"].concat()).unwrap();
    let lying = br#"{"x":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#;
    std::fs::write(p("lying.safetensors"), [&(lying.len() as u64).to_le_bytes()[..], lying, &[0u8; 16]].concat())
        .unwrap();
    let huge = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    std::fs::write(p("hugeheader.safetensors"), [&u64::MAX.to_le_bytes()[..], huge].concat()).unwrap();
    std::fs::write(p("photo.jpg"), b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00").unwrap();

    // Edit the real checkpoint: drop a tensor, reshape one, change a dtype.
    let st = safetensors::SafeTensors::deserialize(&good).unwrap();
    let edited = |skip: &str, replace: Option<(&str, Dtype, Vec<usize>, Vec<u8>)>, path: &Path| {
        let mut tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let names = st.names();
        for name in names {
            if name == skip {
                continue;
            }
            let t = st.tensor(name).unwrap();
            match &replace {
                Some((n, d, s, b)) if *n == name => tensors.push((name, *d, s.clone(), b.clone())),
                _ => tensors.push((name, t.dtype(), t.shape().to_vec(), t.data().to_vec())),
            }
        }
        write_tensors(path, &tensors);
    };
    edited("linear.bias", None, &p("missing.safetensors"));
    edited(
        "",
        Some(("stage2.0.rbr_dense.bn.running_var", Dtype::F32, vec![23], f32_bytes(vec![1.0; 23]))),
        &p("shape.safetensors"),
    );
    edited("", Some(("linear.bias", Dtype::I32, vec![10], vec![0u8; 40])), &p("dtype.safetensors"));
    edited("", Some(("linear.bias", Dtype::F32, vec![10], f32_bytes([f32::NAN; 10]))), &p("nan.safetensors"));

    write_tensors(&p("in4.safetensors"), &[("input", Dtype::F32, vec![1, 4, 8, 8], f32_bytes(vec![0.0; 256]))]);
    write_tensors(&p("in0.safetensors"), &[("input", Dtype::F32, vec![1, 3, 0, 8], vec![])]);
    write_tensors(&p("noinput.safetensors"), &[("image", Dtype::F32, vec![1, 3, 8, 8], f32_bytes(vec![0.0; 192]))]);
    write_tensors(&p("in3d.safetensors"), &[("input", Dtype::F32, vec![3, 8, 8], f32_bytes(vec![0.0; 192]))]);
    write_tensors(&p("in64.safetensors"), &[("input", Dtype::I64, vec![1, 3, 8, 8], vec![0; 8 * 192])]);
    edited(
        "",
        Some(("stage1.0.rbr_dense.bn.running_var", Dtype::F32, vec![16], f32_bytes([-1.0; 16]))),
        &p("negvar.safetensors"),
    );
    mkfifo(&p("fifo"));
    let copy = s(&p("weights-copy.safetensors"));
    std::fs::write(&copy, &good).unwrap();
    std::fs::write(p("bad.toml"), "name = 'x'\nblocks_per_stage = [1, 1]\n").unwrap();
    std::fs::write(
        p("huge.toml"),
        "name = 'huge'\nblocks_per_stage = [2, 4, 14, 1]\nwidths = [64, 8192, 16384, 32768, 65536]\n",
    )
    .unwrap();

    let out = s(&p("out.safetensors"));
    let infer = |w: &str, i: &str| {
        vec![
            "infer".into(),
            "--weights".into(),
            w.to_string(),
            "--input".into(),
            i.to_string(),
            "--output".into(),
            out.clone(),
        ]
    };
    let infer_arch = |w: &str, arch: &str| {
        let mut a = infer(w, &input);
        a.extend(["--arch".to_string(), arch.to_string()]);
        a
    };
    let cases = vec![
        Refusal {
            what: "missing weights",
            args: infer(&s(&p("nope.safetensors")), &input),
            code: 3,
            phrase: "No such file".into(),
        },
        Refusal {
            what: "truncated",
            args: infer(&s(&p("truncated.safetensors")), &input),
            code: 4,
            phrase: "not a valid safetensors file".into(),
        },
        Refusal {
            what: "too short",
            args: infer(&s(&p("tiny.safetensors")), &input),
            code: 4,
            phrase: "too short".into(),
        },
        Refusal {
            what: "garbage header",
            args: infer(&s(&p("garbage.safetensors")), &input),
            code: 4,
            phrase: "header".into(),
        },
        Refusal {
            what: "lying offsets",
            args: infer(&s(&p("lying.safetensors")), &input),
            code: 4,
            phrase: "truncated".into(),
        },
        Refusal {
            what: "huge header length",
            args: infer(&s(&p("hugeheader.safetensors")), &input),
            code: 4,
            phrase: "the declared header length 18446744073709551615 exceeds the limit".into(),
        },
        Refusal {
            // A JPEG's first 8 bytes read as a length of exabytes: the file is not
            // safetensors, which the message says instead of quoting the number.
            what: "a JPEG given as weights",
            args: infer(&s(&p("photo.jpg")), &input),
            code: 4,
            phrase: "photo.jpg: not a safetensors file or a PyTorch zip checkpoint".into(),
        },
        Refusal {
            // A checkpoint whose pickle would call os.system under torch.load: refused unrun.
            what: "a .pth that calls a function",
            args: infer(&fixture("tiny-groups", "hostile-os-system.pth"), &input),
            code: 4,
            phrase: "the pickle refers to the global `posix.system`, which is not part of a state dict; refused".into(),
        },
        Refusal {
            what: "missing tensor",
            args: infer(&s(&p("missing.safetensors")), &input),
            code: 5,
            phrase: "missing tensor `linear.bias`".into(),
        },
        Refusal {
            what: "wrong shape",
            args: infer(&s(&p("shape.safetensors")), &input),
            code: 5,
            phrase: "tensor `stage2.0.rbr_dense.bn.running_var` has shape [23], expected [24]".into(),
        },
        Refusal {
            what: "dtype",
            args: infer(&s(&p("dtype.safetensors")), &input),
            code: 5,
            phrase: "tensor `linear.bias` has dtype I32".into(),
        },
        Refusal {
            what: "nan",
            args: infer(&s(&p("nan.safetensors")), &input),
            code: 5,
            phrase: "`linear.bias` contains a non-finite value".into(),
        },
        Refusal {
            what: "unknown arch",
            args: infer_arch(&weights, "Q7"),
            code: 9,
            phrase: "unknown architecture `Q7`".into(),
        },
        Refusal {
            what: "arch mismatch",
            args: infer_arch(&weights, "A0"),
            code: 5,
            phrase: "expected [48, 3, 3, 3]".into(),
        },
        Refusal {
            what: "4 channels",
            args: infer(&weights, &s(&p("in4.safetensors"))),
            code: 6,
            phrase: "expected [N, 3, H, W]".into(),
        },
        Refusal {
            what: "3-d input",
            args: infer(&weights, &s(&p("in3d.safetensors"))),
            code: 6,
            phrase: "expected [N, 3, H, W]".into(),
        },
        Refusal {
            what: "empty map",
            args: infer(&weights, &s(&p("in0.safetensors"))),
            code: 6,
            phrase: "empty side".into(),
        },
        Refusal {
            what: "no input tensor",
            args: infer(&weights, &s(&p("noinput.safetensors"))),
            code: 6,
            phrase: "no tensor named `input`".into(),
        },
        Refusal {
            what: "missing input file",
            args: infer(&weights, &s(&p("nope.safetensors"))),
            code: 3,
            phrase: "nope.safetensors".into(),
        },
        Refusal {
            what: "zero threads",
            args: [infer(&weights, &input), vec!["--threads".into(), "0".into()]].concat(),
            code: 2,
            phrase: "--threads".into(),
        },
        Refusal {
            what: "unknown info arch",
            args: vec!["info".into(), "--arch".into(), "Z1".into()],
            code: 9,
            phrase: "unknown architecture".into(),
        },
        Refusal {
            what: "bad size",
            args: vec!["info".into(), "--size".into(), "abc".into()],
            code: 2,
            phrase: "224x160".into(),
        },
        Refusal {
            what: "info size beyond the side limit (it used to wrap its MAC counts)",
            args: vec!["info".into(), "--size".into(), "99999999999".into()],
            code: 6,
            phrase: "99999999999x99999999999 exceeds the limit of 8192 pixels per side".into(),
        },
        Refusal {
            what: "missing required argument, named",
            args: vec!["infer".into(), "--input".into(), input.clone(), "--output".into(), out.clone()],
            code: 2,
            phrase: "were not provided: --weights <WEIGHTS>".into(),
        },
        Refusal {
            what: "input of the wrong dtype is bad input",
            args: infer(&weights, &s(&p("in64.safetensors"))),
            code: 6,
            phrase: "tensor `input` has dtype I64, expected F32".into(),
        },
        Refusal {
            what: "negative BatchNorm variance",
            args: infer(&s(&p("negvar.safetensors")), &input),
            code: 5,
            phrase: "`stage1.0.rbr_dense.bn.running_var` holds a negative BatchNorm variance (-1)".into(),
        },
        Refusal {
            what: "a FIFO as weights is refused, not waited on",
            args: infer(&s(&p("fifo")), &input),
            code: 3,
            phrase: "is a FIFO, not a regular file".into(),
        },
        Refusal {
            what: "a FIFO as input",
            args: infer(&weights, &s(&p("fifo"))),
            code: 3,
            phrase: "input file".into(),
        },
        Refusal {
            what: "a FIFO as architecture file",
            args: vec!["info".into(), "--arch".into(), s(&p("fifo"))],
            code: 3,
            phrase: "architecture file".into(),
        },
        Refusal {
            what: "/dev/zero as architecture file is not read until memory runs out",
            args: vec!["info".into(), "--arch".into(), "/dev/zero".into()],
            code: 3,
            phrase: "/dev/zero is a character device, not a regular file".into(),
        },
        Refusal {
            what: "invalid architecture file",
            args: vec!["info".into(), "--arch".into(), s(&p("bad.toml"))],
            code: 9,
            // The line and the field, not only toml's `invalid length 2, ...`.
            phrase: "line 2, `blocks_per_stage`: invalid length 2, expected an array of length 4".into(),
        },
        Refusal {
            what: "a mistyped subcommand",
            args: vec!["benhc".into()],
            code: 2,
            phrase: "unrecognized subcommand 'benhc' (tip: a similar subcommand exists: 'bench')".into(),
        },
        Refusal {
            what: "a mistyped option",
            args: vec!["bench".into(), "--thread".into(), "1".into()],
            code: 2,
            phrase: "a similar argument exists: '--threads'".into(),
        },
        Refusal {
            what: "synthetic weights over the weight limit (bench used to abort with SIGABRT)",
            args: vec!["bench".into(), "--arch".into(), s(&p("huge.toml")), "--runs".into(), "1".into()],
            code: 7,
            phrase: "over the limit of 8192 MiB of weights".into(),
        },
        Refusal {
            what: "output onto the weights",
            args: {
                let mut a = infer(&copy, &input);
                *a.last_mut().unwrap() = copy.clone();
                a
            },
            code: 2,
            phrase: "is the same file as the input".into(),
        },
        Refusal {
            what: "convert onto its own input",
            args: vec!["convert".into(), copy.clone(), copy.clone()],
            code: 2,
            phrase: "is the same file as the input".into(),
        },
        Refusal {
            what: "output into a directory",
            args: {
                let mut a = infer(&weights, &input);
                *a.last_mut().unwrap() = s(dir.path());
                a
            },
            code: 3,
            phrase: "it is a directory".into(),
        },
        Refusal {
            what: "output onto a FIFO nobody reads",
            args: {
                let mut a = infer(&weights, &input);
                *a.last_mut().unwrap() = s(&p("fifo"));
                a
            },
            code: 3,
            phrase: "it is a FIFO that no process is reading".into(),
        },
    ];
    for case in &cases {
        check(case);
    }
    assert_eq!(std::fs::read(&copy).unwrap(), good, "the weights survived every refusal");
    assert!(std::fs::metadata(p("fifo")).unwrap().file_type().is_fifo(), "the FIFO is still a FIFO");
    assert!(!p("out.safetensors").exists(), "no refused command wrote its output");
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count(),
        0
    );
}

#[test]
fn bench_prints_json_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("layers.svg");
    let out = repvgg(&[
        "bench",
        "--arch",
        "A0",
        "--size",
        "64x48",
        "--batch",
        "2",
        "--threads",
        "2",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["median_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["batch"].as_u64(), Some(2));
    assert!(v["peak_gflops"].as_f64().unwrap() > 1.0);
    // The best of the probes spread over the run, and the lowest beside it.
    assert!(v["peak_gflops_lowest"].as_f64().unwrap() <= v["peak_gflops"].as_f64().unwrap());
    assert!(v["noisy"].is_boolean());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 22);
    let (peak, gbps) = (v["peak_gflops"].as_f64().unwrap(), v["read_gbps"].as_f64().unwrap());
    assert!(gbps > 0.0);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
    let mut roofline = 0.0;
    for l in layers {
        let algo = l["algo"].as_str().unwrap();
        // The floors follow from the counts and the two measured rates.
        let (floor, stream) = (l["floor_ms"].as_f64().unwrap(), l["stream_ms"].as_f64().unwrap());
        let weight_mb = l["weight_mb"].as_f64().unwrap();
        assert!(close(floor * peak * 1e6, 2.0 * l["multiplies"].as_u64().unwrap() as f64), "{l}");
        assert!(close(stream * gbps * 1e6, weight_mb * 1e6), "{l}");
        roofline += floor.max(stream);
        // The weight bytes are those of the packed buffers the algorithm reads: for the
        // 192-channel layers (no padding), K x C x positions floats.
        if l["in_channels"].as_u64() == Some(192) && l["out_channels"].as_u64() == Some(192) {
            let positions = match algo {
                "direct" => 9.0,
                "f2" => 16.0,
                "f4" => 36.0,
                "f6" => 64.0,
                other => panic!("{other}"),
            };
            assert!(close(weight_mb, 192.0 * 192.0 * positions * 4.0 / 1e6), "{l}");
        }
        assert!(["direct", "f2", "f4", "f6"].contains(&algo), "{algo}");
        assert!(l["median_ms"].as_f64().unwrap() > 0.0);
        if l["stride"].as_u64() == Some(2) {
            assert_eq!(algo, "direct");
        }
        // FLOPs are 2 x direct MACs for the batch; Winograd multiplies fewer.
        assert!(l["multiplies"].as_u64().unwrap() <= l["flops"].as_u64().unwrap() / 2 + 1);
    }
    assert!(close(v["roofline_ms"].as_f64().unwrap(), roofline));
    assert!(v["roofline_ms"].as_f64().unwrap() >= v["floor_ms"].as_f64().unwrap());
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.matches("<circle").count() >= 22);

    let out = repvgg(&["bench", "--size", "32", "--runs", "2", "--warmup", "0", "--algo", "f4", "--threads", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("stage3.1") && table.contains(" f4 ") && table.contains("images/s"), "{table}");
    assert!(table.contains("multiplies at the measured peaks") && table.contains(" stream "), "{table}");
    // Shares of the measured peak are never printed above 100%, however noisy the host
    // (a noisy run says so on a line of its own).
    for share in table.split_whitespace().filter_map(|w| w.strip_suffix('%')).filter_map(|w| w.parse::<f64>().ok()) {
        assert!(share <= 100.0, "a share of {share}% in\n{table}");
    }
    assert!(table.contains("(best of 3, lowest "), "{table}");
}

/// Deploy-form synthetic weights of the architecture `toml` in `dir/w.safetensors`, each
/// tensor passed through `edit` first.
fn synthetic_weights(dir: &Path, toml: &str, edit: impl Fn(&str, &mut [f32])) -> PathBuf {
    let arch = repvgg::ArchSpec::from_toml(toml, "test").unwrap();
    let network = repvgg::Network::new(arch);
    let map = repvgg::graph::synthetic::checkpoint(
        &network,
        repvgg::graph::Convention::Official,
        repvgg::graph::BlockForm::Deploy,
        3,
    );
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = map
        .iter()
        .map(|(name, shape, data)| {
            let mut data = data.to_vec();
            edit(name, &mut data);
            (name.to_string(), shape.to_vec(), data)
        })
        .collect();
    let weights = dir.join("w.safetensors");
    let output = repvgg::files::Output::new(&weights, &[]).unwrap();
    repvgg::runtime::loader::write_tensors(&output, tensors.iter().map(|(n, s, d)| (n.clone(), s.clone(), &d[..])))
        .unwrap();
    weights
}

fn png(path: &Path, seed: u8) {
    let img = image::RgbImage::from_fn(97, 131, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(seed), (y as u8).wrapping_add(seed), seed.wrapping_mul(3)])
    });
    img.save(path).unwrap();
}

#[test]
fn classify_prints_the_top5_per_image() {
    let dir = tempfile::tempdir().unwrap();
    // A small network with an ImageNet-sized head, synthetic weights.
    let weights = synthetic_weights(
        dir.path(),
        "name='tiny1k'\nblocks_per_stage=[1,1,1,1]\nwidths=[16,16,32,32,64]\nnum_classes=1000\n",
        |_, _| {},
    );
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    png(&a, 5);
    png(&b, 77);
    let out = repvgg(&["classify", "--weights", weights.to_str().unwrap(), a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}");
    assert!(lines[0].ends_with("a.png:") && lines[6].ends_with("b.png:"), "{text}");
    for line in lines[1..6].iter().chain(&lines[7..12]) {
        let pct: f64 = line.trim().split('%').next().unwrap().trim().parse().unwrap();
        assert!((0.0..=100.0).contains(&pct), "{line}");
    }

    let junk = dir.path().join("junk.jpg");
    std::fs::write(&junk, b"not a jpeg").unwrap();
    let out = repvgg(&["classify", "--weights", weights.to_str().unwrap(), junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot decode image"), "{}", stderr(&out));

    assert!(stderr(&out).contains("1 of 1 inputs could not be classified"), "{}", stderr(&out));

    // A model of another class count prints class indices (no names) instead of refusing.
    let out = repvgg(&["classify", "--weights", &fixture("tiny-se", "train.safetensors"), a.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().skip(1).all(|l| l.split_whitespace().count() == 2), "{text}");
}

/// Top-k (index, score) per path from `classify --json` output.
/// One image's classes as `classify --json` gives them: (index, score, label).
type TopK = Vec<(u64, f64, Option<String>)>;

fn classify_json(stdout: &[u8]) -> Vec<(String, TopK)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let top = v["top_k"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (t["index"].as_u64().unwrap(), t["score"].as_f64().unwrap(), t["label"].as_str().map(String::from))
                })
                .collect();
            (v["path"].as_str().unwrap().to_string(), top)
        })
        .collect()
}

/// A folder of 40 images in nested folders, one corrupt image and one non-image file,
/// streamed in batches of 8: every image once, in sorted order, the corrupt one reported
/// and counted in the exit (6), the same scores as one batch; labels, CSV and --top-k.
#[test]
fn classify_streams_a_folder_in_batches_and_skips_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    let mut expected = Vec::new();
    for i in 0..40u8 {
        let sub = root.join(format!("d{}", i % 3)).join(if i % 2 == 0 { "even" } else { "odd" });
        std::fs::create_dir_all(&sub).unwrap();
        let name = sub.join(format!("img{i:02}.{}", if i % 5 == 0 { "PNG" } else { "png" }));
        png(&name, i.wrapping_mul(13).wrapping_add(1));
        expected.push(name.display().to_string());
    }
    let corrupt = root.join("d1").join("broken.png");
    std::fs::write(&corrupt, b"\x89PNG but not really").unwrap();
    std::fs::write(root.join("d0").join("notes.txt"), b"not an image").unwrap();
    expected.sort();
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, (0..10).map(|i| format!("digit {i}\n")).collect::<String>()).unwrap();
    let weights = fixture("trained-digits", "train.safetensors");
    let arch = fixture("trained-digits", "arch.toml");
    let run = |extra: &[&str]| {
        let mut args = vec!["classify", "--weights", &weights, "--arch", &arch];
        args.extend_from_slice(extra);
        args.push(root.to_str().unwrap());
        repvgg(&args)
    };

    let out = run(&["--batch", "8", "--json", "--labels", labels.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("broken.png") && err.contains("cannot decode"), "{err}");
    assert!(err.contains("1 of 41 inputs could not be classified"), "{err}");
    let batched = classify_json(&out.stdout);
    assert_eq!(batched.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), expected);
    for (_, top) in &batched {
        assert_eq!(top.len(), 5);
        assert!(top.iter().all(|(i, _, l)| l.as_deref() == Some(format!("digit {i}").as_str())), "{top:?}");
    }

    // One batch of all 41 files, without labels: the same classes and scores.
    let out = run(&["--batch", "64", "--json"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let whole = classify_json(&out.stdout);
    assert_eq!(whole.len(), batched.len());
    for ((pa, a), (pb, b)) in batched.iter().zip(&whole) {
        assert_eq!(pa, pb);
        for ((ia, sa, _), (ib, sb, lb)) in a.iter().zip(b) {
            assert!(lb.is_none());
            assert!((sa - sb).abs() <= 1e-5 * sa.abs().max(sb.abs()) + 1e-7, "{pa}: {sa} vs {sb}");
            assert!(ia == ib || (sa - sb).abs() < 1e-5, "{pa}: class {ia} vs {ib}");
        }
    }

    let out = run(&["--batch", "8", "--csv", "--top-k", "3"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "path,rank,index,label,score");
    assert_eq!(lines.len(), 1 + 3 * 40, "{text}");
    assert!(lines[1].starts_with(&format!("{},1,", expected[0])) && lines[3].contains(",3,"), "{text}");
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(row.len(), 5, "{}", lines[1]);
    assert!(row[3].is_empty() && row[4].parse::<f64>().is_ok(), "{}", lines[1]);

    // A labels file of the wrong length is a usage error, before anything runs.
    std::fs::write(&labels, "zero\none\n").unwrap();
    let out = run(&["--labels", labels.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("has 2 lines; the model has 10 classes"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn the_timing_server_answers_its_protocol() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let logits = dir.path().join("logits.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_repvgg"))
        .args([
            "time",
            "--weights",
            &fixture("tiny-se", "train.safetensors"),
            "--input",
            &fixture("tiny-se", "input.safetensors"),
            "--threads",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = lines.next().unwrap().unwrap();
    assert!(banner.starts_with("ready RepVGG-custom") && banner.ends_with(" kernels)"), "{banner}");
    for _ in 0..3 {
        writeln!(stdin, "run").unwrap();
        let ms: f64 = lines.next().unwrap().unwrap().parse().unwrap();
        assert!(ms > 0.0);
    }
    writeln!(stdin, "write {}", logits.display()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "ok");
    writeln!(stdin, "frobnicate").unwrap();
    assert!(lines.next().unwrap().unwrap().starts_with("error: unknown command"));
    // An empty line is an unknown command, not `quit`.
    writeln!(stdin).unwrap();
    assert!(lines.next().unwrap().unwrap().starts_with("error: unknown command ``"));
    // The path is the rest of the line, spaces included.
    let spaced = dir.path().join("with space.safetensors");
    writeln!(stdin, "write {}", spaced.display()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "ok");
    assert!(spaced.exists() && !dir.path().join("with").exists());
    // A failed write answers an error and the server keeps going.
    writeln!(stdin, "write {}", dir.path().display()).unwrap();
    let answer = lines.next().unwrap().unwrap();
    assert!(answer.starts_with("error: output ") && answer.contains("it is a directory"), "{answer}");
    writeln!(stdin, "write {}", fixture("tiny-se", "train.safetensors")).unwrap();
    assert!(lines.next().unwrap().unwrap().contains("is the same file as the input"));
    writeln!(stdin, "run").unwrap();
    assert!(lines.next().unwrap().unwrap().parse::<f64>().is_ok(), "still serving");
    writeln!(stdin, "quit").unwrap();
    assert!(child.wait().unwrap().success());
    let (shape, got) = read_tensor(&logits, "logits");
    let (_, want) = read_tensor(Path::new(&fixture("tiny-se", "expected.safetensors")), "logits");
    assert_eq!(shape, vec![1, 7]);
    assert!(max_rel_diff(&got, &want) < 1e-5);
    assert_eq!(read_tensor(&spaced, "logits").1, got);
}

fn repvgg_with_env(args: &[&str], isa_env: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_repvgg"));
    command.args(args);
    match isa_env {
        Some(value) => command.env("REPVGG_ISA", value),
        None => command.env_remove("REPVGG_ISA"),
    };
    finish(&mut command)
}

/// `--isa` and `REPVGG_ISA` choose the kernel set, `bench` shows it, and a set the CPU
/// lacks (or an unknown name) is refused with one line and the CPU (or usage) exit code.
#[test]
fn the_kernel_set_is_chosen_shown_and_refused_when_missing() {
    use repvgg::simd::Isa;
    let bench = ["bench", "--size", "32", "--runs", "1", "--warmup", "0"];
    let json = |args: &[&str], env: Option<&str>| -> serde_json::Value {
        let out = repvgg_with_env(args, env);
        assert!(out.status.success(), "{args:?} {env:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let best = Isa::supported()[0].name();
    let with = |extra: &[&'static str]| -> Vec<&'static str> { bench.iter().chain(extra).copied().collect() };
    assert_eq!(json(&with(&["--json"]), None)["isa"], best);
    for isa in Isa::supported() {
        let v = json(&with(&["--json", "--isa", isa.name()]), None);
        assert_eq!(v["isa"], isa.name());
        assert!(v["peak_gflops"].as_f64().unwrap() > 0.0);
        // The environment stands in for `auto`, and an explicit --isa wins over it.
        assert_eq!(json(&with(&["--json"]), Some(isa.name()))["isa"], isa.name());
        assert_eq!(json(&with(&["--json", "--isa", "portable"]), Some(isa.name()))["isa"], "portable");
    }
    let out = repvgg_with_env(&with(&["--isa", "portable"]), None);
    let table = String::from_utf8(out.stdout).unwrap();
    // The header line ends with the kernel set and the arithmetic (INT8 adds its int8 set).
    assert!(table.lines().nth(1).unwrap().ends_with(", portable kernels, f32"), "{table}");

    let refusals = [
        (with(&["--isa", "sse9"]), None, 2, "--isa: unknown instruction set `sse9` (auto, avx512, avx2, portable)"),
        (with(&[]), Some("sse9"), 2, "unknown REPVGG_ISA value `sse9`"),
    ];
    for (args, env, code, phrase) in refusals {
        let out = repvgg_with_env(&args, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?} {env:?}: {err}");
        assert!(err.contains(phrase) && err.trim_end().lines().count() == 1, "{err}");
    }
    for isa in Isa::ALL.into_iter().filter(|isa| !isa.is_supported()) {
        let missing = isa.missing_features()[0];
        for (args, env) in [(with(&["--isa", isa.name()]), None), (with(&[]), Some(isa.name()))] {
            let out = repvgg_with_env(&args, env);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(8), "{args:?} {env:?}: {err}");
            assert!(err.contains(&format!("needs {missing}")) && err.contains("this CPU lacks"), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
    }
}

/// Every kernel set this CPU runs gives the ONNX Runtime fixture's logits through `infer`
/// (2e-5: the fast paths' bound against ORT, tests/golden.rs).
#[test]
fn infer_runs_every_kernel_set() {
    let dir = tempfile::tempdir().unwrap();
    let (_, want) = read_tensor(Path::new(&fixture("tiny-groups", "expected.safetensors")), "logits");
    for isa in repvgg::simd::Isa::supported() {
        let output = dir.path().join(format!("logits-{isa}.safetensors"));
        let out = repvgg_with_env(
            &[
                "infer",
                "--weights",
                &fixture("tiny-groups", "train.safetensors"),
                "--arch",
                &fixture("tiny-groups", "arch.toml"),
                "--input",
                &fixture("tiny-groups", "input.safetensors"),
                "--output",
                output.to_str().unwrap(),
                "--isa",
                isa.name(),
            ],
            None,
        );
        assert!(out.status.success(), "{isa}: {}", stderr(&out));
        let (_, got) = read_tensor(&output, "logits");
        assert!(max_rel_diff(&got, &want) < 2e-5, "{isa}: {}", max_rel_diff(&got, &want));
    }
}

/// The process umask, read without changing it.
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Outputs: new files get the usual mode, replaced ones keep theirs, links are followed,
/// devices and FIFOs are written in place, read-only files are refused, and a failing
/// standard output is an I/O error that names the stream.
#[test]
fn outputs_are_written_without_destroying_anything() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let infer_to = infer_tiny;
    let new = p("new.safetensors");
    assert!(infer_to(&new).status.success());
    assert_eq!(mode(&new), 0o666 & !umask());
    let logits = read_tensor(&new, "logits");

    let kept = p("kept.safetensors");
    std::fs::write(&kept, b"old").unwrap();
    std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(infer_to(&kept).status.success());
    assert_eq!((mode(&kept), read_tensor(&kept, "logits")), (0o640, logits.clone()));

    let link = p("link.safetensors");
    std::os::unix::fs::symlink("kept.safetensors", &link).unwrap();
    std::fs::write(&kept, b"old").unwrap();
    assert!(infer_to(&link).status.success());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(read_tensor(&kept, "logits"), logits);

    // Run as root, the old behaviour replaced /dev/null with a regular file.
    let out = infer_to(Path::new("/dev/null"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());

    let fifo = p("fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    // The reader may not have opened its end yet: retry until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !infer_to(&fifo).status.success() {
        assert!(std::time::Instant::now() < deadline, "the FIFO never received the logits");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let through = reader.join().unwrap();
    std::fs::write(p("through.safetensors"), through).unwrap();
    assert_eq!(read_tensor(&p("through.safetensors"), "logits"), logits);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

    // A read-only file is refused as `cp` would refuse it; root may write anything, so
    // as root the check runs the command as `nobody` (when setpriv is there).
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let readonly = shared.path().join("readonly.svg");
    std::fs::write(&readonly, b"precious").unwrap();
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o444)).unwrap();
    let bench = ["bench", "--size", "32", "--runs", "1", "--warmup", "0", "--plot", readonly.to_str().unwrap()];
    let root = running_as_root();
    let out = if !root {
        Some(repvgg(&bench))
    } else if Path::new("/usr/bin/setpriv").exists() {
        Some(finish(
            Command::new("/usr/bin/setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_repvgg")])
                .args(bench),
        ))
    } else {
        eprintln!("skipped the read-only check: running as root without setpriv");
        None
    };
    if let Some(out) = out {
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("the file is not writable (mode 0444); refusing to replace it"),
            "{}",
            stderr(&out)
        );
        assert_eq!(std::fs::read(&readonly).unwrap(), b"precious");
    }

    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_repvgg")).args(["info"]).stdout(full).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: standard output: No space left on device"), "{}", stderr(&out));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "{names:?}");
}

fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    uid.split_whitespace().nth(2) == Some("0")
}

/// Finite weights whose activations overflow f32: an error with its own exit code, and
/// no logits file.
#[test]
fn an_overflow_to_non_finite_logits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let weights = synthetic_weights(
        dir.path(),
        "name='deep'\nblocks_per_stage=[2,2,2,1]\nwidths=[16,16,32,32,64]\nnum_classes=10\n",
        |name, data| {
            if name.ends_with(".rbr_reparam.weight") {
                data.iter_mut().for_each(|v| *v *= 1e6);
            }
        },
    );
    let logits = dir.path().join("logits.safetensors");
    let out = repvgg(&[
        "infer",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        &fixture("tiny-groups", "input.safetensors"),
        "--output",
        logits.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(stderr(&out).contains("overflowed f32 inside the network"), "{}", stderr(&out));
    assert!(!logits.exists());
}

/// `repvgg serve` with `args` on ephemeral ports, one stream of one thread and a small
/// warm-up: the child, its log after the first line, and that line (the `listening` one).
fn start_serve(args: &[&str]) -> (std::process::Child, std::io::BufReader<std::process::ChildStderr>, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_repvgg"))
        .arg("serve")
        .args(args)
        .args(["--http-port", "0", "--grpc-port", "0", "--warmup", "32", "--streams", "1", "--threads-per-stream", "1"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    log.read_line(&mut line).unwrap();
    (child, log, line)
}

/// `repvgg serve` as a process: it reports where it listens, answers, drains on SIGTERM
/// and exits 0; bad flags and a taken port are refused with their exit codes.
#[test]
fn serve_listens_answers_and_exits_0_on_sigterm() {
    use std::io::{BufReader, Read, Write};
    let weights = fixture("trained-digits", "train.safetensors");
    let arch = fixture("trained-digits", "arch.toml");
    let serve = || start_serve(&["--weights", &weights, "--arch", &arch]);
    // SIGTERM, then the exit code and the rest of the log.
    let terminate = |mut child: std::process::Child, mut log: BufReader<std::process::ChildStderr>| {
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let mut rest = String::new();
        log.read_to_string(&mut rest).unwrap();
        (child.wait().unwrap().code(), rest)
    };
    let (child, log, line) = serve();
    let listening: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!((listening["msg"].as_str(), listening["model"].as_str()), (Some("listening"), Some("train")), "{line}");
    let addr = listening["http"].as_str().unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(s, "GET /v2/models/train/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let (code, rest) = terminate(child, log);
    assert_eq!(code, Some(0), "{rest}");
    assert!(rest.contains("\"signal\":\"SIGTERM\"") && rest.contains("\"msg\":\"stopped\""), "{rest}");
    // A SIGTERM sent the moment the server reports that it listens drains it too.
    let (child, log, line) = serve();
    assert!(line.contains("\"msg\":\"listening\""), "{line}");
    let (code, rest) = terminate(child, log);
    assert_eq!(code, Some(0), "{rest}");
    assert!(rest.contains("\"msg\":\"stopped\""), "{rest}");
    // Refusals: a bad knob names itself (exit 2); a taken port is an I/O error (exit 3).
    let out = repvgg(&["serve", "--synthetic", "--streams", "0", "--http-port", "0", "--grpc-port", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("streams and threads per stream must be at least 1"), "{}", stderr(&out));
    let out = repvgg(&["serve", "--synthetic", "--io-threads", "65", "--http-port", "0", "--grpc-port", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("I/O threads 1 to 64"), "{}", stderr(&out));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = repvgg(&["serve", "--synthetic", "--http-port", &port, "--grpc-port", "0"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("cannot listen for HTTP on 127.0.0.1:{port}")), "{}", stderr(&out));
    let out = repvgg(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `repvgg serve` on a file written by `repvgg quantize` serves INT8 and says so (its
/// `listening` line and model metadata name the precision and the int8 kernels);
/// `--precision f32` serves it in FP32; `--precision int8` on float weights and an
/// unknown precision are usage errors (exit 2).
#[test]
fn serve_runs_a_quantized_file_in_its_precision() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (weights, arch) = (fixture("trained-digits", "train.safetensors"), fixture("trained-digits", "arch.toml"));
    let q = dir.path().join("digits-int8.safetensors");
    let q = q.to_str().unwrap();
    let calibration = fixture("trained-digits", "input.safetensors");
    let out = repvgg(&[
        "quantize",
        "--weights",
        &weights,
        "--arch",
        &arch,
        "--calibration",
        &calibration,
        "--samples",
        "16",
        "--out",
        q,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (flags, precision) in [(&[][..], "int8"), (&["--precision", "f32"][..], "f32")] {
        let mut args = vec!["--weights", q, "--arch", &arch, "--model-name", "d"];
        args.extend_from_slice(flags);
        let (mut child, _log, line) = start_serve(&args);
        let listening: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(listening["precision"], precision, "{line}");
        assert_eq!(listening.get("int8_kernels").is_some(), precision == "int8", "{line}");
        let mut s = std::net::TcpStream::connect(listening["http"].as_str().unwrap()).unwrap();
        write!(s, "GET /v2/models/d HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let body: serde_json::Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["parameters"]["precision"], precision, "{reply}");
        assert_eq!(body["parameters"]["int8_kernels"], listening["int8_kernels"], "{reply}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let base = ["serve", "--weights", &weights, "--arch", &arch, "--http-port", "0", "--grpc-port", "0"];
    let out = repvgg(&[&base[..], &["--precision", "int8"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("INT8 needs a quantized model"), "{}", stderr(&out));
    let out = repvgg(&[&base[..], &["--precision", "fp16"]].concat());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--precision: invalid option: unknown precision `fp16` (f32, int8, bf16)"),
        "{}",
        stderr(&out)
    );
}

/// `--precision bf16`: on a CPU with AVX512-BF16, `infer` gives logits within BF16's
/// bound of ORT's and `serve` names the precision and the bf16 kernel set in its
/// metadata; elsewhere both refuse with the CPU exit code and a one-line reason.
#[test]
fn bf16_is_run_and_served_or_refused_with_the_cpu_code() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let logits = dir.path().join("logits.safetensors");
    let (weights, input) = (fixture("tiny-groups", "train.safetensors"), fixture("tiny-groups", "input.safetensors"));
    let infer = ["infer", "--weights", &weights, "--input", &input, "--output", logits.to_str().unwrap()];
    let out = repvgg(&[&infer[..], &["--precision", "bf16"]].concat());
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(repvgg::runtime::ErrorKind::Cpu.code() as i32), "{}", stderr(&out));
        assert!(stderr(&out).contains("BF16 needs AVX512-BF16"), "{}", stderr(&out));
        let out = repvgg(&["serve", "--weights", &weights, "--precision", "bf16", "--http-port", "0"]);
        assert_eq!(out.status.code(), Some(repvgg::runtime::ErrorKind::Cpu.code() as i32), "{}", stderr(&out));
        return;
    }
    let (_, got) = read_tensor(&logits, "logits");
    let (_, want) = read_tensor(Path::new(&fixture("tiny-groups", "expected.safetensors")), "logits");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
    assert!(err > 0.0 && err < 1e-2, "BF16 off ORT by {err:e}");
    // A forced kernel set below AVX-512 cannot run BF16.
    let out = repvgg(&[&infer[..], &["--precision", "bf16", "--isa", "avx2"]].concat());
    assert_eq!(out.status.code(), Some(repvgg::runtime::ErrorKind::Cpu.code() as i32), "{}", stderr(&out));

    let (mut child, _log, line) = start_serve(&["--weights", &weights, "--model-name", "t", "--precision", "bf16"]);
    let listening: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(listening["precision"], "bf16", "{line}");
    assert!(listening["bf16_kernels"].is_string(), "{line}");
    let mut s = std::net::TcpStream::connect(listening["http"].as_str().unwrap()).unwrap();
    write!(s, "GET /v2/models/t HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let body: serde_json::Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["parameters"]["precision"], "bf16", "{reply}");
    assert_eq!(body["parameters"]["bf16_kernels"], listening["bf16_kernels"], "{reply}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `repvgg serve` with its standard error piped and never read (past the first line) keeps
/// answering: log lines that do not fit the pipe and the log queue are dropped and counted
/// in `/metrics`, never waited for; SIGTERM still drains it and it exits 0.
#[test]
fn serve_keeps_answering_with_standard_error_unread() {
    use std::io::{Read, Write};
    // The log is kept open and never read again.
    let (mut child, log, line) = start_serve(&["--synthetic", "--model-name", "m"]);
    let listening: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = listening["http"].as_str().unwrap().to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    // One request on the keep-alive connection; the status and the body.
    let mut ask = |method: &str, path: &str, body: &[u8]| -> (u16, String) {
        // One write: a second small one would wait for the first's delayed ACK (Nagle).
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        request.extend_from_slice(body);
        s.write_all(&request).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap_or_else(|e| panic!("no answer to {method} {path}: {e}"));
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        s.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let input = vec!["0.5"; 3 * 32 * 32].join(",");
    let request =
        format!(r#"{{"inputs":[{{"name":"input","shape":[1,3,32,32],"datatype":"FP32","data":[{input}]}}]}}"#);
    for i in 0..3000 {
        let (status, body) = ask("POST", "/v2/models/m/infer", request.as_bytes());
        assert_eq!(status, 200, "request {i}: {body}");
        if i % 500 == 0 {
            assert_eq!(ask("GET", "/v2/health/ready", b"").0, 200);
            assert_eq!(ask("GET", "/metrics", b"").0, 200);
        }
    }
    let (_, metrics) = ask("GET", "/metrics", b"");
    let dropped: u64 = metrics
        .lines()
        .find(|l| l.starts_with("repvgg_log_lines_dropped_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no repvgg_log_lines_dropped_total in\n{metrics}"));
    assert!(dropped > 0, "{metrics}");
    let signalled = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < std::time::Duration::from_secs(30), "no exit after SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    drop(log);
}

/// `repvgg quantize` end to end on the trained digits, its refusals, `--precision` on the
/// other commands, and `bench --precision int8` on synthetic weights.
#[test]
fn quantize_writes_a_file_that_infer_runs_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| -> String { dir.path().join(name).display().to_string() };
    let weights = fixture("trained-digits", "train.safetensors");
    let arch = fixture("trained-digits", "arch.toml");
    let input = fixture("trained-digits", "input.safetensors");
    let quantize = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["quantize", "--weights", &weights, "--arch", &arch, "--threads", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    // The happy path: the report as JSON, a file that loads and runs.
    let q = p("int8.safetensors");
    let a = quantize(&["--calibration", &input, "--samples", "24", "--out", &q, "--json"]);
    let out = repvgg(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");
    for key in ["info", "layers", "top1_agreement", "cosine", "max_rel_error"] {
        assert!(v.get(key).is_some(), "no `{key}` in {v}");
    }
    for key in ["calibration", "samples", "calibration_sha256", "fp32_layers"] {
        assert!(v["info"].get(key).is_some(), "no `info.{key}` in {v}");
    }
    assert_eq!(v["info"]["calibration"], "percentile");
    assert_eq!(v["info"]["samples"], 24);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 7, "{v}");
    for l in layers {
        for key in ["name", "precision", "input_scale", "weight_spread", "dead_inputs", "alone_logit_error", "sqnr_db"]
        {
            assert!(l.get(key).is_some(), "no `layers[].{key}` in {l}");
        }
    }
    assert_eq!(layers[0]["precision"], "int8", "the stem runs INT8 too: {v}");
    assert!(layers.iter().all(|l| ["int8", "f32"].contains(&l["precision"].as_str().unwrap())), "{v}");
    assert!(v["top1_agreement"].as_f64().unwrap() >= 0.95, "{v}");
    // The summary without --json.
    let a = quantize(&["--calibration", &input, "--samples", "8", "--out", &p("int8b.safetensors")]);
    let out = repvgg(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("INT8 (percentile calibration, 8 samples)") && text.contains("wrote"), "{text}");

    // infer reads the file and runs it in INT8 (and in FP32 on request).
    let labels = read_tensor(Path::new(&fixture("trained-digits", "expected.safetensors")), "labels").1;
    for precision in [None, Some("f32"), Some("int8")] {
        let logits = p("logits.safetensors");
        let mut a = vec!["infer", "--weights", &q, "--arch", &arch, "--input", &input, "--output", &logits];
        if let Some(precision) = precision {
            a.extend(["--precision", precision]);
        }
        let out = repvgg(&a);
        assert!(out.status.success(), "{precision:?}: {}", stderr(&out));
        let (shape, values) = read_tensor(Path::new(&logits), "logits");
        assert_eq!(shape, vec![297, 10]);
        let correct = values
            .chunks(10)
            .zip(&labels)
            .filter(|(row, label)| (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() == **label as usize)
            .count();
        assert!(correct >= 294, "{precision:?}: {correct} of 297 right (FP32: 296)");
    }

    // Refusals, each one line with the code of its kind (docs/hardening.md).
    let no_input = fixture("trained-digits", "expected.safetensors");
    std::fs::create_dir(p("empty")).unwrap();
    let refuse = |what: &'static str, a: Vec<String>, code: i32, phrase: &str| Refusal {
        what,
        args: a,
        code,
        phrase: phrase.to_string(),
    };
    let infer_on = |w: &str, precision: &str| -> Vec<String> {
        [
            "infer",
            "--weights",
            w,
            "--arch",
            &arch,
            "--input",
            &input,
            "--output",
            &p("x.safetensors"),
            "--precision",
            precision,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let cases = [
        refuse(
            "--method bogus",
            quantize(&["--calibration", &input, "--out", &p("o.safetensors"), "--method", "bogus"]),
            2,
            "unknown calibration method `bogus`",
        ),
        refuse(
            "--samples 0",
            quantize(&["--calibration", &input, "--out", &p("o.safetensors"), "--samples", "0"]),
            2,
            "--samples must be at least 1",
        ),
        refuse(
            "a calibration file without `input`",
            quantize(&["--calibration", &no_input, "--out", &p("o.safetensors")]),
            6,
            "has no tensor named `input`",
        ),
        refuse(
            "an empty calibration folder",
            quantize(&["--calibration", &p("empty"), "--out", &p("o.safetensors")]),
            2,
            "no JPEG or PNG images to calibrate on",
        ),
        refuse(
            "the output is the weights",
            quantize(&["--calibration", &input, "--out", &weights]),
            2,
            "refusing to overwrite an input",
        ),
        refuse(
            "the output is the calibration file",
            quantize(&["--calibration", &input, "--out", &input]),
            2,
            "refusing to overwrite an input",
        ),
        refuse(
            "an unknown --keep-fp32 layer",
            quantize(&["--calibration", &input, "--out", &p("o.safetensors"), "--keep-fp32", "stage7.7"]),
            2,
            "stage0, stage1.0",
        ),
        refuse(
            "quantizing a quantized file",
            {
                let mut a = quantize(&["--calibration", &input, "--out", &p("o.safetensors")]);
                a[2] = q.clone();
                a
            },
            2,
            "already quantized",
        ),
        refuse("--precision int8 on float weights", infer_on(&weights, "int8"), 2, "INT8 needs a quantized model"),
        refuse("--precision f16", infer_on(&q, "f16"), 2, "unknown precision `f16`"),
    ];
    for case in &cases {
        check(case);
    }
    assert!(!Path::new(&p("o.safetensors")).exists(), "no refused command wrote its output");
    assert!(!Path::new(&p("x.safetensors")).exists());

    // bench calibrates float weights itself, and says so.
    let out =
        repvgg(&["bench", "--precision", "int8", "--runs", "1", "--warmup", "0", "--size", "32", "--threads", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let header: String = text.lines().take(3).collect::<Vec<_>>().join("\n");
    assert!(header.contains("int8"), "{header}");
    let set = ["amx", "avx512-vnni", "avx2", "portable"]
        .into_iter()
        .find(|s| header.contains(&format!("({s} int8 kernels)")));
    assert!(set.is_some(), "the header names the int8 kernel set: {header}");
    assert!(header.contains("INT8 calibrated on 8 synthetic inputs"), "{header}");
    // Each layer's drift from FP32: a column of the table, a field of the JSON.
    assert!(text.lines().nth(3).is_some_and(|l| l.ends_with("vs f32")), "{text}");
    let out = repvgg(&[
        "bench",
        "--precision",
        "int8",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--size",
        "32",
        "--threads",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for layer in layers {
        let error = layer["error"].as_f64().unwrap_or(f64::NAN);
        assert!(error > 0.0 && error < 0.5, "{layer}");
    }
}

mod fake_hub;
use fake_hub::{COMMIT, FakeHub, Fault, sha256_hex};

/// Runs `repvgg` against a hub at `endpoint` with the cache in `hf_home`, nothing else from
/// the environment's hub variables.
fn repvgg_hub(args: &[&str], endpoint: &str, hf_home: &Path, extra: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_repvgg"));
    command.args(args).env("HF_ENDPOINT", endpoint).env("HF_HOME", hf_home);
    for name in ["HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"] {
        command.env_remove(name);
    }
    command.envs(extra.iter().copied());
    finish(&mut command)
}

/// A training-form checkpoint with timm's names, as timm's hub repositories hold.
fn timm_checkpoint(arch: repvgg::ArchSpec) -> Vec<u8> {
    let network = repvgg::Network::new(arch);
    let map = repvgg::graph::synthetic::checkpoint(
        &network,
        repvgg::graph::Convention::Timm,
        repvgg::graph::BlockForm::Training,
        7,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let output = repvgg::files::Output::new(&path, &[]).unwrap();
    repvgg::runtime::loader::write_tensors(&output, map.iter().map(|(n, s, d)| (n.to_string(), s.to_vec(), d)))
        .unwrap();
    std::fs::read(&path).unwrap()
}

fn tiny_timm_checkpoint() -> Vec<u8> {
    let toml = std::fs::read_to_string(fixture("tiny-groups", "arch.toml")).unwrap();
    timm_checkpoint(repvgg::ArchSpec::from_toml(&toml, "tiny-groups").unwrap())
}

fn timm_config(architecture: &str, classes: usize) -> String {
    format!(
        r#"{{"architecture": "{architecture}", "num_classes": {classes}, "pretrained_cfg": {{"input_size": [3, 224, 224],
            "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}}}"#
    )
}

fn stdout_path(out: &Output) -> PathBuf {
    PathBuf::from(String::from_utf8(out.stdout.clone()).unwrap().trim_end_matches('\n'))
}

/// Names in a cache folder, or none if it does not exist.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// A pull into a fresh `HF_HOME` leaves `huggingface_hub`'s layout (blobs named by etag,
/// `refs/main`, relative symlinks in the commit's snapshot); later pulls use the cache:
/// online with the metadata request alone, offline with no request, and with the hub
/// gone with a warning. `--out` copies the file; a renamed repository's relative redirect
/// is followed.
#[test]
fn pull_fills_the_hub_cache_then_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    let weights = tiny_timm_checkpoint();
    let config = timm_config("repvgg_tiny", 10);
    let repos = [("me/tiny".to_string(), (weights.clone(), Some(config.clone())))].into();
    let hub = FakeHub::start(repos, [("me/old-tiny".to_string(), "me/tiny".to_string())].into());
    let pull = |name: &str, extra: &[(&str, &str)]| repvgg_hub(&["pull", name], &hub.endpoint, &home, extra);

    let out = pull("me/tiny", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = home.join("hub/models--me--tiny");
    let path = stdout_path(&out);
    assert_eq!(path, root.join("snapshots").join(COMMIT).join("model.safetensors"));
    let sha = sha256_hex(&weights);
    assert_eq!(std::fs::read_link(&path).unwrap(), Path::new("../../blobs").join(&sha));
    assert_eq!(std::fs::read(&path).unwrap(), weights);
    assert_eq!(std::fs::read_to_string(root.join("refs/main")).unwrap(), COMMIT);
    let config_entry = root.join("snapshots").join(COMMIT).join("config.json");
    assert_eq!(std::fs::read_to_string(&config_entry).unwrap(), config);
    assert_eq!(
        entries(&root.join("blobs")).len(),
        2,
        "the two blobs and no leftover: {:?}",
        entries(&root.join("blobs"))
    );
    assert_eq!(hub.gets(), 2);

    let out = pull("hf:me/tiny", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_path(&out), path);
    assert_eq!(hub.gets(), 2, "a cached blob is not downloaded again");

    let asked = hub.requests.lock().unwrap().len();
    let out = pull("me/tiny", &[("HF_HUB_OFFLINE", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_path(&out), path);
    assert_eq!(hub.requests.lock().unwrap().len(), asked, "offline asks nothing");

    let out = pull("me/old-tiny", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(stdout_path(&out)).unwrap(), weights);

    let copy = dir.path().join("copy.safetensors");
    let out = repvgg_hub(&["pull", "me/tiny", "--out", copy.to_str().unwrap()], &hub.endpoint, &home, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_path(&out), copy);
    assert_eq!(std::fs::read(&copy).unwrap(), weights);

    let endpoint = hub.endpoint.clone();
    drop(hub);
    let out = repvgg_hub(&["pull", "me/tiny"], &endpoint, &home, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_path(&out), path);
    assert!(stderr(&out).starts_with("warning: the hub is unreachable"), "{}", stderr(&out));
}

/// What cannot be had or verified is refused with one line and its exit code, and leaves
/// nothing in the cache that a later pull or `huggingface_hub` would take as valid: a name
/// missing offline or on the hub, a wrong size or sha256, a declared size over the limit
/// (refused before downloading), and a hub that stalls (cut by the timeouts).
#[test]
fn pull_refuses_what_it_cannot_get_or_verify() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    let repos = [("me/tiny".to_string(), (tiny_timm_checkpoint(), None))].into();
    let hub = FakeHub::start(repos, HashMap::new());
    let root = home.join("hub/models--me--tiny");
    let timeouts = [("HF_HUB_DOWNLOAD_TIMEOUT", "1"), ("HF_HUB_ETAG_TIMEOUT", "1")];
    let refused = |name: &str, extra: &[(&str, &str)], code: i32, words: &[&str]| {
        let start = std::time::Instant::now();
        let out = repvgg_hub(&["pull", name], &hub.endpoint, &home, extra);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {text}");
        assert!(text.starts_with("error: ") && text.lines().count() == 1, "{text}");
        for word in words {
            assert!(text.contains(word), "`{word}` not in {text}");
        }
        assert!(text.matches("http://").count() <= 1, "a URL named twice: {text}");
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "{name} took {:?}", start.elapsed());
        assert_eq!(entries(&root.join("blobs")), Vec::<String>::new(), "{text}");
        assert_eq!(entries(&root.join("refs")), Vec::<String>::new(), "{text}");
        assert!(!root.join("snapshots").join(COMMIT).join("model.safetensors").exists(), "{text}");
        text
    };
    refused(
        "me/tiny",
        &[("HF_HUB_OFFLINE", "1")],
        3,
        &["me/tiny: model.safetensors is not in the cache", "HF_HUB_OFFLINE"],
    );
    refused("me/nothing", &[], 3, &["me/nothing/resolve/main/model.safetensors: the hub answered 404"]);
    refused("../etc", &[], 2, &["not a hub name"]);
    for (fault, code, words) in [
        (Fault::CorruptBlob, 4, &["me/tiny/model.safetensors: sha256 ", "the download was discarded"][..]),
        (Fault::WrongSize, 4, &["bytes, the hub declared"][..]),
        (Fault::Huge, 7, &["is 21474836480 bytes, over the limit of"][..]),
        (Fault::StallBody, 3, &["the transfer stalled after"][..]),
        (Fault::StallHead, 3, &["not in the cache", "the hub is unreachable"][..]),
    ] {
        hub.set_fault(fault);
        let gets = hub.gets();
        refused("me/tiny", &timeouts, code, words);
        if fault == Fault::Huge {
            assert_eq!(hub.gets(), gets, "nothing is downloaded past the limit");
        }
    }
    hub.set_fault(Fault::None);
    let out = repvgg_hub(&["pull", "me/tiny"], &hub.endpoint, &home, &[]);
    assert!(out.status.success(), "a pull after the failures succeeds: {}", stderr(&out));
}

/// `infer` and `classify` take `hf:NAME` for `--weights`: the same logits as the file, a
/// short name for timm's repository, and the architecture timm's config names (a wrong
/// one is what the loader then refuses, which shows it is used).
#[test]
fn infer_and_classify_take_a_hub_name_for_pull() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    let tiny = tiny_timm_checkpoint();
    let a0 = timm_checkpoint(repvgg::ArchSpec::builtin("A0").unwrap());
    let repos = [
        ("me/tiny".to_string(), (tiny.clone(), Some(timm_config("repvgg_tiny", 10)))),
        ("me/tiny-says-a1".to_string(), (tiny.clone(), Some(timm_config("repvgg_a1", 1000)))),
        ("timm/repvgg_a0.rvgg_in1k".to_string(), (a0, Some(timm_config("repvgg_a0", 1000)))),
    ]
    .into();
    let hub = FakeHub::start(repos, HashMap::new());
    let local = dir.path().join("tiny.safetensors");
    std::fs::write(&local, &tiny).unwrap();
    let arch = fixture("tiny-groups", "arch.toml");
    let input = fixture("tiny-groups", "input.safetensors");
    let logits = |weights: &str, name: &str| {
        let output = dir.path().join(name);
        let args =
            ["infer", "--weights", weights, "--arch", &arch, "--input", &input, "--output", output.to_str().unwrap()];
        let out = repvgg_hub(&args, &hub.endpoint, &home, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        read_tensor(&output, "logits")
    };
    assert_eq!(logits("hf:me/tiny", "hub.safetensors"), logits(local.to_str().unwrap(), "file.safetensors"));

    let out = repvgg_hub(
        &["infer", "--weights", "hf:me/tiny-says-a1", "--input", &input, "--output", "/dev/null"],
        &hub.endpoint,
        &home,
        &[],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("(architecture A1)"), "{}", stderr(&out));

    let png_path = dir.path().join("a.png");
    png(&png_path, 5);
    let out = repvgg_hub(&["classify", "--weights", "hf:a0", png_path.to_str().unwrap()], &hub.endpoint, &home, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "the path and 5 ImageNet classes: {text}");
    assert!(lines[0].ends_with("a.png:"), "{text}");
}
