"""Pseudo-label machinery: memory banks of negative keys, class prototypes, denoising."""

from wsss_lightning.pseudo_labels.memory_bank import CategoryMemoryBank
from wsss_lightning.pseudo_labels.prototypes import PrototypeBank, class_centroids, prototype_denoise

__all__ = ["CategoryMemoryBank", "PrototypeBank", "class_centroids", "prototype_denoise"]
