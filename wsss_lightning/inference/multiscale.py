"""Multi-scale and horizontal-flip test-time augmentation over any segmentation forward."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Forward", "multiscale_flip_logits", "resize"]

Forward = Callable[[Tensor], Tensor]
"""images (B, 3, H, W) -> logits (B, C, h, w) at any output stride."""

Merge = Literal["sum", "max"]


def resize(x: Tensor, size: tuple[int, int], mode: str = "bilinear", align_corners: bool = False) -> Tensor:
    """Resize (B, C, H, W) to (B, C, *size); a no-op when the size already matches.

    ``align_corners`` is only passed to the interpolation modes that accept it.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode in ("linear", "bilinear", "bicubic", "trilinear"):
        return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)
    return F.interpolate(x, size=size, mode=mode)


def _merge(acc: Tensor | None, x: Tensor, how: Merge) -> Tensor:
    if acc is None:
        return x
    return acc + x if how == "sum" else torch.maximum(acc, x)


def multiscale_flip_logits(
    forward: Forward,
    images: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    merge: Merge = "sum",
    flip_merge: Merge | None = None,
    mode: str = "bilinear",
    align_corners: bool = False,
    output_size: tuple[int, int] | None = None,
) -> Tensor:
    """Logits merged over input scales and (optionally) a horizontal flip.

    For each scale the input is resized to ``round(H * s) x round(W * s)``, passed through ``forward``
    (together with its horizontal flip, in one batch of 2B), the flipped logits are flipped back, and all
    logits are resized to ``output_size``. The two flip passes are merged with ``flip_merge``, the scales
    with ``merge``. DuPL's VOC protocol is ``scales=(1.0, 1.25, 1.5), flip=True, merge="max",
    flip_merge="sum"``; its COCO protocol sums both.

    Args:
        forward: images (N, 3, h, w) -> logits (N, C, h', w').
        images: (B, 3, H, W) normalised images.
        scales: input scale factors.
        flip: also run the horizontally flipped input.
        merge: how scales are combined: ``"sum"`` or element-wise ``"max"``.
        flip_merge: how the original and flipped passes are combined; ``None`` = same as ``merge``.
        mode: interpolation mode for both the input and the logit resizes.
        align_corners: passed to the interpolation (U2PL's code uses True, DuPL's False).
        output_size: (h, w) of the returned logits; ``None`` = the input size (H, W).

    Returns:
        (B, C, *output_size) merged logits (a sum over passes is not renormalised).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if not scales:
        raise ValueError("scales must contain at least one scale factor")
    if merge not in ("sum", "max") or flip_merge not in (None, "sum", "max"):
        raise ValueError(f"merge / flip_merge must be 'sum' or 'max', got {merge!r} / {flip_merge!r}")
    height, width = images.shape[-2:]
    out_size = (height, width) if output_size is None else output_size
    flip_how: Merge = merge if flip_merge is None else flip_merge
    batch = images.shape[0]

    merged: Tensor | None = None
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"scales must be positive, got {scale}")
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = resize(images, size, mode, align_corners)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        logits = forward(x)
        if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"forward must return (N, C, h, w) logits for N={x.shape[0]} inputs, got shape {tuple(logits.shape)}"
            )
        logits = resize(logits, out_size, mode, align_corners)
        if flip:
            logits = _merge(logits[:batch], logits[batch:].flip(-1), flip_how)
        merged = _merge(merged, logits, merge)
    assert merged is not None
    return merged
