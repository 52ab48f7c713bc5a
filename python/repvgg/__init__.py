"""repvgg: fast FP32 CPU inference for RepVGG networks (Ding et al., CVPR 2021).

Python bindings of repvgg-rs. A model loads PyTorch's safetensors weights in any naming
form (official or timm), dtype (F32, F16, BF16) and form (deploy, or training, fused at
load); a session runs batches of ``[N, 3, H, W]`` float32 images::

    import numpy as np, repvgg
    model = repvgg.Model.load("w.safetensors")       # arch inferred; arch="A0" or a .toml path
    sess = model.session(threads=2)
    logits = sess.run(np.zeros((1, 3, 224, 224), np.float32))   # [1, classes]
    stages = sess.features(x)                                    # the four stage outputs

An input's shape is checked against the model's limits from its metadata before anything
is converted, so a broadcast view or memory map describing gigabytes is refused with
``LimitError`` in microseconds, allocating nothing. Aligned C-contiguous float32 arrays
are then read in place; anything else array-like (other dtypes and byte orders,
strided or misaligned views, a CPU torch tensor through ``__array__``) is converted with
one copy. The GIL is released
while a session runs. Errors are exceptions with the CLI's one-line messages:
``FileNotFoundError`` for a missing file, ``ModelError`` (a ``ValueError``) for weights
or architectures that cannot be used, ``InputError`` (``ValueError``) for bad inputs,
``LimitError`` (``ValueError``) for requests beyond the limits, ``CpuError``
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
    __version__,
    convert,
    imagenet_labels,
    info,
    preprocess,
    write_safetensors,
)

__all__ = [
    "CpuError",
    "InputError",
    "LimitError",
    "Model",
    "ModelError",
    "NonFiniteError",
    "Session",
    "__version__",
    "convert",
    "export",
    "imagenet_labels",
    "info",
    "preprocess",
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
