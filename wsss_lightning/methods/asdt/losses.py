"""ASDT's distillation losses: RRM's background/foreground-split CE and the gate of the structure loss.

Every distillation term of ASDT (Zhang et al., IEEE TIP, Eqs. 3, 5, 6) is a cross-entropy to a hard label plus
the structure loss ``L_str``; both follow RRM (github.com/zbf1991/RRM, ``tool/myTool.py`` and
``DenseEnergyLoss.py``). Shapes: B batch, K = C + 1 classes (0 = background), H × W label resolution.
Nothing here reads tensor values on the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsss_lightning.losses.segmentation import balanced_seg_ce, check_logits_target

__all__ = ["bg_fg_ce", "structure_gate"]


def bg_fg_ce(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """RRM's split cross-entropy: ``CE_mean(background pixels) + CE_mean(foreground pixels)``.

    ASDT's Eqs. 3 / 5 / 6 write the distillation as a log-likelihood over reliable pixels; RRM's code
    (``tool/myTool.py``, the seg loss of ``train_from_cls_weight.py``) computes it as two cross-entropies, each
    averaged over its pixels of the whole batch, and adds them: twice ToCo's balanced CE
    (:func:`~wsss_lightning.losses.segmentation.balanced_seg_ce`). A side without pixels (no reliable
    foreground in the batch, say) contributes 0 where RRM's mean over no pixel is NaN; the means divide by
    ``n + 1e-6`` (a relative change below 1e-6).

    Args:
        logits: ``(B, K, H, W)`` segmentation logits at the label size (RRM upsamples them bilinearly first).
        labels: ``(B, H, W)`` hard labels in ``0..C`` or ``ignore_index`` (unreliable pixels).
        ignore_index: label of pixels left out.

    Returns:
        0-d tensor.
    """
    return balanced_seg_ce(logits, labels, ignore_index=ignore_index, scale=1.0)


def structure_gate(
    probs: Tensor, labels: Tensor, roi: Tensor | None = None, ignore_index: int = 255
) -> Tensor:
    """Per-pixel gate ``G`` of RRM's gated dense-CRF energy (``DenseEnergyLoss.py``), for ``L_str``.

    ``G = ROI − max_k S_k`` on labelled pixels (the energy acts on them in proportion to the prediction's
    uncertainty), ``G = ROI`` where the label is ``ignore_index`` (fully on unlabelled pixels), clamped at 0.
    Pass it as ``gate`` to :func:`~wsss_lightning.losses.dense_crf.dense_crf_loss`, which applies RRM's
    gradient rule (the gate is a constant: it is computed here without gradient). RRM sets ``G = 1`` on
    unlabelled pixels outside the ROI too; the energy and its gradient vanish there (``S̃ = S ⊙ ROI``), so
    multiplying by the ROI changes nothing.

    RRM computes ``G`` on the loss's down-scaled grid from the bilinearly down-scaled ``S``; here it is
    computed at the resolution of ``probs`` and the loss samples it (nearest), as it does the labels.

    Args:
        probs: ``(B, K, H, W)`` class probabilities ``S`` (softmax of the branch's logits).
        labels: ``(B, H, W)`` the distillation term's hard labels, ``ignore_index`` = unlabelled.
        roi: ``(B, H, W)`` valid (non-padding) pixels, bool or 0/1; default everywhere.
        ignore_index: label of unlabelled pixels.

    Returns:
        ``(B, H, W)`` gate in ``[0, 1]``, in the dtype of ``probs``, without gradient.
    """
    check_logits_target(probs, labels, "structure_gate", ("probs", "labels"))
    if roi is not None and roi.shape != labels.shape:
        raise ValueError(
            f"structure_gate: roi must be (B, H, W) = {tuple(labels.shape)} like the labels; got {tuple(roi.shape)}"
        )
    with torch.no_grad():
        inside = torch.ones_like(probs[:, 0]) if roi is None else roi.to(probs.dtype)
        gate = inside - probs.detach().amax(dim=1) * inside
        gate = torch.where(labels == ignore_index, inside, gate)
        return gate.clamp_min(0.0)
