"""One LightningModule per method, on a shared base."""

from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.config import CRFConfig, InferenceConfig, OptimizerConfig
from wsss_lightning.methods.supervised import SupervisedModule
from wsss_lightning.methods.u2pl import ContrastiveConfig, U2PLModule

__all__ = [
    "CRFConfig",
    "ContrastiveConfig",
    "InferenceConfig",
    "OptimizerConfig",
    "SegmentationMethod",
    "SupervisedModule",
    "U2PLModule",
]
