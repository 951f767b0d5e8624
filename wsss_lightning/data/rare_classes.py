"""Rare-class sampling (DAFormer, Hoyer et al., CVPR 2022, Sec. 3.3) and the class statistics it draws from.

A source training sample is not taken in order: a class ``c`` is drawn with probability
``p(c) = softmax_c((1 - f_c) / T)`` (``f_c`` = the class's share of all labelled pixels), then an image
uniformly among those holding more than ``min_pixels`` pixels of ``c``, and the random crop is re-drawn until it
holds enough of ``c``. The reference is lhoyer/DAFormer, ``mmseg/datasets/uda_dataset.py``
(``get_rcs_class_probs`` and ``UDADataset.get_rare_class_sample``); its statistics come from
``tools/convert_datasets/gta.py``, which counts every class in each stored label map.

The statistics are per image and per class pixel counts, stored beside the dataset as
``<root>/class_stats_<split>.npz`` (``wsss-data class-stats`` writes them; the datamodule builds them when
missing or stale). Pure NumPy: this module runs in ``wsss-data`` and in dataloader workers alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss_lightning.data.supervision import map_masks
from wsss_lightning.files import atomic_savez

if TYPE_CHECKING:
    from wsss_lightning.data.datasets.base import SegmentationSource

#: Format version of the statistics file; a file of another version is rebuilt.
STATS_VERSION = 1

# Tag of the random stream of the class / image draw, so that it is independent of the augmentation streams
# derived from the same per-sample seed.
_DRAW_STREAM = 0x52435321


def _check_number(field: str, value: Any, integer: bool, low: float, strict: bool) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    ok = ok and (value > low if strict else value >= low)
    if not ok:
        kind = "an int" if integer else "a number"
        raise ValueError(
            f"RareClassSampling.{field}: expected {kind} {'>' if strict else '>='} {low}, got {value!r}"
        )


@dataclass(frozen=True)
class RareClassSampling:
    """Options of rare-class sampling (DAFormer's ``rare_class_sampling`` config; defaults = its GTA5 values).

    Args:
        temperature: T of ``p(c) = softmax((1 - f_c) / T)``; smaller T favours rare classes more (DAFormer: 0.01).
        min_pixels: An image enters class c's pool only with more than this many pixels of c in its stored
            label map (DAFormer: 3000).
        min_crop_ratio: The crop is re-drawn until it holds more than ``min_crop_ratio * min_pixels`` pixels of
            the drawn class (DAFormer: 0.5); 0 keeps the first crop.
        max_redraws: Crop re-draws at most; after the last one the crop is kept unchecked (DAFormer: 10).
        stats_file: Class statistics file (``wsss-data class-stats``), relative to the source root unless
            absolute. None: ``<root>/class_stats_<split>.npz``, built when missing or stale.

    Raises:
        ValueError: a value of the wrong type or out of range; the message names the field.
    """

    temperature: float = 0.01
    min_pixels: int = 3000
    min_crop_ratio: float = 0.5
    max_redraws: int = 10
    stats_file: str | None = None

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, integer=False, low=0, strict=True)
        _check_number("min_pixels", self.min_pixels, integer=True, low=0, strict=False)
        _check_number("min_crop_ratio", self.min_crop_ratio, integer=False, low=0, strict=False)
        _check_number("max_redraws", self.max_redraws, integer=True, low=0, strict=False)
        if self.stats_file is not None:
            path = os.fspath(self.stats_file) if isinstance(self.stats_file, os.PathLike) else self.stats_file
            if not isinstance(path, str) or not path:
                raise ValueError(
                    f"RareClassSampling.stats_file: expected a path or None, got {self.stats_file!r}"
                )
            object.__setattr__(self, "stats_file", path)

    @property
    def min_crop_pixels(self) -> float:
        """Pixels of the drawn class a crop must exceed to be kept."""
        return self.min_crop_ratio * self.min_pixels


@dataclass(frozen=True)
class ClassStats:
    """Per-image class pixel counts of a split, as stored in a statistics file.

    Attributes:
        ids: sample ids, in the split's order.
        counts: ``(N, C)`` int64 pixel counts of each class in each stored (unresized) label map.
        num_classes: C.
        label_mtime: modification time of the newest label file when the counts were taken.
        version: file format version (:data:`STATS_VERSION`).
    """

    ids: list[str]
    counts: np.ndarray
    num_classes: int
    label_mtime: float
    version: int = STATS_VERSION


# ---- counting ------------------------------------------------------------------------------------------
def class_pixel_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class in one label map (ignored pixels are not counted).

    Args:
        mask: ``(H, W)`` uint8 train ids, 255 = ignore.
        num_classes: C.

    Returns:
        ``(C,)`` int64 counts.
    """
    return np.bincount(mask.ravel(), minlength=256)[:num_classes].astype(np.int64)


def count_split(source: SegmentationSource, num_workers: int = 0) -> np.ndarray:
    """Class pixel counts of every label map of a split.

    Args:
        source: a split with masks.
        num_workers: threads reading the label maps (0 = this thread); decoding releases the GIL.

    Returns:
        ``(N, C)`` int64, rows in ``source.ids`` order.
    """
    num_classes = source.info.num_classes
    rows = map_masks(source, lambda mask: class_pixel_counts(mask, num_classes), num_workers)
    return np.stack(rows) if rows else np.zeros((0, num_classes), dtype=np.int64)


def newest_label_mtime(source: SegmentationSource) -> float:
    """Modification time of the newest label file of a split (0 when it has none)."""
    newest = 0.0
    for sample_id in source.ids:
        path = source.mask_path(sample_id)
        if path is not None and path.is_file():
            newest = max(newest, path.stat().st_mtime)
    return newest


def compute_class_stats(source: SegmentationSource, num_workers: int = 0) -> ClassStats:
    """:class:`ClassStats` of a split, read from its label maps."""
    if not source.has_masks:
        raise ValueError(f"class statistics need masks; {source!r} has none")
    mtime = newest_label_mtime(source)
    counts = count_split(source, num_workers)
    return ClassStats(list(source.ids), counts, source.info.num_classes, mtime)


# ---- files ---------------------------------------------------------------------------------------------
def split_label(split: str) -> str:
    """File-name-safe label of a split (a split may be a list-file path)."""
    label = Path(split).stem if split.endswith(".txt") or "/" in split else split
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def default_stats_path(root: str | Path, split: str) -> Path:
    """``<root>/class_stats_<split>.npz``."""
    return Path(root) / f"class_stats_{split_label(split)}.npz"


def save_class_stats(path: str | Path, stats: ClassStats) -> Path:
    """Write ``stats`` to ``path`` (``.npz``) via a temporary file, so readers never see half a file."""
    return atomic_savez(
        path,
        version=stats.version,
        ids=np.asarray(stats.ids, dtype=np.str_),
        counts=np.asarray(stats.counts, dtype=np.int64),
        num_classes=stats.num_classes,
        label_mtime=stats.label_mtime,
    )


def load_class_stats(path: str | Path) -> ClassStats:
    """Read a statistics file written by :func:`save_class_stats`.

    Raises:
        ValueError: the file cannot be read or lacks a field (the message names the file).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            counts = np.asarray(data["counts"], dtype=np.int64)
            stats = ClassStats(
                ids=[str(i) for i in data["ids"].tolist()],
                counts=counts,
                num_classes=int(data["num_classes"]),
                label_mtime=float(data["label_mtime"]),
                version=int(data["version"]),
            )
    except KeyError as exc:
        raise ValueError(f"class statistics file {path}: field {exc.args[0]!r} is missing") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"class statistics file {path} cannot be read: {exc}") from None
    if counts.ndim != 2 or counts.shape != (len(stats.ids), stats.num_classes):
        raise ValueError(
            f"class statistics file {path}: counts has shape {counts.shape}, expected "
            f"({len(stats.ids)}, {stats.num_classes}) (ids x num_classes)"
        )
    return stats


def mismatch(stats: ClassStats, source: SegmentationSource) -> str | None:
    """Why ``stats`` do not describe ``source`` (field, value and what was expected), or None if they do."""
    if stats.version != STATS_VERSION:
        return f"version is {stats.version}, expected {STATS_VERSION}"
    if stats.num_classes != source.info.num_classes:
        return f"num_classes is {stats.num_classes}, expected {source.info.num_classes} ({source.info.name})"
    if stats.ids != list(source.ids):
        missing = sorted(set(source.ids) - set(stats.ids))[:3]
        extra = sorted(set(stats.ids) - set(source.ids))[:3]
        return (
            f"ids differ from the {len(source.ids)} ids of split {source.split!r} under {source.root} "
            f"({len(stats.ids)} stored; missing e.g. {missing}, extra e.g. {extra}, or another order)"
        )
    return None


def resolve_class_stats(
    source: SegmentationSource,
    stats_file: Path | None,
    fallback: Path,
    num_workers: int = 0,
    log: Callable[[str], None] = print,
) -> ClassStats:
    """The class statistics of ``source``: from a file when it is up to date, else counted and written.

    Args:
        source: the source training split (with masks).
        stats_file: a file the user named; it must exist and match ``source`` (it is never rebuilt).
        fallback: where the statistics go when the dataset root is not writable (the datamodule's cache).
        num_workers: threads counting pixels.
        log: receives one line when a file is written or rebuilt.

    Returns:
        Statistics whose ids are ``source.ids``.

    Raises:
        FileNotFoundError: ``stats_file`` does not exist.
        ValueError: ``stats_file`` has another version, class count or ids than ``source`` (the message names
            the file, the field and what was expected).
    """
    if stats_file is not None:
        if not stats_file.is_file():
            raise FileNotFoundError(
                f"rare_class_sampling.stats_file {stats_file} does not exist; write it with `wsss-data "
                f"class-stats --dataset {source.info.name} --root {source.root} --split {source.split}`"
            )
        stats = load_class_stats(stats_file)
        problem = mismatch(stats, source)
        if problem is not None:
            raise ValueError(f"class statistics file {stats_file}: {problem}")
        return stats
    beside = default_stats_path(source.root, source.split)
    cached = fallback / f"class_stats_{source.info.name}_{split_label(source.split)}.npz"
    newest = newest_label_mtime(source)
    for path in (beside, cached):
        if not path.is_file():
            continue
        try:
            stats = load_class_stats(path)
            problem = mismatch(stats, source)
        except ValueError as exc:
            problem = str(exc)
        if problem is None and newest > stats.label_mtime:
            problem = "a label file is newer than the statistics"
        if problem is None:
            return stats
        log(f"wsss: class statistics {path} are stale ({problem}); rebuilding them")
        break
    stats = compute_class_stats(source, num_workers)
    if os.access(source.root, os.W_OK):
        save_class_stats(beside, stats)
        log(f"wsss: wrote class statistics of {len(stats.ids)} images to {beside}")
    else:
        save_class_stats(cached, stats)
        log(f"wsss: dataset root {source.root} is not writable; wrote class statistics to {cached}")
    return stats


# ---- sampling ------------------------------------------------------------------------------------------
def rare_class_probabilities(
    counts: np.ndarray, min_pixels: int, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling probability of each class, ``p(c) = softmax_c((1 - f_c) / T)``.

    ``f_c`` is class c's share of all counted pixels. The softmax runs over the classes that have at least one
    image with more than ``min_pixels`` pixels of them; other classes (among them the classes absent from the
    statistics) are never drawn. DAFormer (``get_rcs_class_probs``) takes the softmax over the classes present
    at all and asserts that each has a non-empty pool.

    Args:
        counts: ``(N, C)`` per-image class pixel counts.
        min_pixels: pool threshold.
        temperature: T > 0.

    Returns:
        ``(classes, probabilities)``: ``(K,)`` int64 class ids and ``(K,)`` float64 summing to 1.

    Raises:
        ValueError: no class has an image with more than ``min_pixels`` pixels of it.
    """
    counts = np.asarray(counts, dtype=np.int64)
    totals = counts.sum(axis=0).astype(np.float64)
    classes = np.flatnonzero((counts > min_pixels).any(axis=0))
    if classes.size == 0:
        raise ValueError(
            f"rare-class sampling: no class has an image with more than min_pixels={min_pixels} pixels of it "
            f"({counts.shape[0]} images); lower rare_class_sampling.min_pixels"
        )
    freq = totals / totals.sum()
    logits = (1.0 - freq[classes]) / temperature
    weights = np.exp(logits - logits.max())
    return classes.astype(np.int64), weights / weights.sum()


class RareClassSampler:
    """Draws (class, image) pairs for rare-class sampling as a pure function of a seed.

    Args:
        counts: ``(N, C)`` per-image class pixel counts; row i is image i of the split.
        options: the sampling options.

    Attributes:
        classes: ``(K,)`` classes that can be drawn.
        probabilities: ``(K,)`` their probabilities.
        pools: for each drawable class, the rows (images) with more than ``min_pixels`` pixels of it.
    """

    def __init__(self, counts: np.ndarray, options: RareClassSampling) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        self.options = options
        self.classes, self.probabilities = rare_class_probabilities(
            counts, options.min_pixels, options.temperature
        )
        self.pools = [np.flatnonzero(counts[:, c] > options.min_pixels) for c in self.classes]

    def draw(self, seed: int) -> tuple[int, int]:
        """Class c ~ p, then an image uniformly from c's pool.

        Args:
            seed: the sample's seed (e.g. ``key_seed`` of its (seed, epoch, index) key); the same seed always
                gives the same pair.

        Returns:
            ``(class id, row of the image)``.
        """
        rng = np.random.default_rng([seed, _DRAW_STREAM])
        k = int(rng.choice(len(self.classes), p=self.probabilities))
        pool = self.pools[k]
        return int(self.classes[k]), int(pool[rng.integers(len(pool))])
