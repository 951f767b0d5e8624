"""Pseudo-label machinery: CAMs to labels, GMM noise filtering, memory banks, class prototypes, denoising."""

from wsss_lightning.pseudo_labels.cam import (
    affinity_labels,
    cam_labels_eval,
    image_thresholds,
    multiscale_cams,
    normalize_cams,
    par_pseudo_labels,
    threshold_labels,
)
from wsss_lightning.pseudo_labels.memory_bank import CategoryMemoryBank
from wsss_lightning.pseudo_labels.noise_filter import GMM1D, adaptive_noise_filter, fit_gmm_1d, gmm_posteriors
from wsss_lightning.pseudo_labels.prototypes import PrototypeBank, class_centroids, prototype_denoise

__all__ = [
    "GMM1D",
    "CategoryMemoryBank",
    "PrototypeBank",
    "adaptive_noise_filter",
    "affinity_labels",
    "cam_labels_eval",
    "class_centroids",
    "fit_gmm_1d",
    "gmm_posteriors",
    "image_thresholds",
    "multiscale_cams",
    "normalize_cams",
    "par_pseudo_labels",
    "prototype_denoise",
    "threshold_labels",
]
