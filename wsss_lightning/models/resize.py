"""Resizing maps, and running networks that need input sides divisible by their stride on images of any size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor


def resize(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of maps ``(B, C, h, w)`` to ``size`` (H, W); maps already that size are returned as is.

    ``align_corners=True`` is the DeepLab / U2PL convention for logits of inputs padded to ``k * stride + 1``.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def padded_forward(fn: Callable[[Tensor], Any], images: Tensor, multiple: int) -> Any:
    """Run a token-grid network on images of any size.

    Images whose sides are multiples of ``multiple`` go straight through (training crops). Others are
    zero-padded at the bottom / right; each output map is resized (bilinear) to the padded size unless it
    already has it, and cropped back to the image, so it lines up with the input pixels.

    Args:
        fn: images (B, 3, H', W') with H', W' multiples of ``multiple`` -> a map (B, K, h, w) or a tuple of maps.
        images: (B, 3, H, W).
        multiple: the patch size or output stride the network needs (1 = no padding).

    Returns:
        ``fn``'s output; resized to (H, W) when padding was needed.
    """
    h, w = images.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return fn(images)
    out = fn(F.pad(images, (0, pw, 0, ph)))
    size = (h + ph, w + pw)

    def crop(m: Tensor) -> Tensor:
        return resize(m, size)[..., :h, :w]  # token-grid maps; full-resolution outputs are only cropped

    return tuple(crop(m) for m in out) if isinstance(out, tuple) else crop(out)
