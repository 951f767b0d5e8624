"""One LightningModule per method, on a shared base."""

from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.config import CRFConfig, InferenceConfig, OptimizerConfig
from wsss_lightning.methods.supervised import SupervisedModule

__all__ = ["CRFConfig", "InferenceConfig", "OptimizerConfig", "SegmentationMethod", "SupervisedModule"]
