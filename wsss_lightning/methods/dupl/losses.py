"""DuPL's training losses (classification, patch-token contrast, discrepancy, segmentation, consistency).

Pure functions; shapes are in the docstrings. Notation: B batch, C foreground classes, K = C + 1 segmentation
outputs (index 0 = background), D feature channels, h x w token grid, N = h * w tokens, H x W label size.
``ignore_index`` (255) marks pixels without a label.

None of these functions synchronises with the host: empty selections (no positive pair, no labelled pixel, an
empty consistency mask) give finite values through ``+ 1`` / ``+ 1e-6`` / ``clamp(min=1)`` denominators, and a
zero loss still depends on the logits so autograd (and DDP's gradient buckets) stay connected.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.losses.segmentation import check_logits_target
from wsss_lightning.ops import channel_argmax

__all__ = [
    "consistency_loss",
    "discrepancy_loss",
    "patch_contrast_loss",
]


def patch_contrast_loss(features: Tensor, affinity: Tensor) -> Tensor:
    """ToCo's patch-token contrast (PTC), as used per sub-net by DuPL.

    With ``c_ij = |cos(F_i, F_j)|`` between the L2-normalised tokens of the same image,

        L = 0.5 * (1 - sum_{A_ij = 1} c_ij / (N_pos + 1)) + 0.5 * sum_{A_ij = 0} c_ij / (N_neg + 1),

    where the sums and the pair counts run over the whole batch (not per image). The absolute value follows the
    reference: anti-parallel tokens count as similar. ``+ 1`` keeps the loss finite without positive or negative
    pairs (0.5 without positives, i.e. no gradient from that half).

    Args:
        features: ``(B, D, h, w)`` token features (the final-layer tokens).
        affinity: ``(B, N, N)`` integer pair labels with ``N = h * w`` (row-major tokens): 1 = same label,
            0 = different labels, anything else (255) = ignored pair.

    Returns:
        0-d tensor.
    """
    if features.ndim != 4:
        raise ValueError(f"patch_contrast_loss: features must be (B, D, h, w), got {tuple(features.shape)}")
    b, d, h, w = features.shape
    n = h * w
    if affinity.shape != (b, n, n):
        raise ValueError(
            f"patch_contrast_loss: affinity must be (B, h*w, h*w) = {(b, n, n)} for features "
            f"{tuple(features.shape)}, got {tuple(affinity.shape)}"
        )
    # eps 1e-8 as in the reference; a zero token then has zero similarity to everything.
    tokens = F.normalize(features.reshape(b, d, n), p=2, dim=1, eps=1e-8)
    cos = torch.bmm(tokens.transpose(1, 2), tokens).abs().float()
    pos = affinity == 1
    neg = affinity == 0
    pos_term = torch.where(pos, cos, 0.0).sum() / (pos.sum() + 1)
    neg_term = torch.where(neg, cos, 0.0).sum() / (neg.sum() + 1)
    return 0.5 * (1.0 - pos_term) + 0.5 * neg_term


def discrepancy_loss(f1: Tensor, f2: Tensor, form: Literal["cosine", "log"] = "cosine") -> Tensor:
    """DuPL's symmetric discrepancy loss between the two sub-nets' feature maps (Eqs. 2-3).

    Each channel's activation map is compared across the two sub-nets: ``cos_m = cos(f1[i, m, :], f2[i, m, :])``
    over the ``N = h * w`` positions (cosine along the spatial axis, eps 1e-6 as ``F.cosine_similarity``), so
    the loss pushes the two networks to use their channels differently. Symmetrised with a stop-gradient on
    the "target" side (SimSiam style): ``L = d(sg(f1), f2) + d(sg(f2), f1)``, so ``f2`` only receives the
    gradient of the first term and ``f1`` only that of the second.

    * ``"cosine"`` (released code, default): ``d(a, b) = 1 + mean_{b, m} cos_m`` -> ``L`` in [0, 4].
    * ``"log"`` (paper Eq. 2): ``d(a, b) = mean_{b, m} -log(1 - cos_m)``, with ``1 - cos`` clamped to
      >= 1e-6. The paper's equation is not legible in the available text; this form (a penalty that grows
      without bound as the maps align and is ``-log 2`` when they are opposite) is a best recovery. The authors
      report that both forms perform about the same. Where the clamp acts (maps aligned to within 1e-6) the
      gradient is zero, as it is for the cosine form at exactly aligned maps (a maximum of the cosine).

    Args:
        f1: ``(B, D, h, w)`` features of sub-net 1.
        f2: ``(B, D, h, w)`` features of sub-net 2.
        form: ``"cosine"`` or ``"log"``.

    Returns:
        0-d tensor.
    """
    if f1.ndim != 4 or f1.shape != f2.shape:
        raise ValueError(
            f"discrepancy_loss: f1 and f2 must both be (B, D, h, w) of the same shape, got "
            f"{tuple(f1.shape)} and {tuple(f2.shape)}"
        )
    if form not in ("cosine", "log"):
        raise ValueError(f"discrepancy_loss: form must be 'cosine' or 'log', got {form!r}")
    a = f1.flatten(2)
    b = f2.flatten(2)
    cos_12 = F.cosine_similarity(a.detach(), b, dim=-1, eps=1e-6)  # (B, D); gradient to f2 only
    cos_21 = F.cosine_similarity(b.detach(), a, dim=-1, eps=1e-6)  # (B, D); gradient to f1 only
    if form == "cosine":
        return (1.0 + cos_12.mean()) + (1.0 + cos_21.mean())
    return (
        -torch.log((1.0 - cos_12).clamp(min=1e-6)).mean() - torch.log((1.0 - cos_21).clamp(min=1e-6)).mean()
    )


def consistency_loss(
    strong_logits: Tensor,
    clean_logits: Tensor,
    supervision: Tensor,
    confidence: float | None = 0.9,
    ignore_index: int = 255,
    clean_log_probs: Tensor | None = None,
) -> Tensor:
    """DuPL's strong-perturbation consistency ``L_reg`` (Eq. 8) on the pixels left out of supervision.

    Target: the argmax of the sub-net's own clean-view prediction (detached). Mask: pixels where the label that
    supervises this sub-net is ``ignore_index`` (uncertain CAM band, noise-filtered pixels, padding) and, if
    ``confidence`` is given, where the clean prediction's max softmax exceeds it (the released code's 0.9 gate;
    ``None`` gives the paper's ungated version). ``L = sum_{mask} CE(strong, target) / |mask|`` over the batch,
    and a zero that still depends on ``strong_logits`` when the mask is empty.

    Args:
        strong_logits: ``(B, K, H, W)`` logits of the strongly perturbed view, already mapped back to the clean
            view's geometry (flip undone, resized to ``H, W``).
        clean_logits: ``(B, K, H, W)`` logits of the same sub-net on the clean view (no gradient is taken).
        supervision: ``(B, H, W)`` the pseudo-label supervising this sub-net.
        confidence: softmax threshold of the gate (strict ``>``), or ``None`` for no gate.
        ignore_index: label of unsupervised pixels.
        clean_log_probs: ``log_softmax(clean_logits, dim=1)`` where the caller has it already: the gate then
            compares its maximum with ``log(confidence)`` instead of taking a softmax (the same test up to
            rounding at the threshold).

    Returns:
        0-d tensor.
    """
    check_logits_target(strong_logits, supervision, "consistency_loss", ("strong_logits", "supervision"))
    if clean_logits.shape != strong_logits.shape:
        raise ValueError(
            f"consistency_loss: clean_logits must have the shape of strong_logits {tuple(strong_logits.shape)}, "
            f"got {tuple(clean_logits.shape)}"
        )
    clean = clean_logits.detach()
    mask = supervision == ignore_index
    if confidence is not None and clean_log_probs is not None:
        # max softmax > c  <=>  max log-softmax > log c (a confidence <= 0 keeps every pixel)
        threshold = math.log(confidence) if confidence > 0 else -math.inf
        mask = mask & (clean_log_probs.detach().amax(dim=1) > threshold)
    elif confidence is not None:
        mask = mask & (clean.softmax(dim=1).amax(dim=1) > confidence)
    target = channel_argmax(clean)
    ce = F.cross_entropy(strong_logits, target, reduction="none")  # (B, H, W)
    # clamp(min=1) instead of a branch on the count: an empty mask gives 0 / 1 = 0, no host sync.
    return torch.where(mask, ce, 0.0).sum() / mask.sum().clamp(min=1)
