"""One LightningModule per method, each in its own package, on a shared base.

A method package (``methods/<method>/``) imports the shared folders (``losses``, ``pseudo_labels``, ``models``,
``teachers``, ``schedules``), never another method.

Each name is imported on first access (PEP 562): ``from wsss_lightning.methods import DuPLModule`` loads
DuPL and its backbone library only, and the ``wsss`` command reads its top-level help without loading any
method.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsss_lightning.methods.afa import AFALabelConfig, AFALossWeights, AFAModule, AFAPhaseConfig
    from wsss_lightning.methods.asdt import (
        ASDTModule,
        PWWaveConfig,
        ReliableLabelConfig,
        StructureLossConfig,
        TeachingConfig,
    )
    from wsss_lightning.methods.base import SegmentationMethod
    from wsss_lightning.methods.daformer import DAFormerModule, FeatureDistanceConfig, SelfTrainingConfig
    from wsss_lightning.methods.dupl import (
        CAMConfig,
        DuPLModule,
        LossWeights,
        NoiseFilterConfig,
        PhaseConfig,
        StrongViewConfig,
        ThresholdConfig,
    )
    from wsss_lightning.methods.nonfinite import NonFiniteConfig, NonFiniteLossError, NonFiniteWeightsError
    from wsss_lightning.methods.options import CRFConfig, InferenceConfig, OptimizerConfig
    from wsss_lightning.methods.seminar import (
        ConsistencyConfig,
        DenseCRFLossConfig,
        PartialCEConfig,
        PseudoLabelConfig,
        SeminarModule,
    )
    from wsss_lightning.methods.supervised import SupervisedModule
    from wsss_lightning.methods.u2pl import (
        ContrastiveConfig,
        DomainContrastiveConfig,
        SupervisedLossConfig,
        TeacherConfig,
        U2PLDomainModule,
        U2PLModule,
        U2PLWeakModule,
        UnsupervisedConfig,
        WeakContrastiveConfig,
    )

# public name -> module that defines it
_LAZY = {
    "AFALabelConfig": "wsss_lightning.methods.afa",
    "AFALossWeights": "wsss_lightning.methods.afa",
    "AFAModule": "wsss_lightning.methods.afa",
    "AFAPhaseConfig": "wsss_lightning.methods.afa",
    "ASDTModule": "wsss_lightning.methods.asdt",
    "PWWaveConfig": "wsss_lightning.methods.asdt",
    "ReliableLabelConfig": "wsss_lightning.methods.asdt",
    "StructureLossConfig": "wsss_lightning.methods.asdt",
    "TeachingConfig": "wsss_lightning.methods.asdt",
    "SegmentationMethod": "wsss_lightning.methods.base",
    "DAFormerModule": "wsss_lightning.methods.daformer",
    "FeatureDistanceConfig": "wsss_lightning.methods.daformer",
    "SelfTrainingConfig": "wsss_lightning.methods.daformer",
    "CAMConfig": "wsss_lightning.methods.dupl",
    "DuPLModule": "wsss_lightning.methods.dupl",
    "LossWeights": "wsss_lightning.methods.dupl",
    "NoiseFilterConfig": "wsss_lightning.methods.dupl",
    "PhaseConfig": "wsss_lightning.methods.dupl",
    "StrongViewConfig": "wsss_lightning.methods.dupl",
    "ThresholdConfig": "wsss_lightning.methods.dupl",
    "NonFiniteConfig": "wsss_lightning.methods.nonfinite",
    "NonFiniteLossError": "wsss_lightning.methods.nonfinite",
    "NonFiniteWeightsError": "wsss_lightning.methods.nonfinite",
    "CRFConfig": "wsss_lightning.methods.options",
    "InferenceConfig": "wsss_lightning.methods.options",
    "OptimizerConfig": "wsss_lightning.methods.options",
    "ConsistencyConfig": "wsss_lightning.methods.seminar",
    "DenseCRFLossConfig": "wsss_lightning.methods.seminar",
    "PartialCEConfig": "wsss_lightning.methods.seminar",
    "PseudoLabelConfig": "wsss_lightning.methods.seminar",
    "SeminarModule": "wsss_lightning.methods.seminar",
    "SupervisedModule": "wsss_lightning.methods.supervised",
    "ContrastiveConfig": "wsss_lightning.methods.u2pl",
    "DomainContrastiveConfig": "wsss_lightning.methods.u2pl",
    "U2PLDomainModule": "wsss_lightning.methods.u2pl",
    "SupervisedLossConfig": "wsss_lightning.methods.u2pl",
    "TeacherConfig": "wsss_lightning.methods.u2pl",
    "U2PLModule": "wsss_lightning.methods.u2pl",
    "U2PLWeakModule": "wsss_lightning.methods.u2pl",
    "WeakContrastiveConfig": "wsss_lightning.methods.u2pl",
    "UnsupervisedConfig": "wsss_lightning.methods.u2pl",
}

__all__ = [
    "AFALabelConfig",
    "AFALossWeights",
    "AFAModule",
    "AFAPhaseConfig",
    "ASDTModule",
    "CAMConfig",
    "CRFConfig",
    "ConsistencyConfig",
    "ContrastiveConfig",
    "DAFormerModule",
    "DenseCRFLossConfig",
    "DomainContrastiveConfig",
    "DuPLModule",
    "FeatureDistanceConfig",
    "InferenceConfig",
    "LossWeights",
    "NoiseFilterConfig",
    "NonFiniteConfig",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "OptimizerConfig",
    "PWWaveConfig",
    "PartialCEConfig",
    "PhaseConfig",
    "PseudoLabelConfig",
    "ReliableLabelConfig",
    "SegmentationMethod",
    "SelfTrainingConfig",
    "SeminarModule",
    "StrongViewConfig",
    "StructureLossConfig",
    "SupervisedLossConfig",
    "SupervisedModule",
    "TeacherConfig",
    "TeachingConfig",
    "ThresholdConfig",
    "U2PLDomainModule",
    "U2PLModule",
    "U2PLWeakModule",
    "UnsupervisedConfig",
    "WeakContrastiveConfig",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
