"""AFA's affinity loss: learned token affinities against same / different-label pair targets.

AFA ("Learning Affinity from Attention", Ru et al., CVPR 2022) predicts an affinity logit ``A_ij`` for every
pair of tokens of an image; the targets (``wsss_lightning.pseudo_labels.cam.affinity_labels`` with
``radius=8, diagonal="positive"``) are 1 for pairs of the same pseudo-label, 0 for different ones and 255
for pairs that do not count. Positive and negative pairs are averaged apart and weighted equally, so the
far more numerous pairs of one kind do not swamp the other.

AffinityNet (Ahn & Kwak, "Learning Pixel-level Semantic Affinity with Image-level Supervision", CVPR 2018,
Eq. 7) balances one step further: the positive pairs are split into background-background and
foreground-foreground pairs, each averaged apart, ``L = L_bg+ / 4 + L_fg+ / 4 + L_- / 2``. Where background
pairs make most of the positives (small objects), AFA's form gives a foreground token's positive pairs little
weight against its negatives; ``background=`` applies AffinityNet's balance to AFA's terms (AffinityNet's own
terms are log-likelihoods, and it leaves a token's pair with itself out; AFA's ``1 - s`` and ``s`` are kept, and
so is AFA's diagonal: a token's self-pair counts with the positives of its kind).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["affinity_loss"]


def affinity_loss(logits: Tensor, labels: Tensor, background: Tensor | None = None) -> Tensor:
    """``0.5 * sum_pos (1 - s) / (n_pos + 1) + 0.5 * sum_neg s / (n_neg + 1)`` with ``s = sigmoid(logits)``.

    The sums and counts run over the whole batch (AFA ``get_aff_loss``); the ``+ 1`` keeps a batch without
    positive (or negative) pairs finite, with a zero term that is still attached to the graph. Computed in
    float32 with autocast off (float64 input stays float64): the sums run over ``B * N^2`` pairs.

    Args:
        logits: ``(B, N, N)`` affinity logits (the sigmoid is applied here).
        labels: ``(B, N, N)`` integer targets: 1 positive, 0 negative, anything else (255) ignored.
        background: optional ``(B, N)`` bool, the tokens labelled background. Given, the positive term is
            AffinityNet's: the background-background and the other positive pairs averaged apart, weighing a
            quarter each (``(1 - s)`` sums over ``n + 1`` as above).

    Returns:
        Scalar loss.
    """
    if logits.ndim != 3 or logits.shape[1] != logits.shape[2]:
        raise ValueError(f"affinity_loss: logits must be (B, N, N), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape:
        raise ValueError(
            f"affinity_loss: labels must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"affinity_loss: labels must be integers (0, 1, ignore), got {labels.dtype}")
    if background is not None and (background.dtype != torch.bool or background.shape != logits.shape[:2]):
        raise ValueError(
            f"affinity_loss: background must be a bool (B, N) = {tuple(logits.shape[:2])} tensor, got "
            f"{background.dtype} {tuple(background.shape)}"
        )
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with torch.autocast(logits.device.type, enabled=False):
        scores = torch.sigmoid(logits.to(dtype))
        positive = (labels == 1).to(dtype)
        negative = (labels == 0).to(dtype)
        negative_loss = _mean_of(scores, negative)
        if background is None:
            return 0.5 * _mean_of(1.0 - scores, positive) + 0.5 * negative_loss
        both_background = (background[:, :, None] & background[:, None, :]).to(dtype)
        positive_background = _mean_of(1.0 - scores, positive * both_background)
        positive_foreground = _mean_of(1.0 - scores, positive * (1.0 - both_background))
        return 0.25 * positive_background + 0.25 * positive_foreground + 0.5 * negative_loss


def _mean_of(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(values * weights) / (sum(weights) + 1)``."""
    return (values * weights).sum() / (weights.sum() + 1.0)
