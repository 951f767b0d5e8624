"""Option groups of the datamodule: transforms (:class:`TransformOptions`) and loaders (:class:`LoaderOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wsss_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClickMode,
    EvalTransform,
    TrainTransform,
    eval_transform,
)


@dataclass
class TransformOptions:
    """Training augmentation, evaluation resizing and the normalisation shared by both.

    Args:
        crop_size: Training crop, int or (height, width). 448 is DuPL's VOC / COCO crop; method configs set
            their published value (U2PL 513 / 769, Seminar 513, ASDT 321).
        scale_range: Range of the random rescale factor (0.5-2.0 is the common VOC / Cityscapes setting).
        hflip_p: Horizontal-flip probability.
        color_jitter: Colour jitter strength or (brightness, contrast, saturation, hue); None = off (the weak
            augmentation of the semi-supervised methods has none).
        color_jitter_p: Probability of applying the colour jitter.
        grayscale_p: Random-greyscale probability.
        blur_p: Gaussian-blur probability (0: off).
        blur_sigma: Range of the blur sigma in pixels.
        pad_position: Where a rescaled image smaller than the crop is placed before cropping (``"random"``,
            ``"top_left"``, ``"center"``); see :class:`wsss_lightning.data.transforms.TrainTransform`.
        image_pad_value: Raw RGB value of image padding in training crops.
        mask_pad_value: Label of padded crop pixels. 255 (ignored) is correct; 0 reproduces the U2PL code.
        mean: Normalisation mean for [0, 1] pixels (ImageNet, matching pretrained backbones).
        std: Normalisation std for [0, 1] pixels.
        eval_short_side: Resize evaluation images to this short side (None: full resolution, the standard
            protocol; the mask is resized with nearest neighbour too).
        eval_center_crop: After the resize, keep the centre square of this size of evaluation images and masks
            (None: no crop). Needs ``eval_short_side >= eval_center_crop``. ``eval_short_side = eval_center_crop
            = 513`` is the evaluation of rloss / Seminar (``FixScaleCrop``: scores on the resized and cropped
            ground truth).

    Raises:
        ValueError: an invalid value; the message starts with ``transform.<field>``.
    """

    crop_size: int | tuple[int, int] = 448
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip_p: float = 0.5
    color_jitter: float | tuple[float, float, float, float] | None = None
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    pad_position: Literal["random", "top_left", "center"] = "random"
    image_pad_value: int = 0
    mask_pad_value: int = 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    eval_short_side: int | None = None
    eval_center_crop: int | None = None

    def __post_init__(self) -> None:
        if self.eval_short_side is not None and self.eval_short_side <= 0:
            raise ValueError(
                f"transform.eval_short_side: expected a positive int or None, got {self.eval_short_side}"
            )
        crop = self.eval_center_crop
        if crop is not None:
            if isinstance(crop, bool) or not isinstance(crop, int) or crop <= 0:
                raise ValueError(f"transform.eval_center_crop: expected a positive int or None, got {crop!r}")
            if self.eval_short_side is None or self.eval_short_side < crop:
                raise ValueError(
                    f"transform.eval_center_crop: a {crop} x {crop} centre crop needs transform.eval_short_side "
                    f">= {crop} (so that every resized image covers the crop), got {self.eval_short_side}"
                )
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi:
            raise ValueError(f"transform.blur_sigma: expected 0 < low <= high, got {self.blur_sigma!r}")
        # The transforms check every other value; their messages start with the argument's name, which is
        # the field's name here.
        try:
            self.train_transform()
        except ValueError as exc:
            raise ValueError(f"transform.{exc}") from None

    def train_transform(self, click_mode: ClickMode = "mask") -> TrainTransform:
        """The training pipeline (``click_mode`` comes from :class:`~wsss_lightning.data.views.ClickView`)."""
        return TrainTransform(
            crop_size=self.crop_size,
            scale_range=self.scale_range,
            hflip_p=self.hflip_p,
            color_jitter=self.color_jitter,
            blur_p=self.blur_p,
            color_jitter_p=self.color_jitter_p,
            grayscale_p=self.grayscale_p,
            blur_sigma=self.blur_sigma,
            image_pad_value=self.image_pad_value,
            mask_pad_value=self.mask_pad_value,
            pad_position=self.pad_position,
            mean=self.mean,
            std=self.std,
            click_mode=click_mode,
        )

    def eval_transform(self) -> EvalTransform:
        """The evaluation pipeline (optional short-side resize, optional centre crop, then normalisation)."""
        return eval_transform(
            self.eval_short_side, mean=self.mean, std=self.std, center_crop=self.eval_center_crop
        )


def check_global_batch(option: str, wanted: int, batch_size: int, processes: int, accumulate: int) -> None:
    """Raise a ValueError naming ``option`` unless ``batch_size x processes x accumulate == wanted``.

    The message names the per-process ``batch_size`` that gives ``wanted`` (or says that none does).
    """
    actual = batch_size * processes * accumulate
    if actual == wanted:
        return
    per_process, remainder = divmod(wanted, processes * accumulate)
    fix = (
        f"set --data.init_args.loader.batch_size={per_process}"
        if remainder == 0
        else f"choose devices x nodes x accumulate_grad_batches dividing {wanted}"
    )
    raise ValueError(
        f"{option} = {wanted} but loader.batch_size ({batch_size}) x {processes} processes x "
        f"accumulate_grad_batches ({accumulate}) = {actual}; {fix} so the learning rate and schedule see the "
        "batch they were tuned for"
    )


@dataclass
class LoaderOptions:
    """Batch sizes and ``DataLoader`` settings.

    Args:
        batch_size: Training batch size per device (per loader for the semi / domain views; their
            ``unlabeled_batch_size`` can differ).
        eval_batch_size: Evaluation batch size per device. 1 because full-resolution images differ in size and
            batching pads them to the largest one.
        num_workers: DataLoader worker processes per loader. Decoding and augmenting a VOC image into a 448
            crop costs ~8-10 ms on one core (``benchmarks/data_pipeline.py``), so 4 workers supply ~400
            images/s, enough for one GPU; semi / domain runs start this many per loader.
        pin_memory: Pin host memory for faster host-to-GPU copies (ignored without CUDA).
        persistent_workers: Keep workers alive between epochs (avoids re-forking every epoch).
        drop_last: Drop the last incomplete training batch (BatchNorm misbehaves on tiny batches; U2PL does it).
        global_batch_size: The batch the config's learning rate and schedule were tuned for. Unless 0, ``fit``
            fails at start-up unless ``batch_size`` x processes (devices x nodes) x ``accumulate_grad_batches``
            equals it, naming the ``batch_size`` to use, so the global batch and learning rate stay the same on
            any number of GPUs and nodes. 0: not checked (``--data.init_args.loader.global_batch_size=0`` for
            trying a full-size config with a smaller batch).

    Raises:
        ValueError: an invalid value; the message starts with ``loader.<field>``.
    """

    batch_size: int = 8
    eval_batch_size: int = 1
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    drop_last: bool = True
    global_batch_size: int = 0

    def __post_init__(self) -> None:
        gbs = self.global_batch_size
        if isinstance(gbs, bool) or not isinstance(gbs, int) or gbs < 0:
            raise ValueError(f"loader.global_batch_size: expected an int >= 0 (0: not checked), got {gbs!r}")
        for field in ("batch_size", "eval_batch_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"loader.{field}: expected a positive int, got {value!r}")
        if (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 0
        ):
            raise ValueError(f"loader.num_workers: expected an int >= 0, got {self.num_workers!r}")

    def check_global_batch(self, processes: int, accumulate: int) -> None:
        """Raise unless ``batch_size x processes x accumulate`` is ``global_batch_size`` (when that is not 0)."""
        if self.global_batch_size:
            check_global_batch(
                "loader.global_batch_size", self.global_batch_size, self.batch_size, processes, accumulate
            )
