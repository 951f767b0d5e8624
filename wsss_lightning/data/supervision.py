"""Weaker supervision derived from masks: image tags, clicks, semi-supervised partitions, id lists.

Pure NumPy (no torch): these functions run in data-preparation scripts and dataloader workers alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import ndimage

from wsss_lightning.data.datasets.base import DataError, parse_list_lines

if TYPE_CHECKING:
    from wsss_lightning.data.datasets.base import SegmentationSource

# 8-connectivity: pixels touching diagonally belong to the same object region.
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def tags_from_mask(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Image-level multi-hot tags of the classes present in a mask.

    Args:
        mask: (H, W) integer train ids.
        num_classes: number of classes C.
        ignore_index: label that is not a class.

    Returns:
        (C,) float32 multi-hot over all classes (background included when present).

    Raises:
        ValueError: values outside [0, C) ∪ {ignore_index}.
    """
    present = np.unique(mask)
    present = present[present != ignore_index]
    if present.size and (present.min() < 0 or present.max() >= num_classes):
        raise ValueError(
            f"mask values {present.tolist()} are outside 0..{num_classes - 1} and {ignore_index}"
        )
    tags = np.zeros(num_classes, dtype=np.float32)
    tags[present.astype(np.int64)] = 1.0
    return tags


def build_tags(source: SegmentationSource, num_workers: int = 0) -> dict[str, np.ndarray]:
    """Tags of every sample of a split, computed from its masks.

    Args:
        source: a dataset split with masks.
        num_workers: threads used to read masks (0 = in this thread).

    Returns:
        ``{sample id: (C,) float32 multi-hot}`` in the source's id order.
    """
    num_classes, ignore = source.info.num_classes, source.info.ignore_index
    rows = map_masks(source, lambda mask: tags_from_mask(mask, num_classes, ignore), num_workers)
    return dict(zip(source.ids, rows, strict=True))


def map_masks(
    source: SegmentationSource, fn: Callable[[np.ndarray], np.ndarray], num_workers: int = 0
) -> list[np.ndarray]:
    """``fn`` of every mask of a split, in ``source.ids`` order.

    Args:
        source: a dataset split with masks.
        fn: maps one ``(H, W)`` train-id mask to a row.
        num_workers: threads reading the masks (0 = in this thread); PNG decoding releases the GIL.
    """

    def one(sample_id: str) -> np.ndarray:
        return fn(source.read_mask(sample_id))

    if num_workers > 0:
        with ThreadPoolExecutor(num_workers) as pool:
            return list(pool.map(one, source.ids))
    return [one(sample_id) for sample_id in source.ids]


def save_tags(path: str | Path, tags: Mapping[str, np.ndarray]) -> None:
    """Save tags as ``.npy`` (pickled ``{id: (C,) multi-hot}`` dict) or ``.txt`` (``<id> <class> <class> ...``).

    The ``.txt`` form lists the indices (over all C classes, background included) of the present classes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        table = {k: np.asarray(v, dtype=np.float32) for k, v in tags.items()}
        # A 0-d object array holding the dict: the format np.load(...).item() of WSSS code bases expects.
        np.save(path, np.array(table, dtype=object), allow_pickle=True)
    elif path.suffix == ".txt":
        lines = [
            " ".join([k, *map(str, np.flatnonzero(np.asarray(v) > 0).tolist())]) for k, v in tags.items()
        ]
        path.write_text("\n".join(lines) + "\n")
    else:
        raise ValueError(f"tag file {path} must end in .npy or .txt")


def _load_tags_npy(path: Path, num_classes: int) -> dict[str, np.ndarray]:
    try:
        table = np.load(path, allow_pickle=True).item()
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read tag file {path} (expected a pickled dict saved with np.save): {exc}"
        ) from exc
    out = {}
    for key, row in table.items():
        row = np.asarray(row, dtype=np.float32).reshape(-1)
        if row.size == num_classes - 1:
            # The common WSSS cls_labels_onehot.npy stores foreground classes only: background is always present.
            row = np.concatenate([np.ones(1, dtype=np.float32), row])
        if row.size != num_classes:
            raise DataError(
                f"tag file {path}: row {key!r} has {row.size} entries, expected {num_classes} or "
                f"{num_classes - 1}"
            )
        out[str(key)] = row
    return out


def _load_tags_txt(path: Path, num_classes: int) -> dict[str, np.ndarray]:
    out = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            classes = [int(f) for f in fields[1:]]
        except ValueError:
            raise DataError(
                f"tag file {path} line {lineno}: class indices must be integers, got {line!r}"
            ) from None
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise DataError(
                f"tag file {path} line {lineno}: class indices {bad} outside 0..{num_classes - 1}"
            )
        row = np.zeros(num_classes, dtype=np.float32)
        row[classes] = 1.0
        out[fields[0]] = row
    return out


def load_tags(
    path: str | Path,
    num_classes: int,
    ids: Sequence[str] | None = None,
    add_background: bool = False,
) -> dict[str, np.ndarray]:
    """Load image tags from a ``.npy`` or ``.txt`` tag file.

    Args:
        path: tag file (see :func:`save_tags`; fg-only ``(C-1,)`` ``.npy`` rows get background = 1 prepended).
        num_classes: number of classes C.
        ids: sample ids that must be present (None: return every row).
        add_background: set column 0 to 1 in every row (for files that list foreground classes only).

    Returns:
        ``{sample id: (C,) float32 multi-hot}`` for ``ids`` (in that order) or all rows.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: malformed file or ids missing from it (the message names the file and the ids).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tag file {path} does not exist")
    if path.suffix == ".npy":
        table = _load_tags_npy(path, num_classes)
    elif path.suffix == ".txt":
        table = _load_tags_txt(path, num_classes)
    else:
        raise DataError(f"tag file {path} must end in .npy or .txt")
    if ids is not None:
        missing = [i for i in ids if i not in table]
        if missing:
            more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
            raise DataError(f"tag file {path} has no tags for ids {missing[:10]}{more}")
        table = {i: table[i] for i in ids}
    if add_background:
        for row in table.values():
            row[0] = 1.0
    return table


def _click_in_region(
    region: np.ndarray, dist: np.ndarray, rng: np.random.Generator, placement: Literal["center", "random"]
) -> tuple[int, int]:
    """One pixel of a boolean region (within a crop), either deepest inside it or uniformly at random."""
    ys, xs = np.nonzero(region)
    if placement == "random":
        k = int(rng.integers(len(ys)))
    else:
        depth = dist[ys, xs]
        best = np.flatnonzero(depth == depth.max())
        k = int(best[rng.integers(len(best))])
    return int(ys[k]), int(xs[k])


def clicks_from_mask(
    mask: np.ndarray,
    num_classes: int,
    rng: np.random.Generator,
    background_clicks: int = 1,
    ignore_index: int = 255,
    min_region: int = 1,
    background_class: int | None = 0,
    placement: Literal["center", "random"] = "center",
) -> np.ndarray:
    """Simulated point (click) annotation of a mask.

    Every connected region (8-connectivity) of every object class receives one click; the background
    receives ``background_clicks`` clicks at random background pixels.

    Args:
        mask: (H, W) integer train ids.
        num_classes: number of classes C.
        rng: random generator (the result is a deterministic function of its state).
        background_clicks: clicks placed on ``background_class`` pixels.
        ignore_index: label that is not a class.
        min_region: regions with fewer pixels get no click.
        background_class: the background's train id, or None when every class is an object class
            (e.g. Cityscapes), in which case ``background_clicks`` is unused.
        placement: ``"center"``: the region pixel farthest from the region border (ties broken with ``rng``);
            ``"random"``: a uniformly random region pixel.

    Returns:
        (H, W) uint8: the class id at click pixels, ``ignore_index`` elsewhere.
    """
    clicks = np.full(mask.shape, ignore_index, dtype=np.uint8)
    classes = [int(c) for c in np.unique(mask) if c != ignore_index and 0 <= c < num_classes]
    for cls in classes:
        if cls == background_class:
            continue
        binary = mask == cls
        labels, _ = ndimage.label(binary, structure=_CONNECTIVITY)
        # Zero padding so that the image edge counts as a region border.
        dist = (
            ndimage.distance_transform_edt(np.pad(binary, 1))[1:-1, 1:-1] if placement == "center" else binary
        )
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            region = labels[box] == index
            if region.sum() < min_region:
                continue
            y, x = _click_in_region(region, dist[box], rng, placement)
            clicks[box[0].start + y, box[1].start + x] = cls
    if background_class is not None and background_clicks > 0:
        flat = np.flatnonzero(mask.reshape(-1) == background_class)
        if flat.size:
            chosen = rng.choice(flat, size=min(background_clicks, flat.size), replace=False)
            clicks.reshape(-1)[chosen] = background_class
    return clicks


def read_id_list(path: str | Path) -> list[str]:
    """Read sample ids (first token of each non-empty line).

    Raises:
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list file {path} does not exist")
    return parse_list_lines(path.read_text().splitlines())


def write_id_list(path: str | Path, ids: Sequence[str]) -> None:
    """Write one id per line (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def make_semi_split(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ids into a labeled and an unlabeled part.

    The labeled part has ``ceil(len(ids) * fraction)`` ids (as the usual VOC partitions: 1/16 of 10582 = 662),
    drawn with ``numpy.random.default_rng(seed)``; both parts keep the order of ``ids``.

    Args:
        ids: all training ids.
        fraction: labeled fraction in (0, 1].
        seed: random seed.

    Returns:
        ``(labeled, unlabeled)`` id lists.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
    n_labeled = min(len(ids), math.ceil(len(ids) * fraction - 1e-9))
    chosen = np.zeros(len(ids), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(ids))[:n_labeled]] = True
    labeled = [i for i, c in zip(ids, chosen, strict=True) if c]
    unlabeled = [i for i, c in zip(ids, chosen, strict=True) if not c]
    return labeled, unlabeled
