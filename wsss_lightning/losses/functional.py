"""Pixel-wise losses and entropy filtering (U2PL / U2PL+), as pure functions.

Everything here is free of host synchronisation (percentiles use a sort on the device instead of
``np.percentile``), so it can run inside a training step on any accelerator. Degenerate batches that make
the released code return NaN (no valid pixel) return a zero loss that still depends on the logits.

Shapes: B batch, C classes, H x W label resolution; ``ignore_index`` (255) marks pixels without a label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "downsample_labels",
    "entropy_band_masks",
    "entropy_percentile_mask",
    "masked_percentile",
    "ohem_ce",
    "pixel_entropy",
    "symmetric_ce",
    "unsupervised_loss",
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


def pixel_entropy(prob: Tensor, eps: float = 1e-10) -> Tensor:
    """Shannon entropy of per-pixel class distributions, ``-sum_c p log(p + eps)`` (U2PL's form).

    Args:
        prob: ``(B, C, H, W)`` probabilities.
        eps: added inside the log.

    Returns:
        ``(B, H, W)`` entropy in nats.
    """
    return -(prob * torch.log(prob + eps)).sum(1)


def masked_percentile(values: Tensor, valid: Tensor, q: float | Tensor) -> Tensor:
    """The ``q``-th percentile of ``values[valid]``, as ``np.percentile`` (linear interpolation).

    Sort-based, so no host sync and no input-size limit (unlike ``torch.quantile``).

    Args:
        values: any-shape float tensor.
        valid: bool tensor of the same shape; only these entries count.
        q: percent in [0, 100], a float or a 0-d tensor (on ``values``' device to avoid a copy).

    Returns:
        0-d tensor; NaN when no entry is valid.
    """
    if values.shape != valid.shape:
        raise ValueError(
            f"masked_percentile: values and valid must have the same shape, got {tuple(values.shape)} "
            f"and {tuple(valid.shape)}"
        )
    flat = values.reshape(-1)
    mask = valid.reshape(-1)
    ordered = torch.sort(torch.where(mask, flat, torch.inf)).values
    n = mask.sum()
    last = (n - 1).clamp_min(0).double()
    # A Python q stays on the host side of the arithmetic: no host-to-device copy.
    if isinstance(q, Tensor):
        pos = q.to(device=flat.device, dtype=torch.float64).clamp(0.0, 100.0) / 100.0 * last
    else:
        pos = last * (min(max(float(q), 0.0), 100.0) / 100.0)
    lo = pos.floor()
    frac = (pos - lo).to(flat.dtype)
    lo_i = lo.long()
    hi_i = torch.minimum(lo_i + 1, (n - 1).clamp_min(0))
    a, b = ordered[lo_i], ordered[hi_i]
    # NumPy's lerp: from the nearer end, so the result is exact at integral positions.
    out = torch.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)
    return torch.where(n > 0, out, torch.nan)


@torch.no_grad()
def _entropy_and_valid(prob: Tensor, target: Tensor, ignore_index: int, where: str) -> tuple[Tensor, Tensor]:
    """Pixel entropy (B, H, W) of ``prob`` (B, C, H, W) and the mask of labelled pixels of ``target``."""
    if prob.ndim != 4 or target.shape != (prob.shape[0], *prob.shape[2:]):
        raise ValueError(
            f"{where}: expected prob (B, C, H, W) and target (B, H, W); "
            f"got {tuple(prob.shape)} and {tuple(target.shape)}"
        )
    return pixel_entropy(prob.float()), target != ignore_index


def entropy_percentile_mask(
    prob: Tensor, target: Tensor, percent_drop: float | Tensor, ignore_index: int = 255
) -> Tensor:
    """Reliable-pixel mask of U2PL's dynamic partition adjustment (spec u2pl §3.6, paper Eq. 12-13).

    ``gamma = percentile_{100 - alpha_t}(H)`` over the labelled pixels of the whole batch (one threshold per
    call, not per image); pixels with ``H >= gamma`` (the ``alpha_t`` % highest-entropy ones) are dropped.

    Args:
        prob: ``(B, C, H, W)`` teacher probabilities the entropy is computed from.
        target: ``(B, H, W)`` pseudo-labels; ``ignore_index`` pixels are never reliable.
        percent_drop: ``alpha_t`` in percent (U2PL: ``20 * (1 - epoch / epochs)``).
        ignore_index: label of unlabelled pixels.

    Returns:
        ``(B, H, W)`` bool, True where the pseudo-label is kept.
    """
    entropy, valid = _entropy_and_valid(prob, target, ignore_index, "entropy_percentile_mask")
    return valid & (entropy < masked_percentile(entropy, valid, 100.0 - percent_drop))


def entropy_band_masks(
    prob: Tensor,
    target: Tensor,
    low_percent: float | Tensor,
    high_percent: float | Tensor,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """Lowest- and highest-entropy pixel masks used by U2PL's contrastive loss (spec u2pl §3.7).

    The released code passes ``low_percent = alpha_t`` and ``high_percent = 100 - alpha_t`` with
    ``alpha_t = 20 * (1 - t/T)``: anchors and prototypes of unlabeled images come from the ``alpha_t`` %
    lowest-entropy pixels, negatives from the ``alpha_t`` % highest. (The paper's anchor set is every
    reliable pixel, i.e. :func:`entropy_percentile_mask` - pass that as the low mask to use it.)

    Args:
        prob: ``(B, C, H, W)`` teacher probabilities.
        target: ``(B, H, W)`` pseudo-labels; ``ignore_index`` pixels are in neither mask.
        low_percent: percentile of the low threshold; low mask = ``H <= threshold``.
        high_percent: percentile of the high threshold; high mask = ``H >= threshold``.
        ignore_index: label of unlabelled pixels.

    Returns:
        ``(low, high)``: two ``(B, H, W)`` bool masks.
    """
    entropy, valid = _entropy_and_valid(prob, target, ignore_index, "entropy_band_masks")
    low = valid & (entropy <= masked_percentile(entropy, valid, low_percent))
    high = valid & (entropy >= masked_percentile(entropy, valid, high_percent))
    return low, high


def downsample_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of a label map (as U2PL's one-hot + nearest interpolation).

    Args:
        labels: ``(B, H, W)`` integer labels.
        size: target ``(h, w)``.

    Returns:
        ``(B, h, w)`` int64 labels.
    """
    if labels.ndim != 3:
        raise ValueError(f"downsample_labels: labels must be (B, H, W), got {tuple(labels.shape)}")
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 (still attached to the graph) for an empty mask."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _ce_and_rce(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
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
    """Symmetric cross-entropy ``xi1 * CE + xi2 * RCE`` (U2PL+ Eq. 4, spec u2pl §5.1).

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
    ce, rce, valid = _ce_and_rce(logits, target, ignore_index)
    per_pixel = (xi1 * ce + xi2 * rce) * valid
    if reduction == "none":
        return per_pixel
    return _masked_mean(per_pixel, valid)


def unsupervised_loss(
    logits: Tensor,
    target: Tensor,
    prob_teacher: Tensor,
    percent_drop: float | Tensor,
    ignore_index: int = 255,
    weight_mode: Literal["adaptive", "mean"] = "adaptive",
    eta: float = 1.0,
    loss_type: Literal["ce", "sce"] = "ce",
    xi1: float = 1.0,
    xi2: float = 0.1,
) -> Tensor:
    """U2PL's unsupervised loss L_u with dynamic partition adjustment (spec u2pl §3.6, §4).

    ``R = {target != ignore and H(p_T) < gamma_t}`` (:func:`entropy_percentile_mask`: the ``percent_drop``
    % highest-entropy pixels become ignore), then

    ``L_u = lambda_u * (1/|R|) sum_{i in R} l(logits_i, target_i)``, with the adaptive weight
    ``lambda_u = eta * B * H * W / |R|`` (paper Eq. 14; the released code, eta = 1, per GPU batch) for
    ``weight_mode="adaptive"`` or ``lambda_u = eta`` for ``"mean"``. ``l`` is CE (released code) or
    :func:`symmetric_ce`'s ``xi1 CE + xi2 RCE`` (U2PL+; lambda_u assumed to multiply it too).
    Returns 0 when no pixel is reliable.

    Args:
        logits: ``(B, C, H, W)`` student logits on the (mixed) unlabeled images.
        target: ``(B, H, W)`` hard pseudo-labels.
        prob_teacher: ``(B, C, H, W)`` teacher probabilities the entropy is computed from (U2PL: the
            train-mode teacher on the mixed images, not the one that made the pseudo-labels).
        percent_drop: ``alpha_t`` in percent (U2PL: ``20 * (1 - epoch / epochs)``).
        ignore_index: label of unlabelled pixels.
        weight_mode: ``"adaptive"`` or ``"mean"``.
        eta: base weight.
        loss_type: ``"ce"`` or ``"sce"``.
        xi1: CE weight of the symmetric CE.
        xi2: RCE weight of the symmetric CE.

    Returns:
        Scalar loss.
    """
    check_logits_target(logits, target, "unsupervised_loss")
    if prob_teacher.shape != logits.shape:
        raise ValueError(
            f"unsupervised_loss: prob_teacher must match logits {tuple(logits.shape)}, got {tuple(prob_teacher.shape)}"
        )
    reliable = entropy_percentile_mask(prob_teacher, target, percent_drop, ignore_index)
    ce, rce, _ = _ce_and_rce(logits, target, ignore_index)
    per_pixel = ce if loss_type == "ce" else xi1 * ce + xi2 * rce
    loss = _masked_mean(per_pixel, reliable)
    if weight_mode == "adaptive":
        num_reliable = reliable.sum().clamp_min(1).to(loss.dtype)
        return eta * target.numel() / num_reliable * loss
    if weight_mode == "mean":
        return eta * loss
    raise ValueError(f"unsupervised_loss: weight_mode must be 'adaptive' or 'mean', got {weight_mode!r}")


def ohem_ce(
    logits: Tensor, target: Tensor, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255
) -> Tensor:
    """Online hard example mining CE (U2PL's Cityscapes supervised loss; spec u2pl §3.4).

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
    ce, _, valid = _ce_and_rce(logits, target, ignore_index)
    with torch.no_grad():
        p_true = torch.where(valid, (-ce).exp(), 1.0).reshape(-1)  # ignored pixels sort last, as in U2PL
        num_valid = valid.sum()
        threshold = torch.full((), thresh, device=logits.device, dtype=p_true.dtype)  # a fill, not a copy
        if min_kept > 0:
            k = min(min_kept, p_true.numel())
            kth = torch.kthvalue(p_true, k).values
            threshold = torch.maximum(threshold, kth)
        kept = valid & ((p_true.reshape(valid.shape) <= threshold) | (num_valid < min_kept))
    return _masked_mean(ce, kept)
