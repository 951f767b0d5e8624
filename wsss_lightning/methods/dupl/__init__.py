"""DuPL (Wu et al., CVPR 2024): dual students with trustworthy progressive learning, from image-level tags."""

from wsss_lightning.methods.dupl.module import DuPLModule
from wsss_lightning.methods.dupl.options import (
    CAMConfig,
    LossWeights,
    NoiseFilterConfig,
    PhaseConfig,
    StrongViewConfig,
    ThresholdConfig,
)

__all__ = [
    "CAMConfig",
    "DuPLModule",
    "LossWeights",
    "NoiseFilterConfig",
    "PhaseConfig",
    "StrongViewConfig",
    "ThresholdConfig",
]
