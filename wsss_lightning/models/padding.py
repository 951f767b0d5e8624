"""Running networks that need input sides divisible by their stride on images of any size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor


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
        if m.shape[-2:] != size:  # token-grid maps; full-resolution outputs are only cropped
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        return m[..., :h, :w]

    return tuple(crop(m) for m in out) if isinstance(out, tuple) else crop(out)
