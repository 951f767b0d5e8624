"""Work tensors kept from one training step to the next instead of being allocated every step.

A U2PL contrastive step at VOC shapes needs a few hundred MB of temporary tensors of the same shapes every
step (the pixel-major copy of the teacher representations, the keys it pushes, the gather buffer of
:func:`~wsss_lightning.methods.u2pl.gathered_dot.gathered_dot`). Allocating them afresh costs, on CPU, page
faults that take longer than filling them, and on accelerators allocator churn. :class:`ScratchBuffers`
keeps one tensor per name and allocates again only when the requested shape, dtype or device changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ScratchBuffers"]


class ScratchBuffers:
    """Named reusable work tensors.

    Not module buffers: they are never part of a ``state_dict`` (nor of a checkpoint) and do not follow
    ``Module.to``; a request on another device simply allocates there (the old tensor is released first).
    A tensor handed out stays valid only until the next request of the same name.
    """

    def __init__(self) -> None:
        self._tensors: dict[str, Tensor] = {}

    def get(self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor of this shape, dtype and device, the same storage as last time if they match."""
        shape = torch.Size(shape)
        cached = self._tensors.get(name)
        if cached is not None and cached.shape == shape and cached.dtype == dtype and cached.device == device:
            return cached
        self._tensors.pop(name, None)  # release before allocating the new one
        tensor = torch.empty(shape, dtype=dtype, device=device)
        self._tensors[name] = tensor
        return tensor

    def clear(self) -> None:
        """Release every tensor."""
        self._tensors.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.numel() * t.element_size() for t in self._tensors.values())
