"""INT8 side of the peer comparison: calibration and evaluation inputs, cached quantization.

Every INT8 engine is quantized from the SAME calibration inputs (16 N(0, 1) images by
default, fixed seed, or a tensor loaded from a file), each the way its own documentation
teaches, and its artifacts are cached in the scratch directory under a hash of the network
(the FP32 ONNX file), the calibration inputs, the quantizer's options and the peer's
version. Agreement is measured on a separate set of evaluation inputs (64 N(0, 1) images,
another fixed seed) against our FP32 logits: top-1 match rate and max |a - b| / max |b|.

Quantizers (one function per engine, `QUANTIZERS[name](onnx, calib, batch, cache_dir)`):

* `onnxruntime-int8`: `quant_pre_process` (shape inference + ORT graph optimization, which
  ORT's docs recommend before quantizing), then `quantize_static` in QDQ format, per-channel
  QInt8 weights, QUInt8 activations, MinMax calibration (the default) through a
  `CalibrationDataReader`; `reduce_range` only on x86 CPUs without VNNI, as the
  `quantize_static` docstring advises (this machine has VNNI: off).
* `openvino-int8`: `nncf.quantize(model, nncf.Dataset(calibration))` with its defaults
  (performance preset, MinMax-style range estimation, fast bias correction) on the model
  `openvino.Core.read_model` reads from the same ONNX; saved as OpenVINO IR without
  fp16 compression, so the cached model is exactly the one NNCF returned.
* `ncnn-int8`: absent. ncnn quantizes with the C++ tools `ncnn2table` (calibration table)
  and `ncnn2int8` (model conversion), which the `ncnn` wheel does not ship (it exposes only
  the Mat-level `quantize_to_int8` / `cast_int8_to_float32` kernels); see README.

* `ours-int8`: `repvgg quantize` (its defaults: per-channel weights, the 99.99th
  percentile, measured FP32 fallback) on the same FP32 deploy weights our FP32 engine runs
  and the same calibration inputs (written as a safetensors `input`); `repvgg time` then
  runs the file in its own precision. It needs our binary, not the ONNX file, so
  `make_engine` calls [`quantize_ours`] itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

CALIB_COUNT = 16
CALIB_SEED = 20_261_207
EVAL_COUNT = 64
EVAL_SEED = 20_261_208  # held out: never the calibration images


# --------------------------------------------------------------------------- inputs

def normal_inputs(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """`count` N(0, 1) images [count, 3, H, W], float32, numpy `default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 3, height, width), dtype=np.float32)


def load_inputs(path: Path, height: int, width: int) -> np.ndarray:
    """Calibration images from a .npy file or a safetensors file (tensor `input`, or its only one)."""
    path = Path(path)
    if path.suffix == ".npy":
        x = np.load(path)
    else:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        if "input" in tensors:
            x = tensors["input"]
        elif len(tensors) == 1:
            x = next(iter(tensors.values()))
        else:
            raise SystemExit(f"{path}: no tensor `input` among {', '.join(sorted(tensors))}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (3, height, width) or x.shape[0] < 1:
        raise SystemExit(f"{path}: calibration inputs must be [N, 3, {height}, {width}], not {list(x.shape)}")
    return x


def calibration_inputs(height: int, width: int, path: Path | None = None, count: int = CALIB_COUNT,
                       seed: int = CALIB_SEED) -> np.ndarray:
    """The calibration set every INT8 engine is quantized from."""
    if path is not None:
        return load_inputs(path, height, width)
    return normal_inputs(count, height, width, seed)


def batches(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """`x` cut into [batch, ...] chunks; a short last chunk is padded by repeating images.

    The peers' graphs have a static batch axis, so calibration and evaluation feed them
    full batches only.
    """
    out = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, x[: batch - len(chunk)]])
        out.append(np.ascontiguousarray(chunk))
    return out


def agreement(theirs: np.ndarray, ours: np.ndarray) -> dict:
    """Top-1 match rate and max |theirs - ours| / max |ours| over [N, classes] logits.

    With synthetic (random) weights the logits are dominated by an input-independent part:
    every input may get the same arg-max, and then top-1 match says nothing
    (`eval_distinct_top1` counts the classes ours predicts). So the same two measures are
    also taken after subtracting ours' mean logit vector over the N inputs from both
    (`centered`): the arg-max of what the input changes, and the error relative to it.
    """
    theirs = theirs.reshape(ours.shape).astype(np.float64)
    ours = ours.astype(np.float64)
    scale = float(np.abs(ours).max())
    diff = float(np.abs(theirs - ours).max())
    mean = ours.mean(axis=0, keepdims=True)
    c_ours, c_theirs = ours - mean, theirs - mean
    c_scale = float(np.abs(c_ours).max())
    return {
        "eval_inputs": int(ours.shape[0]),
        "eval_distinct_top1": int(len(np.unique(ours.argmax(axis=1)))),
        "top1_match": float(np.mean(theirs.argmax(axis=1) == ours.argmax(axis=1))),
        "eval_max_abs_diff": diff,
        "eval_rel_diff": diff / scale if scale > 0 else float("inf"),
        "eval_distinct_top1_centered": int(len(np.unique(c_ours.argmax(axis=1)))),
        "top1_match_centered": float(np.mean(c_theirs.argmax(axis=1) == c_ours.argmax(axis=1))),
        "eval_rel_diff_centered": diff / c_scale if c_scale > 0 else float("inf"),
    }


# --------------------------------------------------------------------------- cache

def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir(scratch: Path, engine: str, onnx_path: Path, calib: np.ndarray, options: dict) -> Path:
    """scratch/int8/<engine>-<hash>: the hash covers network, calibration, options, version."""
    h = hashlib.sha256()
    h.update(file_digest(onnx_path).encode())
    h.update(str(calib.shape).encode())
    h.update(np.ascontiguousarray(calib, dtype=np.float32).tobytes())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return Path(scratch) / "int8" / f"{engine}-{h.hexdigest()[:16]}"


def cached(directory: Path, build) -> tuple[Path, bool]:
    """`directory` if a previous build completed there, else build into a temporary sibling.

    Returns (directory, whether it came from the cache). `build(tmp_dir)` writes the files.
    """
    done = directory / "DONE"
    if done.exists():
        return directory, True
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / "DONE").write_text("ok\n")
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    return directory, False


# --------------------------------------------------------------------------- quantizers

def cpu_has_vnni() -> bool:
    """AVX512-VNNI or AVX-VNNI in /proc/cpuinfo (u8 x s8 dot products without saturation)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def ort_options() -> dict:
    """The quantize_static arguments we use (recorded in the report and the cache key)."""
    import onnxruntime

    return {
        "version": onnxruntime.__version__,
        "pre_process": "quant_pre_process (symbolic + ONNX shape inference, ORT graph optimization)",
        "quant_format": "QDQ",
        "per_channel": True,
        "reduce_range": not cpu_has_vnni(),
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "calibrate_method": "MinMax",
    }


def quantize_onnxruntime(onnx_path: Path, calib: np.ndarray, batch: int, scratch: Path) -> tuple[Path, dict]:
    """ONNX Runtime static quantization (QDQ); returns the quantized model and its options."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quant_pre_process, quantize_static)

    options = ort_options()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": chunk} for chunk in batches(calib, batch)])

        def get_next(self):
            return next(self.items, None)

    def build(tmp: Path) -> None:
        pre = tmp / "preprocessed.onnx"
        quant_pre_process(str(onnx_path), str(pre))
        quantize_static(
            str(pre), str(tmp / "model.onnx"), Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=options["per_channel"],
            reduce_range=options["reduce_range"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        pre.unlink()

    directory, hit = cached(cache_dir(scratch, "onnxruntime-int8", onnx_path, calib, options), build)
    options["cached"] = hit
    return directory / "model.onnx", options


def quantize_openvino(onnx_path: Path, calib: np.ndarray, batch: int, scratch: Path) -> tuple[Path, dict]:
    """NNCF post-training quantization with its defaults; returns the IR (.xml) and options."""
    import nncf
    import openvino as ov

    options = {"version": f"nncf {nncf.__version__}, openvino {ov.get_version().split('-')[0]}",
               "call": "nncf.quantize(model, nncf.Dataset(calibration)) with default preset",
               "saved": "ov.save_model(compress_to_fp16=False)"}

    def build(tmp: Path) -> None:
        model = ov.Core().read_model(str(onnx_path))
        quantized = nncf.quantize(model, nncf.Dataset(batches(calib, batch)))
        ov.save_model(quantized, str(tmp / "model.xml"), compress_to_fp16=False)

    directory, hit = cached(cache_dir(scratch, "openvino-int8", onnx_path, calib, options), build)
    options["cached"] = hit
    return directory / "model.xml", options


def quantize_ours(repvgg: Path, weights: Path, calib: np.ndarray, scratch: Path) -> tuple[Path, dict]:
    """`repvgg quantize` with its defaults; returns the quantized weights and the options."""
    import subprocess

    from safetensors.numpy import save_file

    version = subprocess.run([str(repvgg), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    options = {"version": version, "call": "repvgg quantize (defaults)", "weights": file_digest(weights)}

    def build(tmp: Path) -> None:
        save_file({"input": np.ascontiguousarray(calib, dtype=np.float32)}, str(tmp / "calibration.safetensors"))
        subprocess.run([str(repvgg), "quantize", "--weights", str(weights), "--calibration",
                        str(tmp / "calibration.safetensors"), "--out", str(tmp / "model.safetensors")],
                       check=True, capture_output=True, text=True)
        (tmp / "calibration.safetensors").unlink()

    directory, hit = cached(cache_dir(scratch, "ours-int8", weights, calib, options), build)
    options["cached"] = hit
    return directory / "model.safetensors", options


QUANTIZERS = {
    "onnxruntime-int8": quantize_onnxruntime,
    "openvino-int8": quantize_openvino,
}

# Every engine that needs the calibration inputs (ours is quantized by `make_engine`).
CALIBRATED = (*QUANTIZERS, "ours-int8")

NCNN_INT8_ABSENT = (
    "ncnn-int8 is not available: ncnn quantizes with its C++ tools ncnn2table and ncnn2int8, "
    "which the ncnn wheel on PyPI does not ship (see benches/compare/README.md, INT8)"
)
