"""Where code in a training step may read tensor values on the host.

On the CPU, reading a value (a size, an index list, ``max()``) is no synchronisation, and some parts of a
step take CPU paths that do: PAR's cache-sized chunks, the compact dense-CRF lattice, the memory bank's
label check. On accelerators every such read would stall the device queue, so the same parts take
sync-free paths there. :func:`host_reads_allowed` is the one place that choice is made.

:func:`accelerator_paths` makes the CPU take the accelerator paths too. The method contract's host-read
check runs every training step under it, so the code that runs on GPUs is the code checked on CPU machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["accelerator_paths", "host_reads_allowed"]

_accelerator_paths_everywhere = [False]


def host_reads_allowed(device: torch.device) -> bool:
    """Whether code may read values of tensors on ``device`` on the host without a device sync.

    True on the CPU, unless inside :func:`accelerator_paths`.
    """
    return device.type == "cpu" and not _accelerator_paths_everywhere[0]


@contextmanager
def accelerator_paths(enabled: bool = True) -> Iterator[None]:
    """Within the block, CPU tensors take the sync-free paths accelerators take (same results)."""
    previous = _accelerator_paths_everywhere[0]
    _accelerator_paths_everywhere[0] = enabled
    try:
        yield
    finally:
        _accelerator_paths_everywhere[0] = previous
