"""ASDT's teacher labels and pseudo masks, batched on the training device.

ASDT (Zhang et al., "Weakly Supervised Semantic Segmentation via Alternate Self-Dual Teaching", IEEE TIP 2023)
takes the class-teacher's label ``B^ct`` and reliability mask ``R^ct`` from RRM (Zhang et al., "Reliability Does
Matter: An End-to-End Weakly Supervised Semantic Segmentation Approach", AAAI 2020; code github.com/zbf1991/RRM,
``tool/myTool.py``: ``compute_seg_label``), labels the student from the seg-teacher with a CRF of its prediction
(``B^st``), and after training takes the CRF of ``max(P^st, P^s)`` as the pseudo mask (its Eq. 1).

RRM computes these image by image with pydensecrf and NumPy on the CPU; here every function works on the whole
batch on the inputs' device with :func:`~wsss_lightning.inference.device_crf.mean_field_crf`, with no per-image
loop and no host read. One difference from RRM is by construction: RRM runs the CRF on the background and the
*present* classes only, while a batch has one channel layout for all images, so the absent classes' channels are
kept at probability 0 (the CRF's unary clips them to ``prob_clip``, ``-log 1e-5``) and are zeroed again in the
CRF's output before any argmax. They take no label, but they take a little mass in the CRF's normalisation; on
the synthetic scenes of the tests the labels agree with RRM's (pydensecrf2 on the present classes only) on
100 % of the pixels.

Shapes: B batch, C foreground classes (20 for VOC), H × W pixels; label maps use 0 for background, 1..C for the
classes and 255 for ignored pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from wsss_lightning.inference.crf import CRFParams, CRFPostProcessor
from wsss_lightning.inference.device_crf import mean_field_crf

__all__ = [
    "RRM_INFER_CRF",
    "RRM_TRAIN_CRF",
    "CRFFunction",
    "PoolCRF",
    "class_teacher_labels",
    "class_teacher_probs",
    "dual_teacher_labels",
    "dual_teacher_probs",
    "normalise_by_max",
    "pseudo_masks",
    "region_quantile_thresholds",
    "seg_teacher_labels",
]

#: RRM's training-time CRF (``tool/imutils.py``: ``crf_inference``), used for ``B^ct`` and by default ``B^st``.
RRM_TRAIN_CRF = CRFParams(
    gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10
)
#: RRM's inference CRF (``tool/imutils.py``: ``crf_inference_inf``, called by ``infer_RRM.py``), for pseudo masks.
RRM_INFER_CRF = CRFParams(
    gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=83, bilateral_srgb=5, bilateral_compat=4
)

IGNORE = 255


# ---------------------------------------------------------------------------------------------- checks
#: a dense CRF of a batch: (images (B, 3, H, W) 0..255, probs (B, C, H, W), params, sizes or None) -> marginals
CRFFunction = Callable[[Tensor, Tensor, CRFParams, Tensor | None], Tensor]


class PoolCRF:
    """pydensecrf2 in a process pool as a :data:`CRFFunction` (the reference; the CPU's faster path).

    Copies the batch to the host, runs one CRF per image in ``pool`` (cropped to ``sizes``) and returns the
    marginals on the probabilities' device; padding gets zeros.
    """

    def __init__(self, pool: CRFPostProcessor) -> None:
        self.pool = pool

    def __call__(
        self, images: Tensor, probs: Tensor, params: CRFParams, sizes: Tensor | None = None
    ) -> Tensor:
        """Marginals (B, C, H, W) of ``probs`` on ``images`` (0..255), each image cropped to its ``sizes``."""
        b, c, h, w = probs.shape
        rgb = images.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        maps = probs.float().cpu().numpy()
        extents = [(h, w)] * b if sizes is None else [(int(y), int(x)) for y, x in sizes.tolist()]
        marginals = self.pool.marginals(
            [np.ascontiguousarray(rgb[i, :y, :x]) for i, (y, x) in enumerate(extents)],
            [maps[i, :, :y, :x] for i, (y, x) in enumerate(extents)],
            params,
        )
        out = torch.zeros(b, c, h, w, dtype=torch.float32)
        for i, (y, x) in enumerate(extents):
            out[i, :, :y, :x] = torch.from_numpy(marginals[i])
        return out.to(probs.device)


def _check_images(fn: str, images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{fn}: images must be (B, 3, H, W) RGB in 0..255; got {tuple(images.shape)}")


def _check_maps(fn: str, name: str, maps: Tensor, images: Tensor, channels: str) -> None:
    b, _, h, w = images.shape
    if maps.ndim != 4 or maps.shape[0] != b or maps.shape[2:] != (h, w):
        raise ValueError(
            f"{fn}: {name} must be ({b}, {channels}, {h}, {w}) to match images {tuple(images.shape)}; "
            f"got {tuple(maps.shape)}"
        )


def _check_tags(fn: str, tags: Tensor, batch: int, classes: int) -> None:
    if tuple(tags.shape) != (batch, classes):
        raise ValueError(
            f"{fn}: tags must be (B, C) = ({batch}, {classes}) multi-hot foreground tags; got {tuple(tags.shape)}"
        )


def _with_background(tags: Tensor) -> Tensor:
    """``(B, C+1)`` bool: background (always) and the tagged classes (a tag counts when it is above 0.5)."""
    present = tags > 0.5
    return torch.cat([torch.ones_like(present[:, :1]), present], 1)


def _labels(marginals: Tensor, keep: Tensor) -> Tensor:
    """``(B, H, W)`` argmax over the kept channels only (``keep`` ``(B, C+1)`` bool); ties go to the lower index."""
    return (marginals * keep[:, :, None, None]).argmax(1)


# ---------------------------------------------------------------------------------------------- class teacher
def normalise_by_max(cams: Tensor) -> Tensor:
    """RRM's CAM normalisation ``M_c = H_c / (max H_c + 1e-5)`` per image and class (no minimum subtracted).

    Args:
        cams: ``(B, C, H, W)`` non-negative CAMs (after ReLU).

    Returns:
        ``(B, C, H, W)`` maps in ``[0, 1)``.
    """
    if cams.ndim != 4:
        raise ValueError(f"normalise_by_max: cams must be (B, C, H, W); got {tuple(cams.shape)}")
    return cams / (cams.amax((2, 3), keepdim=True) + 1e-5)


def _background(peak: Tensor, alpha: float) -> Tensor:
    """RRM's background score ``(1 - max_c M_c)^α`` from the per-pixel peak ``(B, 1, H, W)``."""
    return (1.0 - peak).pow(alpha)


def region_quantile_thresholds(
    region: Tensor, values: Tensor, num_labels: int, *, floor: float = 0.1, quantile: float = 0.6
) -> tuple[Tensor, Tensor]:
    """Per image and label, the ``quantile`` order statistic of the values above ``floor`` in the label's region.

    RRM's CAM-confidence threshold (``compute_seg_label``): for the pixels with ``region == k`` and
    ``values > floor``, sorted ascending, the value at index ``floor(quantile · n)``. All images and labels come
    from one sort of the batch: a pixel's key is its label above the bit pattern of its value (non-negative
    float32 values order as their bit patterns), so the sorted row holds each label's values as one ascending run
    whose start is the count of the labels before it.

    Args:
        region: ``(B, H, W)`` int64 label of each pixel (e.g. the CAM argmax), in ``0..num_labels-1``.
        values: ``(B, H, W)`` the value of each pixel for its own label (e.g. ``M_{region}``).
        num_labels: number of labels L.
        floor: only values strictly above it count (non-negative).
        quantile: in ``[0, 1)``.

    Returns:
        ``(B, L)`` float32 thresholds and ``(B, L)`` bool ``has``: whether the label has any such value (where
        it has none the threshold is meaningless).
    """
    if region.shape != values.shape or region.ndim != 3:
        raise ValueError(
            f"region_quantile_thresholds: region and values must both be (B, H, W); got "
            f"{tuple(region.shape)} and {tuple(values.shape)}"
        )
    if floor < 0 or not 0 <= quantile < 1:
        raise ValueError(
            f"region_quantile_thresholds: need floor >= 0 and 0 <= quantile < 1; got {floor}, {quantile}"
        )
    b = region.shape[0]
    flat = values.float().reshape(b, -1)
    qualifies = flat > floor
    group = torch.where(qualifies, region.reshape(b, -1) + 1, 0)  # 0: not counted
    bits = flat.contiguous().view(torch.int32).long()
    key = torch.where(qualifies, (group << 32) | bits, 0)
    order = key.argsort(1)
    counts = torch.zeros(b, num_labels + 1, dtype=torch.long, device=region.device)
    counts.scatter_add_(1, group, torch.ones_like(group))
    start = counts.cumsum(1) - counts
    # float64 product then floor, as the reference's int(n * 0.6)
    offset = (counts.double() * quantile).floor().long()
    position = (start + offset)[:, 1:].clamp_max(flat.shape[1] - 1)
    thresholds = flat.gather(1, order.gather(1, position))
    return thresholds, counts[:, 1:] > 0


def class_teacher_labels(
    images: Tensor,
    cams: Tensor,
    tags: Tensor,
    *,
    crf: CRFParams = RRM_TRAIN_CRF,
    crf_fn: CRFFunction = mean_field_crf,
    alphas: tuple[float, float] = (4.0, 32.0),
    cam_floor: float = 0.1,
    cam_quantile: float = 0.6,
    background_sure: float = 0.8,
    crf_sure: float = 0.8,
    roi: Tensor | None = None,
) -> Tensor:
    """The class-teacher's label ``B^ct`` with its reliability mask ``R^ct`` applied (255 where unreliable).

    RRM's ``compute_seg_label`` (``tool/myTool.py``), for the whole batch at once:

    1. ``bg_α = (1 - max_{c present} M_c)^α``, ``P_α = [bg_α; M]`` (absent classes at 0) and one dense CRF of
       both ``P_α`` (the two α stacked in one batch): ``L_la`` / ``L_ha`` = argmax of the CRF marginals ``Q``
       for the strong (``alphas[0]``) / weak (``alphas[1]``) background;
    2. label: ``L_la``, 255 where ``L_la`` is background, then 0 where ``L_ha`` is background;
    3. CAM-sure: ``A = argmax [bg_weak; M]`` (ties to the background); a class ``k ≥ 1`` that appears in ``L_la``
       is sure where ``A = k`` and ``M_k`` exceeds the ``cam_quantile`` order statistic of the ``M_k > cam_floor``
       values of its ``A``-region (no such value: no sure pixel); the background, if it appears in ``L_la``, is
       sure where ``A = 0`` and ``bg_weak > background_sure``;
    4. CRF-sure: ``max(Q^weak_bg, max_k Q^strong_k) >= crf_sure``;
    5. 255 wherever not both sure.

    An image without tags has only the background (label 0 where sure). See the module docstring for the one
    difference from RRM (absent channels are in the CRF, at probability 0).

    Args:
        images: ``(B, 3, H, W)`` RGB in 0..255 (float or uint8), the un-normalised crop.
        cams: ``(B, C, H, W)`` non-negative max-normalised CAMs ``M`` (:func:`normalise_by_max`).
        tags: ``(B, C)`` multi-hot image-level foreground tags; absent classes' CAMs are zeroed.
        crf: dense CRF parameters (RRM's training CRF).
        crf_fn: the CRF that runs it (:data:`CRFFunction`): the device CRF, or :class:`PoolCRF`.
        alphas: background exponents (strong background, weak background), RRM's (4, 32).
        cam_floor: CAM values at or below it do not enter a class's threshold.
        cam_quantile: order statistic of the class threshold (RRM: index ``int(0.6 n)``).
        background_sure: background CAM-sure threshold on ``bg_weak``.
        crf_sure: CRF-confidence threshold.
        roi: optional ``(B, H, W)`` bool valid-pixel mask (the crop without its padding); pixels outside are set
            to 255. ``None`` (RRM): the padded border is labelled like any pixel.

    Returns:
        ``(B, H, W)`` int64 labels in ``0..C`` and 255.
    """
    fn = "class_teacher_labels"
    _check_images(fn, images)
    _check_maps(fn, "cams", cams, images, "C")
    b, c, h, w = cams.shape
    _check_tags(fn, tags, b, c)
    if len(alphas) != 2:
        raise ValueError(f"{fn}: alphas must be (strong background, weak background); got {alphas}")
    if roi is not None and tuple(roi.shape) != (b, h, w):
        raise ValueError(f"{fn}: roi must be ({b}, {h}, {w}) bool; got {tuple(roi.shape)}")
    keep = _with_background(tags)
    m = cams.float() * keep[:, 1:, None, None]
    peak = m.amax(1, keepdim=True)
    scores = torch.cat([torch.cat([_background(peak, alpha), m], 1) for alpha in alphas])
    q = crf_fn(images.float().repeat(2, 1, 1, 1), scores, crf, None)
    q = q * keep.repeat(2, 1)[:, :, None, None]
    q_strong, q_weak = q[:b], q[b:]
    strong, weak = q_strong.argmax(1), q_weak.argmax(1)
    labels = torch.where(strong == 0, IGNORE, strong)
    labels = torch.where(weak == 0, 0, labels)

    # CAM confidence, for the labels that appear in L_la only
    bg_weak = scores[b:, :1]
    cam_argmax = scores[b:].argmax(1)  # A = argmax [bg_weak; M], ties to the background
    own = torch.where(cam_argmax > 0, m.gather(1, (cam_argmax - 1).clamp_min(0)[:, None])[:, 0], 0.0)
    in_strong = torch.zeros(b, c + 1, device=cams.device).scatter_(1, strong.reshape(b, -1), 1.0) > 0
    # the background's own value is 0 here, so it never enters a threshold
    thresholds, has = region_quantile_thresholds(
        cam_argmax, own, c + 1, floor=cam_floor, quantile=cam_quantile
    )
    at = cam_argmax.reshape(b, -1)
    fg_sure = (own.reshape(b, -1) > thresholds.gather(1, at)) & has.gather(1, at)
    bg_sure = (bg_weak[:, 0] > background_sure).reshape(b, -1)
    cam_sure = torch.where(at == 0, bg_sure, fg_sure) & in_strong.gather(1, at)

    # CRF confidence
    confidence = torch.maximum(q_weak[:, 0], q_strong[:, 1:].amax(1))
    sure = cam_sure.reshape(b, h, w) & (confidence >= crf_sure)
    if roi is not None:
        sure = sure & roi.bool()
    return torch.where(sure, labels, IGNORE)


# ---------------------------------------------------------------------------------------------- seg teacher
def seg_teacher_labels(
    images: Tensor,
    probs: Tensor,
    tags: Tensor,
    *,
    crf: CRFParams = RRM_TRAIN_CRF,
    absent: Literal["zero", "ignore"] = "zero",
    crf_fn: CRFFunction = mean_field_crf,
) -> Tensor:
    """The seg-teacher's hard label ``B^st`` for the student (ASDT Eq. 6): CRF of ``P^st``, argmax.

    ASDT does not say what happens to absent classes. Its Eq. 6 sums over the present classes only, so a pixel
    whose CRF label is an absent class adds nothing (``absent="ignore"``: 255 there); the default zeroes the
    absent classes of ``P^st`` before the CRF so that every pixel takes a present label (``absent="zero"``).

    Args:
        images: ``(B, 3, H, W)`` RGB in 0..255.
        probs: ``(B, C+1, H, W)`` the seg-teacher's softmax (background first), detached.
        tags: ``(B, C)`` multi-hot foreground tags.
        crf: dense CRF parameters (ASDT gives none; RRM's training CRF by default).
        crf_fn: the CRF that runs it (:data:`CRFFunction`): the device CRF, or :class:`PoolCRF`.
        absent: ``"zero"`` or ``"ignore"``, see above.

    Returns:
        ``(B, H, W)`` int64 labels in ``0..C`` (and 255 with ``absent="ignore"``).
    """
    fn = "seg_teacher_labels"
    _check_images(fn, images)
    _check_maps(fn, "probs", probs, images, "C+1")
    _check_tags(fn, tags, probs.shape[0], probs.shape[1] - 1)
    keep = _with_background(tags)
    if absent == "zero":
        marginals = crf_fn(images, probs * keep[:, :, None, None], crf, None)
        return _labels(marginals, keep)
    if absent == "ignore":
        labels = crf_fn(images, probs, crf, None).argmax(1)
        is_present = keep.gather(1, labels.reshape(labels.shape[0], -1)).reshape(labels.shape)
        return torch.where(is_present, labels, IGNORE)
    raise ValueError(f"{fn}: absent must be 'zero' or 'ignore'; got {absent!r}")


def pseudo_masks(
    images: Tensor,
    probs_st: Tensor,
    probs_s: Tensor,
    tags: Tensor,
    *,
    crf: CRFParams = RRM_INFER_CRF,
    suppress_absent: bool = True,
    sizes: Tensor | None = None,
    crf_fn: CRFFunction = mean_field_crf,
) -> Tensor:
    """ASDT's pseudo segmentation masks (Eq. 1): CRF of ``P̄ = max(P^st, P^s)`` (not renormalised), argmax.

    The paper leaves the CRF and the class handling open; the defaults are RRM's inference CRF
    (``infer_RRM.py``) and the image tags' suppression of absent classes (RRM's inference has no tags).

    Args:
        images: ``(B, 3, H, W)`` RGB in 0..255.
        probs_st: ``(B, C+1, H, W)`` the seg-teacher's softmax at image size.
        probs_s: ``(B, C+1, H, W)`` the student's softmax at image size.
        tags: ``(B, C)`` multi-hot foreground tags (used with ``suppress_absent``).
        crf: dense CRF parameters.
        crf_fn: the CRF that runs it (:data:`CRFFunction`): the device CRF, or :class:`PoolCRF`.
        suppress_absent: zero the absent classes of ``P̄`` so that no pixel takes one.
        sizes: ``(B, 2)`` valid (height, width) of each image of a padded batch (top-left); padding gets 255.

    Returns:
        ``(B, H, W)`` int64 labels in ``0..C`` (255 in the padding).
    """
    fn = "pseudo_masks"
    _check_images(fn, images)
    _check_maps(fn, "probs_st", probs_st, images, "C+1")
    _check_maps(fn, "probs_s", probs_s, images, "C+1")
    if probs_s.shape != probs_st.shape:
        raise ValueError(
            f"{fn}: probs_s must match probs_st {tuple(probs_st.shape)}; got {tuple(probs_s.shape)}"
        )
    b, k, h, w = probs_st.shape
    _check_tags(fn, tags, b, k - 1)
    keep = (
        _with_background(tags) if suppress_absent else torch.ones(b, k, dtype=torch.bool, device=tags.device)
    )
    fused = torch.maximum(probs_st, probs_s) * keep[:, :, None, None]
    labels = _labels(crf_fn(images, fused, crf, sizes), keep)
    if sizes is None:
        return labels
    sizes = sizes.to(labels.device)
    rows = torch.arange(h, device=labels.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(w, device=labels.device)[None, None, :] < sizes[:, 1, None, None]
    return torch.where(rows & cols, labels, IGNORE)


# ---------------------------------------------------------------------------------------------- naive fusion
def class_teacher_probs(cams: Tensor, tags: Tensor, *, alpha: float = 32.0) -> Tensor:
    """The class-teacher's score map ``P^ct = [bg_α; M]`` renormalised to sum 1 per pixel, absent classes at 0.

    ASDT's Table 4 fuses a ``P^ct`` it does not define with ``P^st``; this is the map the class-teacher's label
    starts from (RRM's ``[bg_32; M]`` of the CAM argmax), made a distribution so that it mixes with a softmax.

    Args:
        cams: ``(B, C, H, W)`` max-normalised CAMs.
        tags: ``(B, C)`` multi-hot foreground tags.
        alpha: background exponent (the weak background, 32).

    Returns:
        ``(B, C+1, H, W)`` float32 probabilities.
    """
    if cams.ndim != 4:
        raise ValueError(f"class_teacher_probs: cams must be (B, C, H, W); got {tuple(cams.shape)}")
    _check_tags("class_teacher_probs", tags, cams.shape[0], cams.shape[1])
    m = cams.float() * _with_background(tags)[:, 1:, None, None]
    scores = torch.cat([_background(m.amax(1, keepdim=True), alpha), m], 1)
    return scores / scores.sum(1, keepdim=True).clamp_min(1e-12)


def dual_teacher_probs(bg_cams_probs: Tensor, probs_st: Tensor, mode: Literal["max", "mean"]) -> Tensor:
    """The naive dual-teacher map of ASDT's Table 4: element-wise ``max`` (row III) or ``mean`` (row IV).

    Args:
        bg_cams_probs: ``(B, C+1, H, W)`` the class-teacher's ``P^ct`` (:func:`class_teacher_probs`).
        probs_st: ``(B, C+1, H, W)`` the seg-teacher's softmax.
        mode: ``"max"`` or ``"mean"``.

    Returns:
        ``(B, C+1, H, W)`` fused map (not renormalised after ``max``).
    """
    if bg_cams_probs.shape != probs_st.shape or probs_st.ndim != 4:
        raise ValueError(
            f"dual_teacher_probs: bg_cams_probs and probs_st must both be (B, C+1, H, W); got "
            f"{tuple(bg_cams_probs.shape)} and {tuple(probs_st.shape)}"
        )
    if mode == "max":
        return torch.maximum(bg_cams_probs, probs_st)
    if mode == "mean":
        return (bg_cams_probs + probs_st) / 2
    raise ValueError(f"dual_teacher_probs: mode must be 'max' or 'mean'; got {mode!r}")


def dual_teacher_labels(
    images: Tensor,
    cams: Tensor,
    tags: Tensor,
    probs_st: Tensor,
    mode: Literal["max", "mean"],
    *,
    crf: CRFParams = RRM_TRAIN_CRF,
    alpha: float = 32.0,
    crf_fn: CRFFunction = mean_field_crf,
) -> Tensor:
    """The student's label of ASDT's naive dual teacher (Table 4, rows III/IV): CRF of the fused map, argmax.

    Absent classes are zeroed in the fused map (as in :func:`seg_teacher_labels`' default), so every pixel
    takes the background or a tagged class.

    Args:
        images: ``(B, 3, H, W)`` RGB in 0..255.
        cams: ``(B, C, H, W)`` max-normalised CAMs.
        tags: ``(B, C)`` multi-hot foreground tags.
        probs_st: ``(B, C+1, H, W)`` the seg-teacher's softmax, detached.
        mode: ``"max"`` or ``"mean"`` fusion.
        crf: dense CRF parameters.
        crf_fn: the CRF that runs it (:data:`CRFFunction`): the device CRF, or :class:`PoolCRF`.
        alpha: background exponent of ``P^ct``.

    Returns:
        ``(B, H, W)`` int64 labels in ``0..C``.
    """
    fn = "dual_teacher_labels"
    _check_images(fn, images)
    _check_maps(fn, "cams", cams, images, "C")
    _check_maps(fn, "probs_st", probs_st, images, "C+1")
    _check_tags(fn, tags, cams.shape[0], cams.shape[1])
    if probs_st.shape[1] != cams.shape[1] + 1:
        raise ValueError(
            f"{fn}: probs_st must have C+1 = {cams.shape[1] + 1} channels (background first); got {probs_st.shape[1]}"
        )
    keep = _with_background(tags)
    fused = dual_teacher_probs(class_teacher_probs(cams, tags, alpha=alpha), probs_st.float(), mode)
    return _labels(crf_fn(images, fused * keep[:, :, None, None], crf, None), keep)
