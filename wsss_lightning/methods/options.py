"""Typed option groups shared by every method (reach the code through LightningCLI)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wsss_lightning.inference.crf import CRFParams


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    Attributes:
        name: ``sgd`` (DeepLab / U2PL family) or ``adamw`` (ViT-based WSSS such as DuPL).
        lr: base learning rate of the group with multiplier 1.
        weight_decay: L2 / decoupled weight decay.
        momentum: SGD momentum (``nesterov`` below).
        nesterov: SGD Nesterov momentum.
        betas: AdamW betas.
        lr_mult: learning-rate multiplier per named parameter group of the method (e.g. ``{"head": 10}``);
            groups not named keep the method's default multiplier.
        warmup_steps: linear warm-up length in optimizer steps.
        warmup_ratio: multiplier at the first warm-up step.
        poly_power: exponent of the poly decay over the whole run (``trainer.max_steps`` or the estimated
            number of steps).
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    lr_mult: dict[str, float] = field(default_factory=dict)
    warmup_steps: int = 0
    warmup_ratio: float = 1e-6
    poly_power: float = 0.9

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        for name, mult in self.lr_mult.items():
            if mult < 0:
                raise ValueError(f"optim.lr_mult[{name!r}] must be >= 0, got {mult}")


@dataclass
class CRFConfig:
    """Dense CRF post-processing at test / predict time.

    Attributes:
        enabled: refine test / predict outputs with the CRF.
        backend: ``pydensecrf``: pydensecrf2 on the CPU, one image per process of a pool (the reference);
            ``device``: batched mean-field on the model's device (:func:`~wsss_lightning.inference.device_crf.
            mean_field_crf`), the same CRF over the same lattice approximation (label agreement with
            pydensecrf2 in ``tests/inference/test_device_crf.py``).
        workers: processes refining images in parallel with ``pydensecrf`` (0 runs in the main process).
        params: the CRF's kernels and iterations; the defaults are DuPL's official evaluation values.
    """

    enabled: bool = False
    backend: Literal["pydensecrf", "device"] = "pydensecrf"
    workers: int = 2
    params: CRFParams = field(default_factory=CRFParams)

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"inference.crf.workers must be >= 0, got {self.workers}")
        if self.backend not in ("pydensecrf", "device"):
            raise ValueError(f"inference.crf.backend must be 'pydensecrf' or 'device', got {self.backend!r}")


@dataclass
class InferenceConfig:
    """How logits are produced at validation and at test / predict time.

    Attributes:
        val_scales: input scales during validation (single scale keeps validation cheap).
        test_scales: input scales at test / predict time (multi-scale inference).
        flip: add horizontally flipped passes at test / predict time.
        merge: how the scales are combined: ``sum`` of logits or element-wise ``max``.
        flip_merge: how a scale's original and flipped passes are combined; ``None`` = as ``merge``
            (DuPL's VOC protocol: flips summed, scales maxed).
        window: sliding-window size (pixels) for large images; ``None`` runs the whole image at once.
        stride: sliding-window stride; defaults to two thirds of the window.
        crf: dense CRF after multi-scale inference.
    """

    val_scales: tuple[float, ...] = (1.0,)
    test_scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    merge: Literal["sum", "max"] = "sum"
    flip_merge: Literal["sum", "max"] | None = None
    window: int | None = None
    stride: int | None = None
    crf: CRFConfig = field(default_factory=CRFConfig)

    def __post_init__(self) -> None:
        for name in ("val_scales", "test_scales"):
            scales = getattr(self, name)
            if not scales or any(s <= 0 for s in scales):
                raise ValueError(
                    f"inference.{name} must be a non-empty list of positive scales, got {scales}"
                )
        if self.window is not None and self.window <= 0:
            raise ValueError(f"inference.window must be positive, got {self.window}")
        if self.stride is not None and (self.window is None or not 0 < self.stride <= self.window):
            raise ValueError(
                f"inference.stride must be in (0, window], got {self.stride} (window {self.window})"
            )
