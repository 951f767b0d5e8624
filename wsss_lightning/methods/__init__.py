"""One LightningModule per method, on a shared base."""

from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.config import CRFConfig, InferenceConfig, OptimizerConfig
from wsss_lightning.methods.dupl import DuPLModule
from wsss_lightning.methods.dupl_config import (
    CAMConfig,
    LossWeights,
    NoiseFilterConfig,
    PhaseConfig,
    StrongViewConfig,
    ThresholdConfig,
)
from wsss_lightning.methods.supervised import SupervisedModule
from wsss_lightning.methods.u2pl import ContrastiveConfig, U2PLModule

__all__ = [
    "CAMConfig",
    "CRFConfig",
    "ContrastiveConfig",
    "DuPLModule",
    "InferenceConfig",
    "LossWeights",
    "NoiseFilterConfig",
    "OptimizerConfig",
    "PhaseConfig",
    "SegmentationMethod",
    "StrongViewConfig",
    "SupervisedModule",
    "ThresholdConfig",
    "U2PLModule",
]
