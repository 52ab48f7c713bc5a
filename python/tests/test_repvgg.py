"""The Python package against the Rust runtime's fixtures (ONNX Runtime's logits) and its
error classes. Run with pytest after installing the package (docs/python.md)."""

from __future__ import annotations

import json
import resource
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import repvgg

FIXTURES = Path(__file__).resolve().parents[2] / "models" / "fixtures"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A minimal safetensors reader (F32, F16, I64), so the tests need nothing beyond numpy."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}[info["dtype"]]
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + start : 8 + n + end], dtype=dtype).reshape(info["shape"])
    return out


@pytest.fixture(scope="module")
def tiny():
    weights = FIXTURES / "tiny-groups" / "train.safetensors"
    x = read_safetensors(FIXTURES / "tiny-groups" / "input.safetensors")["input"]
    expected = read_safetensors(FIXTURES / "tiny-groups" / "expected.safetensors")
    return weights, np.ascontiguousarray(x), expected


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_logits_match_onnx_runtime(tiny):
    weights, x, expected = tiny
    model = repvgg.Model.load(weights)
    assert model.num_classes == expected["logits"].shape[1]
    logits = model.session(threads=2).run(x)
    assert logits.dtype == np.float32 and logits.shape == expected["logits"].shape
    # The Rust suite's bound for the fast paths against ONNX Runtime's fixtures.
    assert rel(logits, expected["logits"]) < 4e-5


def test_other_dtypes_layouts_and_lists_give_the_same_logits(tiny):
    weights, x, _ = tiny
    sess = repvgg.Model.load(weights).session(threads=1)
    want = sess.run(x)
    np.testing.assert_array_equal(sess.run(x.astype(np.float64)), want)
    fortran = np.asfortranarray(x)
    assert not fortran.flags.c_contiguous
    np.testing.assert_array_equal(sess.run(fortran), want)
    np.testing.assert_array_equal(sess.run(x.tolist()), want)


def bits(a: np.ndarray) -> np.ndarray:
    """The float32 values' bit patterns, so that a comparison is bitwise (NaN included)."""
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_misaligned_strided_and_foreign_arrays_are_copied_once(tiny):
    """A C-contiguous float32 array at an odd address (a view into a bytearray) was a
    TypeError; it and the other layouts are converted with exactly one copy and give the
    aligned array's logits bit for bit, while the aligned array is read in place."""
    weights, x, _ = tiny
    sess = repvgg.Model.load(weights).session(threads=1)
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 96)).astype(np.float32)
    want = sess.run(x)
    buf = bytearray(x.nbytes + 1)
    misaligned = np.frombuffer(buf, np.float32, count=x.size, offset=1).reshape(x.shape)
    misaligned[...] = x
    assert misaligned.flags.c_contiguous and not misaligned.flags.aligned
    strided = np.zeros((2, 3, 64, 192), np.float32)[..., ::2]
    strided[...] = x
    for array in [misaligned, strided, x.astype(">f4"), x.astype(np.float64)]:
        np.testing.assert_array_equal(bits(sess.run(array)), bits(want))
        got = sess.features(array)
        for a, b in zip(got, sess.features(x)):
            np.testing.assert_array_equal(bits(a), bits(b))

    def traced_peak(array: np.ndarray) -> int:
        """Bytes numpy allocated during a run beyond what it held before (numpy reports
        its array data to tracemalloc; the runtime's own buffers are Rust's, not traced)."""
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            sess.run(array)
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    assert traced_peak(x) < x.nbytes // 4, "an aligned C-contiguous float32 array was copied"
    for array in [misaligned, strided]:
        assert x.nbytes <= traced_peak(array) < x.nbytes * 5 // 4, "not exactly one copy"


def test_limits_are_checked_before_an_input_is_converted(tiny):
    """Broadcast views describing gigabytes are refused from their shape, in milliseconds
    and without allocating: converting (1, 3, 20000, 20000) first took 11 s and 4.6 GB
    only to raise LimitError, and (1, 3, 100000, 100000) raised numpy's MemoryError."""
    weights, _, _ = tiny
    sess = repvgg.Model.load(weights).session(threads=1)
    b0 = repvgg.Model.synthetic("B0").session(threads=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    for dtype in [np.float32, np.float64]:
        side = np.broadcast_to(dtype(0), (1, 3, 20000, 20000))
        with pytest.raises(repvgg.LimitError, match="exceeds the limit of 8192 pixels per side"):
            sess.run(side)
        with pytest.raises(repvgg.LimitError, match="exceeds the limit of 8192 pixels per side"):
            sess.features(side)
        with pytest.raises(repvgg.LimitError, match="exceeds the limit of 8192 pixels per side"):
            sess.run(np.broadcast_to(dtype(0), (1, 3, 100000, 100000)))
        with pytest.raises(repvgg.LimitError, match="exceeds the limit of 268435456 elements"):
            sess.run(np.broadcast_to(dtype(0), (1024, 3, 8192, 8192)))
        # Within the input limits (201M elements, 1.6 GB as float64) but beyond B0's
        # working memory: refused when the session plans it, still before the copy.
        with pytest.raises(repvgg.LimitError, match="of working memory, over the limit"):
            b0.run(np.broadcast_to(dtype(0), (1024, 3, 256, 256)))
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert elapsed < 1.0, f"the refusals took {elapsed:.2f} s"
    assert grown_mib < 200, f"the peak RSS grew by {grown_mib:.0f} MiB"


def test_features_are_the_four_stages(tiny):
    weights, x, expected = tiny
    sess = repvgg.Model.load(weights).session(threads=1)
    stages = sess.features(x)
    assert len(stages) == 4
    for s, stage in enumerate(stages, start=1):
        want = expected[f"stage{s}"] if f"stage{s}" in expected else None
        assert stage.ndim == 4 and stage.shape[0] == x.shape[0]
        if want is not None:
            assert rel(stage, want) < 4e-5


def test_convert_and_info(tiny, tmp_path):
    weights, x, _ = tiny
    deploy = tmp_path / "deploy.safetensors"
    repvgg.convert(weights, deploy)
    a = repvgg.Model.load(weights).session(threads=1).run(x)
    b = repvgg.Model.load(deploy).session(threads=1).run(x)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="same file as the input"):
        repvgg.convert(deploy, deploy)
    rows = repvgg.info("A0", size=224)
    assert rows[0]["name"] == "stage0" and rows[-1]["name"] == "linear"
    assert sum(r["params"] for r in rows) == 8_309_384


def test_export_writes_what_load_reads(tiny, tmp_path):
    weights, x, _ = tiny
    state = {f"module.{k}": v.copy() for k, v in read_safetensors(weights).items()}
    state["module.stage0.rbr_dense.bn.num_batches_tracked"] = np.array(7)
    path = tmp_path / "exported.safetensors"
    repvgg.export(state, path)
    names = read_safetensors(path).keys()
    assert not any(n.startswith("module.") or n.endswith("num_batches_tracked") for n in names)
    a = repvgg.Model.load(weights).session(threads=1).run(x)
    np.testing.assert_array_equal(repvgg.Model.load(path).session(threads=1).run(x), a)


def test_pytorch_checkpoints_load_like_their_safetensors(tiny):
    weights, x, _ = tiny
    a = repvgg.Model.load(weights).session(threads=1).run(x)
    for name in ["train.pth", "train-wrapped.pth", "train-module.pth"]:
        path = FIXTURES / "tiny-groups" / name
        np.testing.assert_array_equal(repvgg.Model.load(path).session(threads=1).run(x), a)
    with pytest.raises(repvgg.ModelError, match="the global `posix.system`"):
        repvgg.Model.load(FIXTURES / "tiny-groups" / "hostile-os-system.pth")


def test_errors_are_exceptions_with_the_cli_messages(tiny, tmp_path):
    weights, x, _ = tiny
    with pytest.raises(FileNotFoundError, match="weights file /nonexistent.safetensors"):
        repvgg.Model.load("/nonexistent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10" + b"\x00" * 7 + b"not json at all!")
    with pytest.raises(repvgg.ModelError, match="not a valid safetensors file"):
        repvgg.Model.load(garbage)
    with pytest.raises(repvgg.ModelError, match="unknown architecture"):
        repvgg.Model.load(weights, arch="Q7")
    sess = repvgg.Model.load(weights).session(threads=1)
    with pytest.raises(repvgg.InputError, match=r"expected \[N, 3, H, W\]"):
        sess.run(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(repvgg.InputError, match="expected 3 channels"):
        sess.run(np.zeros((1, 4, 8, 8), np.float32))
    bad = x.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(repvgg.InputError, match=r"input\[0, 1, 2, 3\] is NaN"):
        sess.run(bad)
    with pytest.raises(repvgg.LimitError, match="exceeds the limit of 1024"):
        sess.run(np.broadcast_to(np.float32(0), (1025, 3, 1, 1)))
    with pytest.raises(ValueError, match="unknown instruction set"):
        repvgg.Model.load(weights).session(isa="sse9")
    assert issubclass(repvgg.LimitError, ValueError) and not issubclass(repvgg.LimitError, repvgg.InputError)
    # The session still serves after every refusal.
    assert sess.run(x).shape[0] == x.shape[0]


def test_integer_boolean_and_complex_inputs_are_refused(tiny):
    """A uint8 image went in as raw 0..255 values, an int64 or complex array ran too: each
    is refused, naming its dtype and the way out; float16/32/64 are accepted."""
    weights, x, _ = tiny
    sess = repvgg.Model.load(weights).session(threads=1)
    want = sess.run(x)
    for dtype in [np.uint8, np.int8, np.int32, np.int64, np.uint64, np.bool_, np.complex64, np.complex128]:
        array = np.zeros(x.shape, dtype)
        with pytest.raises(repvgg.InputError, match="repvgg.preprocess") as caught:
            sess.run(array)
        assert "float32" in str(caught.value) and np.dtype(dtype).name in str(caught.value), caught.value
        with pytest.raises(repvgg.InputError, match="repvgg.preprocess"):
            sess.features(array)
        with pytest.raises(repvgg.InputError, match="repvgg.preprocess"):
            sess.classify(array)
    with pytest.raises(repvgg.InputError, match="dtype"):
        sess.run(np.zeros(x.shape).astype(object))
    # A list of Python ints is an int64 array: refused as the array would be.
    with pytest.raises(repvgg.InputError, match="dtype"):
        sess.run(np.zeros(x.shape, np.int64).tolist())
    np.testing.assert_array_equal(sess.run(x.astype(np.float64)), want)
    assert rel(sess.run(x.astype(np.float16)), sess.run(x.astype(np.float16).astype(np.float32))) == 0


def test_threads_out_of_range_is_the_package_error():
    model = repvgg.Model.synthetic("A0")
    for threads in [-1, -(2**70), 2**70]:
        with pytest.raises(repvgg.UsageError, match="threads must be 0 .one per core. or a positive count"):
            model.session(threads=threads)
    assert issubclass(repvgg.UsageError, ValueError)
    with pytest.raises(TypeError):
        model.session(threads="2")
    with pytest.raises(repvgg.UsageError, match="unknown instruction set"):
        model.session(isa="sse9")


def test_classify_gives_the_top_k_with_labels(tiny):
    weights, x, _ = tiny
    sess = repvgg.Model.load(weights).session(threads=1)
    logits = sess.run(x).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    got = sess.classify(x, top_k=3)
    assert len(got) == x.shape[0]
    for row, p in zip(got, probs):
        assert [i for i, _, _ in row] == list(np.argsort(-p, kind="stable")[:3])
        for index, score, label in row:
            assert abs(score - p[index]) < 1e-6 and label == str(index)
    # One image [3, H, W] is a batch of one; the default is the top 5.
    one = sess.classify(x[0])
    assert len(one) == 1 and len(one[0]) == min(5, sess_classes(weights))
    # 1000 classes: ImageNet's labels.
    a0 = repvgg.Model.synthetic("A0").session(threads=1)
    top = a0.classify(np.zeros((1, 3, 32, 32), np.float32), top_k=2)[0]
    labels = repvgg.imagenet_labels()
    assert [label for _, _, label in top] == [labels[i] for i, _, _ in top]
    for top_k in [0, -1, 1001]:
        with pytest.raises(repvgg.UsageError, match="top_k must be between 1 and 1000"):
            a0.classify(np.zeros((1, 3, 32, 32), np.float32), top_k=top_k)


def sess_classes(weights) -> int:
    return repvgg.Model.load(weights).num_classes


def test_images_are_preprocessed_as_classify_does(tmp_path):
    import zlib

    # A 300 x 200 PNG of one colour, written by hand (no imaging library needed).
    w, h, rgb = 300, 200, bytes([255, 128, 0])
    raw = b"".join(b"\x00" + rgb * w for _ in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    x = repvgg.preprocess(png)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = (np.array([255, 128, 0]) / 255.0 - mean) / std
    np.testing.assert_allclose(x[:, 100, 100], want, rtol=1e-5)
    with pytest.raises(repvgg.InputError, match="cannot decode junk: "):
        repvgg.preprocess(b"not an image", "junk")
    # The default name is said once ("cannot decode image image" said it twice).
    with pytest.raises(repvgg.InputError, match="^bad input: cannot decode image: not a JPEG or PNG file$") as caught:
        repvgg.preprocess(b"x")
    assert "image image" not in str(caught.value)
    # A path, bytes-likes, an HWC uint8 array and a PIL-like image give the same values.
    path = tmp_path / "orange.png"
    path.write_bytes(png)
    np.testing.assert_array_equal(repvgg.preprocess(path), x)
    np.testing.assert_array_equal(repvgg.preprocess(str(path)), x)
    np.testing.assert_array_equal(repvgg.preprocess(bytearray(png)), x)
    pixels = np.broadcast_to(np.array([255, 128, 0], np.uint8), (h, w, 3))
    np.testing.assert_array_equal(repvgg.preprocess(pixels), x)

    class FakePil:
        """What repvgg.preprocess uses of a PIL image (PIL itself may not be installed)."""

        def __init__(self, mode: str):
            self.mode, self.size = mode, (w, h)

        def convert(self, mode: str) -> "FakePil":
            assert mode == "RGB"
            return FakePil(mode)

        def tobytes(self) -> bytes:
            assert self.mode == "RGB", "the image is converted to RGB first"
            return pixels.tobytes()

    np.testing.assert_array_equal(repvgg.preprocess(FakePil("P")), x)
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        np.testing.assert_array_equal(repvgg.preprocess(Image.fromarray(np.ascontiguousarray(pixels))), x)
    with pytest.raises(FileNotFoundError):
        repvgg.preprocess(tmp_path / "missing.png")
    with pytest.raises(repvgg.InputError, match=r"must be \[H, W, 3\] uint8 RGB pixels, not \[200, 300, 3\] float32"):
        repvgg.preprocess(pixels.astype(np.float32))
    with pytest.raises(repvgg.InputError, match=r"not \[200, 300\] uint8"):
        repvgg.preprocess(pixels[..., 0].copy())
    with pytest.raises(TypeError, match="preprocess takes a path"):
        repvgg.preprocess(42)
    labels = repvgg.imagenet_labels()
    assert len(labels) == 1000 and labels[0] == "tench"


def test_the_gil_is_released_while_a_session_runs():
    """Another Python thread makes progress during a run: its timestamps fall inside the
    run, away from its edges (where a time-sliced GIL hand-over could also place them)."""
    sess = repvgg.Model.synthetic("A0").session(threads=1)
    x = np.zeros((2, 3, 224, 224), np.float32)
    sess.run(x)  # plan and pack first
    stamps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=tick)
    t.start()
    windows = []
    for _ in range(3):
        start = time.perf_counter()
        sess.run(x)
        windows.append((start, time.perf_counter()))
    stop.set()
    t.join()
    margin = 0.006  # beyond CPython's 5 ms switch interval
    inside = [s for s in stamps for a, b in windows if a + margin < s < b - margin]
    assert any(b - a > 3 * margin for a, b in windows), "runs too short to tell"
    assert inside, "no other thread ran while the session ran: the GIL was held"


@pytest.fixture(scope="module")
def digits():
    """The trained-digits fixture (a small RepVGG trained on 24x24 digits): its float
    model, its images as float32 and its architecture file."""
    d = FIXTURES / "trained-digits"
    arch = str(d / "arch.toml")
    x = np.ascontiguousarray(read_safetensors(d / "input.safetensors")["input"], dtype=np.float32)
    return repvgg.Model.load(d / "train.safetensors", arch=arch), x, arch


def test_quantize_gives_an_int8_model_that_classifies_like_fp32(digits, tmp_path):
    model, x, arch = digits
    assert model.precision == "f32" and model.quantization is None
    q, report = repvgg.quantize(model, x[:64], threads=1)
    assert q.precision == "int8" and q.num_classes == model.num_classes
    assert report["info"]["calibration"] == "percentile" and report["info"]["samples"] == 64
    assert q.quantization == report["info"]
    assert 0.9 <= report["top1_agreement"] <= 1.0 and report["cosine"] > 0.99
    assert {layer["precision"] for layer in report["layers"]} <= {"f32", "int8"}

    int8 = q.session(threads=1)
    assert int8.precision == "int8" and int8.int8_kernels in ("amx", "avx512-vnni", "avx2", "portable")
    fp32 = model.session(threads=1)
    assert fp32.precision == "f32" and fp32.int8_kernels is None
    got, want = int8.run(x), fp32.run(x)
    # Every image of the fixture (not only the 64 calibrated on) classified as FP32 does,
    # but for at most 1%.
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.99
    assert not np.array_equal(got, want)

    # FP32 on the quantized model runs its dequantized weights.
    dequantized = q.session(threads=1, precision="f32")
    assert dequantized.precision == "f32" and dequantized.int8_kernels is None
    assert (dequantized.run(x).argmax(1) == want.argmax(1)).mean() >= 0.99

    # Saved and loaded, it is the same INT8 model.
    path = tmp_path / "digits-int8.safetensors"
    q.save(path)
    loaded = repvgg.Model.load(path, arch=arch)
    assert loaded.precision == "int8" and loaded.quantization == q.quantization
    assert np.array_equal(loaded.session(threads=1, precision="int8").run(x), got)


def test_quantize_options(digits):
    model, x, _ = digits
    q, report = repvgg.quantize(model, x, method="minmax", keep_fp32="none", samples=8, threads=1)
    assert report["info"] == {**report["info"], "calibration": "minmax", "samples": 8, "fp32_layers": []}
    assert q.quantization["samples"] == 8
    _, report = repvgg.quantize(model, x[:8], method="Entropy", keep_fp32=["stage1.0"], per_tensor=True, threads=1)
    assert report["info"]["calibration"] == "entropy" and report["info"]["fp32_layers"] == ["stage1.0"]
    assert [layer["precision"] for layer in report["layers"] if layer["name"] == "stage1.0"] == ["f32"]
    _, report = repvgg.quantize(model, x[:8].astype(np.float64), keep_fp32="stage1.0,stage2.0", threads=1)
    assert report["info"]["fp32_layers"] == ["stage1.0", "stage2.0"]


def test_bf16_runs_within_its_bound_or_is_a_cpu_error(digits):
    model, x, _ = digits
    try:
        bf16 = model.session(threads=2, precision="bf16")
    except repvgg.CpuError as e:
        assert "AVX512-BF16" in str(e)
        return
    assert bf16.precision == "bf16" and bf16.bf16_kernels in ("amx", "avx512-bf16")
    assert bf16.int8_kernels is None
    fp32 = model.session(threads=2)
    assert fp32.bf16_kernels is None
    want, got = fp32.run(x), bf16.run(x)
    assert np.abs(got - want).max() <= 1e-2 * max(1.0, np.abs(want).max())
    assert (got.argmax(1) == want.argmax(1)).mean() == 1.0


def test_precision_errors_are_the_package_exceptions(digits):
    model, x, _ = digits
    with pytest.raises(repvgg.UsageError, match="INT8 needs a quantized model"):
        model.session(precision="int8")
    with pytest.raises(repvgg.UsageError, match=r"precision: .*unknown precision `fp16` \(f32, int8, bf16\)"):
        model.session(precision="fp16")
    with pytest.raises(repvgg.UsageError, match="unknown calibration method `kl`"):
        repvgg.quantize(model, x[:4], method="kl")
    with pytest.raises(repvgg.UsageError, match="samples must be at least 1, not 0"):
        repvgg.quantize(model, x[:4], samples=0)
    with pytest.raises(repvgg.UsageError, match="`stage9.9`, which is not a layer"):
        repvgg.quantize(model, x[:4], keep_fp32=["stage9.9"])
    with pytest.raises(repvgg.InputError, match="dtype"):
        repvgg.quantize(model, (x[:4] * 100).astype(np.int32))
    with pytest.raises(repvgg.InputError):
        repvgg.quantize(model, x[:4, :1])
    with pytest.raises(repvgg.UsageError, match="threads must be 0"):
        repvgg.quantize(model, x[:4], threads=-1)
    q, _ = repvgg.quantize(model, x[:4], threads=1)
    with pytest.raises(repvgg.UsageError, match="already quantized"):
        repvgg.quantize(q, x[:4])


def test_hub_names_load_through_the_shared_cache(tiny, tmp_path, monkeypatch):
    """`Model.load("hf:owner/repo")` pulls from the hub (`HF_ENDPOINT`, here a server on the
    loopback in the hub's URL layout) into `HF_HOME`, then loads offline from the cache;
    a name missing offline is an OSError saying so."""
    import hashlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    weights_path, x, expected = tiny
    weights = weights_path.read_bytes()
    sha = hashlib.sha256(weights).hexdigest()
    commit = "0123456789abcdef0123456789abcdef01234567"

    class Hub(BaseHTTPRequestHandler):
        def answer(self, body: bool):
            if self.path == "/me/tiny/resolve/main/model.safetensors":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/lfs/{sha}")
                self.send_header("X-Repo-Commit", commit)
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(weights)))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == f"/lfs/{sha}":
                self.send_response(200)
                self.send_header("Content-Length", str(len(weights)))
                self.end_headers()
                if body:
                    self.wfile.write(weights)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def do_HEAD(self):
            self.answer(False)

        def do_GET(self):
            self.answer(True)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    arch = str(FIXTURES / "tiny-groups" / "arch.toml")
    try:
        logits = repvgg.Model.load("hf:me/tiny", arch=arch).session(threads=1).run(x)
    finally:
        server.shutdown()
        server.server_close()
    np.testing.assert_array_equal(logits, repvgg.Model.load(weights_path, arch=arch).session(threads=1).run(x))
    blob = tmp_path / "hf" / "hub" / "models--me--tiny" / "blobs" / sha
    assert blob.read_bytes() == weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = repvgg.Model.load("hf:me/tiny", arch=arch).session(threads=1).run(x)
    np.testing.assert_array_equal(again, logits)
    with pytest.raises(OSError, match="me/other: model.safetensors is not in the cache"):
        repvgg.Model.load("hf:me/other")
