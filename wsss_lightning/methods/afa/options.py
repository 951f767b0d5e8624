"""Typed option groups of :class:`~wsss_lightning.methods.afa.AFAModule`.

Defaults follow the AFA paper (Ru et al., "Learning Affinity from Attention: End-to-End Weakly-Supervised
Semantic Segmentation with Transformers", CVPR 2022, Sec. 3-4) where it gives a value, and the released
code ``rulixiang/afa`` (``scripts/dist_train_voc.py``, ``configs/voc_attn_reg.yaml``, ``utils/camutils.py``)
elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


def _fail(owner: str, name: str, value: object, expected: str) -> None:
    raise ValueError(f"AFAModule: {owner}.{name} = {value!r}; expected {expected}")


@dataclass
class AFAPhaseConfig:
    """Iteration boundaries (0-based global step ``t``).

    Attributes:
        seg_start: end of the CAM-only warm-up: the segmentation and affinity losses are on for
            ``t >= seg_start`` (``cam_iters`` 2000 in ``dist_train_voc.py``).
        propagation_start: from this step the segmentation target is the affinity-propagated label instead of
            the PAR-refined CAM label (6000 in ``dist_train_voc.py``).
    """

    seg_start: int = 2000
    propagation_start: int = 6000

    def __post_init__(self) -> None:
        if self.seg_start < 0:
            _fail("phases", "seg_start", self.seg_start, ">= 0")
        if self.propagation_start < self.seg_start:
            _fail(
                "phases",
                "propagation_start",
                self.propagation_start,
                f">= phases.seg_start ({self.seg_start}): propagation needs a trained affinity head",
            )


@dataclass
class AFALabelConfig:
    """CAMs, their thresholds, PAR and the affinity / random-walk settings.

    Attributes:
        scales: CAM input scales, each with its horizontal flip (``camutils.multi_scale_cam``: 1.0, 0.5, 1.5).
        background: background score of the validation CAM labels (``bkg_score`` 0.45).
        high: foreground threshold of the pseudo-labels (``high_thre`` 0.55): the background plane of the
            high stack.
        low: background threshold (``low_thre`` 0.35); pixels between ``low`` and ``high`` are ignored
            (``ignore_mid``).
        par_dilations: dilations of PAR's neighbourhoods (AFA's PAR: 1, 2, 4, 8, 12, 24).
        par_iterations: PAR iterations (10).
        par_downscale: PAR runs at ``1 / par_downscale`` of the crop (2, as the released refinement).
        radius: affinity pairs farther apart than this many tokens in a row or column are ignored in the
            affinity loss and cut from the random walk (8 in ``voc_attn_reg.yaml``).
        propagation_scale: the CAM scale whose predicted affinity drives the random walk; ``None`` = the
            largest scale (the released code keeps the affinity of the last of 1.0, 0.5, 1.5).
        walk_power: the affinity is raised to this power before the walk (2).
        walk_log_iterations: the walk matrix is squared this many times (0: one walk step).
        token_positions: where the CAM and walk treat the last stage's tokens as sitting on the image.
            ``cell_centres`` (default): the released code's bilinear resize (``F.interpolate``,
            ``align_corners=False``), token ``c`` at the centre of its 16-pixel cell, ``16 c + 7.5``.
            ``encoder``: where MiT's padded patch-embedding convolutions centre an untrained token, pixel
            ``16 c`` (``wsss_lightning.models.token_grid``). A trained network's CAM content sits between the
            two (``benchmarks/cam_offset.py``: about ``16 c + 4`` on the synthetic set, where ``cell_centres``
            scores as well as ``encoder`` or better), so the released resize is kept.
        affinity_balance: how the affinity loss weighs its pairs: ``afa`` (default, the released
            ``get_aff_loss``: positive and negative pairs averaged apart, half each) or ``affinitynet``
            (AffinityNet's Eq. 7 balance: background-background and foreground-foreground positives averaged
            apart, a quarter each, negatives half; ``wsss_lightning.losses.affinity``).
        affinity_targets: which pixel of the refined label a token's affinity target reads: ``nearest``
            (default, the released ``cams_to_affinity_label``: a nearest resize, so token ``c`` reads pixel
            ``16 c``, the first of its 16-pixel cell) or ``token_positions`` (the pixel where
            ``token_positions`` puts the token: the cell centre ``16 c + 8`` with ``cell_centres``, where the CAM
            and the walk also place it; pixel ``16 c`` with ``encoder``).
        target: what the segmentation head learns from: ``pseudo`` (the method) or ``mask``, the batch's
            ground-truth masks (the full-supervision ceiling of the same network and schedule; needs the
            TagsView's diagnostic masks). The CAM, affinity and random walk train as usual either way.
    """

    scales: Sequence[float] = (1.0, 0.5, 1.5)
    background: float = 0.45
    high: float = 0.55
    low: float = 0.35
    par_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)
    par_iterations: int = 10
    par_downscale: int = 2
    radius: int = 8
    propagation_scale: float | None = None
    walk_power: float = 2.0
    walk_log_iterations: int = 0
    affinity_balance: Literal["afa", "affinitynet"] = "afa"
    affinity_targets: Literal["nearest", "token_positions"] = "nearest"
    target: Literal["pseudo", "mask"] = "pseudo"
    token_positions: Literal["encoder", "cell_centres"] = "cell_centres"

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            _fail("labels", "scales", self.scales, "a non-empty list of positive scales")
        if not 0.0 < self.high < 1.0:
            _fail("labels", "high", self.high, "a score in (0, 1)")
        if not 0.0 < self.low <= self.high:
            _fail("labels", "low", self.low, f"a score in (0, labels.high = {self.high}]")
        if not 0.0 < self.background < 1.0:
            _fail("labels", "background", self.background, "a score in (0, 1)")
        if self.radius < 1:
            _fail("labels", "radius", self.radius, ">= 1 token")
        if self.propagation_scale is not None and self.propagation_scale not in tuple(self.scales):
            _fail(
                "labels",
                "propagation_scale",
                self.propagation_scale,
                f"None or one of scales {tuple(self.scales)}",
            )
        if self.par_downscale < 1:
            _fail("labels", "par_downscale", self.par_downscale, ">= 1")
        if self.par_iterations < 0:
            _fail("labels", "par_iterations", self.par_iterations, ">= 0")
        if self.affinity_balance not in ("afa", "affinitynet"):
            _fail("labels", "affinity_balance", self.affinity_balance, "'afa' or 'affinitynet'")
        if self.affinity_targets not in ("nearest", "token_positions"):
            _fail("labels", "affinity_targets", self.affinity_targets, "'nearest' or 'token_positions'")
        if self.target not in ("pseudo", "mask"):
            _fail("labels", "target", self.target, "'pseudo' or 'mask'")
        if self.token_positions not in ("encoder", "cell_centres"):
            _fail("labels", "token_positions", self.token_positions, "'encoder' or 'cell_centres'")
        if self.walk_power <= 0:
            _fail("labels", "walk_power", self.walk_power, "> 0")
        if self.walk_log_iterations < 0:
            _fail("labels", "walk_log_iterations", self.walk_log_iterations, ">= 0")

    @property
    def walk_scale(self) -> float:
        """The scale whose affinity drives the random walk."""
        return max(self.scales) if self.propagation_scale is None else self.propagation_scale


@dataclass
class AFALossWeights:
    """Weights of the loss terms: ``cls + 0.1 seg + 0.1 aff`` after the warm-up (``dist_train_voc.py``)."""

    cls: float = 1.0
    seg: float = 0.1
    aff: float = 0.1

    def __post_init__(self) -> None:
        for name in ("cls", "seg", "aff"):
            if getattr(self, name) < 0:
                _fail("loss_weights", name, getattr(self, name), ">= 0")
