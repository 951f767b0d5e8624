"""Writing a file so that no reader, and no later run, ever sees half of it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write`` a temporary file beside ``path`` (``.<name>.<pid>.tmp``), then rename it to ``path``.

    Concurrent readers and writers (DDP ranks, invocations side by side) see the old file or the whole new one,
    and an interrupted write leaves no partial ``path``: the temporary file is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_savez(path: str | Path, **arrays: Any) -> Path:
    """``np.savez`` of ``arrays`` to ``path`` through :func:`atomic_write`, under exactly that name."""

    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object stops numpy from appending ".npz" to the temporary name
            np.savez(f, **arrays)

    return atomic_write(path, save)
