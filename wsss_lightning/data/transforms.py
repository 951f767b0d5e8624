"""Albumentations pipelines for training crops and evaluation images.

Every pipeline takes HWC ``uint8`` RGB numpy images and ``uint8`` label maps and returns torch tensors:

* ``"image"``: float32 ``(3, H, W)``, normalised with ``mean`` / ``std`` (given for images scaled to [0, 1]);
* ``"mask"`` / ``"clicks"``: int64 ``(H, W)``, 255 = ignore (and padding, unless ``mask_pad_value`` says otherwise);
* ``"valid_box"`` (training only): int64 ``(4,)`` = (top, left, bottom, right), bottom/right exclusive, the part
  of the crop covered by real image content (the rest is padding).

Randomness: albumentations keeps its own generators, independent of ``numpy`` / ``random`` / ``torch``. The
training transform therefore takes an explicit ``seed`` per call (the datasets draw it from torch's RNG, which
Lightning's ``seed_everything`` and the DataLoader's per-worker seeding make reproducible). Each child transform
gets its own derived seed because ``A.Compose.set_random_seed`` gives all children the same one, which would
correlate e.g. the flip and blur coin tosses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import albumentations as A

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PadPosition = Literal["random", "top_left", "center"]
ClickMode = Literal["mask", "points"]
Box = tuple[int, int, int, int]

# Every mask target is padded with this value inside the pipeline; the real label padding value is written
# afterwards from the valid-region mask, so it may be anything (e.g. 0 for the U2PL-code behaviour) without
# colliding with the valid-mask encoding or turning padding into clicks.
_INTERNAL_MASK_FILL = 255


def normalize_to_tensor(
    image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Convert an RGB image to a normalised CHW float tensor.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mean: Per-channel mean for pixel values scaled to [0, 1].
        std: Per-channel standard deviation for pixel values scaled to [0, 1].

    Returns:
        ``(3, H, W)`` float32 tensor ``(image / 255 - mean) / std``.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) RGB array, got shape {image.shape}")
    # A per-channel 256-entry lookup table: ~2.5x faster than float arithmetic on a 448 crop and, unlike torch
    # ops, free of intra-op threads (which stall badly when the main process loads data on a busy machine).
    levels = np.arange(256, dtype=np.float32)
    lut = (levels[None, :] / 255.0 - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[
        :, None
    ]
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))
    out = np.empty(chw.shape, dtype=np.float32)
    for channel in range(3):
        np.take(lut[channel], chw[channel], out=out[channel])
    return torch.from_numpy(out)


def denormalize_to_uint8(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Invert :func:`normalize_to_tensor` (e.g. to feed a CRF or an affinity module raw colours).

    Args:
        image: ``(..., 3, H, W)`` float tensor normalised with ``mean`` / ``std``.
        mean: The mean used for normalisation.
        std: The standard deviation used for normalisation.

    Returns:
        ``(..., 3, H, W)`` uint8 tensor on the same device, values rounded and clamped to [0, 255].
    """
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return ((image * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """``(H, W)`` uint8 label map -> ``(H, W)`` int64 tensor (the dtype ``F.cross_entropy`` expects)."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))


def box_from_valid_mask(valid: np.ndarray) -> Box:
    """Bounding box of the non-zero region of a 2-D mask.

    Args:
        valid: ``(H, W)`` array, non-zero where the crop shows real image content.

    Returns:
        (top, left, bottom, right) with exclusive bottom/right; ``(0, 0, 0, 0)`` if nothing is valid.
    """
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def box_from_applied_params(applied: Sequence[tuple[str, dict[str, Any]]], out_hw: tuple[int, int]) -> Box:
    """Valid box computed analytically from albumentations' ``applied_transforms`` record.

    Used to cross-check :func:`box_from_valid_mask`; it understands the geometric transforms of
    :class:`TrainTransform` (RandomScale, PadIfNeeded, RandomCrop, HorizontalFlip).

    Args:
        applied: ``result["applied_transforms"]`` of a Compose built with ``save_applied_params=True``.
        out_hw: ``(H, W)`` of the output crop.

    Returns:
        (top, left, bottom, right), exclusive bottom/right, in output coordinates.
    """
    top = left = 0
    bottom = right = -1  # unknown until the first transform reports its input shape
    for name, params in applied:
        if bottom < 0:
            bottom, right = int(params["shape"][0]), int(params["shape"][1])
        if name == "RandomScale":
            # Records its input shape; albumentations truncates the scaled size.
            top, left = 0, 0
            bottom, right = (
                int(params["shape"][0] * params["scale"]),
                int(params["shape"][1] * params["scale"]),
            )
        elif name == "PadIfNeeded":
            # Content fills PadIfNeeded's whole input (recorded as "shape"), shifted by the top/left padding.
            top, left = int(params["pad_top"]), int(params["pad_left"])
            bottom, right = top + int(params["shape"][0]), left + int(params["shape"][1])
        elif name == "RandomCrop":
            x0, y0, x1, y1 = params["crop_coords"]
            top, bottom = max(top, y0) - y0, min(bottom, y1) - y0
            left, right = max(left, x0) - x0, min(right, x1) - x0
        elif name == "HorizontalFlip":
            width = out_hw[1]
            left, right = width - right, width - left
    if bottom < 0:
        return (0, 0, out_hw[0], out_hw[1])
    if bottom <= top or right <= left:
        return (0, 0, 0, 0)
    return (top, left, bottom, right)


def warp_points(
    points: np.ndarray, applied: Sequence[tuple[str, dict[str, Any]]], out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Map pixel coordinates through the geometric transforms recorded by albumentations.

    Each point is a pixel; its centre is mapped (continuous coordinates, origin at the image corner) and the
    pixel containing the mapped centre is returned, so a click stays exactly one pixel at every scale instead
    of vanishing (down-scaling) or growing into a block (up-scaling) as with nearest-neighbour resizing.

    Args:
        points: ``(N, 2)`` integer (row, col) pixel coordinates in the input image.
        applied: ``result["applied_transforms"]`` of a Compose built with ``save_applied_params=True``.
        out_hw: ``(H, W)`` of the output crop.

    Returns:
        ``(rows_cols, keep)``: ``(N, 2)`` int64 output pixel coordinates and an ``(N,)`` bool mask of the points
        that land inside the output.
    """
    yx = np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5
    for name, params in applied:
        if name == "RandomScale":
            h, w = params["shape"][:2]
            # cv2 stretches the image to the truncated size, so the effective factor is new / old per axis
            yx *= np.array([int(h * params["scale"]) / h, int(w * params["scale"]) / w])
        elif name == "PadIfNeeded":
            yx += np.array([params["pad_top"], params["pad_left"]], dtype=np.float64)
        elif name == "RandomCrop":
            x0, y0, _, _ = params["crop_coords"]
            yx -= np.array([y0, x0], dtype=np.float64)
        elif name == "HorizontalFlip":
            yx[:, 1] = out_hw[1] - yx[:, 1]
    rc = np.floor(yx).astype(np.int64)
    keep = (rc[:, 0] >= 0) & (rc[:, 0] < out_hw[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < out_hw[1])
    return rc, keep


def resize_sample(
    image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize a whole image (bilinear) and its label map (nearest neighbour) to exactly ``size``.

    DAFormer resizes GTA5 to 1280x720 and Cityscapes to 1024x512 before cropping (its ``Resize`` step in
    lhoyer/DAFormer ``configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py``, bilinear through mmcv, i.e.
    ``cv2.INTER_LINEAR``); the same interpolation is used here so that training images match the reference.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: Optional ``(H, W)`` uint8 label map.
        size: ``(width, height)`` of the output, as DAFormer's ``img_scale``.

    Returns:
        ``(image, mask)`` of ``height x width``; the inputs themselves when they already have that size.
    """
    import cv2  # on first use only, as the augmentation libraries

    width, height = size
    if image.shape[:2] == (height, width):
        return image, mask
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask


def derived_seed(*parts: int) -> int:
    """A seed in ``[0, 2**31 - 1)`` that is a function of ``parts`` alone (a sample's key, a re-draw's index)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0]) % (2**31 - 1)


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    else:
        if len(size) != 2:
            raise ValueError(f"{name}: expected an int or (height, width), got {size!r}")
        pair = (int(size[0]), int(size[1]))
    if min(pair) <= 0:
        raise ValueError(f"{name}: sizes must be positive, got {size!r}")
    return pair


def _jitter_args(color_jitter: float | Sequence[float]) -> dict[str, float]:
    """Map a jitter strength to ColorJitter's (brightness, contrast, saturation, hue) strengths."""
    if isinstance(color_jitter, (int, float)):
        # One number = torchvision-style equal strength for brightness/contrast/saturation, and a quarter of it
        # for hue (hue is on a [-0.5, 0.5] circle, so the same number would be far stronger).
        strength = float(color_jitter)
        values = (strength, strength, strength, strength / 4)
    else:
        if len(color_jitter) != 4:
            raise ValueError(
                "color_jitter: expected a float or (brightness, contrast, saturation, hue), "
                f"got {color_jitter!r}"
            )
        values = tuple(float(v) for v in color_jitter)  # type: ignore[assignment]
    if min(values) < 0 or values[3] > 0.5:
        raise ValueError(f"color_jitter: strengths must be >= 0 and hue <= 0.5, got {color_jitter!r}")
    return dict(zip(("brightness", "contrast", "saturation", "hue"), values, strict=True))


class TrainTransform:
    """Weak training augmentation: random scale -> pad -> random crop -> flip -> photometric -> normalise.

    The geometric part is applied identically to the image, the label mask, the click map and an internal
    all-ones "valid" map; the valid map yields the ``valid_box`` of real content inside the crop and decides
    which pixels are padding (image: ``image_pad_value``; mask: ``mask_pad_value``; clicks: always 255).
    Call it as ``t(image, mask=..., clicks=..., seed=...)``.

    Args:
        crop_size: Output crop, an int or (height, width).
        scale_range: Uniform range of the random rescale factor applied to both sides (DuPL / U2PL: 0.5-2.0,
            ASDT: 0.7-1.3). (1, 1) disables rescaling.
        hflip_p: Probability of a horizontal flip.
        color_jitter: None (off), a strength ``s`` (brightness = contrast = saturation = s, hue = s / 4) or an
            explicit (brightness, contrast, saturation, hue); DuPL uses (0.4, 0.4, 0.2, 0.1).
        blur_p: Probability of a Gaussian blur (DuPL: 1.0, Seminar: 0.5, U2PL: 0).
        color_jitter_p: Probability of applying the colour jitter (DuPL: 0.8).
        grayscale_p: Probability of converting to grey (DuPL: 0.2).
        blur_sigma: Range of the blur's sigma in pixels (DuPL: PIL radius 0.1-2.0).
        image_pad_value: Raw RGB value of padding when the rescaled image is smaller than the crop (0 = black,
            as DuPL / Seminar; after normalisation it is not the mean colour).
        mask_pad_value: Label of padded pixels; 255 (ignored) is correct, 0 reproduces the U2PL code, which
            trains padding as class 0.
        pad_position: Where the image sits in the padded canvas before cropping: "random" (DuPL: any offset,
            so the model does not learn that content hugs the top-left corner), "top_left" (U2PL / Seminar pad
            right / bottom only) or "center".
        mean: Normalisation mean for [0, 1] pixels (ImageNet by default, matching pretrained backbones).
        std: Normalisation std for [0, 1] pixels.
        click_mode: How click maps follow the geometry: "mask" resizes them like a label mask (nearest
            neighbour; a click may vanish when down-scaled or become a block when up-scaled, as in the rloss /
            Seminar code), "points" warps each click's coordinates and redraws it as one pixel (Gated-CRF).
        record_params: Keep albumentations' record of the sampled parameters in the output (for tests).
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_p: float = 0.5,
        color_jitter: float | Sequence[float] | None = None,
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.0,
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        image_pad_value: int = 0,
        mask_pad_value: int = 255,
        pad_position: PadPosition = "random",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        click_mode: ClickMode = "mask",
        record_params: bool = False,
    ) -> None:
        if click_mode not in ("mask", "points"):
            raise ValueError(f"click_mode: expected 'mask' or 'points', got {click_mode!r}")
        self.click_mode = click_mode
        self.record_params = record_params
        self.crop_hw = _pair(crop_size, "crop_size")
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {scale_range!r}")
        for name, p in (
            ("hflip_p", hflip_p),
            ("color_jitter_p", color_jitter_p),
            ("grayscale_p", grayscale_p),
            ("blur_p", blur_p),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        if not 0 <= mask_pad_value <= 255:
            raise ValueError(f"mask_pad_value: expected a uint8 label in [0, 255], got {mask_pad_value}")
        if not 0 <= image_pad_value <= 255:
            raise ValueError(f"image_pad_value: expected a uint8 colour in [0, 255], got {image_pad_value}")
        if pad_position not in ("random", "top_left", "center"):
            raise ValueError(f"pad_position: expected 'random', 'top_left' or 'center', got {pad_position!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std: expected 3 values each (std > 0), got mean={mean!r} std={std!r}")
        self.mask_pad_value = int(mask_pad_value)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        # Imported here, not at module level: the dataset readers and `wsss-data` use this module's helpers
        # and should not pay for loading the augmentation libraries.
        import albumentations as A
        import cv2

        h, w = self.crop_hw
        ops: list[A.BasicTransform] = []
        if (lo, hi) != (1.0, 1.0):
            # RandomScale samples s ~ U(1 + low, 1 + high); bilinear image, nearest-neighbour masks.
            ops.append(
                A.RandomScale(
                    scale_limit=(lo - 1.0, hi - 1.0),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    p=1.0,
                )
            )
        ops += [
            A.PadIfNeeded(
                min_height=h,
                min_width=w,
                position=pad_position,
                border_mode=cv2.BORDER_CONSTANT,
                fill=int(image_pad_value),
                fill_mask=_INTERNAL_MASK_FILL,
            ),
            A.RandomCrop(height=h, width=w),
        ]
        if hflip_p > 0:
            ops.append(A.HorizontalFlip(p=hflip_p))
        if color_jitter is not None and color_jitter_p > 0:
            ops.append(A.ColorJitter(**_jitter_args(color_jitter), p=color_jitter_p))
        if grayscale_p > 0:
            ops.append(A.ToGray(num_output_channels=3, p=grayscale_p))
        if blur_p > 0:
            # blur_limit=0 lets albumentations derive the kernel size from sigma (like PIL's GaussianBlur radius).
            ops.append(A.GaussianBlur(blur_limit=0, sigma_limit=tuple(blur_sigma), p=blur_p))
        self.pipeline = A.Compose(
            ops,
            additional_targets={"clicks": "mask", "valid": "mask"},
            # the record is needed to warp click coordinates ("points" mode)
            save_applied_params=record_params or click_mode == "points",
        )
        self._seed_seq_len = len(ops)

    def reseed(self, seed: int) -> None:
        """Seed every child transform with its own stream derived from ``seed``."""
        self.pipeline.set_random_seed(seed)
        states = np.random.SeedSequence(seed).generate_state(self._seed_seq_len)
        for op, state in zip(self.pipeline.transforms, states, strict=True):
            op.set_random_seed(int(state))

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        clicks: np.ndarray | None = None,
        seed: int | None = None,
        *,
        required_class: int | None = None,
        min_class_pixels: float = 0,
        max_redraws: int = 0,
    ) -> dict[str, Any]:
        """Augment one sample.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            mask: Optional ``(H, W)`` uint8 train-id map (255 = ignore).
            clicks: Optional ``(H, W)`` uint8 click map (class id at clicks, 255 elsewhere).
            seed: If given, reseed the pipeline first (makes the call reproducible).
            required_class: If given (needs ``mask``), re-draw the augmentation while the crop holds at most
                ``min_class_pixels`` pixels of this class, at most ``max_redraws`` times; the last draw is kept
                unchecked. This is the crop re-draw of DAFormer's rare-class sampling (lhoyer/DAFormer
                ``mmseg/datasets/uda_dataset.py``, ``get_rare_class_sample``), which re-runs the whole source
                pipeline, so scale, crop, flip and colour are all drawn anew. Re-draw k is seeded from
                ``(seed, k)``, so the result stays a function of ``seed``.
            min_class_pixels: Pixels of ``required_class`` a crop must exceed to be kept.
            max_redraws: Re-draws at most.

        Returns:
            ``{"image": (3, h, w) float32, "valid_box": (4,) int64}`` plus ``"mask"`` / ``"clicks"`` ((h, w) int64)
            for the inputs given, where (h, w) = ``crop_size``; with ``record_params=True`` also
            ``"applied_transforms"`` (albumentations' record, for tests).
        """
        if seed is not None:
            self.reseed(seed)
        hw = image.shape[:2]
        for name, arr in (("mask", mask), ("clicks", clicks)):
            if arr is not None and arr.shape != hw:
                raise ValueError(f"{name}: shape {arr.shape} does not match the image size {hw}")
        valid = np.ones(hw, dtype=np.uint8)
        targets: dict[str, np.ndarray] = {"image": image, "valid": valid}
        if mask is not None:
            targets["mask"] = mask
        if clicks is not None and self.click_mode == "mask":
            targets["clicks"] = clicks
        out = self.pipeline(**targets)
        if required_class is not None:
            if mask is None:
                raise ValueError("required_class: the crop re-draw needs the mask")
            for redraw in range(1, max_redraws + 1):
                # counted before the label padding value is written, so padding never counts as a class
                if np.count_nonzero(out["mask"] == required_class) > min_class_pixels:
                    break
                if seed is not None:
                    self.reseed(derived_seed(seed, redraw))
                out = self.pipeline(**targets)
        valid_out = out["valid"] == 1
        result: dict[str, Any] = {
            "image": normalize_to_tensor(out["image"], self.mean, self.std),
            "valid_box": torch.tensor(box_from_valid_mask(valid_out), dtype=torch.int64),
        }
        if mask is not None:
            m = out["mask"]
            if self.mask_pad_value != _INTERNAL_MASK_FILL:
                m = np.where(valid_out, m, np.uint8(self.mask_pad_value))
            result["mask"] = mask_to_tensor(m)
        if clicks is not None and self.click_mode == "mask":
            result["clicks"] = mask_to_tensor(out["clicks"])
        elif clicks is not None:
            result["clicks"] = mask_to_tensor(self._rasterise_clicks(clicks, out["applied_transforms"]))
        if self.record_params:
            result["applied_transforms"] = out["applied_transforms"]
        return result

    def _rasterise_clicks(
        self, clicks: np.ndarray, applied: Sequence[tuple[str, dict[str, Any]]]
    ) -> np.ndarray:
        """Warp the click pixels of ``clicks`` through the recorded geometry and draw them as 1-px marks."""
        rows, cols = np.nonzero(clicks != _INTERNAL_MASK_FILL)
        labels = clicks[rows, cols]
        rc, keep = warp_points(np.stack([rows, cols], axis=1), applied, self.crop_hw)
        out = np.full(self.crop_hw, _INTERNAL_MASK_FILL, dtype=np.uint8)
        out[rc[keep, 0], rc[keep, 1]] = labels[keep]
        return out


class EvalTransform:
    """Deterministic evaluation transform: optional short-side resize, optional centre crop, then normalisation.

    Build it with :func:`eval_transform`. With ``short_side=S`` and ``center_crop=S`` it is rloss' /
    Seminar's ``FixScaleCrop`` evaluation: the short side is resized to S, then the centre S x S square is kept,
    and the scores are computed on the resized and cropped mask.

    Args:
        short_side: If set, resize so the shorter side has this length (bilinear image, nearest mask);
            None keeps the full resolution.
        center_crop: If set, keep the centre ``center_crop`` x ``center_crop`` square after the resize; the crop
            starts at ``round((W' - crop) / 2)`` / ``round((H' - crop) / 2)`` with Python's round (half to
            even), as ``FixScaleCrop``. Needs ``short_side >= center_crop``, so that every image covers the crop.
        mean: Normalisation mean for [0, 1] pixels (3 values).
        std: Normalisation std for [0, 1] pixels (3 values, all > 0).

    Raises:
        ValueError: ``short_side`` or ``center_crop`` is not a positive int, ``center_crop`` without
            ``short_side >= center_crop``, or ``mean`` / ``std`` do not hold 3 values (std > 0).
    """

    def __init__(
        self,
        short_side: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        center_crop: int | None = None,
    ) -> None:
        if short_side is not None and short_side <= 0:
            raise ValueError(f"short_side: expected a positive int or None, got {short_side}")
        if center_crop is not None:
            if isinstance(center_crop, bool) or not isinstance(center_crop, int) or center_crop <= 0:
                raise ValueError(f"center_crop: expected a positive int or None, got {center_crop!r}")
            if short_side is None or short_side < center_crop:
                raise ValueError(
                    f"center_crop: a {center_crop} x {center_crop} centre crop needs short_side >= {center_crop} "
                    f"(every image resized to cover the crop), got short_side={short_side}"
                )
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean/std: expected 3 values each (std > 0), got mean={mean!r} std={std!r}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.center_crop = center_crop
        import albumentations as A  # on first use only, as in TrainTransform
        import cv2

        self.resize = (
            None
            if short_side is None
            else A.SmallestMaxSize(
                max_size=short_side,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )

    def crop_box(self, height: int, width: int) -> Box:
        """The centre-crop window of an (already resized) ``height`` x ``width`` image.

        Returns:
            (top, left, bottom, right), exclusive bottom / right; the whole image without ``center_crop``.

        Raises:
            ValueError: the image is smaller than the crop.
        """
        if self.center_crop is None:
            return (0, 0, height, width)
        crop = self.center_crop
        if height < crop or width < crop:
            raise ValueError(
                f"center_crop: the image is {height}x{width}, smaller than the {crop}x{crop} crop"
            )
        top, left = round((height - crop) / 2), round((width - crop) / 2)  # half to even, as FixScaleCrop
        return (top, left, top + crop, left + crop)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Transform one sample.

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            mask: Optional ``(H, W)`` uint8 train-id map.

        Returns:
            ``{"image": (3, H', W') float32}`` and, if given, ``"mask"`` ((H', W') int64); (H', W') = (H, W)
            unless a short side was set, (crop, crop) with a centre crop.
        """
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(f"mask: shape {mask.shape} does not match the image size {image.shape[:2]}")
        if self.resize is not None:
            out = self.resize(image=image, mask=mask) if mask is not None else self.resize(image=image)
            image, mask = out["image"], out.get("mask")
        if self.center_crop is not None:
            top, left, bottom, right = self.crop_box(*image.shape[:2])
            image = image[top:bottom, left:right]
            mask = None if mask is None else mask[top:bottom, left:right]
        result = {"image": normalize_to_tensor(image, self.mean, self.std)}
        if mask is not None:
            result["mask"] = mask_to_tensor(mask)
        return result


def eval_transform(
    short_side: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    center_crop: int | None = None,
) -> EvalTransform:
    """Build the evaluation pipeline.

    Args:
        short_side: If set, resize so the shorter side has this length (bilinear image, nearest mask);
            None keeps the full resolution, the standard protocol for VOC / COCO / Cityscapes mIoU.
        mean: Normalisation mean for [0, 1] pixels.
        std: Normalisation std for [0, 1] pixels.
        center_crop: If set, keep the centre square of this size after the resize (needs
            ``short_side >= center_crop``); ``short_side = center_crop = 513`` is the rloss / Seminar protocol.

    Returns:
        An :class:`EvalTransform`; call it as ``t(image, mask=...)``.
    """
    return EvalTransform(short_side=short_side, mean=mean, std=std, center_crop=center_crop)
