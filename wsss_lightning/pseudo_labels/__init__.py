"""Pseudo-label maths shared by the methods: CAMs to labels, thresholds, PAR refinement, affinity walks."""

from wsss_lightning.pseudo_labels.affinity import (
    WalkGrid,
    propagate_stack,
    propagated_cam_labels,
    radius_mask,
    random_walk,
    walk_matrix,
)
from wsss_lightning.pseudo_labels.cam import (
    affinity_labels,
    cam_labels_eval,
    image_thresholds,
    multiscale_cams,
    normalize_cams,
    par_pseudo_labels,
    threshold_labels,
)

__all__ = [
    "WalkGrid",
    "affinity_labels",
    "cam_labels_eval",
    "image_thresholds",
    "multiscale_cams",
    "normalize_cams",
    "par_pseudo_labels",
    "propagate_stack",
    "propagated_cam_labels",
    "radius_mask",
    "random_walk",
    "threshold_labels",
    "walk_matrix",
]
