"""Type stubs of the native module (see the package docstring)."""

import os
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

class ModelError(ValueError): ...
class InputError(ValueError): ...
class LimitError(ValueError): ...
class UsageError(ValueError): ...
class CpuError(RuntimeError): ...
class NonFiniteError(FloatingPointError): ...

class Model:
    @staticmethod
    def load(path: str | os.PathLike[str], arch: str | None = None) -> Model:
        """Loads a safetensors or .pth checkpoint, or `hf:NAME` from the Hugging Face hub (cached as
        `repvgg pull` caches it); `arch` is a built-in name or a .toml path, or None to infer it."""
    @staticmethod
    def synthetic(arch: str = "A0", seed: int = 0) -> Model:
        """Deterministic synthetic weights (what `repvgg bench` runs by default)."""
    def session(self, threads: int = 0, isa: str = "auto", precision: str | None = None) -> Session:
        """A session with `threads` workers (0: one per core), a kernel set (auto, avx512, avx2, portable)
        and an arithmetic: None (the model's own), "f32", "int8" (a quantized model only; UsageError
        on a float one), or "bf16" (a CPU with AVX512-BF16 only; CpuError elsewhere)."""
    @property
    def precision(self) -> str:
        """"int8" for a quantized model (`quantize`, `repvgg quantize`), else "f32"."""
    @property
    def quantization(self) -> dict[str, Any] | None:
        """How the model was quantized (calibration, samples, calibration_sha256, fp32_layers), or None."""
    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the model as safetensors, atomically: the quantized format for an INT8 model
        (what `Model.load` and `repvgg serve` run as INT8), deploy weights for a float one."""
    @property
    def num_classes(self) -> int: ...
    @property
    def arch(self) -> str: ...
    @property
    def description(self) -> str: ...

class Session:
    def run(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Logits [N, classes] of a batch [N, 3, H, W].

        The shape is checked against the limits before `x` is converted; aligned
        C-contiguous float32 is read in place, float16/float64 copied once; integer,
        boolean and complex arrays are refused (InputError)."""
    def classify(self, x: npt.ArrayLike, top_k: int = 5) -> list[list[tuple[int, float, str]]]:
        """Per image of a batch [N, 3, H, W] (or one image [3, H, W]), the top_k (index,
        softmax probability, label), most probable first; labels are ImageNet's for
        1000 classes, else the index."""
    def features(self, x: npt.ArrayLike) -> list[npt.NDArray[np.float32]]:
        """The four stage outputs [N, C, H, W] (`run` gives the logits)."""
    @property
    def threads(self) -> int: ...
    @property
    def isa(self) -> str: ...
    @property
    def precision(self) -> str:
        """The arithmetic the session runs in: "f32", "int8" or "bf16"."""
    @property
    def int8_kernels(self) -> str | None:
        """The int8 kernel set of an INT8 session ("amx", "avx512-vnni", "avx2", "portable"); None for FP32."""
    @property
    def bf16_kernels(self) -> str | None:
        """The bf16 kernel set of a BF16 session ("amx", "avx512-bf16"); None otherwise."""

def convert(train: str | os.PathLike[str], deploy: str | os.PathLike[str], arch: str | None = None) -> None:
    """Writes the deploy form (official names, F32) of training-form weights."""

def quantize(
    model: Model,
    calibration: npt.ArrayLike,
    method: str = "percentile",
    keep_fp32: str | list[str] = "auto",
    samples: int | None = None,
    per_tensor: bool = False,
    threads: int | None = None,
) -> tuple[Model, dict[str, Any]]:
    """Quantizes `model` to INT8 on calibration images (float [N, 3, H, W], the first `samples`
    if given): per-channel s8 weights, u8 activations calibrated with `method` (minmax,
    percentile, entropy), the layers `keep_fp32` names ("auto", "none", or layer names) kept in
    FP32. Returns the INT8 model and the report (per-layer scales and errors, top1_agreement,
    cosine, max_rel_error against FP32)."""

def info(arch: str = "A0", size: int = 224) -> list[dict[str, Any]]:
    """The `repvgg info` table: one dict per layer and one for the classifier."""

def preprocess(data: bytes, name: str = "image") -> npt.NDArray[np.float32]:
    """Decodes a JPEG/PNG and preprocesses it as `repvgg classify` does: float32 [3, 224, 224]."""

def preprocess_rgb(pixels: bytes, width: int, height: int, name: str = "image") -> npt.NDArray[np.float32]:
    """Preprocesses height x width x 3 RGB bytes as `preprocess` does a decoded file."""

def preprocess_file(path: str | os.PathLike[str]) -> npt.NDArray[np.float32]:
    """Reads an image file (with the CLI's size limit) and preprocesses it."""

def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in class-index order."""

def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, npt.ArrayLike]) -> None:
    """Writes named float32 arrays as a safetensors file, atomically."""
