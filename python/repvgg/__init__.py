"""repvgg: fast FP32 and INT8 CPU inference for RepVGG networks (Ding et al., CVPR 2021).

Python bindings of repvgg-rs. A model loads PyTorch's safetensors weights in any naming
form (official or timm), dtype (F32, F16, BF16) and form (deploy, or training, fused at
load); a session runs batches of ``[N, 3, H, W]`` float32 images::

    import numpy as np, repvgg
    model = repvgg.Model.load("w.safetensors")       # arch inferred; arch="A0" or a .toml path
    sess = model.session(threads=2)
    logits = sess.run(np.zeros((1, 3, 224, 224), np.float32))   # [1, classes]
    stages = sess.features(x)                                    # the four stage outputs
    top5 = sess.classify(repvgg.preprocess("cat.jpg"))           # [[(index, prob, label), ...]]
    q, report = repvgg.quantize(model, calibration)              # INT8 (model.precision == "int8")
    q.save("w-int8.safetensors")                                 # Model.load runs it as INT8

An input's shape is checked against the model's limits from its metadata before anything
is converted, so a broadcast view or memory map describing gigabytes is refused with
``LimitError`` in microseconds, allocating nothing. Aligned C-contiguous float32 arrays
are then read in place; anything else array-like (other dtypes and byte orders,
strided or misaligned views, a CPU torch tensor through ``__array__``) is converted with
one copy. Inputs must be floating point (float16, float32 or float64): an integer,
boolean or complex array is refused with ``InputError``, since a uint8 image taken as
it is would run unscaled and unnormalized; ``repvgg.preprocess`` turns an image into
the network's input. The GIL is released
while a session runs. Errors are exceptions with the CLI's one-line messages:
``FileNotFoundError`` for a missing file, ``ModelError`` (a ``ValueError``) for weights
or architectures that cannot be used, ``InputError`` (``ValueError``) for bad inputs,
``LimitError`` (``ValueError``) for requests beyond the limits, ``UsageError``
(``ValueError``) for an option out of range (``threads=-1``, an unknown ``isa``,
``precision`` or calibration method, ``top_k``, INT8 asked of a float model), ``CpuError``
(``RuntimeError``) for an instruction set the CPU lacks, ``NonFiniteError``
(``FloatingPointError``) when finite weights and input overflow float32.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ._native import (
    CpuError,
    InputError,
    LimitError,
    Model,
    ModelError,
    NonFiniteError,
    Session,
    UsageError,
    __version__,
    convert,
    imagenet_labels,
    info,
    preprocess_file,
    quantize,
    preprocess_rgb,
    write_safetensors,
)
from ._native import preprocess as preprocess_bytes

__all__ = [
    "CpuError",
    "InputError",
    "LimitError",
    "Model",
    "ModelError",
    "NonFiniteError",
    "Session",
    "UsageError",
    "__version__",
    "convert",
    "export",
    "imagenet_labels",
    "info",
    "preprocess",
    "quantize",
]

# Keys a PyTorch BatchNorm keeps that are not weights.
_NOT_WEIGHTS = ("num_batches_tracked",)


def export(state_dict_or_module: Any, path: str | os.PathLike[str]) -> None:
    """Writes a PyTorch RepVGG as a safetensors file that :meth:`Model.load` reads.

    Takes a module (``torch.nn.Module``: its ``state_dict()``) or a state dict, from the
    official repository or timm, in training or deploy form: the key names are kept
    (both conventions load as they are), a leading ``module.`` (DataParallel) is
    dropped, BatchNorm's ``num_batches_tracked`` counters are skipped, and every tensor
    is written as float32. torch is needed only to hold the tensors; this function never
    imports it (numpy arrays work too). The file is written atomically.
    """
    state: Mapping[str, Any] = (
        state_dict_or_module.state_dict() if hasattr(state_dict_or_module, "state_dict") else state_dict_or_module
    )
    tensors = {}
    for name, value in state.items():
        if name.endswith(_NOT_WEIGHTS):
            continue
        if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU or in bf16
            value = value.detach().to("cpu").float().numpy()
        key = name[len("module."):] if name.startswith("module.") else name
        if key in tensors:
            raise ValueError(f"two tensors become `{key}` once `module.` is dropped")
        tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    write_safetensors(os.fspath(path), tensors)


def preprocess(image: Any, name: str | None = None) -> np.ndarray:
    """Preprocesses an image as ``repvgg classify`` does: float32 ``[3, 224, 224]``.

    Short side to 256 (bilinear), center crop 224, scaled to [0, 1] and normalized with
    ImageNet's mean and std. ``image`` is a path (``str`` or ``os.PathLike``), the bytes
    of a JPEG or PNG, a PIL image (any mode; converted to RGB), or an ``[H, W, 3]`` uint8
    array (or anything with ``__array__`` giving one). ``name`` is how error messages
    call it (default: the path, or "image"). Decoding and resizing run without the GIL.
    """
    if isinstance(image, (str, os.PathLike)):
        return preprocess_file(os.fspath(image))
    label = name if name is not None else "image"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return preprocess_bytes(bytes(image), label)
    # A PIL image, by its methods rather than its class, so PIL need not be imported.
    if hasattr(image, "convert") and hasattr(image, "tobytes") and hasattr(image, "size"):
        rgb = image.convert("RGB")
        width, height = rgb.size
        return preprocess_rgb(rgb.tobytes(), width, height, label)
    if isinstance(image, np.ndarray) or hasattr(image, "__array__"):
        pixels = np.asarray(image)
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise InputError(
                f"{label}: an array to preprocess must be [H, W, 3] uint8 RGB pixels, not "
                f"{list(pixels.shape)} {pixels.dtype} (a float array is presumably preprocessed already)"
            )
        height, width = pixels.shape[:2]
        return preprocess_rgb(np.ascontiguousarray(pixels).tobytes(), width, height, label)
    raise TypeError(
        f"preprocess takes a path, bytes, a PIL image or an [H, W, 3] uint8 array, not {type(image).__name__}"
    )
