"""DAFormer's confidence-weighted pseudo-labels and the weighted cross-entropy that uses them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pseudo_label_weights", "weighted_ce"]


def pseudo_label_weights(
    prob: Tensor,
    threshold: float = 0.968,
    ignore_top: int = 15,
    ignore_bottom: int = 120,
    per_image: bool = True,
) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels and their quality weight (DACS / DAFormer).

    DACS (Tranheden et al., WACV 2021, Sec. 3) weights the target loss by the proportion of pixels whose
    confidence exceeds a threshold; DAFormer (Hoyer et al., CVPR 2022, Sec. 3.1, self-training with the quality estimate ``q_T``; Sec. 4.1) uses
    ``tau = 0.968`` and zeroes the weight on the top 15 and bottom 120 rows of Cityscapes crops (rectification
    artefacts and the ego car). Reference: lhoyer/DAFormer ``mmseg/models/uda/dacs.py`` (``forward_train``).

    The quality ``q`` is the fraction of pixels with ``max prob >= threshold``, counted before the bands are
    zeroed; ``per_image=True`` gives one ``q`` per image, ``per_image=False`` one scalar for the whole batch
    (the reference's ``torch.sum(...).item() / size``; here without the host read). The bands are rows of
    ``prob``'s resolution (the reference's pseudo-labels have the crop's size); a band larger than the image
    is clamped to its height, so with ``ignore_top + ignore_bottom >= H`` every weight is 0.

    Args:
        prob: ``(B, C, H, W)`` class probabilities of the teacher (softmax output).
        threshold: confidence threshold ``tau``.
        ignore_top: rows zeroed at the top (0: none).
        ignore_bottom: rows zeroed at the bottom (0: none).
        per_image: quality per image (``False``: one for the batch, as the reference).

    Returns:
        ``(labels, weight)``: ``(B, H, W)`` int64 argmax labels and ``(B, H, W)`` weights in ``prob``'s dtype.
    """
    if prob.ndim != 4 or not prob.is_floating_point():
        raise ValueError(
            f"pseudo_label_weights: prob must be float (B, C, H, W), got {prob.dtype} {tuple(prob.shape)}"
        )
    if ignore_top < 0 or ignore_bottom < 0:
        raise ValueError(
            f"pseudo_label_weights: ignore_top / ignore_bottom must be >= 0, got {ignore_top} / {ignore_bottom}"
        )
    confidence, labels = prob.max(dim=1)
    confident = (confidence >= threshold).to(prob.dtype)
    quality = confident.mean(dim=(1, 2)) if per_image else confident.mean().expand(prob.shape[0])
    h = prob.shape[-2]
    rows = torch.arange(h, device=prob.device)
    # rows in [ignore_top, H - ignore_bottom) keep their weight; range() clamps like the reference's slicing
    kept = (rows >= min(ignore_top, h)) & (rows < h - min(ignore_bottom, h))
    weight = quality.view(-1, 1, 1) * kept.to(prob.dtype).view(1, h, 1)
    return labels, weight.expand_as(confidence).contiguous()


def weighted_ce(logits: Tensor, labels: Tensor, weight: Tensor, ignore_index: int = 255) -> Tensor:
    """Pixel-weighted cross-entropy averaged over all pixels, ignored and zero-weight ones included.

    DAFormer (Hoyer et al., CVPR 2022, Sec. 3.1: ``q_T`` times the target cross-entropy); reference:
    lhoyer/DAFormer ``mmseg/models/losses/cross_entropy_loss.py`` and ``mmseg/models/losses/utils.py``
    (``weight_reduce_loss``): the per-pixel loss (0 at ``ignore_index``) is multiplied by ``seg_weight`` and,
    with ``reduction='mean'`` and ``avg_factor=None``, divided by the number of all ``B * H * W`` elements.

    Args:
        logits: ``(B, C, H, W)`` student logits.
        labels: ``(B, H, W)`` int64 targets, ``ignore_index`` for unlabelled pixels.
        weight: ``(B, H, W)`` per-pixel weights (:func:`pseudo_label_weights`, mixed with the source's 1).
        ignore_index: label of pixels without loss.

    Returns:
        Scalar loss in ``logits``' dtype.
    """
    if logits.ndim != 4:
        raise ValueError(f"weighted_ce: logits must be (B, C, H, W), got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    for name, tensor in (("labels", labels), ("weight", weight)):
        if tuple(tensor.shape) != expected:
            raise ValueError(f"weighted_ce: {name} must be (B, H, W) = {expected}, got {tuple(tensor.shape)}")
    loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore_index)
    return (loss * weight.to(loss.dtype)).mean()
