"""ClassMix masks and mixing (DACS's cross-domain mixing, as DAFormer applies it).

Half of the classes of a source image are pasted onto a target image: the mask marks the source pixels of the
chosen classes, and images, labels and pixel weights are mixed with the same mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_mix_masks", "mix"]


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``U[0, 1)`` float32 draws made on the generator's device, then moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device, non_blocking=True)


def class_mix_masks(
    labels: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
    per_image: bool = True,
) -> Tensor:
    """ClassMix masks: the pixels of ``ceil(n / 2)`` classes drawn among the ``n`` classes of each source image.

    DACS (Tranheden et al., WACV 2021, Sec. 3, the ClassMix-based mixing): "half of the classes" of the source image are
    chosen, without replacement, and their pixels are pasted. Reference: lhoyer/DAFormer,
    ``mmseg/models/utils/dacs_transforms.py`` (``get_class_masks`` / ``generate_class_mask``), called from
    ``mmseg/models/uda/dacs.py``.

    The draw is batched: a ``(B, K)`` table of the classes present, one uniform score per entry, and an entry is
    chosen when its score ranks among the ``k`` smallest of the present classes of its row. The ranks of the
    present classes form a uniform random permutation, so the ``k`` chosen classes are a uniform ``k``-subset.

    ``per_image=True`` (default) draws each image's classes among the classes of that image, ``ignore_index``
    excluded: the reading of the paper. ``per_image=False`` is the reference's behaviour: it calls
    ``torch.unique`` on the whole source batch, so every image draws its own ``ceil(n / 2)`` classes among the
    ``n`` classes present anywhere in the batch, ``ignore_index`` counted as a class when it occurs; an image
    may then draw only classes it does not contain (an empty mask) and its ignore pixels may be pasted.

    Args:
        labels: ``(B, H, W)`` int64 source labels, values in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: number of classes C.
        ignore_index: label of unlabelled pixels.
        generator: random generator of the draw (made on its device, then moved to the labels' device).
        per_image: draw among each image's own classes (``False``: the batch's classes, as the reference).

    Returns:
        ``(B, H, W)`` bool mask, ``True`` where the pixel is taken from the source image.
    """
    if labels.ndim != 3 or labels.dtype != torch.int64:
        raise ValueError(
            f"class_mix_masks: labels must be int64 (B, H, W), got {labels.dtype} {tuple(labels.shape)}"
        )
    if num_classes < 1:
        raise ValueError(f"class_mix_masks: num_classes must be >= 1, got {num_classes}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"class_mix_masks: ignore_index {ignore_index} must lie outside [0, {num_classes})")
    b = labels.shape[0]
    # slot num_classes stands for ignore_index, so one fixed-width table holds every label
    slots = torch.where(labels == ignore_index, num_classes, labels).view(b, -1)
    present = torch.zeros((b, num_classes + 1), dtype=torch.bool, device=labels.device)
    present.scatter_(1, slots, True)
    if per_image:
        present[:, num_classes] = False
    else:
        present = present.any(dim=0, keepdim=True).expand(b, -1)
    scores = _uniform((b, num_classes + 1), generator, labels.device)
    # absent classes rank after every present one (scores are < 1)
    scores = torch.where(present, scores, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    count = present.sum(dim=1, keepdim=True)
    chosen = present & (rank < (count + 1) // 2)
    return chosen.gather(1, slots).view_as(labels)


def mix(mask: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """Take ``source`` where ``mask`` is set and ``target`` elsewhere: images, labels and weights alike.

    DACS (Tranheden et al., WACV 2021, Sec. 3, the mixed image and label): ``x_M = M * x_S + (1 - M) * x_T`` and the same for the labels;
    DAFormer (lhoyer/DAFormer ``mmseg/models/utils/dacs_transforms.py``, ``one_mix``; ``mmseg/models/uda/dacs.py``)
    mixes the source ground truth with the pseudo-labels and the source pixel weight 1 with the pseudo-label
    weight using the same mask. ``torch.where`` keeps the dtype (the reference's arithmetic blend turns int64
    labels through float and back).

    Args:
        mask: ``(B, H, W)`` bool, ``True`` where the source is taken (:func:`class_mix_masks`).
        source: ``(B, C, H, W)`` images or ``(B, H, W)`` labels / weights of the source domain.
        target: the target domain's tensor, same shape and dtype as ``source``.

    Returns:
        The mixed tensor, shape and dtype of ``source``.
    """
    if mask.dtype != torch.bool or mask.ndim != 3:
        raise ValueError(f"mix: mask must be bool (B, H, W), got {mask.dtype} {tuple(mask.shape)}")
    if source.shape != target.shape or source.dtype != target.dtype:
        raise ValueError(
            f"mix: source and target must match, got {source.dtype} {tuple(source.shape)} "
            f"and {target.dtype} {tuple(target.shape)}"
        )
    b, h, w = mask.shape
    if source.ndim == 4 and (source.shape[0], *source.shape[2:]) == (b, h, w):
        return torch.where(mask.unsqueeze(1), source, target)
    if source.ndim == 3 and tuple(source.shape) == (b, h, w):
        return torch.where(mask, source, target)
    raise ValueError(
        f"mix: source must be (B, C, H, W) or (B, H, W) with (B, H, W) = {(b, h, w)}, got {tuple(source.shape)}"
    )
