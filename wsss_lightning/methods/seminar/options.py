"""Typed option groups of :class:`~wsss_lightning.methods.seminar.SeminarModule`.

Seminar Learning (Chen et al., ICCV 2021) released no code; it states (§4.2) that it runs on the regularized-loss
trainer ``meng-tang/rloss`` (``pytorch/pytorch-deeplab_v3_plus/train_withdensecrfloss.py``) "without modifying any
parameters". Defaults are the paper's values where it gives them and rloss's shipped values elsewhere; choices the
paper leaves open are named in each field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


def _fail(owner: str, name: str, value: object, expected: str) -> None:
    raise ValueError(f"SeminarModule: {owner}.{name} = {value!r}; expected {expected}")


@dataclass
class PartialCEConfig:
    """Partial cross-entropy on the click pixels (Eq. 2).

    Attributes:
        batch_average: divide the mean over labelled pixels once more by the batch size, as rloss's criterion
            does (``utils/loss.py``, ``batch_average=True``); the consistency weight 200 was set against this
            scale. ``False`` gives the plain mean over labelled pixels.
    """

    batch_average: bool = True


@dataclass
class ConsistencyConfig:
    """Pixel consistency with the EMA teacher (Eq. 1 and 3).

    Attributes:
        weight: λ_pCons (200, §4.3).
        ramp_epochs: λ_pCons ramps linearly from 0 over this many epochs, λ(e) = weight · min(e / ramp_epochs, 1)
            with e the 0-based epoch (§4.2: "the first 40 epochs"; epoch 0 has weight 0; 0 disables the ramp).
        ema_decay: α of Eq. 1; the teacher follows a_t = min(1 − 1/t, α) after optimizer step t (Fig. 5b: 0.999).
        reduction: ``"elements"`` = mean of the squared softmax difference over B·C·pixels (``F.mse_loss``, the
            mean-teacher convention); ``"classes"`` = summed over classes, mean over pixels (Eq. 3 literally,
            C× larger).
        exclude_padding: average over real image pixels only (padding of small rescaled crops is left out).
        teacher_mode: ``"train"``: the teacher runs in train mode under no_grad (dropout on, batch statistics,
            its own BN buffers updated), the mean-teacher convention (MT ``main.py``) the paper follows;
            ``"eval"``: deterministic teacher on running statistics averaged from the student's with the same
            a_t as its parameters (it never runs in train mode, so it has none of its own; the paper does not say).
    """

    weight: float = 200.0
    ramp_epochs: int = 40
    ema_decay: float = 0.999
    reduction: Literal["elements", "classes"] = "elements"
    exclude_padding: bool = True
    teacher_mode: Literal["train", "eval"] = "train"

    def __post_init__(self) -> None:
        if self.weight < 0:
            _fail("consistency", "weight", self.weight, ">= 0")
        if self.teacher_mode not in ("train", "eval"):
            _fail("consistency", "teacher_mode", self.teacher_mode, "'train' or 'eval'")
        if self.ramp_epochs < 0:
            _fail("consistency", "ramp_epochs", self.ramp_epochs, ">= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            _fail("consistency", "ema_decay", self.ema_decay, "a decay in [0, 1)")
        if self.reduction not in ("elements", "classes"):
            _fail("consistency", "reduction", self.reduction, "'elements' or 'classes'")


@dataclass
class DenseCRFLossConfig:
    """The relaxed dense-CRF loss (Eq. 4), rloss's ``DenseCRFLoss`` layer.

    Attributes:
        enabled: add the loss (the "pCE + pCons" rows of Table 3 switch it off).
        weight: the layer's weight; λ_CRF = 1 on top of rloss's shipped 2e-9 (README command).
        sigma_rgb: colour bandwidth in 0-255 RGB units (15).
        sigma_xy: spatial bandwidth in full-resolution pixels (100; scaled with ``scale``).
        scale: resolution of the loss (0.5: image nearest, probabilities bilinear).
        kernel: ``"lattice"`` (permutohedral approximation, as rloss) or ``"exact"`` (dense Gaussian).
        calibration: multiplier of ``weight`` (None: 1 for the lattice, the lattice/exact ratio for the exact
            kernel, so both give rloss's loss scale; see :mod:`wsss_lightning.losses.dense_crf`).
    """

    enabled: bool = True
    weight: float = 2e-9
    sigma_rgb: float = 15.0
    sigma_xy: float = 100.0
    scale: float = 0.5
    kernel: Literal["lattice", "exact"] = "lattice"
    calibration: float | None = None

    def __post_init__(self) -> None:
        if self.weight < 0:
            _fail("crf_loss", "weight", self.weight, ">= 0")
        for name in ("sigma_rgb", "sigma_xy"):
            if getattr(self, name) <= 0:
                _fail("crf_loss", name, getattr(self, name), "> 0")
        if not 0.0 < self.scale <= 1.0:
            _fail("crf_loss", "scale", self.scale, "a factor in (0, 1]")
        if self.kernel not in ("lattice", "exact"):
            _fail("crf_loss", "kernel", self.kernel, "'lattice' or 'exact'")


@dataclass
class PseudoLabelConfig:
    """Heterogeneous pseudo-labels of the frozen ancillary student (Eq. 6, primary stage only).

    Attributes:
        weight: λ_pseudo (1).
        batch_average: also divide by the batch size like rloss's criterion (Eq. 6 is a plain mean: off).
        exclude_padding: leave padded pixels out of the loss.
    """

    weight: float = 1.0
    batch_average: bool = False
    exclude_padding: bool = True

    def __post_init__(self) -> None:
        if self.weight < 0:
            _fail("pseudo", "weight", self.weight, ">= 0")
