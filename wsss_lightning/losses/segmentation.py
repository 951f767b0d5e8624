"""Segmentation losses shared by the methods, as pure functions.

Multi-label classification (image tags), the background/foreground-balanced CE of ToCo / DuPL, OHEM CE
(U2PL's Cityscapes supervised loss) and the symmetric CE of U2PL+. Shapes: B batch, C classes, H x W label
resolution; ``ignore_index`` (255) marks pixels without a label. Nothing here synchronises with the host:
degenerate batches give a zero loss that still depends on the logits.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "balanced_seg_ce",
    "check_logits_target",
    "classification_loss",
    "masked_mean",
    "ohem_ce",
    "per_pixel_ce_rce",
    "symmetric_ce",
]

# -log(1e-4): the reverse-CE label clamp of U2PL's ``compute_rce_loss`` / ProDA.
_RCE_SCALE = -math.log(1e-4)


def check_logits_target(
    logits: Tensor, target: Tensor, where: str, names: tuple[str, str] = ("logits", "target")
) -> None:
    """Raise a ValueError naming ``where`` unless logits are (B, C, H, W) and target (B, H, W) alike."""
    if (
        logits.ndim != 4
        or target.ndim != 3
        or logits.shape[0] != target.shape[0]
        or logits.shape[2:] != target.shape[1:]
    ):
        raise ValueError(
            f"{where}: expected {names[0]} (B, C, H, W) and {names[1]} (B, H, W) of the same B, H, W "
            f"(resize the logits to the label size first); got {tuple(logits.shape)} and {tuple(target.shape)}"
        )


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 (still attached to the graph) for an empty mask."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def per_pixel_ce_rce(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel CE, per-pixel reverse CE and the valid mask, all ``(B, H, W)``."""
    valid = target != ignore_index
    safe = torch.where(valid, target, 0).long()
    logp = F.log_softmax(logits.float(), dim=1)
    logp_y = logp.gather(1, safe[:, None])[:, 0]
    ce = -logp_y
    # RCE = -sum_c p_c log(clamp(onehot_c, 1e-4, 1)) = -log(1e-4) * (1 - p_y).
    rce = _RCE_SCALE * (1.0 - logp_y.exp())
    return ce, rce, valid


def symmetric_ce(
    logits: Tensor,
    target: Tensor,
    xi1: float = 1.0,
    xi2: float = 0.1,
    ignore_index: int = 255,
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Symmetric cross-entropy ``xi1 * CE + xi2 * RCE`` (U2PL+ Eq. 4; U2PL ``u2pl/utils/loss_helper.py``).

    ``RCE = -sum_c p_c log(clamp(onehot_c, 1e-4, 1)) = 9.2103 (1 - p_y)`` (U2PL's helper; no clamp on p).
    The paper's text gives (xi1, xi2) = (1, 0.1); its Table VII's best row, which reproduces the headline
    numbers, is (1, 0.5).

    Args:
        logits: ``(B, C, H, W)``.
        target: ``(B, H, W)`` labels, ``ignore_index`` = no label.
        xi1: CE weight.
        xi2: RCE weight.
        ignore_index: label excluded from the loss.
        reduction: ``"mean"`` over labelled pixels (0 if none) or ``"none"`` (``(B, H, W)``, 0 at ignored).

    Returns:
        Scalar, or ``(B, H, W)`` per-pixel losses.
    """
    check_logits_target(logits, target, "symmetric_ce")
    ce, rce, valid = per_pixel_ce_rce(logits, target, ignore_index)
    per_pixel = (xi1 * ce + xi2 * rce) * valid
    if reduction == "none":
        return per_pixel
    return masked_mean(per_pixel, valid)


def ohem_ce(
    logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255
) -> Tensor:
    """Online hard example mining CE (U2PL's Cityscapes supervised loss; ``u2pl/utils/loss_helper.py``).

    Over the whole batch: ``p_i`` = softmax probability of the true class; ``tau = max(thresh, p of the
    min_kept-th hardest labelled pixel)``; CE averaged over labelled pixels with ``p_i <= tau``. With fewer
    than ``min_kept`` labelled pixels every labelled pixel is kept. (``min_kept = 0`` keeps ``p <= thresh``;
    the released class keeps everything then.)

    Args:
        logits: ``(B, C, H, W)``.
        target: ``(B, H, W)`` labels.
        thresh: probability threshold (0.7).
        min_kept: minimum number of pixels kept (released Cityscapes config: 100,000 per GPU batch).
        ignore_index: label excluded from the loss.

    Returns:
        Scalar loss (0 when nothing is kept).
    """
    check_logits_target(logits, target, "ohem_ce")
    if min_kept < 0:
        raise ValueError(f"ohem_ce: min_kept must be >= 0, got {min_kept}")
    ce, _, valid = per_pixel_ce_rce(logits, target, ignore_index)
    with torch.no_grad():
        p_true = torch.where(valid, (-ce).exp(), 1.0).reshape(-1)  # ignored pixels sort last, as in U2PL
        num_valid = valid.sum()
        threshold = torch.full((), thresh, device=logits.device, dtype=p_true.dtype)  # a fill, not a copy
        if min_kept > 0:
            k = min(min_kept, p_true.numel())
            kth = torch.kthvalue(p_true, k).values
            threshold = torch.maximum(threshold, kth)
        kept = valid & ((p_true.reshape(valid.shape) <= threshold) | (num_valid < min_kept))
    return masked_mean(ce, kept)


def classification_loss(logits: Tensor, tags: Tensor) -> Tensor:
    """Multi-label soft-margin loss, averaged over classes and images (DuPL's ``L_cls`` for one classifier).

    Args:
        logits: ``(B, C)`` image-level class scores.
        tags: ``(B, C)`` multi-hot image labels over the foreground classes (no background column).

    Returns:
        0-d tensor.
    """
    if logits.ndim != 2 or tags.shape != logits.shape:
        raise ValueError(
            f"classification_loss: expected logits (B, C) and tags of the same shape, got "
            f"{tuple(logits.shape)} and {tuple(tags.shape)}"
        )
    return F.multilabel_soft_margin_loss(logits, tags.to(logits.dtype))


def balanced_seg_ce(
    logits: Tensor, labels: Tensor, ignore_index: int = 255, log_probs: bool = False, scale: float = 0.5
) -> Tensor:
    """ToCo's background/foreground-balanced cross-entropy (DuPL's ``L_seg`` for one sub-net).

        L = scale * [sum_{y=0} CE / (n_bg + 1e-6) + sum_{y not in {0, ignore}} CE / (n_fg + 1e-6)],

    with the sums and counts over the whole batch, so background and foreground pixels weigh the same
    whatever their proportions. A side without pixels contributes 0. ToCo's ``get_seg_loss`` halves the sum
    (``scale=0.5``); RRM's (``tool/myTool.py``) does not (``scale=1``).

    Args:
        logits: ``(B, K, H, W)`` segmentation logits, already at the label size (K = C + 1, 0 = background).
        labels: ``(B, H, W)`` integer labels in ``0..C`` or ``ignore_index``.
        ignore_index: label of unsupervised pixels.
        log_probs: ``logits`` are already log-probabilities (``log_softmax`` over dim 1), e.g. shared with
            another loss of the same logits; the result is the same as from the logits.
        scale: factor of the sum of the two means.

    Returns:
        0-d tensor.
    """
    check_logits_target(logits, labels, "balanced_seg_ce", ("logits", "labels"))
    labels = labels.long()
    # (B, H, W), 0 at ignore; cross_entropy is nll_loss of log_softmax, so both branches agree bit for bit
    loss_fn = F.nll_loss if log_probs else F.cross_entropy
    ce = loss_fn(logits, labels, ignore_index=ignore_index, reduction="none")
    bg = labels == 0
    fg = (labels != 0) & (labels != ignore_index)
    bg_loss = torch.where(bg, ce, 0.0).sum() / (bg.sum() + 1e-6)
    fg_loss = torch.where(fg, ce, 0.0).sum() / (fg.sum() + 1e-6)
    return scale * (bg_loss + fg_loss)
