"""Losses: pure functions (shapes in their docstrings) and thin ``nn.Module`` wrappers."""

from wsss_lightning.losses.contrastive import (
    ContrastiveOutput,
    select_negative_keys,
    u2pl_contrastive_loss,
    u2pl_negative_mask,
)
from wsss_lightning.losses.dupl import (
    balanced_seg_ce,
    classification_loss,
    consistency_loss,
    discrepancy_loss,
    patch_contrast_loss,
)
from wsss_lightning.losses.functional import (
    downsample_labels,
    entropy_band_masks,
    entropy_percentile_mask,
    masked_percentile,
    ohem_ce,
    pixel_entropy,
    symmetric_ce,
    unsupervised_loss,
)
from wsss_lightning.losses.gathered_dot import gathered_dot
from wsss_lightning.losses.u2pl import (
    ContrastiveLossConfig,
    OhemCrossEntropy,
    SymmetricCrossEntropy,
    U2PLContrastiveLoss,
    U2PLUnsupervisedLoss,
)

__all__ = [
    "ContrastiveLossConfig",
    "ContrastiveOutput",
    "OhemCrossEntropy",
    "SymmetricCrossEntropy",
    "U2PLContrastiveLoss",
    "U2PLUnsupervisedLoss",
    "balanced_seg_ce",
    "classification_loss",
    "consistency_loss",
    "discrepancy_loss",
    "downsample_labels",
    "entropy_band_masks",
    "entropy_percentile_mask",
    "gathered_dot",
    "masked_percentile",
    "ohem_ce",
    "patch_contrast_loss",
    "pixel_entropy",
    "select_negative_keys",
    "symmetric_ce",
    "u2pl_contrastive_loss",
    "u2pl_negative_mask",
    "unsupervised_loss",
]
