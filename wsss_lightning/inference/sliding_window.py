"""Sliding-window inference for images larger than the training crop (e.g. Cityscapes at 1024x2048)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.inference.multiscale import Forward, resize

__all__ = ["sliding_window_forward", "sliding_window_logits", "window_starts"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return pair


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``.

    Windows start every ``stride`` pixels; if the last one stops short of the border, one more window is
    placed flush with the border (U2PL's Cityscapes evaluation does the same), so no window sticks out.

    Args:
        length: image extent along the axis (already padded to at least ``window``).
        window: window extent.
        stride: step between window starts.

    Returns:
        Sorted start offsets; ``[0]`` when ``length <= window``.
    """
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def sliding_window_logits(
    forward: Forward,
    images: Tensor,
    num_classes: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    max_batch: int | None = None,
    pad_value: float = 0.0,
    mode: str = "bilinear",
    align_corners: bool = False,
) -> Tensor:
    """Logits of overlapping windows, averaged where they overlap.

    Images smaller than the window are padded at the bottom/right with ``pad_value`` (0 = the mean
    colour for normalised inputs) and the padding is cropped from the result. The windows of all images
    are run in batches of up to ``max_batch`` crops; each window's logits are resized to the window
    size, summed into the canvas and divided by the per-pixel window count. U2PL's Cityscapes protocol is
    ``window=769, stride=513`` (= ceil(769 * 2 / 3)) with ``align_corners=True``.

    Args:
        forward: images (N, 3, h, w) -> logits (N, C, h', w').
        images: (B, 3, H, W) normalised images.
        num_classes: C, the number of logit channels ``forward`` returns.
        window: window size, int or (h, w).
        stride: step between windows, int or (h, w).
        max_batch: most windows per ``forward`` call; ``None`` = all windows of the batch at once.
        pad_value: value of the padding added to images smaller than the window.
        mode: interpolation mode for resizing window logits to the window size.
        align_corners: passed to the interpolation.

    Returns:
        (B, C, H, W) averaged logits.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    win_h, win_w = _pair(window, "window")
    stride_h, stride_w = _pair(stride, "stride")
    if max_batch is not None and max_batch <= 0:
        raise ValueError(f"max_batch must be positive or None, got {max_batch}")
    batch, _, height, width = images.shape
    pad_h, pad_w = max(win_h - height, 0), max(win_w - width, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), value=pad_value)
    full_h, full_w = height + pad_h, width + pad_w
    boxes = [
        (top, left)
        for top in window_starts(full_h, win_h, stride_h)
        for left in window_starts(full_w, win_w, stride_w)
    ]

    # Crops are cut per chunk and their logits accumulated at once, so memory stays at one chunk of
    # window logits plus the canvas.
    items = [(b, top, left) for top, left in boxes for b in range(batch)]
    chunk = len(items) if max_batch is None else max_batch
    canvas: Tensor | None = None
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        crops = torch.stack([images[b, :, t : t + win_h, lf : lf + win_w] for b, t, lf in part])
        logits = forward(crops)
        if logits.ndim != 4 or logits.shape[:2] != (len(part), num_classes):
            raise ValueError(
                f"forward must return (N={len(part)}, C={num_classes}, h, w) logits, got shape {tuple(logits.shape)}"
            )
        logits = resize(logits, (win_h, win_w), mode, align_corners)
        if canvas is None:
            canvas = logits.new_zeros(batch, num_classes, full_h, full_w)
        for (b, top, left), window_logits in zip(part, logits, strict=True):
            canvas[b, :, top : top + win_h, left : left + win_w] += window_logits
    assert canvas is not None
    count = canvas.new_zeros(1, 1, full_h, full_w)
    for top, left in boxes:
        count[:, :, top : top + win_h, left : left + win_w] += 1
    return (canvas / count)[:, :, :height, :width]


def sliding_window_forward(
    forward: Forward,
    num_classes: int,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    max_batch: int | None = None,
    pad_value: float = 0.0,
    mode: str = "bilinear",
    align_corners: bool = False,
) -> Forward:
    """Wrap ``forward`` so that it runs as a sliding window; composable with ``multiscale_flip_logits``.

    Example:
        >>> fwd = sliding_window_forward(model, num_classes=19, window=769, stride=513)
        >>> logits = multiscale_flip_logits(fwd, images, scales=(0.75, 1.0), flip=True)

    Args:
        forward: images (N, 3, h, w) -> logits (N, C, h', w').
        num_classes: C.
        window: window size, int or (h, w).
        stride: step between windows, int or (h, w).
        max_batch: most windows per ``forward`` call.
        pad_value: value of the padding added to images smaller than the window.
        mode: interpolation mode for resizing window logits.
        align_corners: passed to the interpolation.

    Returns:
        A forward mapping (B, 3, H, W) -> (B, C, H, W) logits.
    """
    return functools.partial(
        sliding_window_logits,
        forward,
        num_classes=num_classes,
        window=window,
        stride=stride,
        max_batch=max_batch,
        pad_value=pad_value,
        mode=mode,
        align_corners=align_corners,
    )
