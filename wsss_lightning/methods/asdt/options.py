"""Typed option groups of ASDT's LightningModule.

ASDT (Zhang et al., "Weakly Supervised Semantic Segmentation via Alternate Self-Dual Teaching", IEEE TIP) released
no code; it extends RRM (Zhang et al., "Reliability Does Matter", AAAI 2020, github.com/zbf1991/RRM), whose
training code (``train_from_cls_weight.py``, ``tool/myTool.py``, ``DenseEnergyLoss.py``) gives every value the
paper leaves out. Each field names its source; choices the paper leaves open are named in the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NoReturn

from wsss_lightning.callbacks.pw_wave import TEACHING_MODES
from wsss_lightning.inference.crf import CRFParams
from wsss_lightning.methods.asdt.labels import RRM_TRAIN_CRF
from wsss_lightning.schedules import pw_duty


def _fail(field: str, expected: str, value: object) -> NoReturn:
    raise ValueError(f"ASDTModule: {field} must be {expected}, got {value!r}")


def _in_range(field: str, value: float, low: float, high: float, closed: str) -> None:
    """Fail unless ``value`` lies in the interval ``[low, high]`` with the ends ``closed`` ("[]", "(]", ...)."""
    above = value >= low if closed[0] == "[" else value > low
    below = value <= high if closed[1] == "]" else value < high
    if not (math.isfinite(value) and above and below):
        _fail(field, f"in {closed[0]}{low:g}, {high:g}{closed[1]}", value)


def _floats(field: str, values: Sequence[float]) -> tuple[float, ...]:
    """``values`` as a tuple of floats (YAML gives lists); fails naming ``field`` for a string or a scalar."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        _fail(field, "a sequence of numbers", values)
    return tuple(float(v) for v in values)


@dataclass
class PWWaveConfig:
    """ASDT's pulse-width wave ``Λ_t`` (Eq. 4, §3.3): which teacher the student learns from at each step.

    Attributes:
        period: ``T = T_h + T_l`` in optimizer steps, >= 2 (150, §4 implementation details).
        tau: duty ratio ``τ = T / T_h`` > 1; ``T_h = round(T / τ)`` class-teacher steps per period (5 → 30, §4
            implementation details; the τ ablation of Fig. 5 is best at 6; the T it used is not stated).
        first: level the wave starts with: ``"class"`` (class-teacher for the first ``T_h`` steps, so the
            student's first updates do not come from the untrained seg-teacher) or ``"seg"``. The paper draws
            the wave (Fig. 2) without stating its phase.
    """

    period: int = 150
    tau: float = 5.0
    first: Literal["class", "seg"] = "class"

    def __post_init__(self) -> None:
        try:
            pw_duty(self.period, self.tau)
        except ValueError as error:
            raise ValueError(f"ASDTModule: {error}") from None
        if self.first not in ("class", "seg"):
            _fail("pw.first", "'class' or 'seg'", self.first)


@dataclass
class TeachingConfig:
    """Which teacher(s) train the student (Table 4 of ASDT).

    Attributes:
        mode: ``"alternate"`` (row V, ASDT: the PW wave switches between ``L_d^{ct→s}`` and ``L_d^{st→s}``);
            ``"class"`` (row I, class-teacher only: RRM, the student trained from ``B^ct`` alone, the
            seg-teacher's loss off); ``"seg"`` (row II,
            seg-teacher only); ``"max"`` / ``"mean"`` (rows III / IV, naive dual teacher: the student learns
            from a CRF of the element-wise max / mean of the two teachers' maps).
        seg_teacher_absent: the seg-teacher label ``B^st`` for pixels whose CRF argmax is a class absent from
            the image tags. ``"zero"``: the absent classes' channels of ``P^st`` are zeroed before the CRF, so
            every pixel gets a present class; ``"ignore"``: such pixels get 255 (Eq. 6 read literally: it sums
            over present classes only). The paper does not say; ``"zero"`` keeps every pixel supervised.
        seg_teacher_crf: the dense CRF of ``B^st`` and of the dual-teacher labels (the paper gives none; RRM's
            training-time CRF, the reliable label's, by default; RRM's inference CRF is the other candidate).
    """

    mode: Literal["alternate", "class", "seg", "max", "mean"] = "alternate"
    seg_teacher_absent: Literal["zero", "ignore"] = "zero"
    seg_teacher_crf: CRFParams = field(default_factory=lambda: RRM_TRAIN_CRF)

    def __post_init__(self) -> None:
        if self.mode not in TEACHING_MODES:
            _fail("teaching.mode", f"one of {', '.join(map(repr, TEACHING_MODES))}", self.mode)
        if self.seg_teacher_absent not in ("zero", "ignore"):
            _fail("teaching.seg_teacher_absent", "'zero' or 'ignore'", self.seg_teacher_absent)


@dataclass
class StructureLossConfig:
    """The structure loss ``L_str`` added to each distillation term (Eqs. 3, 5, 6): RRM's gated dense energy.

    ASDT names it "the energy-based term as used in [6], [18]"; the values are RRM's
    (``train_from_cls_weight.py``, ``DenseEnergyLoss.py``), see
    :func:`~wsss_lightning.losses.dense_crf.dense_crf_loss` and
    :func:`~wsss_lightning.methods.asdt.losses.structure_gate`.

    Attributes:
        weight: loss weight >= 0 (RRM 1e-7).
        sigma_rgb: colour bandwidth > 0, in 0-255 RGB units (RRM 15; ASDT's "σ_D = 15 and σ_I = 100" leaves the
            symbols undefined, RRM's code has 15 for colour).
        sigma_xy: spatial bandwidth > 0, in full-resolution pixels, scaled with ``scale`` (RRM 100).
        scale: resolution of the loss in (0, 1] (RRM 0.5: image, ROI and labels nearest, probabilities
            bilinear).
        kernel: ``"lattice"`` (permutohedral filter, as RRM's C++ extension, about 0.5× the exact Gaussian
            sum) or ``"exact"`` (dense Gaussian, calibrated to the lattice's scale).
    """

    weight: float = 1e-7
    sigma_rgb: float = 15.0
    sigma_xy: float = 100.0
    scale: float = 0.5
    kernel: Literal["lattice", "exact"] = "lattice"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            _fail("structure.weight", ">= 0", self.weight)
        for name in ("sigma_rgb", "sigma_xy"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                _fail(f"structure.{name}", "> 0", value)
        _in_range("structure.scale", self.scale, 0.0, 1.0, "(]")
        if self.kernel not in ("lattice", "exact"):
            _fail("structure.kernel", "'lattice' or 'exact'", self.kernel)


@dataclass
class ReliableLabelConfig:
    """The class-teacher's reliable pseudo-label ``B^ct`` and mask ``R^ct`` (§3.2, "following [18], [40]").

    The procedure is RRM's (``tool/myTool.py``, ``RRM_CRF_ALL``): CAMs over several input scales, two dense CRFs
    on ``[(1 − max_c M_c)^α ; M]`` with a strong and a weak background, and a pixel kept only where both the
    CAM and the CRF are confident.

    Attributes:
        alphas: ``(α_strong, α_weak)`` background exponents, ``0 < α_strong <= α_weak`` (RRM ``la`` 4, ``ha``
            32): foreground must win against the strong background, background against the weak one.
        cam_floor: a class's CAM values above this, inside its own argmax region, enter its quantile, in
            [0, 1) (RRM 0.1).
        cam_quantile: a foreground pixel is CAM-sure above this quantile of those values, in (0, 1) (RRM 0.6:
            the value at index ``⌊0.6 n⌋`` of the sorted values).
        background_sure: a background pixel is CAM-sure where ``(1 − max_c M_c)^α_weak`` exceeds this, in
            [0, 1] (RRM 0.8).
        crf_sure: a pixel is CRF-sure where ``max(Q^weak_bg, max_k Q^strong_k)`` reaches this, in [0, 1]
            (RRM 0.8).
        cam_scales: input scales whose CAMs are averaged, all > 0 and 1.0 among them (the training forward;
            the others run without gradient) (RRM and ASDT §4: 1, 0.5, 1.5, 2).
        cam_flip: add the horizontally flipped images' CAMs at every scale (flipped back, averaged with the others);
            RRM's CAMs (``network/RRM.py``) have no flip, hence off.
        token_positions: where the tokens of the CAMs and of the two seg heads' logits sit on the image.
            ``cell_centres`` (default): RRM's bilinear resizes (``F.interpolate``, ``align_corners=False``; the
            CAM scales averaged on the scale-1 grid, then upsampled), which place token ``c`` at ``8 c + 3.5``,
            where a trained network's CAMs put their content (``benchmarks/cam_offset.py``). ``encoder``: where
            the backbone's padded strided convolutions centre an untrained token, ``8 c``
            (``wsss_lightning.models.token_grid``); each scale's CAM is resampled to the crop by those positions
            and the scales are averaged there, and the heads' logits are resampled the same way in training,
            validation and prediction (measured worse, ``benchmarks/README.md``).
        mask_padding: set the padded border of the crop to 255 in ``B^ct`` (off: RRM does not mask it; the
            padding is always outside the dense-CRF energy's ROI).
        crf_backend: where the training labels' and the pseudo masks' CRFs run: ``device`` (batched mean-field on
            the training device, no host copy) or ``pydensecrf`` (pydensecrf2, one image per process of a pool of
            ``crf_workers``: the reference, and faster on the CPU; it copies each batch to the host).
        crf_workers: processes of that pool (0: in the training process).
        crf: the dense CRF of the reliable label, also used for the seg-teacher's label ``B^st`` (RRM's
            training-time CRF, ``tool/imutils.py``: Gaussian 3 / 3, bilateral 80 / 13 / 10, 10 iterations).
    """

    alphas: tuple[float, float] = (4.0, 32.0)
    cam_floor: float = 0.1
    cam_quantile: float = 0.6
    background_sure: float = 0.8
    crf_sure: float = 0.8
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    cam_flip: bool = False
    token_positions: Literal["encoder", "cell_centres"] = "cell_centres"
    mask_padding: bool = False
    crf_backend: Literal["device", "pydensecrf"] = "device"
    crf_workers: int = 2
    crf: CRFParams = field(default_factory=lambda: RRM_TRAIN_CRF)

    def __post_init__(self) -> None:
        alphas = _floats("labels.alphas", self.alphas)
        if len(alphas) != 2 or not all(math.isfinite(a) for a in alphas) or not 0 < alphas[0] <= alphas[1]:
            _fail("labels.alphas", "two exponents (strong, weak) with 0 < strong <= weak", self.alphas)
        self.alphas = (alphas[0], alphas[1])
        _in_range("labels.cam_floor", self.cam_floor, 0.0, 1.0, "[)")
        _in_range("labels.cam_quantile", self.cam_quantile, 0.0, 1.0, "()")
        _in_range("labels.background_sure", self.background_sure, 0.0, 1.0, "[]")
        _in_range("labels.crf_sure", self.crf_sure, 0.0, 1.0, "[]")
        scales = _floats("labels.cam_scales", self.cam_scales)
        if not scales or not all(math.isfinite(s) and s > 0 for s in scales) or 1.0 not in scales:
            _fail(
                "labels.cam_scales", "positive scales including 1.0 (the training forward)", self.cam_scales
            )
        self.cam_scales = scales
        if self.token_positions not in ("encoder", "cell_centres"):
            _fail("labels.token_positions", "'encoder' or 'cell_centres'", self.token_positions)
        if self.crf_backend not in ("device", "pydensecrf"):
            _fail("labels.crf_backend", "'device' or 'pydensecrf'", self.crf_backend)
        if self.crf_workers < 0:
            _fail("labels.crf_workers", ">= 0", self.crf_workers)
