"""Class activation maps to pseudo-labels: multi-scale CAMs, thresholds, PAR-refined labels (DuPL).

DuPL (paper Sec. 3.1 and 3.3; ``utils/cam_helper.py`` of ``Wu0409/DuPL``) turns each sub-net's CAMs into two
kinds of supervision:

* token-level labels for the patch-token contrast loss: thresholded CAMs (``threshold_labels``) turned into
  pairwise same/different-label targets (``affinity_labels``);
* full-resolution segmentation pseudo-labels refined with pixel-adaptive refinement (``par_pseudo_labels``).

Everything is batched over images and free of host synchronisation. Each image uses only its present classes
(at most a few of C), so the maps can be restricted to them early: ``present_classes`` lists them, read from
the tags on the host before the batch moves to the device, and every function here takes that ``classes``
tensor to work on ``(B, K, H, W)`` maps of the present classes instead of all ``C``. Every operation is per
channel, so the labels are the same either way; without ``classes``, ``par_pseudo_labels`` reads the number
of present classes from the tags (a host synchronisation when they are on an accelerator).

Label convention: 0 = background, ``1..C`` = foreground classes, 255 = ignore. ``tags`` are ``(B, C)``
multi-hot image-level labels over the foreground classes only; a class counts as present when its tag is
``> 0``. ``classes`` are ``(B, K)`` int64 class indices into those C (see ``present_classes``), -1 for
padding; maps that come with ``classes`` hold channel ``j`` of image ``b`` for class ``classes[b, j]``.
``valid_box`` is int64 ``(B, 4)`` = ``(top, left, bottom, right)`` with bottom/right exclusive, in
crop-pixel coordinates: the part of the training crop that shows real image content.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.models.resize import padded_forward, resize
from wsss_lightning.models.token_grid import TokenGrid, tokens_to_pixels
from wsss_lightning.ops import channel_argmax, channel_max
from wsss_lightning.pseudo_labels.affinity import radius_mask

__all__ = [
    "affinity_labels",
    "cam_labels_eval",
    "image_thresholds",
    "multiscale_cams",
    "normalize_cams",
    "par_pseudo_labels",
    "present_classes",
    "threshold_labels",
]

IGNORE_INDEX = 255

# the maps ``cam_fn`` returns, e.g. ``tuple[Tensor, Tensor]`` for DuPL's (cam, aux_cam)
MapsT = TypeVar("MapsT", bound=tuple[Tensor, ...])


def normalize_cams(cams: Tensor) -> Tensor:
    """Min-max normalise every (image, class) map to ``[0, 1)``.

    ``x <- x - min(x)``, then ``x <- x / (max(x) + 1e-5)`` with the max taken after the shift (DuPL
    ``cam_helper.py``); the ``1e-5`` keeps all-constant maps (absent classes) at 0 instead of dividing by
    zero.

    Args:
        cams: ``(B, C, H, W)`` maps.

    Returns:
        ``(B, C, H, W)`` maps in ``[0, 1)``.
    """
    if cams.ndim != 4:
        raise ValueError(f"normalize_cams: cams must be (B, C, H, W), got shape {tuple(cams.shape)}")
    cams = cams - cams.amin(dim=(-2, -1), keepdim=True)
    return cams / (cams.amax(dim=(-2, -1), keepdim=True) + 1e-5)


def present_classes(tags: Tensor) -> Tensor:
    """Each image's present classes, ascending, padded with -1 to the batch's largest count.

    Reads the tags on the host to size the result: call it on the batch before it moves to the device
    (``on_before_batch_transfer``), where it costs no synchronisation.

    Args:
        tags: ``(B, C)`` multi-hot image-level labels; a class is present where its tag is ``> 0``.

    Returns:
        ``(B, K)`` int64, ``K = max(1, largest number of present classes)``; row ``b`` lists the indices of
        image ``b``'s present classes in ascending order, then -1.
    """
    if tags.ndim != 2:
        raise ValueError(f"present_classes: tags must be (B, C), got shape {tuple(tags.shape)}")
    b, c = tags.shape
    present = tags > 0
    counts = present.sum(dim=1)
    k = max(1, int(counts.max())) if b > 0 else 1
    class_ids = torch.arange(c, device=tags.device)
    # sort keys put absent classes after all present ones, each group in ascending order
    order = torch.argsort(torch.where(present, class_ids, class_ids + c), dim=1)
    order = torch.cat([order, order.new_full((b, k), -1)], dim=1)[:, :k]
    real = torch.arange(k, device=tags.device)[None, :] < counts[:, None]
    return torch.where(real, order, -1)


def _check_classes(name: str, classes: Tensor, batch: int, channels: int | None = None) -> None:
    if (
        classes.ndim != 2
        or classes.shape[0] != batch
        or (channels is not None and classes.shape[1] != channels)
    ):
        expected = f"({batch}, {'K' if channels is None else channels})"
        raise ValueError(
            f"{name}: classes must be {expected} class indices, got shape {tuple(classes.shape)}"
        )


def _gather_channels(maps: Tensor, classes: Tensor) -> Tensor:
    """``(N, K, h, w)`` channels ``classes`` (``(N, K)``, -1 = padding, which gets channel 0) of ``maps``."""
    index = classes.clamp(min=0)[:, :, None, None].expand(-1, -1, *maps.shape[-2:])
    return torch.gather(maps, 1, index)


@torch.no_grad()
def multiscale_cams(
    cam_fn: Callable[[Tensor], MapsT],
    images: Tensor,
    scales: Sequence[float] = (1.0, 0.5, 1.5),
    pad_to: int = 1,
    classes: Tensor | None = None,
    unflipped: MapsT | None = None,
    tokens: TokenGrid | None = None,
) -> MapsT:
    """Multi-scale, flip-augmented, normalised CAMs of every map a network returns (DuPL ``cam_helper.py``).

    ``cam_fn`` returns a tuple of one or more maps (DuPL: ``(cam, aux_cam)``; AFA: ``(cam,)``); each gets
    the same treatment, and the result is a tuple of the same length.

    For each scale ``s`` the images are resized bilinearly to ``(int(s*H), int(s*W))`` (no resize when that
    is ``(H, W)``) and stacked with their horizontal flips, so ``cam_fn`` runs once per scale on ``2B``
    images. Every map is resized bilinearly to ``(H, W)``; the flipped half is flipped back and merged with
    the original by an element-wise max, then ReLU. The per-scale maps are summed and each (image, class)
    map is min-max normalised (``normalize_cams``). Runs under ``torch.no_grad``: CAMs only make labels.

    ``pad_to`` handles backbones that need sizes divisible by their patch size: the resized (and flipped)
    images are zero-padded at the right/bottom to the next multiple of ``pad_to``; each map is then resized
    to the padded pixel grid, cropped to the unpadded part and resized to ``(H, W)``. With ``pad_to=1`` (or
    when the resized size is already a multiple) this is exactly the plain path above.

    ``classes`` restricts the work after the network passes to each image's present classes: their channels
    are gathered from the token-resolution maps before anything is resized, so resizing, flip-merging,
    summing and normalising touch ``K`` instead of ``C`` channels (the same values: every step is per
    channel). Padding channels (class -1) are 0.

    ``unflipped`` reuses the raw maps of the un-flipped images at scale 1.0 that the caller already has
    (DuPL's training forward computes them on the same images): only the flipped half of that scale then goes
    through ``cam_fn``. They must come from a pass identical to ``cam_fn`` (no dropout / stochastic depth).

    Args:
        cam_fn: maps ``(N, 3, h', w')`` images to a tuple of raw maps (e.g. ``(cam, aux_cam)``), each
            ``(N, C, h, w)`` at token resolution (no ReLU).
        images: ``(B, 3, H, W)`` normalised images.
        scales: resize factors; DuPL uses ``(1.0, 0.5, 1.5)``.
        pad_to: pad every resized image to a multiple of this many pixels (1 = no padding).
        classes: ``(B, K)`` present classes (``present_classes``), or None for all C channels.
        unflipped: the raw maps ``cam_fn`` returns for ``images`` at scale 1.0, each ``(B, C, h, w)``; needs a
            scale of 1.0 and ``H``, ``W`` multiples of ``pad_to``.
        tokens: where ``cam_fn``'s tokens sit on its input (``wsss_lightning.models.token_grid``); the maps
            are then resampled by those positions instead of resized as cell centres (None, the reference
            codes' resize), and padded inputs go to ``cam_fn`` as they are (the padding is at the bottom /
            right, so no token moves).

    Returns:
        One map per map of ``cam_fn`` (e.g. ``(cams, aux_cams)``), each ``(B, C, H, W)`` in ``[0, 1)``;
        ``(B, K, H, W)`` with ``classes``.
    """
    if images.ndim != 4:
        raise ValueError(f"multiscale_cams: images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if len(scales) == 0 or any(s <= 0 for s in scales):
        raise ValueError(
            f"multiscale_cams: scales must be a non-empty sequence of positive floats, got {scales}"
        )
    if pad_to < 1:
        raise ValueError(f"multiscale_cams: pad_to must be >= 1, got {pad_to}")
    b, _, h, w = images.shape
    if classes is not None:
        _check_classes("multiscale_cams", classes, b)
        both = torch.cat([classes, classes])  # the images and their flips
    reuse = unflipped is not None
    if reuse and (1.0 not in scales or h % pad_to or w % pad_to):
        raise ValueError(
            f"multiscale_cams: unflipped maps need a scale of 1.0 and images whose size is a multiple of "
            f"pad_to = {pad_to}; got scales {tuple(scales)} and {h}x{w} images"
        )

    def run(x: Tensor) -> Any:
        if tokens is None:
            return padded_forward(cam_fn, x, pad_to)
        return cam_fn(F.pad(x, (0, -x.shape[-1] % pad_to, 0, -x.shape[-2] % pad_to)))

    totals: list[Tensor] = []
    for scale in scales:
        size = (int(scale * h), int(scale * w))
        if min(size) < 1:
            raise ValueError(f"multiscale_cams: scale {scale} makes the {h}x{w} images empty")
        x = resize(images, size)
        if reuse and scale == 1.0:
            assert unflipped is not None
            flipped = run(x.flip(-1))
            if isinstance(flipped, tuple) and len(flipped) != len(unflipped):
                raise ValueError(
                    f"multiscale_cams: unflipped must hold one map per map of cam_fn ({len(flipped)}), "
                    f"got {len(unflipped)}"
                )
            outputs = flipped
            if isinstance(flipped, tuple):
                outputs = tuple(
                    torch.cat([given, raw]) for given, raw in zip(unflipped, flipped, strict=True)
                )
            reuse = False  # a repeated scale 1.0 runs the network as usual
        else:
            outputs = run(torch.cat([x, x.flip(-1)], dim=0))
        if not isinstance(outputs, tuple) or not outputs or (totals and len(outputs) != len(totals)):
            expected = "one or more" if not totals else f"{len(totals)}"
            raise ValueError(
                f"multiscale_cams: cam_fn must return a tuple of {expected} maps at every scale (a single map "
                f"as a 1-tuple), got "
                + (f"{len(outputs)} maps" if isinstance(outputs, tuple) else f"a {type(outputs).__name__}")
            )
        first = not totals
        for i, raw in enumerate(outputs):
            if raw.ndim != 4 or raw.shape[0] != 2 * b:
                raise ValueError(
                    f"multiscale_cams: cam_fn must return (2B, C, h, w) maps for 2B = {2 * b} images, "
                    f"got shape {tuple(raw.shape)}"
                )
            if classes is not None:
                raw = _gather_channels(raw, both)
            raw = tokens_to_pixels(raw, (h, w), size, tokens)
            merged = torch.relu(torch.maximum(raw[:b], raw[b:].flip(-1)))
            if first:
                totals.append(merged)
            else:
                totals[i] = totals[i] + merged
    results = [normalize_cams(total) for total in totals]
    if classes is not None:  # padding channels hold class 0's maps: zero them, as absent classes
        real = (classes >= 0)[:, :, None, None].to(results[0].dtype)
        results = [r * real for r in results]
    return cast(MapsT, tuple(results))


def image_thresholds(class_thresholds: Tensor, tags: Tensor) -> Tensor:
    """Per-image foreground threshold: the largest class threshold among the image's present classes.

    DuPL's code (``train_final_voc.py``) keeps per-class ``delta_h`` values and uses, for each image, the max
    over the classes it contains, so an image with one "hard" class keeps that class's (higher) threshold. An
    image without any tag gets the max over all classes.

    Args:
        class_thresholds: ``(C,)`` per-class thresholds.
        tags: ``(B, C)`` multi-hot image-level labels.

    Returns:
        ``(B,)`` thresholds, in the dtype of ``class_thresholds``.
    """
    if class_thresholds.ndim != 1 or tags.ndim != 2 or tags.shape[1] != class_thresholds.shape[0]:
        raise ValueError(
            f"image_thresholds: class_thresholds must be (C,) and tags (B, C); "
            f"got {tuple(class_thresholds.shape)} and {tuple(tags.shape)}"
        )
    present = tags > 0
    masked = torch.where(present, class_thresholds, torch.full_like(class_thresholds, -math.inf))
    return torch.where(present.any(dim=1), masked.amax(dim=1), class_thresholds.amax())


def _check_cams_tags(name: str, cams: Tensor, tags: Tensor | None) -> None:
    if cams.ndim != 4:
        raise ValueError(f"{name}: cams must be (B, C, H, W), got shape {tuple(cams.shape)}")
    if tags is not None and tuple(tags.shape) != tuple(cams.shape[:2]):
        raise ValueError(
            f"{name}: tags must be (B, C) = {tuple(cams.shape[:2])} to match cams, got {tuple(tags.shape)}"
        )


def _top_class(name: str, cams: Tensor, tags: Tensor | None, classes: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per pixel, the largest map among the present classes and its class index (into the C classes).

    Ties go to the lower class index, in both layouts (``classes`` lists each image's classes ascending).
    """
    if classes is None:
        _check_cams_tags(name, cams, tags)
        if tags is not None:
            cams = cams * tags[:, :, None, None].to(cams.dtype)
        return channel_max(cams)
    _check_cams_tags(name, cams, None)
    _check_classes(name, classes, cams.shape[0], cams.shape[1])
    value, channel = channel_max(cams * (classes >= 0)[:, :, None, None].to(cams.dtype))
    index = torch.gather(classes.clamp(min=0), 1, channel.flatten(1)).view_as(channel)
    return value, index


def _per_image(name: str, value: Tensor | float, batch: int) -> Tensor | float:
    """A float, or a ``(B,)`` tensor viewed as ``(B, 1, 1)`` to broadcast against ``(B, H, W)`` maps."""
    if not isinstance(value, Tensor):
        return float(value)
    if value.ndim == 0:
        return value
    if value.shape != (batch,):
        raise ValueError(f"{name}: expected a float or a (B,) = ({batch},) tensor, got {tuple(value.shape)}")
    return value.view(batch, 1, 1)


def box_mask(
    name: str,
    valid_box: Tensor,
    size: tuple[int, int],
    box_scale: float | tuple[float, float] | None = None,
) -> Tensor:
    """``(B, H, W)`` bool mask of the pixels inside each image's box, by comparing index grids.

    Args:
        name: caller named in error messages.
        valid_box: int64 (B, 4) = (top, left, bottom, right), bottom / right exclusive (the batches' ``valid_box``).
        size: (H, W) of the mask.
        box_scale: scale the box by this factor (per axis) first, rounding outwards; None keeps it.
    """
    if valid_box.ndim != 2 or valid_box.shape[1] != 4:
        raise ValueError(
            f"{name}: valid_box must be (B, 4) = (top, left, bottom, right), got {tuple(valid_box.shape)}"
        )
    box = valid_box.long()
    if box_scale is not None:
        sy, sx = (box_scale, box_scale) if isinstance(box_scale, (int, float)) else box_scale
        if sy <= 0 or sx <= 0:
            raise ValueError(f"{name}: box_scale must be positive, got {box_scale}")
        # Outward rounding: a map cell that overlaps real content at all stays valid (floor for the
        # inclusive top/left, ceil for the exclusive bottom/right). The 1e-6 absorbs float error when the
        # exact product is an integer (e.g. 448 * 28/448).
        # Python scalars, not a tensor of them: no host-to-device copy
        scaled = box.double()
        top, left, bottom, right = (scaled[:, i] * f for i, f in enumerate((sy, sx, sy, sx)))
        box = torch.stack(
            [
                torch.floor(top + 1e-6),
                torch.floor(left + 1e-6),
                torch.ceil(bottom - 1e-6),
                torch.ceil(right - 1e-6),
            ],
            dim=1,
        ).long()
    rows = torch.arange(size[0], device=box.device).view(1, -1, 1)
    cols = torch.arange(size[1], device=box.device).view(1, 1, -1)
    top, left, bottom, right = (box[:, i].view(-1, 1, 1) for i in range(4))
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def threshold_labels(
    cams: Tensor,
    tags: Tensor | None,
    high: Tensor | float,
    low: float = 0.25,
    valid_box: Tensor | None = None,
    box_scale: float | tuple[float, float] | None = None,
    classes: Tensor | None = None,
) -> Tensor:
    """Labels with an uncertain band from normalised CAMs (DuPL ``cam_helper.py``; PTC targets).

    With ``v`` the max over present classes and ``c`` its class: ``v > high`` -> ``c``;
    ``low < v <= high`` -> 255; ``v <= low`` -> background 0. Pixels outside ``valid_box`` -> 255.

    The box is in crop-pixel coordinates. ``box_scale = map_size / crop_size`` (e.g. ``28 / 448``) maps it
    onto the CAM grid, rounding outwards (top/left floored, bottom/right ceiled) so any map cell touching
    real content stays valid. ``box_scale=None`` applies the box unchanged, i.e. assumes it is already in
    map coordinates; passing a 448-pixel box for a 28x28 map that way reproduces the released DuPL/ToCo
    behaviour (DuPL ``cam_helper.py``, ToCo ``utils/camutils.py``), where a box starting at row or column
    >= 28 ignores the whole map.

    Args:
        cams: ``(B, C, H, W)`` normalised CAMs, or ``(B, K, H, W)`` maps of ``classes``.
        tags: ``(B, C)`` multi-hot image-level labels; absent classes are zeroed. Not used with ``classes``.
        high: foreground threshold ``delta_h``, a float or a ``(B,)`` tensor (per image).
        low: background threshold ``delta_l``.
        valid_box: optional int64 ``(B, 4)`` boxes ``(top, left, bottom, right)``.
        box_scale: factor from box to map coordinates (a float, or ``(rows, cols)``), or None.
        classes: ``(B, K)`` class of each channel of ``cams`` (``present_classes``), or None.

    Returns:
        ``(B, H, W)`` int64 labels in ``{0, 1..C, 255}``.
    """
    value, index = _top_class("threshold_labels", cams, tags, classes)
    b = cams.shape[0]
    high = _per_image("threshold_labels: high", high, b)
    labels = torch.where(value > high, index + 1, torch.where(value > low, IGNORE_INDEX, 0))
    if valid_box is not None:
        if valid_box.shape[0] != b:
            raise ValueError(f"threshold_labels: valid_box must have B = {b} rows, got {valid_box.shape[0]}")
        inside = box_mask("threshold_labels", valid_box, (cams.shape[-2], cams.shape[-1]), box_scale)
        labels = torch.where(inside, labels, IGNORE_INDEX)
    return labels.long()


def cam_labels_eval(
    cams: Tensor, tags: Tensor | None, bg_threshold: float = 0.5, classes: Tensor | None = None
) -> Tensor:
    """Validation labels from normalised CAMs: argmax class, background where the max is ``<= bg_threshold``.

    Args:
        cams: ``(B, C, H, W)`` normalised CAMs, or ``(B, K, H, W)`` maps of ``classes``.
        tags: ``(B, C)`` multi-hot image-level labels (absent classes zeroed), or None to use all classes;
            not used with ``classes``.
        bg_threshold: background score (0.5 VOC, 0.45 COCO in DuPL).
        classes: ``(B, K)`` class of each channel of ``cams`` (``present_classes``), or None.

    Returns:
        ``(B, H, W)`` int64 labels in ``{0, 1..C}``.
    """
    value, index = _top_class("cam_labels_eval", cams, tags, classes)
    return torch.where(value > bg_threshold, index + 1, 0).long()


def affinity_labels(
    token_labels: Tensor,
    ignore_index: int = IGNORE_INDEX,
    *,
    radius: int | None = None,
    diagonal: Literal["ignore", "positive"] = "ignore",
) -> Tensor:
    """Pairwise same / different-label targets of the tokens of a grid.

    The defaults give the targets of ToCo's patch-token contrast (DuPL ``cam_helper.py``): every pair
    counts, the diagonal is ignored. AFA's affinity targets (``cams_to_affinity_label`` with the mask of
    ``get_mask_by_radius``) are ``radius=8, diagonal="positive"``: only pairs within the window count, and a
    token is its own positive pair.

    Args:
        token_labels: ``(B, h, w)`` labels on the token grid.
        ignore_index: label of ignored tokens.
        radius: keep only pairs with ``|dy| <= radius`` and ``|dx| <= radius`` (``radius_mask``); the others
            get ``ignore_index``. None keeps all pairs.
        diagonal: ``"ignore"``: each token's pair with itself gets ``ignore_index``; ``"positive"``: 1 (unless
            the token is ignored).

    Returns:
        ``(B, N, N)`` int64 with ``N = h*w``: 1 where both tokens share a label, 0 where they differ,
        ``ignore_index`` where either token is ignored, outside the radius and (by default) on the diagonal.
    """
    if token_labels.ndim != 3:
        raise ValueError(f"affinity_labels: token_labels must be (B, h, w), got {tuple(token_labels.shape)}")
    if diagonal not in ("ignore", "positive"):
        raise ValueError(f"affinity_labels: diagonal must be 'ignore' or 'positive', got {diagonal!r}")
    if radius is not None and radius < 1:
        raise ValueError(f"affinity_labels: radius must be >= 1 or None, got {radius}")
    flat = token_labels.flatten(1)
    n = flat.shape[1]
    same = (flat[:, :, None] == flat[:, None, :]).long()
    ignored = flat == ignore_index
    drop = ignored[:, :, None] | ignored[:, None, :]
    if diagonal == "ignore":
        drop = drop | torch.eye(n, dtype=torch.bool, device=flat.device)
    if radius is not None:
        h, w = token_labels.shape[1:]
        drop = drop | ~radius_mask(h, w, radius, device=flat.device)
    return same.masked_fill(drop, ignore_index)


def par_pseudo_labels(
    par: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    cams: Tensor | Sequence[Tensor],
    tags: Tensor | None,
    high: Tensor | float,
    low: float = 0.25,
    valid_box: Tensor | None = None,
    downscale: int = 2,
    classes: Tensor | None = None,
    *,
    propagate: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor] | None] | None = None,
) -> Any:
    """PAR-refined segmentation pseudo-labels with a two-threshold background (DuPL ``cam_helper.py``).

    Images and CAMs are downsampled by ``downscale`` (bilinear). For each image, a constant background
    plane (``high``, resp. ``low``) is stacked with the CAMs of its present classes, turned into
    probabilities by a softmax over channels, refined by ``par`` at the reduced size, upsampled (bilinear) to
    ``(H, W)`` and arg-maxed -> ``L_h`` and ``L_l``. Final label: ``L_h``, except 255 where ``L_h`` is
    background, 0 where both ``L_h`` and ``L_l`` are background, and 255 outside ``valid_box``.

    Batched without a loop over images: each image's present classes are gathered into ``K`` channels,
    ``K`` = the largest number of present classes in the batch; padding channels are set to ``-inf``
    before the softmax, so they get probability 0 and cannot win the argmax. With ``classes`` the maps come
    gathered already and nothing is read on the host; without, ``K`` is read from ``tags`` (tensor shapes
    must be known on the host: a synchronisation when the tags are on an accelerator). ``propagate`` replaces
    the softmax of each stack (e.g. AFA's random walk on learned affinities, ``propagate_stack``), of every
    CAM tensor or, given as a sequence, of each one (None entries keep the softmax: AFA's refined and
    propagated labels of the same CAMs in one call). Every stack of every CAM tensor goes through ``par`` in a
    single call (``2 (1 + K)`` channels per CAM tensor), so the image-dependent kernel
    is built once, also when several networks' CAMs of the same images are labelled (DuPL's two sub-nets;
    PAR refines every channel independently). Runs without gradients.

    Args:
        par: pixel-adaptive refinement, called as ``par(image (B, 3, h, w), masks (B, M, h, w))`` and
            returning ``(B, M, h, w)`` (e.g. ``wsss_lightning.models.par.PAR``).
        images: ``(B, 3, H, W)`` images in ``[0, 1]`` (denormalised).
        cams: ``(B, C, H, W)`` normalised CAMs, or a sequence of them for the same images; ``(B, K, H, W)``
            maps of ``classes`` when given.
        tags: ``(B, C)`` multi-hot image-level labels; not used with ``classes`` (None allowed).
        high: background score of the high stack ``delta_h``, a float or a ``(B,)`` tensor.
        low: background score of the low stack ``delta_l``.
        valid_box: optional int64 ``(B, 4)`` boxes ``(top, left, bottom, right)`` in ``(H, W)`` pixels.
        downscale: integer factor by which PAR's resolution is reduced (``H // downscale``).
        classes: ``(B, K)`` class of each channel of the maps (``present_classes``), or None.
        propagate: turns each stack's logits ``(B, 1 + K, h, w)`` at PAR's reduced size (padding channels
            ``-inf``) into probabilities of the same shape, instead of ``softmax(dim=1)``; None = softmax; a
            sequence gives one such function (or None) per CAM tensor.

    Returns:
        ``(B, H, W)`` int64 labels in ``{0, 1..C, 255}``; a list of them when ``cams`` is a sequence.
    """
    maps = [cams] if isinstance(cams, Tensor) else list(cams)
    if not maps:
        raise ValueError("par_pseudo_labels: cams must be a tensor or a non-empty sequence of tensors")
    for m in maps:
        _check_cams_tags("par_pseudo_labels", m, None if classes is not None else tags)
        if m.shape != maps[0].shape:
            raise ValueError(
                f"par_pseudo_labels: all cams must have one shape, got {[tuple(x.shape) for x in maps]}"
            )
    b, c, h, w = maps[0].shape
    if classes is not None:
        _check_classes("par_pseudo_labels", classes, b, c)
    elif tags is None:
        raise ValueError("par_pseudo_labels: needs tags (B, C) or classes (B, K)")
    if images.ndim != 4 or images.shape[0] != b or tuple(images.shape[-2:]) != (h, w):
        raise ValueError(
            f"par_pseudo_labels: images must be (B, 3, H, W) = ({b}, 3, {h}, {w}) to match cams, "
            f"got {tuple(images.shape)}"
        )
    if downscale < 1 or h // downscale < 1 or w // downscale < 1:
        raise ValueError(f"par_pseudo_labels: downscale must be in [1, min(H, W)], got {downscale}")
    if valid_box is not None and valid_box.shape[0] != b:
        raise ValueError(f"par_pseudo_labels: valid_box must have B = {b} rows, got {valid_box.shape[0]}")
    small = (h // downscale, w // downscale)
    _per_image("par_pseudo_labels: high", high, b)  # validates the shape
    with torch.no_grad():
        gathered = classes is not None
        if classes is None:
            assert tags is not None
            classes = present_classes(tags)  # reads K on the host
        k = classes.shape[1]
        order, padding = classes.clamp(min=0), classes < 0  # (B, K)

        if propagate is None or callable(propagate):
            per_map = [propagate] * len(maps)
        else:
            per_map = list(propagate)
            if len(per_map) != len(maps):
                raise ValueError(
                    f"par_pseudo_labels: propagate has {len(per_map)} entries for {len(maps)} CAM tensors"
                )
        stacks = []
        for m, walk in zip(maps, per_map, strict=True):
            small_cams = resize(m.detach(), small)
            fg = small_cams if gathered else _gather_channels(small_cams, classes)
            fg = fg.masked_fill(padding[:, :, None, None], -math.inf)
            for bg in (high, low):
                if isinstance(bg, Tensor):
                    bg = bg.to(fg.dtype).reshape(-1, 1, 1, 1)
                plane = torch.zeros_like(small_cams[:, :1]) + bg
                stack = torch.cat([plane, fg], dim=1)
                if walk is None:
                    stacks.append(stack.softmax(dim=1))
                    continue
                probs = walk(stack)
                if not isinstance(probs, Tensor) or probs.shape != stack.shape:
                    raise ValueError(
                        f"par_pseudo_labels: propagate must return probabilities of the stack's shape "
                        f"{tuple(stack.shape)}, got {getattr(probs, 'shape', type(probs).__name__)}"
                    )
                stacks.append(probs)
        refined = resize(par(resize(images, small), torch.cat(stacks, dim=1)), (h, w))
        # channel -> class id: 0 for the background plane, then each image's present classes (padding
        # channels are 0 after the softmax and PAR, behind the real ones: argmax never picks them)
        label_ids = torch.cat([order.new_zeros((b, 1)), order + 1], dim=1)
        inside = None if valid_box is None else box_mask("par_pseudo_labels", valid_box, (h, w), None)

        def to_label(probs: Tensor) -> Tensor:
            return torch.gather(label_ids, 1, channel_argmax(probs).flatten(1)).view(b, h, w)

        labels = []
        for refined_h, refined_l in zip(*[iter(torch.split(refined, 1 + k, dim=1))] * 2, strict=True):
            label_h, label_l = to_label(refined_h), to_label(refined_l)
            out = torch.where(label_h == 0, torch.where(label_l == 0, 0, IGNORE_INDEX), label_h)
            if inside is not None:
                out = torch.where(inside, out, IGNORE_INDEX)
            labels.append(out.long())
    return labels[0] if isinstance(cams, Tensor) else labels
