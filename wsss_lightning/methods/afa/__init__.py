"""AFA (affinity from attention): weakly supervised segmentation from image-level tags, end to end."""

from wsss_lightning.methods.afa.module import AFAModule
from wsss_lightning.methods.afa.options import AFALabelConfig, AFALossWeights, AFAPhaseConfig

__all__ = ["AFALabelConfig", "AFALossWeights", "AFAModule", "AFAPhaseConfig"]
