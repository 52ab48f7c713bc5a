import os
from typing import Any

from ._native import (
    CpuError as CpuError,
    InputError as InputError,
    LimitError as LimitError,
    Model as Model,
    ModelError as ModelError,
    NonFiniteError as NonFiniteError,
    Session as Session,
    __version__ as __version__,
    convert as convert,
    imagenet_labels as imagenet_labels,
    info as info,
    preprocess as preprocess,
    write_safetensors as write_safetensors,
)

def export(state_dict_or_module: Any, path: str | os.PathLike[str]) -> None: ...
