"""U2PL's entropy filtering and unsupervised loss (U2PL / U2PL+), as pure functions.

Reference code: ``compute_unsupervised_loss`` in ``u2pl/utils/loss_helper.py`` of ``Haochen-Wang409/U2PL``.

Everything here is free of host synchronisation (percentiles use a sort on the device instead of
``np.percentile``), so it can run inside a training step on any accelerator. Degenerate batches that make
the released code return NaN (no valid pixel) return a zero loss that still depends on the logits.

Shapes: B batch, C classes, H x W label resolution; ``ignore_index`` (255) marks pixels without a label.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.losses.segmentation import check_logits_target, masked_mean, per_pixel_ce_rce
from wsss_lightning.methods.u2pl.options import UnsupervisedConfig

__all__ = [
    "SortedValues",
    "downsample_labels",
    "entropy_band_masks",
    "entropy_percentile_mask",
    "masked_percentile",
    "pixel_entropy",
    "teacher_entropy",
    "unsupervised_loss",
]


def pixel_entropy(prob: Tensor, eps: float = 1e-10) -> Tensor:
    """Shannon entropy of per-pixel class distributions, ``-sum_c p log(p + eps)`` (U2PL's form).

    Args:
        prob: ``(B, C, H, W)`` probabilities.
        eps: added inside the log.

    Returns:
        ``(B, H, W)`` entropy in nats.
    """
    return -(prob * torch.log(prob + eps)).sum(1)


def _percentile_of_sorted(ordered: Tensor, n: Tensor, q: float | Tensor) -> Tensor:
    """``np.percentile`` (linear interpolation) of the ``n`` first entries of the ascending ``ordered``."""
    last = (n - 1).clamp_min(0).double()
    # A Python q stays on the host side of the arithmetic: no host-to-device copy.
    if isinstance(q, Tensor):
        pos = q.to(device=ordered.device, dtype=torch.float64).clamp(0.0, 100.0) / 100.0 * last
    else:
        pos = last * (min(max(float(q), 0.0), 100.0) / 100.0)
    lo = pos.floor()
    frac = (pos - lo).to(ordered.dtype)
    lo_i = lo.long().reshape(1)
    hi_i = torch.minimum(lo_i + 1, (n - 1).clamp_min(0))
    # 1-element gathers: indexing with a 0-d tensor would read the index on the host.
    a, b = ordered.gather(0, lo_i)[0], ordered.gather(0, hi_i)[0]
    # NumPy's lerp: from the nearer end, so the result is exact at integral positions.
    out = torch.where(frac >= 0.5, b - (b - a) * (1 - frac), a + (b - a) * frac)
    return torch.where(n > 0, out, torch.nan)


class SortedValues:
    """The valid entries of a tensor sorted once, for several percentiles of them (:func:`masked_percentile`).

    Attributes:
        values: the original values (any shape).
        valid: bool mask of the same shape.
        ordered: flat, ascending; the ``count`` valid entries first, then ``inf``.
        count: 0-d int64, number of valid entries.
    """

    def __init__(self, values: Tensor, valid: Tensor) -> None:
        if values.shape != valid.shape:
            raise ValueError(
                f"masked_percentile: values and valid must have the same shape, got {tuple(values.shape)} "
                f"and {tuple(valid.shape)}"
            )
        self.values, self.valid = values, valid
        mask = valid.reshape(-1)
        self.ordered = torch.sort(torch.where(mask, values.reshape(-1), torch.inf)).values
        self.count = mask.sum()

    def percentile(self, q: float | Tensor) -> Tensor:
        """The ``q``-th percentile of the valid entries (as :func:`masked_percentile`)."""
        return _percentile_of_sorted(self.ordered, self.count, q)


def masked_percentile(values: Tensor, valid: Tensor, q: float | Tensor) -> Tensor:
    """The ``q``-th percentile of ``values[valid]``, as ``np.percentile`` (linear interpolation).

    Sort-based, so no host sync and no input-size limit (unlike ``torch.quantile``). For several
    percentiles of the same entries, sort once with :class:`SortedValues`.

    Args:
        values: any-shape float tensor.
        valid: bool tensor of the same shape; only these entries count.
        q: percent in [0, 100], a float or a 0-d tensor (on ``values``' device to avoid a copy).

    Returns:
        0-d tensor; NaN when no entry is valid.
    """
    return SortedValues(values, valid).percentile(q)


@torch.no_grad()
def teacher_entropy(prob: Tensor, target: Tensor, ignore_index: int = 255) -> SortedValues:
    """Pixel entropy of the teacher over the labelled pixels of ``target``, sorted once per step.

    Every entropy threshold of a U2PL step (the unsupervised loss's ``gamma_t``, the contrastive loss's low
    and high bands) is a percentile of the same entropy over the same pixels: compute this once and pass
    it to :func:`unsupervised_loss`, :func:`entropy_percentile_mask` and :func:`entropy_band_masks`.

    Args:
        prob: ``(B, C, H, W)`` teacher probabilities.
        target: ``(B, H, W)`` pseudo-labels; ``ignore_index`` pixels are left out.
        ignore_index: label of unlabelled pixels.

    Returns:
        :class:`SortedValues` of the ``(B, H, W)`` float32 entropy and the labelled-pixel mask.
    """
    if prob.ndim != 4 or target.shape != (prob.shape[0], *prob.shape[2:]):
        raise ValueError(
            f"teacher_entropy: expected prob (B, C, H, W) and target (B, H, W); "
            f"got {tuple(prob.shape)} and {tuple(target.shape)}"
        )
    return SortedValues(pixel_entropy(prob.float()), target != ignore_index)


def _entropy_of(
    prob: Tensor, target: Tensor, ignore_index: int, entropy: SortedValues | None, where: str
) -> SortedValues:
    """``entropy`` if given (checked against ``target``'s shape), else :func:`teacher_entropy`."""
    if prob.ndim != 4 or target.shape != (prob.shape[0], *prob.shape[2:]):
        raise ValueError(
            f"{where}: expected prob (B, C, H, W) and target (B, H, W); "
            f"got {tuple(prob.shape)} and {tuple(target.shape)}"
        )
    if entropy is None:
        return teacher_entropy(prob, target, ignore_index)
    if entropy.values.shape != target.shape:
        raise ValueError(
            f"{where}: entropy has shape {tuple(entropy.values.shape)}, expected {tuple(target.shape)}"
        )
    return entropy


def entropy_percentile_mask(
    prob: Tensor,
    target: Tensor,
    percent_drop: float | Tensor,
    ignore_index: int = 255,
    entropy: SortedValues | None = None,
) -> Tensor:
    """Reliable-pixel mask of U2PL's dynamic partition adjustment (U2PL+ Eq. 12-13; ``loss_helper.py``).

    ``gamma = percentile_{100 - alpha_t}(H)`` over the labelled pixels of the whole batch (one threshold per
    call, not per image); pixels with ``H >= gamma`` (the ``alpha_t`` % highest-entropy ones) are dropped.

    Args:
        prob: ``(B, C, H, W)`` teacher probabilities the entropy is computed from.
        target: ``(B, H, W)`` pseudo-labels; ``ignore_index`` pixels are never reliable.
        percent_drop: ``alpha_t`` in percent (U2PL: ``20 * (1 - epoch / epochs)``).
        ignore_index: label of unlabelled pixels.
        entropy: :func:`teacher_entropy` of ``prob`` and ``target`` if already computed.

    Returns:
        ``(B, H, W)`` bool, True where the pseudo-label is kept.
    """
    ent = _entropy_of(prob, target, ignore_index, entropy, "entropy_percentile_mask")
    return ent.valid & (ent.values < ent.percentile(100.0 - percent_drop))


def entropy_band_masks(
    prob: Tensor,
    target: Tensor,
    low_percent: float | Tensor,
    high_percent: float | Tensor,
    ignore_index: int = 255,
    entropy: SortedValues | None = None,
) -> tuple[Tensor, Tensor]:
    """Lowest- and highest-entropy pixel masks used by U2PL's contrastive loss (U2PL ``train_semi.py``).

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
        entropy: :func:`teacher_entropy` of ``prob`` and ``target`` if already computed.

    Returns:
        ``(low, high)``: two ``(B, H, W)`` bool masks.
    """
    ent = _entropy_of(prob, target, ignore_index, entropy, "entropy_band_masks")
    low = ent.valid & (ent.values <= ent.percentile(low_percent))
    high = ent.valid & (ent.values >= ent.percentile(high_percent))
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


def oracle_pseudo_labels(
    labels: Tensor, truth: Tensor, options: UnsupervisedConfig, ignore_index: int = 255
) -> Tensor:
    """The pseudo-labels of the oracle diagnostics (``options.oracle_labels`` / ``oracle_filter``), else ``labels``.

    ``oracle_labels``: the ground truth ``truth`` itself. ``oracle_filter``: ``labels`` with every pixel whose
    label disagrees with a known ground truth set to ``ignore_index`` (pixels where ``truth`` is
    ``ignore_index`` keep their label). Both ``(B, H, W)``.
    """
    if labels.shape != truth.shape:
        raise ValueError(
            f"oracle_pseudo_labels: truth must match labels {tuple(labels.shape)}, got {tuple(truth.shape)}"
        )
    if options.oracle_labels:
        return truth.to(labels.dtype)
    if options.oracle_filter:
        return labels.masked_fill((truth != ignore_index) & (labels != truth), ignore_index)
    return labels


def unsupervised_loss(
    logits: Tensor,
    target: Tensor,
    prob_teacher: Tensor,
    percent_drop: float | Tensor,
    options: UnsupervisedConfig | None = None,
    ignore_index: int = 255,
    entropy: SortedValues | None = None,
) -> Tensor:
    """U2PL's unsupervised loss L_u with dynamic partition adjustment (U2PL+ Eq. 12-14; ``loss_helper.py``).

    ``R = {target != ignore and H(p_T) < gamma_t}`` (:func:`entropy_percentile_mask`: the ``percent_drop``
    % highest-entropy pixels become ignore), then

    ``L_u = lambda_u * (1/|R|) sum_{i in R} l(logits_i, target_i)``, with the adaptive weight
    ``lambda_u = B * H * W / |R|`` (paper Eq. 14; the released code, per GPU batch) when
    ``options.adaptive_weight``, else ``lambda_u = 1``. ``l`` is CE (``options.loss="ce"``, released code) or
    the symmetric CE's ``xi1 CE + xi2 RCE`` (``"sce"``, U2PL+ Eq. 4; lambda_u assumed to multiply it too).
    ``options.weight`` is left to the caller. Returns 0 when no pixel is reliable.

    Args:
        logits: ``(B, C, H, W)`` student logits on the (mixed) unlabeled images.
        target: ``(B, H, W)`` hard pseudo-labels.
        prob_teacher: ``(B, C, H, W)`` teacher probabilities the entropy is computed from (U2PL: the
            train-mode teacher on the mixed images, not the one that made the pseudo-labels).
        percent_drop: ``alpha_t`` in percent (U2PL: ``20 * (1 - epoch / epochs)``).
        options: ``adaptive_weight``, ``loss``, ``sce_xi1`` and ``sce_xi2`` (defaults: U2PL's CE with the
            adaptive weight).
        ignore_index: label of unlabelled pixels.
        entropy: :func:`teacher_entropy` of ``prob_teacher`` and ``target`` if already computed.

    Returns:
        Scalar loss.
    """
    check_logits_target(logits, target, "unsupervised_loss")
    if prob_teacher.shape != logits.shape:
        raise ValueError(
            f"unsupervised_loss: prob_teacher must match logits {tuple(logits.shape)}, got {tuple(prob_teacher.shape)}"
        )
    options = options or UnsupervisedConfig()
    reliable = entropy_percentile_mask(prob_teacher, target, percent_drop, ignore_index, entropy)
    ce, rce, _ = per_pixel_ce_rce(logits, target, ignore_index)
    per_pixel = ce if options.loss == "ce" else options.sce_xi1 * ce + options.sce_xi2 * rce
    loss = masked_mean(per_pixel, reliable)
    if options.adaptive_weight:
        return target.numel() / reliable.sum().clamp_min(1).to(loss.dtype) * loss
    return loss
