"""CutMix of unlabeled images with their pseudo-labels and confidences (U2PL's strong augmentation)."""

from __future__ import annotations

import torch
from torch import Tensor


def cutmix_boxes(
    batch_size: int,
    height: int,
    width: int,
    prob: float = 0.5,
    area_ratio: float = 0.5,
    per_sample: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random CutMix boxes, one per image, drawn on ``device`` without host synchronisation.

    Box sampling follows U2PL's ``generate_cutout_mask`` (``u2pl/dataset/augmentation.py``, ``ratio=2``):
    the box covers ``area_ratio`` of the image up to rounding, with width
    ``w ~ U{floor(area_ratio*W)+1, ..., W-1}``, height ``h = round(area_ratio*H*W / w)`` (half to even, as
    ``np.round``) and a uniform position inside the image. U2PL mixes the whole batch with probability 0.5 per step (``per_sample=False``); otherwise the
    returned mask is all ``False`` and mixing is a no-op.

    Args:
        batch_size: number of images B.
        height: image height H.
        width: image width W; needs ``floor(area_ratio*W) + 1 < W``.
        prob: probability that the batch (or, with ``per_sample``, each image) is mixed.
        area_ratio: box area as a fraction of the image, in (0, 1).
        per_sample: draw the mixing decision per image instead of once for the batch.
        generator: random generator (its device is used when ``device`` is None).
        device: device of the result.

    Returns:
        ``(B, H, W)`` bool mask, ``True`` inside the box: those pixels come from the partner image.
    """
    if batch_size < 1:
        raise ValueError(f"cutmix_boxes: batch_size must be >= 1, got {batch_size}")
    if not 0.0 < area_ratio < 1.0:
        raise ValueError(f"cutmix_boxes: area_ratio must be in (0, 1), got {area_ratio}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"cutmix_boxes: prob must be in [0, 1], got {prob}")
    low_w = int(area_ratio * width) + 1  # np.random.randint truncates U2PL's float bound W/ratio + 1
    if height < 2 or low_w >= width:
        raise ValueError(
            f"cutmix_boxes: image {height}x{width} is too small for area_ratio={area_ratio} "
            f"(need floor(area_ratio*W)+1 < W and H >= 2)"
        )
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    box_w = torch.randint(low_w, width, (batch_size,), generator=generator, device=device)
    area = area_ratio * height * width
    box_h = torch.round(area / box_w.to(torch.float64)).long()
    # uniform integer positions with per-sample upper bounds; float64 keeps floor(u * n) < n
    u = torch.rand((2, batch_size), generator=generator, device=device, dtype=torch.float64)
    x0 = torch.minimum((u[0] * (width - box_w + 1)).long(), width - box_w)
    y0 = torch.minimum((u[1] * (height - box_h + 1)).long(), height - box_h)
    apply = torch.rand((batch_size if per_sample else 1,), generator=generator, device=device) < prob

    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside_y = (rows >= y0.view(-1, 1, 1)) & (rows < (y0 + box_h).view(-1, 1, 1))
    inside_x = (cols >= x0.view(-1, 1, 1)) & (cols < (x0 + box_w).view(-1, 1, 1))
    return inside_y & inside_x & apply.view(-1, 1, 1)


def apply_cutmix(
    images: Tensor, labels: Tensor, confidence: Tensor, mask: Tensor, partner: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Paste each image's box region from its partner into images, pseudo-labels and confidences alike.

    U2PL (``u2pl/dataset/augmentation.py``, ``train_semi.py``) mixes image ``i`` with image
    ``(i + 1) mod B`` (the default; with B = 1 an image is mixed with itself, a no-op) and mixes the
    teacher's hard pseudo-labels and max-probabilities with the same mask, so labels stay consistent with the
    pixels they describe.

    Args:
        images: ``(B, C, H, W)`` unlabeled images.
        labels: ``(B, H, W)`` pseudo-labels (any dtype; 255 = ignore is carried along).
        confidence: ``(B, H, W)`` pseudo-label confidences.
        mask: ``(B, H, W)`` bool, ``True`` where the pixel is taken from the partner (:func:`cutmix_boxes`).
        partner: ``(B,)`` long index of each image's partner (e.g. ``torch.randperm(B)``); default ``i + 1``.

    Returns:
        Mixed ``(images, labels, confidence)`` with the input shapes and dtypes; inputs are not modified.
    """
    if images.dim() != 4:
        raise ValueError(f"apply_cutmix: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    for name, tensor in (("labels", labels), ("confidence", confidence), ("mask", mask)):
        if tuple(tensor.shape) != (b, h, w):
            raise ValueError(
                f"apply_cutmix: {name} must be (B, H, W) = {(b, h, w)}, got {tuple(tensor.shape)}"
            )
    if mask.dtype != torch.bool:
        raise ValueError(f"apply_cutmix: mask must be bool, got {mask.dtype}")
    if partner is None:
        # roll by -1 puts image (i + 1) mod B at position i without an index tensor
        def other(x: Tensor) -> Tensor:
            return torch.roll(x, shifts=-1, dims=0)
    else:
        if tuple(partner.shape) != (b,):
            raise ValueError(f"apply_cutmix: partner must be (B,) = ({b},), got {tuple(partner.shape)}")

        def other(x: Tensor) -> Tensor:
            return x.index_select(0, partner)

    mixed_images = torch.where(mask.unsqueeze(1), other(images), images)
    mixed_labels = torch.where(mask, other(labels), labels)
    mixed_confidence = torch.where(mask, other(confidence), confidence)
    return mixed_images, mixed_labels, mixed_confidence
