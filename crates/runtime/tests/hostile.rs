//! Hostile inputs: lying safetensors headers, absurd shapes, resource limits, non-finite
//! values. Each must be refused with a clear error before any large allocation.

mod common;

use std::path::Path;

use repvgg_graph::ArchSpec;
use repvgg_runtime::loader::{MAX_HEADER_BYTES, MAX_TENSORS, SafetensorsFile, max_input_file_bytes, read_input};
use repvgg_runtime::{Algo, AlgoChoice, Error, ErrorKind, Limits, Model, ModelOptions, SessionOptions, Tensor};

/// A safetensors file from a raw JSON header and data bytes.
fn raw_file(dir: &Path, name: &str, header: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A tensor's name and a change to make to its values.
type Edit<'a> = (&'a str, &'a dyn Fn(&mut [f32]));

/// Writes the tiny network's synthetic checkpoint in `form` to `dir/name`, after `edit`
/// has changed some of its tensors.
fn tiny_checkpoint(dir: &Path, name: &str, form: repvgg_graph::BlockForm, edits: &[Edit]) -> std::path::PathBuf {
    let network = repvgg_graph::Network::new(common::tiny_arch(false));
    let mut map = repvgg_graph::synthetic::checkpoint(&network, repvgg_graph::Convention::Official, form, 1);
    for (tensor, edit) in edits {
        let (shape, mut data) = map.remove(tensor).unwrap();
        edit(&mut data);
        map.insert(*tensor, shape, data);
    }
    let path = dir.join(name);
    common::write_map(&path, &map, common::Storage::F32, "");
    path
}

fn refused(path: &Path) -> Error {
    SafetensorsFile::open(path, "weights file", 1 << 30)
        .err()
        .unwrap_or_else(|| panic!("{} was accepted", path.display()))
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
    assert_eq!(read_input(&big, &Limits::default()).unwrap_err().kind(), ErrorKind::Format);
    let i64s = raw_file(
        dir.path(),
        "i64.safetensors",
        r#"{"input":{"dtype":"I64","shape":[1,3,1,1],"data_offsets":[0,24]}}"#,
        &[0; 24],
    );
    // A wrong dtype in an input is bad input, not weights that do not fit.
    let err = read_input(&i64s, &Limits::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Input, "{err}");
    assert!(err.to_string().contains("tensor `input` has dtype I64, expected F32"), "{err}");
    // An input file larger than the input bound is refused before it is mapped (a
    // sparse file: nothing is written to disk).
    let small = Limits { max_input_elements: 4, ..Limits::default() };
    let sparse = dir.path().join("sparse.safetensors");
    std::fs::File::create(&sparse).unwrap().set_len(max_input_file_bytes(&small) + 1).unwrap();
    let err = read_input(&sparse, &small).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Limit, "{err}");
    assert!(err.to_string().contains(&format!("over the limit of {} bytes", max_input_file_bytes(&small))), "{err}");
}

#[test]
fn hostile_header_structure_is_refused_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The same name twice: JSON maps keep the last silently; we refuse.
    let dup = raw_file(
        d,
        "dup.safetensors",
        r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        &[0; 4],
    );
    let err = refused(&dup);
    assert_eq!(err.kind(), ErrorKind::Format);
    assert!(err.to_string().contains("the header lists `x` twice"), "{err}");
    // A declared header over the bound is refused before its JSON is parsed.
    let long = d.join("long.safetensors");
    std::fs::write(&long, [&(MAX_HEADER_BYTES + 1).to_le_bytes()[..], b"{}"].concat()).unwrap();
    assert!(refused(&long).to_string().contains(&format!("exceeds the limit of {MAX_HEADER_BYTES} bytes")));
    // More tensors than any RepVGG has.
    let many: Vec<String> = (0..=MAX_TENSORS + 1)
        .map(|i| format!(r#""t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#))
        .collect();
    let many = raw_file(d, "many.safetensors", &format!("{{{}}}", many.join(",")), &[]);
    assert!(refused(&many).to_string().contains(&format!("more than {MAX_TENSORS} tensors")));
}

#[test]
fn a_weights_file_over_the_weight_bound_is_refused_before_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_checkpoint(dir.path(), "w.safetensors", repvgg_graph::BlockForm::Deploy, &[]);
    let options = ModelOptions { limits: Limits { max_weight_bytes: 1000, ..Limits::default() }, ..Default::default() };
    let err = Model::load(&path, &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Limit, "{err}");
    assert!(err.to_string().starts_with(&format!("weights file {} is ", path.display())), "{err}");
}

#[test]
fn weights_and_their_packings_stay_within_the_weight_bound() {
    // Synthetic weights for a huge custom network are refused before they are generated
    // (this one would be about 636 GB; `bench --arch` used to abort allocating it).
    let huge = ArchSpec::from_toml(
        "name = \"huge\"\nblocks_per_stage = [2, 4, 14, 1]\nwidths = [64, 8192, 16384, 32768, 65536]\n",
        "huge.toml",
    )
    .unwrap();
    let err = Model::synthetic(huge, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Limit, "{err}");
    assert!(err.to_string().contains("over the limit of 8192 MiB of weights"), "{err}");
    // Packing for F(6,3) takes about 7x the deploy kernel: a bound between the two lets
    // the model load and refuses the plan that needs the packing.
    let small = Model::synthetic(common::tiny_arch(false), 0).unwrap();
    let deploy = small.weights().bytes();
    let limits = Limits { max_weight_bytes: deploy * 2, ..Limits::default() };
    let model =
        Model::from_parts(small.network().clone(), small.weights().clone(), limits.clone(), "tiny".into()).unwrap();
    let options = SessionOptions { threads: 1, algo: AlgoChoice::Force(Algo::F6), ..Default::default() };
    let err = model.session(options).unwrap().run(&Tensor::zeros(vec![1, 3, 32, 32])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Limit, "{err}");
    assert!(err.to_string().contains("for f6 takes"), "{err}");
    let fresh = Model::from_parts(small.network().clone(), small.weights().clone(), limits, "tiny".into()).unwrap();
    let direct = SessionOptions { threads: 1, algo: AlgoChoice::Force(Algo::Direct), ..Default::default() };
    assert!(fresh.session(direct).unwrap().run(&Tensor::zeros(vec![1, 3, 32, 32])).is_ok());
}

#[test]
fn a_negative_variance_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_checkpoint(
        dir.path(),
        "negative.safetensors",
        repvgg_graph::BlockForm::Training,
        &[("stage1.0.rbr_dense.bn.running_var", &|v| v[5] = -0.25)],
    );
    let err = Model::load(&path, &ModelOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(
        err.to_string().contains(
            "tensor `stage1.0.rbr_dense.bn.running_var` holds a negative BatchNorm variance (-0.25) at flat index 5"
        ),
        "{err}"
    );
}

#[test]
fn branches_that_fuse_beyond_f32_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // gamma 1e38 over sqrt(0 + 1e-5): a scale of 3e40, finite in f64, not in f32.
    let path = tiny_checkpoint(
        dir.path(),
        "overflow.safetensors",
        repvgg_graph::BlockForm::Training,
        &[("stage1.0.rbr_dense.bn.weight", &|v| v.fill(1e38)), ("stage1.0.rbr_dense.bn.running_var", &|v| v.fill(0.0))],
    );
    let err = Model::load(&path, &ModelOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(err.to_string().starts_with("fusing the branches of stage1.0 gives a kernel value of inf"), "{err}");
}

/// Finite weights whose activations overflow f32 give an error under every algorithm,
/// never logits of garbage (or logits that a ReLU quietly zeroed).
#[test]
fn an_overflow_inside_the_network_is_an_error_not_garbage() {
    let small = Model::synthetic(common::tiny_arch(false), 0).unwrap();
    let mut weights = small.weights().clone();
    // Scale every kernel by 1e6: six layers of that overflow 3.4e38.
    for layer in &mut weights.layers {
        layer.conv.weight.iter_mut().for_each(|v| *v *= 1e6);
    }
    let model = Model::from_parts(small.network().clone(), weights, Limits::default(), "scaled".into()).unwrap();
    let x = Tensor::new(vec![1, 3, 24, 24], (0..3 * 24 * 24).map(|i| (i % 7) as f32 - 3.0).collect()).unwrap();
    for algo in [Algo::Direct, Algo::F2, Algo::F4, Algo::F6, Algo::P2] {
        let options = SessionOptions { threads: 1, algo: AlgoChoice::Force(algo), ..Default::default() };
        let err = model.session(options).unwrap().run(&x).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Numeric, "{algo:?}: {err}");
        assert!(err.to_string().contains("overflowed f32 inside the network"), "{algo:?}: {err}");
    }
    let err = model.run_reference(&x).map(|_| ()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Numeric, "the reference agrees: {err}");
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
    let path = tiny_checkpoint(
        dir.path(),
        "inf.safetensors",
        repvgg_graph::BlockForm::Training,
        &[("stage2.1.rbr_identity.running_var", &|v| v[3] = f32::INFINITY)],
    );
    let err = Model::load(&path, &ModelOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(
        err.to_string()
            .contains("`stage2.1.rbr_identity.running_var` contains a non-finite value (inf) at flat index 3")
    );
}

/// The logits (`N x classes`) and stage outputs count as working memory: a wide head is
/// refused before its output is allocated.
#[test]
fn outputs_count_against_the_working_memory_limit() {
    let arch = ArchSpec::from_toml(
        "name = \"widehead\"\nblocks_per_stage = [1, 1, 1, 1]\nwidths = [16, 16, 16, 16, 16]\nnum_classes = 100000\n",
        "widehead.toml",
    )
    .unwrap();
    let small = Model::synthetic(arch, 0).unwrap();
    let limits = Limits { max_arena_bytes: 1 << 20, ..Limits::default() };
    let model =
        Model::from_parts(small.network().clone(), small.weights().clone(), limits, "wide head".into()).unwrap();
    let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    // One image's logits (400 kB) fit; eight (3.2 MB) do not.
    assert!(session.run(&Tensor::zeros(vec![1, 3, 8, 8])).is_ok());
    let err = session.run(&Tensor::zeros(vec![8, 3, 8, 8])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Limit, "{err}");
    assert!(err.to_string().contains("working memory, over the limit of 1 MiB"), "{err}");
    // The stage outputs that `features` returns count too: some size runs but cannot
    // return its features.
    let narrow = Model::from_parts(
        small.network().clone(),
        small.weights().clone(),
        Limits { max_arena_bytes: 1 << 20, ..Limits::default() },
        "n".into(),
    )
    .unwrap();
    let mut session = narrow.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let mut boundary = None;
    for side in (16..=160).step_by(4) {
        let x = Tensor::zeros(vec![1, 3, side, side]);
        let (runs, features) = (session.run(&x).is_ok(), session.features(&x));
        assert!(runs || features.is_err(), "{side}: features fit where the run did not");
        if let (true, Err(e)) = (runs, features) {
            assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
            boundary = Some(side);
            break;
        }
    }
    assert!(boundary.is_some(), "no size where only the stage outputs exceed the limit");
}

/// `run_rows` fails only the image whose values are bad: a non-finite input or an input
/// that overflows inside the network. The other images' logits are the bits they get in
/// the same batch with the bad image replaced by a benign one, under every algorithm, and
/// the bits they get alone when the algorithm is fixed (the plan then does not depend on
/// the batch); with squeeze-excite blocks too, which pool each image on its own.
#[test]
fn a_bad_image_fails_alone_and_the_others_keep_their_bits() {
    let x = |seed: usize, hw: usize| -> Vec<f32> {
        (0..3 * hw * hw).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0) - 1.0).collect()
    };
    for (arch, hw) in [("A0", 40), ("tiny with SE", 24)] {
        let spec = if arch == "A0" { ArchSpec::builtin("A0").unwrap() } else { common::tiny_arch(true) };
        let model = Model::synthetic(spec, 3).unwrap();
        let classes = model.network().num_classes;
        let image = 3 * hw * hw;
        let good = [x(0, hw), x(1, hw), x(2, hw)];
        // 3e38 everywhere passes the input check and overflows inside the network.
        for (poison, what) in [(vec![3e38f32; image], "logits["), (x(9, hw), "input[1, 2, 3] is NaN")] {
            let mut poison = poison;
            if what.starts_with("input") {
                poison[(hw + 2) * hw + 3] = f32::NAN;
            }
            let batch = |middle: &[f32]| [good[0].as_slice(), middle, good[2].as_slice()].concat();
            let choices = [
                AlgoChoice::Auto,
                AlgoChoice::Force(Algo::Direct),
                AlgoChoice::Force(Algo::F2),
                AlgoChoice::Force(Algo::F4),
                AlgoChoice::Force(Algo::F6),
            ];
            for algo in choices {
                let mut session = model.session(SessionOptions { threads: 2, algo, ..Default::default() }).unwrap();
                let mut poisoned = vec![0f32; 3 * classes];
                let rows = session.run_rows(&batch(&poison), &[3, 3, hw, hw], &mut poisoned).unwrap();
                let e = rows[1].as_ref().unwrap_or_else(|| panic!("{arch} {algo:?}: the bad image passed"));
                assert!(e.to_string().contains(what), "{arch} {algo:?}: {e}");
                assert!(rows[0].is_none() && rows[2].is_none(), "{arch} {algo:?}: {rows:?}");
                let mut benign = vec![0f32; 3 * classes];
                let rows = session.run_rows(&batch(&good[1]), &[3, 3, hw, hw], &mut benign).unwrap();
                assert!(rows.iter().all(Option::is_none));
                for i in [0, 2] {
                    let row = |l: &[f32]| l[i * classes..(i + 1) * classes].to_vec();
                    assert_eq!(row(&poisoned), row(&benign), "{arch} {algo:?} image {i}");
                    if algo != AlgoChoice::Auto {
                        let mut alone = vec![0f32; classes];
                        session.run_slice(&good[i], &[1, 3, hw, hw], &mut alone).unwrap();
                        assert_eq!(row(&poisoned), alone, "{arch} {algo:?} image {i} against itself alone");
                    }
                }
                // The whole-batch entry point still refuses the batch.
                let err = session.run_slice(&batch(&poison), &[3, 3, hw, hw], &mut poisoned).unwrap_err();
                assert!(matches!(err.kind(), ErrorKind::Numeric | ErrorKind::Input), "{err}");
            }
        }
    }
}

/// The plan cache holds at most `MAX_CACHED_PLANS` sizes, and `trim_arena` gives back the
/// memory of an oversized run, which the next run of a usual size does not need.
#[test]
fn plans_are_bounded_and_an_oversized_arena_is_given_back() {
    let model = Model::synthetic(common::tiny_arch(false), 0).unwrap();
    let mut session = model.session(SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let run = |session: &mut repvgg_runtime::Session, h: usize, w: usize| {
        let mut logits = vec![0f32; model.network().num_classes];
        session.run_slice(&vec![0.5; 3 * h * w], &[1, 3, h, w], &mut logits).unwrap();
        logits
    };
    let usual = run(&mut session, 16, 16);
    let steady = session.arena_bytes();
    for size in 0..3 * repvgg_runtime::MAX_CACHED_PLANS {
        run(&mut session, 8 + size % 40, 8 + size / 40);
        assert!(session.cached_plans() <= repvgg_runtime::MAX_CACHED_PLANS);
    }
    assert_eq!(session.cached_plans(), repvgg_runtime::MAX_CACHED_PLANS);
    session.trim_arena(steady);
    run(&mut session, 160, 160);
    assert!(session.arena_bytes() > 4 * steady);
    session.trim_arena(steady);
    assert_eq!(session.arena_bytes(), 0, "above the steady size, the arena is given back");
    assert_eq!(run(&mut session, 16, 16), usual, "a trimmed session allocates again and runs the same");
    assert_eq!(session.arena_bytes(), steady);
    session.trim_arena(steady);
    assert_eq!(session.arena_bytes(), steady, "at the steady size, nothing is given back");
}
