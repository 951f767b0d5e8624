"""Seminar Learning's click losses (Chen et al., ICCV 2021, Eq. 2, 3, 6) as pure functions.

Shapes: B images, C classes, (H, W) pixels. ``labels`` hold class ids with ``ignore_index`` off the clicks.
The dense-CRF term (Eq. 4) is the shared :func:`wsss_lightning.losses.dense_crf.dense_crf_loss`.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.losses.segmentation import check_logits_target, masked_mean


def partial_ce(
    logits: Tensor, clicks: Tensor, *, batch_average: bool = True, ignore_index: int = 255
) -> Tensor:
    """Cross-entropy over the clicked pixels only (Eq. 2).

    With ``batch_average`` the mean over the labelled pixels of the batch is divided by B once more, as the
    rloss criterion does (``pytorch-deeplab_v3_plus/utils/loss.py``, ``batch_average=True``). A batch without
    any labelled pixel gives 0 (attached to the graph), not NaN; no host synchronisation.

    Args:
        logits: (B, C, H, W) student logits.
        clicks: (B, H, W) int64 click labels, ``ignore_index`` elsewhere.
        batch_average: divide by B (rloss).
        ignore_index: label of unlabelled pixels.

    Returns:
        Scalar loss.
    """
    check_logits_target(logits, clicks, "partial_ce", ("logits", "clicks"))
    ce = F.cross_entropy(logits.float(), clicks, ignore_index=ignore_index, reduction="none")
    loss = masked_mean(ce, clicks != ignore_index)
    return loss / logits.shape[0] if batch_average else loss


def consistency_mse(
    probs: Tensor,
    teacher_probs: Tensor,
    region: Tensor | None = None,
    reduction: Literal["elements", "classes"] = "elements",
) -> Tensor:
    """Squared difference between student and teacher softmax maps over all (real) pixels (Eq. 3).

    Eq. 3's leading minus sign is a typo (the loss is minimised); clicked pixels are included (§3.2).

    Args:
        probs: (B, C, H, W) student probabilities (with gradient).
        teacher_probs: (B, C, H, W) teacher probabilities (treated as constants).
        region: optional (B, H, W) bool mask of the pixels to average over (e.g. not padding).
        reduction: ``"elements"`` averages over B·C·pixels (``F.mse_loss``); ``"classes"`` sums over classes and
            averages over pixels.

    Returns:
        Scalar loss.
    """
    if probs.shape != teacher_probs.shape:
        raise ValueError(
            f"consistency_mse: student {tuple(probs.shape)} and teacher {tuple(teacher_probs.shape)} differ"
        )
    per_pixel = (probs - teacher_probs.detach()).pow(2).sum(1)  # (B, H, W)
    if reduction == "elements":
        per_pixel = per_pixel / probs.shape[1]
    elif reduction != "classes":
        raise ValueError(f"consistency_mse: reduction = {reduction!r}; expected 'elements' or 'classes'")
    if region is None:
        return per_pixel.mean()
    return masked_mean(per_pixel, region)


def pseudo_label_ce(
    logits: Tensor, pseudo_labels: Tensor, region: Tensor | None = None, *, batch_average: bool = False
) -> Tensor:
    """Cross-entropy to the ancillary student's hard labels over all (real) pixels (Eq. 6).

    Args:
        logits: (B, C, H, W) primary student logits.
        pseudo_labels: (B, H, W) int64 argmax of the frozen ancillary student.
        region: optional (B, H, W) bool mask of the pixels to average over (e.g. not padding).
        batch_average: also divide by B like rloss's criterion (Eq. 6 is a plain mean).

    Returns:
        Scalar loss.
    """
    check_logits_target(logits, pseudo_labels, "pseudo_label_ce", ("logits", "pseudo_labels"))
    ce = F.cross_entropy(logits.float(), pseudo_labels, reduction="none")
    loss = ce.mean() if region is None else masked_mean(ce, region)
    return loss / logits.shape[0] if batch_average else loss
