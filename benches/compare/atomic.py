"""Writing report files the way the `repvgg` CLI writes its outputs: the new content goes
to a temporary file in the target's directory and replaces the target only when complete,
so an interrupted run never leaves half a report; an existing file keeps its mode."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_with(path: Path | str, fill: Callable[[Path], None]) -> None:
    """Calls `fill(temporary_path)` to write the content, then renames it over `path`."""
    path = Path(os.path.realpath(path))  # a symlink is followed, not replaced
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fill(Path(temp))
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> None:
    write_with(path, lambda temp: temp.write_text(text))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
