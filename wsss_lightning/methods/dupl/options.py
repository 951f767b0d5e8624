"""Typed option groups of :class:`~wsss_lightning.methods.dupl.DuPLModule`.

Defaults follow the paper (Sec. 3-4) where it gives a value and the released code ``Wu0409/DuPL``
(``train_final_voc.py``, ``train_final_coco.py``) elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: VOC classes whose background threshold never decays in the released code (``train_final_voc.py``)
VOC_HARD_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "chair", "train")


def _fail(owner: str, name: str, value: object, expected: str) -> None:
    raise ValueError(f"DuPLModule: {owner}.{name} = {value!r}; expected {expected}")


@dataclass
class PhaseConfig:
    """Iteration boundaries of the progressive schedule (0-based global step ``t``).

    Attributes:
        seg_start: end of the CAM warm-up; the cross segmentation loss is on for ``t > seg_start`` (VOC 2000,
            COCO 8000).
        noise_filter_start: adaptive noise filtering and the strong view run for ``t >= noise_filter_start``,
            the consistency loss is on for ``t > noise_filter_start`` (VOC 8000, COCO 32000).
        ptc_start: patch-token contrast on for ``t >= ptc_start`` (VOC 0, COCO 12001: on for t > 12000).
        dis_start: discrepancy loss on for ``t >= dis_start`` (VOC 0, COCO 8001: on for t > 8000).
        aux_labels_until: COCO: for ``seg_start < t <= aux_labels_until`` the segmentation pseudo-labels come
            from the auxiliary (block-10) CAM with the fixed start threshold (12000); ``None`` (VOC) never.
    """

    seg_start: int = 2000
    noise_filter_start: int = 8000
    ptc_start: int = 0
    dis_start: int = 0
    aux_labels_until: int | None = None

    def __post_init__(self) -> None:
        for name in ("seg_start", "noise_filter_start", "ptc_start", "dis_start"):
            if getattr(self, name) < 0:
                _fail("phases", name, getattr(self, name), ">= 0")
        if self.noise_filter_start <= self.seg_start:
            _fail(
                "phases",
                "noise_filter_start",
                self.noise_filter_start,
                f"> phases.seg_start ({self.seg_start}): noise filtering needs trained segmentation heads",
            )
        if self.aux_labels_until is not None and not (
            self.seg_start < self.aux_labels_until < self.noise_filter_start
        ):
            _fail(
                "phases",
                "aux_labels_until",
                self.aux_labels_until,
                f"None or between phases.seg_start ({self.seg_start}) and phases.noise_filter_start "
                f"({self.noise_filter_start})",
            )


@dataclass
class ThresholdConfig:
    """CAM thresholds: the dynamic background threshold delta_h (Eq. 5) and the fixed low one delta_l.

    delta_h of class c descends by a cosine from ``start`` to its end value over ``total_steps`` steps
    beginning at ``start_step``; an image uses the maximum over its present classes.

    Attributes:
        start: delta_h before and at the start of the descent (VOC 0.70, COCO 0.65).
        end: end value of the descent (0.55).
        per_class: the released code's per-class ends: ``hard_classes`` keep ``hard_end``; False gives every
            class ``end`` (the paper's single end value).
        hard_classes: class names whose threshold ends at ``hard_end`` when ``per_class`` (VOC code list;
            names absent from the dataset are an error, an empty list is fine).
        hard_end: end value of the hard classes (0.70 = no descent).
        start_step: first step of the descent; ``None`` = ``phases.seg_start`` (VOC 2000; COCO 12000).
        total_steps: length of the descent; ``None`` = to the last training step (N - 1 in Eq. 5 as the code
            computes it, so the last step reaches ``end`` exactly).
        low: delta_l, the background-wins threshold (0.25).
        eval_background: background threshold of the validation CAM labels (VOC 0.5, COCO 0.45).
    """

    start: float = 0.70
    end: float = 0.55
    per_class: bool = True
    hard_classes: Sequence[str] = VOC_HARD_CLASSES
    hard_end: float = 0.70
    start_step: int | None = None
    total_steps: int | None = None
    low: float = 0.25
    eval_background: float = 0.5

    def __post_init__(self) -> None:
        for name in ("start", "end", "hard_end", "low", "eval_background"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                _fail("threshold", name, value, "a value in (0, 1)")
        for name in ("start", "end", "hard_end"):
            if getattr(self, name) <= self.low:
                _fail("threshold", name, getattr(self, name), f"> threshold.low ({self.low})")
        if self.start_step is not None and self.start_step < 0:
            _fail("threshold", "start_step", self.start_step, ">= 0 or None")
        if self.total_steps is not None and self.total_steps <= 0:
            _fail("threshold", "total_steps", self.total_steps, "> 0 or None")
        self.hard_classes = list(self.hard_classes)

    def class_ends(self, class_names: Sequence[str]) -> list[float]:
        """End value of every foreground class (``class_names`` without the background)."""
        if not self.per_class:
            return [self.end] * len(class_names)
        unknown = sorted(set(self.hard_classes) - set(class_names))
        if unknown:
            _fail(
                "threshold", "hard_classes", unknown, f"names among the dataset's classes {list(class_names)}"
            )
        return [self.hard_end if name in self.hard_classes else self.end for name in class_names]


@dataclass
class NoiseFilterConfig:
    """Adaptive noise filtering (Eqs. 6-7): a two-component GMM on each pseudo-label's loss map.

    Attributes:
        enabled: filter at all (off = the "w/o ANF" ablation).
        min_loss: only foreground pixels with a loss above this enter the fit (0.1).
        min_pixels: a map is filtered only with more than this many such pixels (1000).
        min_gap: ... and when the two means differ by more than this (epsilon = 1.0).
        posterior: pixels whose noise posterior exceeds this become ignored (gamma = 0.95).
        max_iter: EM iterations (10, scikit-learn's setting in the reference).
        tol: EM convergence tolerance on the mean log-likelihood (1e-2).
        reg_covar: variance floor (5e-4).
    """

    enabled: bool = True
    min_loss: float = 0.1
    min_pixels: int = 1000
    min_gap: float = 1.0
    posterior: float = 0.95
    max_iter: int = 10
    tol: float = 1e-2
    reg_covar: float = 5e-4

    def __post_init__(self) -> None:
        if not 0.0 <= self.posterior <= 1.0:
            _fail("noise_filter", "posterior", self.posterior, "a value in [0, 1] (1 filters nothing)")
        if self.min_loss < 0 or self.min_gap < 0 or self.min_pixels < 0:
            _fail(
                "noise_filter",
                "min_loss/min_gap/min_pixels",
                (self.min_loss, self.min_gap, self.min_pixels),
                ">= 0",
            )
        if self.max_iter < 1 or self.reg_covar <= 0:
            _fail(
                "noise_filter",
                "max_iter/reg_covar",
                (self.max_iter, self.reg_covar),
                "max_iter >= 1, reg_covar > 0",
            )


@dataclass
class StrongViewConfig:
    """The strong-perturbation view of the consistency loss (Eq. 8).

    Attributes:
        num_ops: colour RandAugment operations per image (5).
        magnitude: RandAugment magnitude (10).
        scale: the strong view is down-scaled by this factor inside the model (0.75).
        flip: the strong view is always flipped horizontally (and the prediction flipped back).
        confidence: the released code's gate: only pixels where the clean prediction's confidence exceeds
            this are regularised (0.9); ``None`` = every ignored pixel (the paper).
    """

    num_ops: int = 5
    magnitude: int = 10
    scale: float = 0.75
    flip: bool = True
    confidence: float | None = 0.9

    def __post_init__(self) -> None:
        if self.num_ops < 0 or not 0 <= self.magnitude <= 30:
            _fail(
                "strong_view",
                "num_ops/magnitude",
                (self.num_ops, self.magnitude),
                "num_ops >= 0, magnitude in [0, 30]",
            )
        if not 0.0 < self.scale <= 1.0:
            _fail("strong_view", "scale", self.scale, "a value in (0, 1]")
        if self.confidence is not None and not 0.0 <= self.confidence < 1.0:
            _fail("strong_view", "confidence", self.confidence, "None or a value in [0, 1)")


@dataclass
class LossWeights:
    """Weights of the objective L = cls + ptc L_ptc + dis L_dis + seg L_seg + reg L_reg (VOC code values).

    Attributes:
        cls: multi-label soft-margin loss of the main and auxiliary classifiers (1.0).
        ptc: patch-token contrast (0.2).
        dis: discrepancy loss (VOC 0.1, COCO 0.05).
        seg: cross segmentation loss (0.2; the paper's text says 0.1).
        reg: strong-view consistency (0.05).
    """

    cls: float = 1.0
    ptc: float = 0.2
    dis: float = 0.1
    seg: float = 0.2
    reg: float = 0.05

    def __post_init__(self) -> None:
        for name in ("cls", "ptc", "dis", "seg", "reg"):
            if getattr(self, name) < 0:
                _fail("loss_weights", name, getattr(self, name), ">= 0")


@dataclass
class CAMConfig:
    """Multi-scale CAMs and their PAR refinement.

    Attributes:
        scales: input scales of the training / validation CAMs, each with its flip (1.0, 0.5, 1.5).
        par_dilations: PAR neighbourhood dilations (1, 2, 4, 8, 12, 24).
        par_iterations: PAR refinement iterations (10).
        par_downscale: PAR runs at 1 / this of the crop (2: 448 -> 224).
        token_box: how the valid-region box masks the token-grid labels of the patch-token contrast:
            ``scaled`` (box scaled to the grid) or ``reference`` (the reference applies the pixel box to the
            token grid, which ignores whole maps of padded crops; a bug, kept as an option).
        reuse_training_pass: take the un-flipped scale-1.0 CAMs from the training forward's tokens (detached)
            instead of a separate pass over the same images: the same maps without dropout or stochastic
            depth, one of the step's six CAM passes fewer. Set false for backbones with either (the training
            forward then differs from a clean pass); the module refuses true for them.
    """

    scales: Sequence[float] = (1.0, 0.5, 1.5)
    par_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)
    par_iterations: int = 10
    par_downscale: int = 2
    token_box: Literal["scaled", "reference"] = "scaled"
    reuse_training_pass: bool = True

    def __post_init__(self) -> None:
        self.scales = tuple(float(s) for s in self.scales)
        self.par_dilations = tuple(int(d) for d in self.par_dilations)
        if not self.scales or any(s <= 0 for s in self.scales):
            _fail("cam", "scales", self.scales, "a non-empty list of positive scales")
        if not self.par_dilations or any(d < 1 for d in self.par_dilations):
            _fail("cam", "par_dilations", self.par_dilations, "a non-empty list of dilations >= 1")
        if self.par_iterations < 0 or self.par_downscale < 1:
            _fail(
                "cam",
                "par_iterations/par_downscale",
                (self.par_iterations, self.par_downscale),
                ">= 0 / >= 1",
            )
        if self.token_box not in ("scaled", "reference"):
            _fail("cam", "token_box", self.token_box, "'scaled' or 'reference'")
