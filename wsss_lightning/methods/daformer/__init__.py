"""DAFormer (Hoyer et al., CVPR 2022): domain-adaptive segmentation by self-training, GTA5 -> Cityscapes."""

from wsss_lightning.methods.daformer.module import DAFormerModule
from wsss_lightning.methods.daformer.options import FeatureDistanceConfig, SelfTrainingConfig

__all__ = ["DAFormerModule", "FeatureDistanceConfig", "SelfTrainingConfig"]
