"""Seminar Learning (Chen et al., ICCV 2021): click supervision, a mean teacher and a student-student seminar."""

from wsss_lightning.methods.seminar.module import SeminarModule
from wsss_lightning.methods.seminar.options import (
    ConsistencyConfig,
    DenseCRFLossConfig,
    PartialCEConfig,
    PseudoLabelConfig,
)

__all__ = ["ConsistencyConfig", "DenseCRFLossConfig", "PartialCEConfig", "PseudoLabelConfig", "SeminarModule"]
