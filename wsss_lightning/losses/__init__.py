"""Loss maths shared by two or more methods, as pure functions with their shapes documented."""

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
    "balanced_seg_ce",
    "check_logits_target",
    "classification_loss",
    "masked_mean",
    "ohem_ce",
    "per_pixel_ce_rce",
    "symmetric_ce",
]
