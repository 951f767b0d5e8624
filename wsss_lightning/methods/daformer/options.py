"""Option groups of :class:`~wsss_lightning.methods.daformer.DAFormerModule` (DAFormer's released values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Cityscapes train ids of the "thing" classes DAFormer's feature distance covers: traffic light, traffic sign,
#: person, rider, car, truck, bus, train, motorcycle, bicycle (``imnet_feature_dist_classes`` of the GTA5 ->
#: Cityscapes configs in ``lhoyer/DAFormer``).
CITYSCAPES_THING_CLASSES: tuple[int, ...] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


@dataclass
class SelfTrainingConfig:
    """The teacher's pseudo-labels on the target, DACS mixing and the strong augmentation (DAFormer Sec. 3.1).

    Args:
        enabled: train on the mixed target images; ``false`` trains on the labelled source alone (the
            source-only baseline, evaluated on the target like every domain-adaptive run).
        weight: weight of the pseudo-label loss (1).
        ema_decay: the teacher's EMA decay alpha (0.999), reached by the ramp ``min(1 - 1/(t+1), alpha)``.
        confidence_threshold: pixels at least this confident count towards a pseudo-label's quality weight
            (tau = 0.968).
        quality_weight: ``image`` (the quality of each target image, DACS / DAFormer papers) or ``batch`` (one
            scalar for the whole target batch, as ``mmseg/models/uda/dacs.py`` computes it).
        ignore_top: rows at the top of every pseudo-label given weight 0 (15: the rectification artefacts of
            Cityscapes' frames).
        ignore_bottom: rows at the bottom given weight 0 (120: the ego vehicle).
        classmix: ``image`` (half of each source image's own classes are pasted) or ``batch`` (the released
            code: the candidate classes are those of the whole source batch, ignore included, so an image can
            receive a class it does not contain and paste nothing).
        jitter_strength: colour-jitter strength s (0.2).
        jitter_p: probability of colour jitter per image (0.8: the released code applies it when a uniform
            draw exceeds ``color_jitter_probability`` = 0.2).
        blur_p: probability of Gaussian blur per image (0.5).
        teacher_regularisation: ``off`` (dropout and drop path switched off while the teacher, in train mode,
            labels the target, as released) or ``on``.
    """

    enabled: bool = True
    weight: float = 1.0
    ema_decay: float = 0.999
    confidence_threshold: float = 0.968
    quality_weight: Literal["image", "batch"] = "image"
    ignore_top: int = 15
    ignore_bottom: int = 120
    classmix: Literal["image", "batch"] = "image"
    jitter_strength: float = 0.2
    jitter_p: float = 0.8
    blur_p: float = 0.5
    teacher_regularisation: Literal["off", "on"] = "off"

    def __post_init__(self) -> None:
        checks = {
            "weight": self.weight >= 0,
            "ema_decay": 0.0 <= self.ema_decay <= 1.0,
            "confidence_threshold": 0.0 <= self.confidence_threshold <= 1.0,
            "ignore_top": self.ignore_top >= 0,
            "ignore_bottom": self.ignore_bottom >= 0,
            "jitter_strength": self.jitter_strength >= 0,
            "jitter_p": 0.0 <= self.jitter_p <= 1.0,
            "blur_p": 0.0 <= self.blur_p <= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"self_training.{name} = {getattr(self, name)!r} is out of range")
        for name, value, allowed in (
            ("quality_weight", self.quality_weight, ("image", "batch")),
            ("classmix", self.classmix, ("image", "batch")),
            ("teacher_regularisation", self.teacher_regularisation, ("off", "on")),
        ):
            if value not in allowed:
                raise ValueError(f"self_training.{name} = {value!r}; expected one of {allowed}")


@dataclass
class FeatureDistanceConfig:
    """ImageNet feature distance (DAFormer Sec. 3.4) of the thing classes' bottleneck features.

    The student's last encoder stage is kept close to that of a frozen copy of the initial (ImageNet) encoder.

    Args:
        enabled: ``null`` (default): on exactly when ``encoder_weights`` is given (without ImageNet weights the
            frozen copy would be a random network, and pulling features towards it only hurts); ``true`` insists
            (an error without weights), ``false`` turns it off.
        weight: lambda_FD (0.005).
        thing_classes: train ids whose pixels are regularised (Cityscapes things).
        min_ratio: a bottleneck cell counts only if its majority class covers at least this share of it (0.75).
    """

    enabled: bool | None = None
    weight: float = 0.005
    thing_classes: tuple[int, ...] = CITYSCAPES_THING_CLASSES
    min_ratio: float = 0.75

    def __post_init__(self) -> None:
        if self.weight < 0 or not 0.0 < self.min_ratio <= 1.0:
            raise ValueError(
                f"feature_distance: weight = {self.weight} must be >= 0 and min_ratio = {self.min_ratio} in (0, 1]"
            )
        self.thing_classes = tuple(int(c) for c in self.thing_classes)
