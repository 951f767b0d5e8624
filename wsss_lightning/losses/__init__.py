"""Loss maths shared by two or more methods, as pure functions with their shapes documented."""

from wsss_lightning.losses.affinity import affinity_loss
from wsss_lightning.losses.bilateral import PermutohedralLattice, bilateral_features, exact_gaussian_filter
from wsss_lightning.losses.dense_crf import EXACT_CALIBRATION, DenseCRFLoss, dense_crf_loss
from wsss_lightning.losses.segmentation import (
    balanced_seg_ce,
    check_logits_target,
    classification_loss,
    masked_mean,
    ohem_ce,
    per_pixel_ce_rce,
    symmetric_ce,
)

__all__ = [
    "EXACT_CALIBRATION",
    "DenseCRFLoss",
    "PermutohedralLattice",
    "affinity_loss",
    "balanced_seg_ce",
    "bilateral_features",
    "check_logits_target",
    "classification_loss",
    "dense_crf_loss",
    "exact_gaussian_filter",
    "masked_mean",
    "ohem_ce",
    "per_pixel_ce_rce",
    "symmetric_ce",
]
