"""torch ``Dataset`` wrappers around :class:`SegmentationSource` used by :class:`WSSSDataModule`.

All per-sample work (decoding, click simulation, augmentation, normalisation) happens here, i.e. in the
DataLoader workers; the main process only collates.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from wsss_lightning.data.classes import DatasetInfo
from wsss_lightning.data.datasets.base import (
    DataError,
    SegmentationSource,
    check_label_values,
    read_index_png,
)
from wsss_lightning.data.rare_classes import RareClassSampler
from wsss_lightning.data.supervision import clicks_from_mask, tags_from_mask
from wsss_lightning.data.transforms import EvalTransform, TrainTransform, derived_seed, resize_sample

_SEED_HIGH = 2**31 - 1

#: A training key: (seed, epoch, index). The sample's augmentations are a function of it alone.
SampleKey = tuple[int, int, int]


class EpochKeyedSampler(DistributedSampler):  # type: ignore[type-arg]
    """Shuffles per epoch from ``(seed, epoch)`` and yields ``(seed, epoch, index)`` keys.

    Lightning neither checkpoints random-number-generator state nor the workers' streams, so a plain
    ``shuffle=True`` loader draws another order and other augmentations after ``fit --ckpt_path last``.
    Here the order and every sample's augmentation seed depend only on (seed, epoch, index), and
    ``resume_at`` (set from the datamodule's checkpointed state) skips what a mid-epoch checkpoint had
    already consumed: a resumed run sees the same batches. Being a ``DistributedSampler`` it also shards across DDP ranks (Lightning
    keeps it instead of injecting its own and calls ``set_epoch`` on it every epoch).

    Args:
        dataset: the training dataset.
        num_replicas: number of DDP processes (1 without DDP).
        rank: this process's rank.
        seed: base seed; ``None`` takes the seed given to ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(
        self, dataset: Dataset[Any], num_replicas: int = 1, rank: int = 0, seed: int | None = None
    ) -> None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0")) if seed is None else seed
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.resume_at: tuple[int, int] | None = None  # (epoch, samples already consumed in it)

    def __iter__(self) -> Iterator[SampleKey]:
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            skip = self.resume_at[1]
        self.resume_at = None
        for position, index in enumerate(super().__iter__()):
            if position >= skip:
                yield (self.seed, self.epoch, int(index))


class ResumableLoader(DataLoader):  # type: ignore[type-arg]
    """A training ``DataLoader`` over an :class:`EpochKeyedSampler`, resumable mid-epoch.

    Its position travels in the datamodule's checkpoint state (Lightning restores that before it builds the
    loaders, see ``WSSSDataModule.state_dict``) and reaches the sampler as ``resume_at``, so the loader keeps
    no state of its own. The empty ``state_dict`` / ``load_state_dict`` pair is the interface by which
    Lightning recognises a resumable loader; without it Lightning warns on every mid-epoch resume that the
    results may be unreliable, which is not the case here.
    """

    def state_dict(self) -> dict[str, Any]:
        """Nothing: the position inside the epoch is part of the datamodule's state."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


def key_seed(key: SampleKey) -> int:
    """The augmentation seed of a training key."""
    return derived_seed(*key)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``numpy`` and ``random`` from the worker's torch seed.

    torch seeds each worker with ``base_seed + worker_id`` where ``base_seed`` comes from the main process's
    torch RNG, so with ``seed_everything`` every worker's streams are reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def image_tags(mask: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """(C,) float32 multi-hot tags of a full mask; the background column is always 1 when the dataset has one.

    WSSS methods treat background as present in every image (it is never a classification target), so an
    image entirely covered by objects still gets background = 1, as in the common ``cls_labels`` files.
    """
    tags = tags_from_mask(mask, info.num_classes, info.ignore_index)
    if info.has_background:
        tags[0] = 1.0
    return tags


def oversample_indices(n_items: int, n_target: int, seed: int) -> list[int]:
    """Repeat ``range(n_items)`` to length ``n_target`` as evenly as possible.

    Every item appears ``n_target // n_items`` times; a seeded random subset of ``n_target % n_items`` items
    appears once more (U2PL repeats its labeled list to the unlabeled set's size the same way, up to the
    subset choice). With ``n_target <= n_items`` the items are returned unchanged.

    Args:
        n_items: number of distinct items.
        n_target: desired length.
        seed: seed of the extra-subset choice.

    Returns:
        ``max(n_items, n_target)`` indices into ``range(n_items)``, sorted.
    """
    if n_items <= 0:
        raise ValueError(f"oversample_indices: n_items must be positive, got {n_items}")
    if n_target <= n_items:
        return list(range(n_items))
    reps, extra = divmod(n_target, n_items)
    chosen = np.random.default_rng(seed).permutation(n_items)[:extra]
    counts = np.full(n_items, reps, dtype=np.int64)
    counts[chosen] += 1
    return np.repeat(np.arange(n_items), counts).tolist()


@dataclass(frozen=True)
class ClickConfig:
    """Where clicks come from: 1-px click PNGs in ``clicks_dir`` or simulated from the mask.

    Attributes:
        num_classes: number of classes C (click values must be in [0, C) or 255).
        clicks_dir: folder with ``<id>.png`` click maps (class id at clicks, 255 elsewhere); None = simulate.
        seed: seed of the simulation; each sample's generator is keyed by (seed, id), so clicks do not change
            between epochs, workers or dataset orderings.
        background_clicks: simulated clicks on the background class.
        background_class: background train id, None when the dataset has none (Cityscapes / GTA5).
        placement: "center" (pixel deepest inside each region) or "random".
    """

    num_classes: int
    clicks_dir: Path | None = None
    seed: int = 0
    background_clicks: int = 1
    background_class: int | None = 0
    placement: Literal["center", "random"] = "center"

    def read(self, sample_id: str, image_hw: tuple[int, int]) -> np.ndarray:
        """Read the click PNG of ``sample_id`` ((H, W) uint8), checking its size and values."""
        assert self.clicks_dir is not None
        path = self.clicks_dir / f"{sample_id}.png"
        clicks = read_index_png(path)
        if clicks.shape != image_hw:
            raise DataError(
                f"click file {path} is {clicks.shape[0]}x{clicks.shape[1]} (HxW) but its image is "
                f"{image_hw[0]}x{image_hw[1]}"
            )
        check_label_values(clicks, self.num_classes, path)
        return clicks.astype(np.uint8, copy=False)

    def simulate(self, sample_id: str, mask: np.ndarray) -> np.ndarray:
        """Simulated clicks of ``sample_id`` from its mask ((H, W) uint8, 255 off-click)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(sample_id.encode())])
        return clicks_from_mask(
            mask,
            self.num_classes,
            rng,
            background_clicks=self.background_clicks,
            background_class=self.background_class,
            placement=self.placement,
        )


class TrainSegDataset(Dataset[dict[str, Any]]):
    """Augmented training crops of (a subset of) one split.

    Args:
        source: the split reader.
        transform: the training pipeline.
        indices: positions in ``source.ids`` to serve (may repeat, for oversampling); None = all.
        with_mask: include the cropped ``"mask"``.
        tags: ``"mask"`` = compute the image's tags from its full mask, an ``(N, C)`` array aligned with
            ``source.ids`` = look them up, None = no ``"tags"``.
        clicks: include ``"clicks"`` from this configuration (None = no clicks).
        resize: ``(width, height)``: resize every image (bilinear) and mask (nearest) to exactly this size
            before the transform (DAFormer's per-dataset ``img_scale``); None keeps the stored size. Tags are
            taken from the stored mask.
        rare_classes: draw each sample by rare-class sampling instead of by index: the sample's seed picks a
            class and an image of ``source.ids`` (the index only keys the seed), and the crop is re-drawn until
            it holds enough of the class (see :mod:`wsss_lightning.data.rare_classes`). Needs masks.

    Each item: ``image`` (3, h, w) float32, ``valid_box`` (4,) int64, ``name`` str, and as configured ``mask`` /
    ``clicks`` (h, w) int64 and ``tags`` (C,) float32.
    """

    def __init__(
        self,
        source: SegmentationSource,
        transform: TrainTransform,
        indices: Sequence[int] | None = None,
        *,
        with_mask: bool = True,
        tags: Literal["mask"] | np.ndarray | None = None,
        clicks: ClickConfig | None = None,
        resize: tuple[int, int] | None = None,
        rare_classes: RareClassSampler | None = None,
    ) -> None:
        if resize is not None and clicks is not None:
            raise ValueError("resize: click maps are not resized; use resize without clicks")
        self.source = source
        self.resize = resize
        self.rare_classes = rare_classes
        self.transform = transform
        self.indices = list(range(len(source.ids))) if indices is None else list(indices)
        self.with_mask = with_mask
        self.tags = tags
        self.clicks = clicks
        self._needs_mask = (
            with_mask
            or isinstance(tags, str)
            or (clicks is not None and clicks.clicks_dir is None)
            or rare_classes is not None
        )
        if self._needs_mask and not source.has_masks:
            raise ValueError(f"{source!r} has no masks, but this supervision view needs them")
        if isinstance(tags, np.ndarray) and tags.shape[0] != len(source.ids):
            raise ValueError(
                f"tags: expected {len(source.ids)} rows (one per id of {source!r}), got {tags.shape}"
            )

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        if isinstance(key, int):
            # A plain index (e.g. a user's own sampler): the seed comes from torch's RNG, seeded by
            # seed_everything in the main process and per worker by the DataLoader.
            index, seed = key, int(torch.randint(0, _SEED_HIGH, (1,)).item())
        else:
            index, seed = key[2], key_seed(key)
        position = self.indices[index]
        required: dict[str, Any] = {}
        if self.rare_classes is not None:
            # the drawn class and image are a function of the sample's seed alone: a resumed run draws them again
            required_class, position = self.rare_classes.draw(seed)
            options = self.rare_classes.options
            if options.min_crop_pixels > 0:  # DAFormer skips the re-draw when min_crop_ratio is 0
                required = {
                    "required_class": required_class,
                    "min_class_pixels": options.min_crop_pixels,
                    "max_redraws": options.max_redraws,
                }
        sample_id = self.source.ids[position]
        if self._needs_mask:
            image, mask = self.source.read_sample(sample_id)
        else:
            image, mask = self.source.read_image(sample_id), None
        clicks = None
        if self.clicks is not None:
            hw = (int(image.shape[0]), int(image.shape[1]))
            clicks = self.clicks.read(sample_id, hw) if self.clicks.clicks_dir is not None else None
            if clicks is None:
                assert mask is not None
                clicks = self.clicks.simulate(sample_id, mask)
        tags_mask = mask
        if self.resize is not None:
            image, mask = resize_sample(image, mask, self.resize)
        crop_mask = mask if self.with_mask or required else None
        out = self.transform(image, crop_mask, clicks, seed=seed, **required)
        if not self.with_mask:
            out.pop("mask", None)
        out["name"] = sample_id
        if isinstance(self.tags, np.ndarray):
            out["tags"] = torch.from_numpy(np.asarray(self.tags[position], dtype=np.float32))
        elif self.tags == "mask":
            assert tags_mask is not None
            out["tags"] = torch.from_numpy(image_tags(tags_mask, self.source.info))
        return out


class EvalSegDataset(Dataset[dict[str, Any]]):
    """Full images of one split for validation / test / prediction.

    Args:
        source: the split reader.
        transform: the evaluation pipeline.
        with_mask: include ``"mask"`` and mask-derived ``"tags"`` (requires the split to have masks).
        image_size: include ``"image_size"``, the image's (H, W) as stored, before the transform's resize
            (predictions are written at that size).
        tags: ``(N, C)`` image-level tags of the split's ids, in order (e.g. the training view's tag file, for
            pseudo masks made at prediction time); ``None``: tags only from the masks.

    Each item: ``image`` (3, H, W) float32, ``size`` (2,) int64 = (H, W), ``name`` str, with masks
    ``mask`` (H, W) int64 and ``tags`` (C,) float32 (from ``tags`` when given), and as configured
    ``image_size`` (2,) int64.
    """

    def __init__(
        self,
        source: SegmentationSource,
        transform: EvalTransform,
        with_mask: bool = True,
        image_size: bool = False,
        tags: np.ndarray | None = None,
    ) -> None:
        if with_mask and not source.has_masks:
            raise ValueError(f"{source!r} has no masks, but evaluation needs them")
        if tags is not None and len(tags) != len(source.ids):
            raise ValueError(f"{source!r}: {len(tags)} tag rows for {len(source.ids)} images")
        self.source = source
        self.transform = transform
        self.with_mask = with_mask
        self.image_size = image_size
        self.tags = tags

    def __len__(self) -> int:
        return len(self.source.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id = self.source.ids[index]
        if self.with_mask:
            image, mask = self.source.read_sample(sample_id)
        else:
            image, mask = self.source.read_image(sample_id), None
        out: dict[str, Any] = dict(self.transform(image, mask))
        out["size"] = torch.tensor(out["image"].shape[-2:], dtype=torch.int64)
        if self.image_size:
            out["image_size"] = torch.tensor(image.shape[:2], dtype=torch.int64)
        out["name"] = sample_id
        if self.tags is not None:
            out["tags"] = torch.from_numpy(np.asarray(self.tags[index], dtype=np.float32))
        elif mask is not None:
            out["tags"] = torch.from_numpy(image_tags(mask, self.source.info))
        return out


def pad_collate(
    samples: Sequence[dict[str, Any]], image_fill: float = 0.0, mask_fill: int = 255
) -> dict[str, Any]:
    """Collate variable-size evaluation samples by padding to the batch's largest height and width.

    Content sits at the top-left; ``size`` tells where it ends.

    Args:
        samples: items of :class:`EvalSegDataset`.
        image_fill: value of padded image pixels (0 = the mean colour after normalisation).
        mask_fill: label of padded mask pixels (255 = ignored by losses and metrics).

    Returns:
        ``image`` (B, 3, H, W) float32, ``size`` (B, 2) int64, ``name`` list[str], and when present ``mask``
        (B, H, W) int64, ``tags`` (B, C) float32 and ``image_size`` (B, 2) int64; H, W = the largest height /
        width in the batch.
    """
    if not samples:
        raise ValueError("pad_collate: empty batch")
    height = max(int(s["image"].shape[-2]) for s in samples)
    width = max(int(s["image"].shape[-1]) for s in samples)
    first = samples[0]
    image = first["image"].new_full((len(samples), first["image"].shape[0], height, width), image_fill)
    batch: dict[str, Any] = {"image": image}
    if "mask" in first:
        batch["mask"] = torch.full((len(samples), height, width), mask_fill, dtype=torch.int64)
    for i, sample in enumerate(samples):
        h, w = sample["image"].shape[-2:]
        image[i, :, :h, :w] = sample["image"]
        if "mask" in batch:
            batch["mask"][i, :h, :w] = sample["mask"]
    batch["size"] = torch.stack([s["size"] for s in samples])
    batch["name"] = [s["name"] for s in samples]
    for key in ("tags", "image_size"):
        if key in first:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch
