"""ASDT (Zhang et al., IEEE TIP): weakly supervised segmentation by alternate self-dual teaching, from image tags."""

from wsss_lightning.methods.asdt.module import ASDTModule
from wsss_lightning.methods.asdt.options import (
    PWWaveConfig,
    ReliableLabelConfig,
    StructureLossConfig,
    TeachingConfig,
)

__all__ = ["ASDTModule", "PWWaveConfig", "ReliableLabelConfig", "StructureLossConfig", "TeachingConfig"]
