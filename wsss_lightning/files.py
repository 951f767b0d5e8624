"""Writing a file so that no reader, and no later run, ever sees half of it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


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
