"""One LightningModule per method, each in its own package, on a shared base.

A method package (``methods/<method>/``) imports the shared folders (``losses``, ``pseudo_labels``, ``models``,
``teachers``, ``schedules``), never another method.
"""

from wsss_lightning.methods.base import SegmentationMethod
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
    SupervisedLossConfig,
    TeacherConfig,
    U2PLModule,
    UnsupervisedConfig,
)

__all__ = [
    "CAMConfig",
    "CRFConfig",
    "ConsistencyConfig",
    "ContrastiveConfig",
    "DenseCRFLossConfig",
    "DuPLModule",
    "InferenceConfig",
    "LossWeights",
    "NoiseFilterConfig",
    "NonFiniteConfig",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "OptimizerConfig",
    "PartialCEConfig",
    "PhaseConfig",
    "PseudoLabelConfig",
    "SegmentationMethod",
    "SeminarModule",
    "StrongViewConfig",
    "SupervisedLossConfig",
    "SupervisedModule",
    "TeacherConfig",
    "ThresholdConfig",
    "U2PLModule",
    "UnsupervisedConfig",
]
