"""AFA's affinity loss: learned token affinities against same / different-label pair targets.

AFA ("Learning Affinity from Attention", Ru et al., CVPR 2022) predicts an affinity logit ``A_ij`` for every
pair of tokens of an image; the targets (``wsss_lightning.pseudo_labels.cam.affinity_labels`` with
``radius=8, diagonal="positive"``) are 1 for pairs of the same pseudo-label, 0 for different ones and 255
for pairs that do not count. Positive and negative pairs are averaged apart and weighted equally, so the
far more numerous pairs of one kind do not swamp the other.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["affinity_loss"]


def affinity_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """``0.5 * sum_pos (1 - s) / (n_pos + 1) + 0.5 * sum_neg s / (n_neg + 1)`` with ``s = sigmoid(logits)``.

    The sums and counts run over the whole batch (AFA ``get_aff_loss``); the ``+ 1`` keeps a batch without
    positive (or negative) pairs finite, with a zero term that is still attached to the graph. Computed in
    float32 with autocast off (float64 input stays float64): the sums run over ``B * N^2`` pairs.

    Args:
        logits: ``(B, N, N)`` affinity logits (the sigmoid is applied here).
        labels: ``(B, N, N)`` integer targets: 1 positive, 0 negative, anything else (255) ignored.

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
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with torch.autocast(logits.device.type, enabled=False):
        scores = torch.sigmoid(logits.to(dtype))
        positive = (labels == 1).to(dtype)
        negative = (labels == 0).to(dtype)
        positive_loss = ((1.0 - scores) * positive).sum() / (positive.sum() + 1.0)
        negative_loss = (scores * negative).sum() / (negative.sum() + 1.0)
        return 0.5 * positive_loss + 0.5 * negative_loss
