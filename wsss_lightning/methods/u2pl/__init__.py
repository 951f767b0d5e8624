"""U2PL / U2PL+ (Wang et al., CVPR 2022 / IJCV 2024): unreliable pseudo-labels as contrastive negatives."""

from wsss_lightning.methods.u2pl.module import U2PLModule
from wsss_lightning.methods.u2pl.options import (
    ContrastiveConfig,
    SupervisedLossConfig,
    TeacherConfig,
    UnsupervisedConfig,
)

__all__ = ["ContrastiveConfig", "SupervisedLossConfig", "TeacherConfig", "U2PLModule", "UnsupervisedConfig"]
