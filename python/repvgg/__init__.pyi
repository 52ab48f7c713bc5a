import os
from typing import Any

import numpy as np
import numpy.typing as npt

from ._native import (
    CpuError as CpuError,
    InputError as InputError,
    LimitError as LimitError,
    Model as Model,
    ModelError as ModelError,
    NonFiniteError as NonFiniteError,
    Session as Session,
    UsageError as UsageError,
    __version__ as __version__,
    convert as convert,
    imagenet_labels as imagenet_labels,
    info as info,
    quantize as quantize,
    write_safetensors as write_safetensors,
)

def export(state_dict_or_module: Any, path: str | os.PathLike[str]) -> None: ...
def preprocess(image: Any, name: str | None = None) -> npt.NDArray[np.float32]:
    """An image (path, JPEG/PNG bytes, PIL image or [H, W, 3] uint8 array) as float32 [3, 224, 224]."""
