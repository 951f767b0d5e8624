"""Small synthetic datasets written in the real on-disk layouts of the supported datasets.

Object layouts (``voc``, ``coco``, ``coco_stuff``): 1-3 objects per image on a textured, class-neutral
background. Each class has its own colour, texture and shape family, so a classifier trained on image tags
can localise it (CAM) and a small CNN can segment it. Street layouts (``cityscapes``, ``gta5``): street-like
scenes with the 19 Cityscapes classes drawn with the same layout statistics but rendered in two styles (dull
and cool vs saturated, warm and blotchy), which gives a real domain gap.

Everything is vectorised NumPy and deterministic given the seed: every image draws from its own generator
seeded by ``(seed, split, index)``.

``difficulty="hard"`` (:mod:`wsss_lightning.data.synthetic_hard`) makes the task realistic for comparing
label-efficient methods: shared colours, thin parts, clutter, long-tailed classes, per-image lighting.

:func:`write_whats_the_point_json` writes click files of a VOC tree in the "What's the Point" JSON format
(Seminar / Gated-CRF), for testing ``wsss-data clicks-from-json``.
"""

from __future__ import annotations

import colorsys
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from scipy import ndimage

from wsss_lightning.data.classes import (
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_LABELID_PALETTE,
    DATASET_INFO,
    IGNORE_INDEX,
    DatasetInfo,
    flat_palette,
)
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import write_index_png
from wsss_lightning.data.prepare import sample_rng, write_partitions
from wsss_lightning.data.supervision import clicks_from_mask, save_tags, tags_from_mask, write_id_list

Layout = Literal["voc", "coco", "coco_stuff", "cityscapes", "gta5"]
LAYOUTS: tuple[Layout, ...] = ("voc", "coco", "coco_stuff", "cityscapes", "gta5")
Difficulty = Literal["easy", "hard"]
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "hard")
_OBJECT_LAYOUTS = ("voc", "coco", "coco_stuff")
# (num_train, num_val) and (H, W) defaults: a few seconds to write on a laptop CPU, enough to learn from.
_DEFAULT_COUNTS = {name: (200, 40) if name in _OBJECT_LAYOUTS else (120, 30) for name in LAYOUTS}
_DEFAULT_SIZE = {name: (128, 128) if name in _OBJECT_LAYOUTS else (96, 192) for name in LAYOUTS}
_MAX_ATTEMPTS = 20  # redraws of an image whose planned classes did not all stay visible


def generate(
    layout: Layout,
    out: str | Path,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    image_size: tuple[int, int] | None = None,
    difficulty: Difficulty = "easy",
) -> Path:
    """Write a synthetic dataset in the real layout of ``layout`` under ``out``.

    Defaults: 200 train / 40 val images of 128x128 for the object layouts, 120 / 30 of 96x192 for the
    street layouts. Every class appears in the val split as long as it holds enough objects
    (3 * num_val >= number of object classes).

    Args:
        layout: which dataset layout to write.
        out: dataset root to create.
        seed: random seed; the output is a deterministic function of all arguments.
        num_train: number of training images.
        num_val: number of validation images (``test`` list for coco_stuff).
        image_size: (H, W) of every image.
        difficulty: ``"easy"`` (each class has its own colour, texture and shape; a small CNN nearly solves
            it) or ``"hard"`` (see :mod:`wsss_lightning.data.synthetic_hard`).

    Returns:
        The dataset root ``out``.
    """
    if layout not in LAYOUTS:
        raise KeyError(f"unknown synthetic layout {layout!r}; valid layouts: {list(LAYOUTS)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"unknown difficulty {difficulty!r}; valid difficulties: {list(DIFFICULTIES)}")
    default_train, default_val = _DEFAULT_COUNTS[layout]
    n_train = default_train if num_train is None else num_train
    n_val = default_val if num_val is None else num_val
    size = _DEFAULT_SIZE[layout] if image_size is None else (int(image_size[0]), int(image_size[1]))
    if n_train < 1 or n_val < 1 or min(size) < 16:
        raise ValueError(
            f"need >= 1 train and val image of at least 16x16 pixels, got {n_train}, {n_val}, {size}"
        )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _WRITERS[layout](root, seed, n_train, n_val, size, difficulty)
    return root


def generate_once(
    layout: Layout,
    out: str | Path,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    image_size: tuple[int, int] | None = None,
    difficulty: Difficulty = "easy",
) -> Path:
    """:func:`generate` unless ``out`` is already there, for datasets generated once and reused by later runs.

    An empty ``out`` counts as missing. The set is written into a temporary folder beside ``out`` (``.<name>.*``)
    and renamed to ``out`` when complete, so an interrupted generation leaves no partial ``out`` that a later call
    would take for the set, and two processes generating it at once both end with the complete set (the first
    rename wins; the sets are identical).
    A process killed outright (SIGKILL) leaves its temporary folder behind; nothing reads it, delete it by hand.
    The arguments of an existing ``out`` are not checked: name the folder after them. A folder written directly by
    :func:`generate` (``wsss-data synthetic``) and interrupted is not detected either.
    """
    root = Path(out)
    if _filled(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}.", dir=root.parent) as tmp:
        staged = generate(layout, Path(tmp) / root.name, seed, num_train, num_val, image_size, difficulty)
        try:
            staged.rename(root)  # replaces an empty folder
        except OSError:
            if not _filled(root):  # not another process's complete set: a real failure
                raise
    return root


def _filled(folder: Path) -> bool:
    """Whether ``folder`` is a folder with something in it."""
    return folder.is_dir() and any(folder.iterdir())


# =============================================================================================================
# Object scenes (VOC / COCO / COCO-Stuff)
# =============================================================================================================
TEXTURES = ("stripes_h", "stripes_v", "diagonal", "checker", "dots", "solid")
SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "cross", "ring")


@dataclass(frozen=True)
class ClassStyle:
    """Appearance of one object class: RGB colour (0..255), texture, shape family and texture period."""

    colour: tuple[float, float, float]
    texture: str
    shape: str
    period: float  # in units of min(H, W)


def object_class_styles(num_object_classes: int) -> list[ClassStyle]:
    """Distinct appearances for the object classes 1..K (index 0 of the result is class 1).

    Hues follow the golden ratio, so neighbouring class ids get far-apart colours; (texture, shape) pairs are
    all different for the first 36 classes and hue separates the rest.
    """
    styles = []
    for k in range(num_object_classes):
        hue = (k * 0.618034) % 1.0
        sat = 0.95 - 0.2 * ((k // 5) % 2)
        val = 0.95 - 0.25 * ((k // 2) % 2)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        styles.append(
            ClassStyle(
                colour=(255 * r, 255 * g, 255 * b),
                texture=TEXTURES[k % len(TEXTURES)],
                shape=SHAPES[(k // len(TEXTURES) + k) % len(SHAPES)],
                period=(0.07, 0.1, 0.13)[(k // 3) % 3],
            )
        )
    return styles


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float32), xx.astype(np.float32)


def texture_pattern(texture: str, yy: np.ndarray, xx: np.ndarray, period: float) -> np.ndarray:
    """(H, W) float32 pattern in [0, 1] (1 = pattern colour) of a texture with the given period in pixels."""
    phase = 2 * np.pi / period
    if texture == "stripes_h":
        return (np.sin(yy * phase) > 0).astype(np.float32)
    if texture == "stripes_v":
        return (np.sin(xx * phase) > 0).astype(np.float32)
    if texture == "diagonal":
        diagonal: np.ndarray = (np.sin((xx + yy) * phase / np.sqrt(2)) > 0).astype(np.float32)
        return diagonal
    if texture == "checker":
        return ((np.floor(yy / (period / 2)) + np.floor(xx / (period / 2))) % 2).astype(np.float32)
    if texture == "dots":
        dy, dx = (yy % period) - period / 2, (xx % period) - period / 2
        return (dy**2 + dx**2 < (period / 3.2) ** 2).astype(np.float32)
    if texture == "solid":
        return np.zeros_like(yy)
    raise ValueError(f"unknown texture {texture!r}; valid: {TEXTURES}")


def shape_mask(
    shape: str,
    yy: np.ndarray,
    xx: np.ndarray,
    centre: tuple[float, float],
    radii: tuple[float, float],
    angle: float,
) -> np.ndarray:
    """(H, W) bool mask of a shape with the given centre (y, x), half-extents (ry, rx) and rotation (radians)."""
    cos: np.float64 = np.cos(angle)
    sin: np.float64 = np.sin(angle)
    dy, dx = yy - centre[0], xx - centre[1]
    v = (cos * dy - sin * dx) / radii[0]
    u = (sin * dy + cos * dx) / radii[1]
    if shape == "ellipse":
        return u**2 + v**2 <= 1
    if shape == "rectangle":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "triangle":
        return (v <= 0.8) & (v >= 2.0 * np.abs(u) - 1.0)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1)) | ((np.abs(u) <= 1) & (np.abs(v) <= 0.33))
    if shape == "ring":
        r2 = u**2 + v**2
        return (r2 <= 1) & (r2 >= 0.3)
    raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(H, W) float32 low-frequency noise (a ``cells`` x ``cells`` Gaussian grid upsampled bilinearly)."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def neutral_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) float32 low-saturation textured background, independent of the classes in the image."""
    base = rng.uniform(70, 185) + rng.normal(0, 6, size=3)
    blobs = smooth_noise(rng, h, w, cells=int(rng.integers(3, 7))) * rng.uniform(12, 30)
    grain = smooth_noise(rng, h, w, cells=max(4, min(h, w) // 6)) * rng.uniform(4, 10)
    lum = blobs + grain + rng.normal(0, 4, size=(h, w)).astype(np.float32)
    return base[None, None, :].astype(np.float32) + lum[..., None]


def _place_object(
    rng: np.random.Generator, h: int, w: int, centres: list[tuple[float, float, float]]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centre and half-extents of a new object, kept away from the earlier ones so that none disappears."""
    side = min(h, w)
    for _ in range(30):
        r = rng.uniform(0.14, 0.27) * side
        aspect = rng.uniform(0.75, 1.33)
        ry, rx = r * aspect, r / aspect
        cy, cx = rng.uniform(ry * 0.7, h - ry * 0.7), rng.uniform(rx * 0.7, w - rx * 0.7)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (0.9 * (r + s)) ** 2 for y, x, s in centres):
            break
    centres.append((cy, cx, r))
    return (cy, cx), (ry, rx)


def ignore_boundaries(mask: np.ndarray) -> np.ndarray:
    """Set the pixels touching a different label (4-neighbourhood) to 255, as VOC's object boundaries."""
    edge = np.zeros(mask.shape, dtype=bool)
    vert = mask[1:, :] != mask[:-1, :]
    horiz = mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= vert
    edge[:-1, :] |= vert
    edge[:, 1:] |= horiz
    edge[:, :-1] |= horiz
    out = mask.copy()
    out[edge] = IGNORE_INDEX
    return out


def object_scene(
    rng: np.random.Generator, size: tuple[int, int], classes: list[int], styles: list[ClassStyle]
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image holding an object of each of ``classes`` (train ids >= 1).

    Returns:
        ``(image, mask)``: (H, W, 3) uint8 and (H, W) uint8 train ids (0 = background).
    """
    h, w = size
    yy, xx = _grid(h, w)
    image = neutral_background(rng, h, w)
    mask = np.zeros((h, w), dtype=np.uint8)
    centres: list[tuple[float, float, float]] = []
    for cls in classes:
        style = styles[cls - 1]
        centre, radii = _place_object(rng, h, w, centres)
        region = shape_mask(style.shape, yy, xx, centre, radii, rng.uniform(-0.35, 0.35))
        pattern = texture_pattern(style.texture, yy, xx, style.period * min(h, w) * rng.uniform(0.85, 1.15))
        colour = np.asarray(style.colour, dtype=np.float32) * rng.uniform(0.85, 1.1)
        shading = 1.0 + 0.08 * smooth_noise(rng, h, w, 2)
        pixels = colour * (1.0 - 0.5 * pattern[..., None]) * shading[..., None]
        image[region] = pixels[region]
        mask[region] = cls
    image += rng.normal(0, 3, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _all_visible(mask: np.ndarray, classes: list[int], min_pixels: int) -> bool:
    counts = np.bincount(mask.reshape(-1), minlength=256)
    return all(counts[c] >= min_pixels for c in classes)


def plan_classes(rng: np.random.Generator, num_images: int, num_object_classes: int) -> list[list[int]]:
    """Object classes of each image: 1-3 per image, cycling through shuffled rounds of all classes.

    The rounds keep classes balanced; when the split has fewer objects than classes, images are given
    more objects (up to 3) so that every class appears at least once.
    """
    counts = rng.integers(1, 4, size=num_images)
    while counts.sum() < num_object_classes and counts.min() < 3:
        counts[np.argmin(counts)] += 1
    rounds = -(-int(counts.sum()) // num_object_classes)
    sequence = np.concatenate([rng.permutation(num_object_classes) + 1 for _ in range(rounds)])
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return [sequence[bounds[i] : bounds[i + 1]].tolist() for i in range(num_images)]


def object_split(
    seed: int,
    split_index: int,
    num_images: int,
    size: tuple[int, int],
    info: DatasetInfo,
    boundaries: bool,
    difficulty: Difficulty = "easy",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images and masks of one split of an object layout."""
    if difficulty == "hard":
        # Imported here: the hard module builds on this module's primitives.
        from wsss_lightning.data.synthetic_hard import hard_object_split

        hard = hard_object_split(seed, split_index, num_images, size, info.num_classes - 1)
        return [(image, ignore_boundaries(mask) if boundaries else mask) for image, mask in hard]
    styles = object_class_styles(info.num_classes - 1)
    plans = plan_classes(np.random.default_rng([seed, split_index, 10**6]), num_images, info.num_classes - 1)
    min_pixels = max(12, min(size) ** 2 // 150)
    samples = []
    for index, classes in enumerate(plans):
        for attempt in range(_MAX_ATTEMPTS):
            image, mask = object_scene(
                np.random.default_rng([seed, split_index, index, attempt]), size, classes, styles
            )
            if _all_visible(mask, classes, min_pixels):
                break
        samples.append((image, ignore_boundaries(mask) if boundaries else mask))
    return samples


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=92)


def _write_voc(
    root: Path, seed: int, n_train: int, n_val: int, size: tuple[int, int], difficulty: Difficulty
) -> None:
    info = DATASET_INFO["voc"]
    train_ids = [f"2007_{i:06d}" for i in range(n_train)]
    val_ids = [f"2008_{i:06d}" for i in range(n_val)]
    lists = root / "ImageSets" / "Segmentation"
    tags = {}
    for split_index, ids in enumerate((train_ids, val_ids)):
        samples = object_split(seed, split_index, len(ids), size, info, True, difficulty)
        for sample_id, (image, mask) in zip(ids, samples, strict=True):
            _save_jpeg(root / "JPEGImages" / f"{sample_id}.jpg", image)
            write_index_png(root / "SegmentationClassAug" / f"{sample_id}.png", mask, info.palette_bytes())
            tags[sample_id] = tags_from_mask(mask, info.num_classes)
            if split_index == 0:
                clicks = clicks_from_mask(mask, info.num_classes, sample_rng(seed, sample_id))
                write_index_png(root / "SegmentationClicks" / f"{sample_id}.png", clicks)
    write_id_list(lists / "train_aug.txt", train_ids)
    write_id_list(lists / "train.txt", train_ids[: max(1, n_train // 2)])
    write_id_list(lists / "val.txt", val_ids)
    # VOC test images come without masks: reuse a few val images so that prediction can be exercised.
    write_id_list(lists / "test.txt", val_ids[: min(8, n_val)])
    write_partitions(train_ids, root / "splits", seed=seed)
    save_tags(root / "cls_labels.txt", tags)


def _write_object_splits(
    root: Path,
    info_name: str,
    splits: tuple[str, str],
    sample_id: Callable[[str, int, int], str],
    folders: tuple[str, str, str],
    seed: int,
    counts: tuple[int, int],
    size: tuple[int, int],
    difficulty: Difficulty,
) -> None:
    """Write the two splits of an object layout: JPEG images, palette masks and one list file per split.

    ``folders`` is (images, masks, lists) under ``root``; ``sample_id(split, split_index, i)`` names sample i.
    """
    info = DATASET_INFO[info_name]
    image_dir, mask_dir, list_dir = folders
    for split_index, (split, n) in enumerate(zip(splits, counts, strict=True)):
        ids = [sample_id(split, split_index, i) for i in range(n)]
        samples = object_split(seed, split_index, n, size, info, False, difficulty)
        for name, (image, mask) in zip(ids, samples, strict=True):
            _save_jpeg(root / image_dir / f"{name}.jpg", image)
            write_index_png(root / mask_dir / f"{name}.png", mask, info.palette_bytes())
        write_id_list(root / list_dir / f"{split}.txt", ids)


def _write_coco(
    root: Path, seed: int, n_train: int, n_val: int, size: tuple[int, int], difficulty: Difficulty
) -> None:
    _write_object_splits(
        root, "coco", ("train", "val"), lambda split, _, i: f"COCO_{split}2014_{i + 1:012d}",
        ("JPEGImages", "SegmentationClass", "ImageSets"), seed, (n_train, n_val), size, difficulty,
    )  # fmt: skip


def _write_coco_stuff(
    root: Path, seed: int, n_train: int, n_val: int, size: tuple[int, int], difficulty: Difficulty
) -> None:
    _write_object_splits(
        root, "coco_stuff", ("train", "test"), lambda _, k, i: f"COCO_train2014_{k * 10**6 + i + 1:012d}",
        ("images", "annotations", "imageLists"), seed, (n_train, n_val), size, difficulty,
    )  # fmt: skip


def _click_coordinate(rng: np.random.Generator, pixel: int) -> float | int:
    """A coordinate that rounds (``floor(v + 0.5)``) to ``pixel``: a float near it, sometimes the int itself."""
    if rng.random() < 0.2:
        return int(pixel)
    return round(float(pixel) + float(rng.uniform(-0.45, 0.45)), 3)


def write_whats_the_point_json(
    root: str | Path,
    split: str,
    out_fg: str | Path,
    out_bg: str | Path,
    seed: int = 0,
    background_clicks: int = 2,
    outside_clicks: int = 0,
) -> tuple[Path, Path]:
    """Write click files in the "What's the Point" JSON format of Seminar / Gated-CRF for a synthetic VOC tree.

    The foreground file holds one click per connected object region (8-connectivity) of each class,
    ``{"x": col, "y": row, "cls": 1..20, "rank": region index within its class (1, 2, ...)}``; the background
    file holds ``background_clicks`` clicks on background pixels per image, ``{"x", "y", "cls": 0}``. Like the
    real files, most coordinates are non-integer floats (within 0.45 px of the pixel, so they round back to
    it) and some are ints. With ``outside_clicks = n`` the first n images also get a foreground click far
    outside the image (``x = W + 5.5``, dropped by the conversion) and a background click at ``(x, y) =
    (W, 0)``, one past the last column as some real background clicks are (clamped to the pixel (0, W - 1)).

    Args:
        root: a VOC tree written by :func:`generate` (or any VOC tree with masks).
        split: split whose images get clicks (e.g. ``"train_aug"``).
        out_fg: foreground click file to write.
        out_bg: background click file to write.
        seed: random seed; each image draws from its own generator keyed by (seed, id).
        background_clicks: background clicks per image (fewer where the background is smaller).
        outside_clicks: number of images given the two out-of-image clicks described above.

    Returns:
        ``(out_fg, out_bg)``.
    """
    source = build_source("voc", root, split)
    foreground: dict[str, list[dict[str, Any]]] = {}
    background: dict[str, list[dict[str, Any]]] = {}
    for index, sample_id in enumerate(source.ids):
        mask = source.read_mask(sample_id)
        height, width = mask.shape
        rng = sample_rng(seed, sample_id)
        fg: list[dict[str, Any]] = []
        for cls in np.unique(mask).tolist():
            if cls in (0, IGNORE_INDEX):
                continue
            labels, n_regions = ndimage.label(mask == cls, structure=np.ones((3, 3), dtype=bool))
            for rank in range(1, n_regions + 1):
                ys, xs = np.nonzero(labels == rank)
                k = int(rng.integers(len(ys)))
                fg.append(
                    {
                        "x": _click_coordinate(rng, int(xs[k])),
                        "y": _click_coordinate(rng, int(ys[k])),
                        "cls": int(cls),
                        "rank": rank,
                    }
                )
        ys, xs = np.nonzero(mask == 0)
        chosen: list[int] = rng.permutation(len(ys))[: min(background_clicks, len(ys))].tolist()
        bg: list[dict[str, Any]] = [
            {"x": _click_coordinate(rng, int(xs[k])), "y": _click_coordinate(rng, int(ys[k])), "cls": 0}
            for k in chosen
        ]
        if index < outside_clicks:
            fg.append({"x": width + 5.5, "y": height / 2, "cls": fg[0]["cls"] if fg else 1, "rank": 1})
            bg.append({"x": float(width), "y": 0.0, "cls": 0})
        foreground[sample_id] = fg
        background[sample_id] = bg
    paths = (Path(out_fg), Path(out_bg))
    for path, table in zip(paths, (foreground, background), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table))
    return paths


# =============================================================================================================
# Street scenes (Cityscapes / GTA5). Scenes are drawn in Cityscapes *label ids*, then rendered.
# =============================================================================================================
EGO, GROUND, ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE = 1, 6, 7, 8, 11, 12, 13, 17
LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, RIDER = 19, 20, 21, 22, 23, 24, 25
CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = 26, 27, 28, 31, 32, 33
#: Label ids that not every scene holds; val scenes cycle through them so every class is evaluated.
RARE_LABELS = (WALL, FENCE, LIGHT, SIGN, TERRAIN, RIDER, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE)


def _box(lab: np.ndarray, y0: float, y1: float, x0: float, x1: float, value: int) -> None:
    h, w = lab.shape
    ys, ye = int(np.clip(round(y0), 0, h)), int(np.clip(round(y1), 0, h))
    xs, xe = int(np.clip(round(x0), 0, w)), int(np.clip(round(x1), 0, w))
    lab[ys:ye, xs:xe] = value


def _ellipse(lab: np.ndarray, cy: float, cx: float, ry: float, rx: float, value: int) -> None:
    yy, xx = np.ogrid[0 : lab.shape[0], 0 : lab.shape[1]]
    lab[((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1] = value


@dataclass
class StreetGeometry:
    """Where the ground is: horizon row, vanishing column and road / sidewalk half-widths at the bottom row."""

    h: int
    w: int
    horizon: int
    vanish_x: float
    road: float
    sidewalk: float

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row (apparent size of things standing at row y)."""
        return float(np.clip((y - self.horizon) / (self.h - self.horizon), 0.0, 1.0))

    def road_edges(self, y: float) -> tuple[float, float]:
        """Left and right road edge columns at row y."""
        half = self.depth(y) * self.road
        return self.vanish_x - half, self.vanish_x + half

    def sidewalk_x(self, y: float, rng: np.random.Generator) -> float:
        """A column on the left or right sidewalk at row y."""
        t = self.depth(y)
        offset = t * (self.road + rng.uniform(0.2, 0.8) * self.sidewalk)
        sign: float = rng.choice([-1.0, 1.0])
        return self.vanish_x + offset * sign


def _draw_ground(lab: np.ndarray, rng: np.random.Generator, geo: StreetGeometry, extras: set[int]) -> None:
    rows = np.arange(geo.h, dtype=np.float32)[:, None]
    cols = np.arange(geo.w, dtype=np.float32)[None, :]
    t = np.clip((rows - geo.horizon) / (geo.h - geo.horizon), 0, 1)
    dist = np.abs(cols - geo.vanish_x)
    below = rows >= geo.horizon
    outside = TERRAIN if TERRAIN in extras else (GROUND if rng.random() < 0.3 else SIDEWALK)
    lab[geo.horizon :] = outside
    lab[below & (dist <= t * (geo.road + geo.sidewalk) + 1)] = SIDEWALK
    lab[below & (dist <= t * geo.road + 1)] = ROAD


def _draw_skyline(lab: np.ndarray, rng: np.random.Generator, geo: StreetGeometry, extras: set[int]) -> None:
    x = 0.0
    while x < geo.w:
        width = rng.uniform(0.08, 0.25) * geo.w
        kind = rng.choice(3, p=[0.6, 0.3, 0.1])
        if kind == 0:
            _box(lab, geo.horizon * rng.uniform(0.05, 0.7), geo.horizon + 1, x, x + width, BUILDING)
        elif kind == 1:
            top = geo.horizon * rng.uniform(0.2, 0.7)
            _box(lab, (top + geo.horizon) / 2, geo.horizon + 1, x, x + width, VEGETATION)
            _ellipse(
                lab, (top + geo.horizon) / 2, x + width / 2, (geo.horizon - top) / 2, width * 0.7, VEGETATION
            )
        x += width
    if WALL in extras:
        x0 = rng.uniform(0, 0.6) * geo.w
        _box(lab, geo.horizon - rng.uniform(0.06, 0.12) * geo.h, geo.horizon + 1, x0, x0 + 0.3 * geo.w, WALL)
    if FENCE in extras:
        x0 = rng.uniform(0, 0.6) * geo.w
        _box(
            lab, geo.horizon - rng.uniform(0.05, 0.09) * geo.h, geo.horizon + 2, x0, x0 + 0.35 * geo.w, FENCE
        )


def _draw_pole(lab: np.ndarray, rng: np.random.Generator, geo: StreetGeometry, top_item: int | None) -> None:
    y = rng.uniform(geo.horizon + 0.15 * (geo.h - geo.horizon), 0.85 * geo.h)
    t = geo.depth(y)
    x = geo.sidewalk_x(y, rng)
    height = t * geo.h * rng.uniform(0.9, 1.3)
    width = max(1.0, t * geo.w * 0.012)
    _box(lab, y - height, y, x - width / 2, x + width / 2, POLE)
    if top_item == SIGN:
        s = max(2.0, t * geo.w * 0.035)
        _box(lab, y - height - s / 2, y - height + s, x - s, x + s, SIGN)
    elif top_item == LIGHT:
        s = max(2.0, t * geo.w * 0.02)
        _box(lab, y - height - s, y - height + 2.5 * s, x - s, x + s, LIGHT)


def _draw_vehicle(
    lab: np.ndarray, rng: np.random.Generator, geo: StreetGeometry, kind: int, y: float
) -> None:
    t = geo.depth(y)
    left, right = geo.road_edges(y)
    length = {CAR: 0.28, TRUCK: 0.34, BUS: 0.45, TRAIN: 0.6}[kind] * geo.w * t + 3
    height = {CAR: 0.55, TRUCK: 0.95, BUS: 0.75, TRAIN: 0.5}[kind] * min(length, 0.3 * geo.w * t + 3)
    cx = rng.uniform(left + length * 0.3, max(left + length * 0.3 + 1, right - length * 0.3))
    if kind == CAR:  # body plus a narrower cabin
        _box(lab, y - 0.6 * height, y, cx - length / 2, cx + length / 2, CAR)
        _box(lab, y - height, y - 0.55 * height, cx - length / 3, cx + length / 3, CAR)
    else:
        _box(lab, y - height, y, cx - length / 2, cx + length / 2, kind)


def _draw_person(
    lab: np.ndarray, rng: np.random.Generator, geo: StreetGeometry, with_bike: int | None
) -> None:
    y = rng.uniform(geo.horizon + 0.2 * (geo.h - geo.horizon), 0.92 * geo.h)
    t = geo.depth(y)
    x = geo.sidewalk_x(y, rng) if with_bike is None else float(np.mean(geo.road_edges(y)))
    if with_bike is not None:
        x += rng.uniform(-0.5, 0.5) * t * geo.road
    height = t * geo.h * 0.45 + 4
    if with_bike is None:
        _ellipse(lab, y - height * 0.45, x, height * 0.45, height * 0.13, PERSON)
        _ellipse(lab, y - height * 0.95, x, height * 0.09, height * 0.08, PERSON)
        return
    wheel = height * 0.22
    for dx in (-wheel * 1.3, wheel * 1.3):
        _ellipse(lab, y - wheel, x + dx, wheel, wheel * 0.6, with_bike)
    _box(lab, y - wheel * 1.6, y - wheel * 0.8, x - wheel * 1.3, x + wheel * 1.3, with_bike)
    _ellipse(lab, y - wheel * 1.6 - height * 0.3, x, height * 0.32, height * 0.13, RIDER)


def _draw_ego_vehicle(lab: np.ndarray, geo: StreetGeometry) -> None:
    rows = np.arange(geo.h, dtype=np.float32)[:, None]
    cols = np.arange(geo.w, dtype=np.float32)[None, :]
    bump = 0.06 * geo.h * (1 - 0.6 * ((cols - geo.w / 2) / (geo.w / 2)) ** 2)
    lab[rows >= geo.h - bump] = EGO


def street_labels(rng: np.random.Generator, size: tuple[int, int], extras: set[int]) -> np.ndarray:
    """A street scene as Cityscapes label ids: sky, skyline, road with sidewalks, furniture, traffic, ego car.

    Args:
        rng: random generator.
        size: (H, W).
        extras: rare label ids (see :data:`RARE_LABELS`) to include.

    Returns:
        (H, W) uint8 Cityscapes label ids.
    """
    h, w = size
    geo = StreetGeometry(
        h,
        w,
        horizon=int(h * rng.uniform(0.38, 0.5)),
        vanish_x=w * rng.uniform(0.4, 0.6),
        road=w * rng.uniform(0.45, 0.7),
        sidewalk=w * rng.uniform(0.2, 0.35),
    )
    lab = np.full((h, w), SKY, dtype=np.uint8)
    _draw_skyline(lab, rng, geo, extras)
    _draw_ground(lab, rng, geo, extras)
    tops = [item for item in (SIGN, LIGHT) if item in extras] + [None] * int(rng.integers(1, 3))
    for item in tops:
        _draw_pole(lab, rng, geo, item)
    lower = geo.horizon + 0.12 * (geo.h - geo.horizon)
    # Far to near, so that nearer traffic occludes farther traffic.
    big = [k for k in (TRAIN, BUS, TRUCK) if k in extras]
    traffic = [(float(rng.uniform(lower, 0.7 * h)), k) for k in big]
    traffic += [(float(rng.uniform(lower, 0.95 * h)), CAR) for _ in range(int(rng.integers(1, 4)))]
    for y, kind in sorted(traffic):
        _draw_vehicle(lab, rng, geo, kind, y)
    for _ in range(int(rng.integers(1, 3))):
        _draw_person(lab, rng, geo, None)
    bikes = [k for k in (MOTORCYCLE, BICYCLE) if k in extras]
    if RIDER in extras and not bikes:
        bikes = [BICYCLE]
    for bike in bikes:
        _draw_person(lab, rng, geo, bike)
    _draw_ego_vehicle(lab, geo)
    return lab


# Natural (not palette) colours of the label ids; textures are added per class.
_BASE_COLOURS: dict[int, tuple[int, int, int]] = {
    EGO: (25, 25, 30), GROUND: (105, 95, 80), ROAD: (88, 86, 92), SIDEWALK: (150, 140, 138),
    BUILDING: (125, 112, 100), WALL: (160, 150, 125), FENCE: (120, 95, 70), POLE: (60, 62, 68),
    LIGHT: (35, 35, 35), SIGN: (215, 190, 40), VEGETATION: (65, 120, 45), TERRAIN: (140, 155, 80),
    SKY: (150, 185, 225), PERSON: (160, 55, 70), RIDER: (200, 110, 50), CAR: (40, 60, 140), TRUCK: (110, 110, 115),
    BUS: (190, 70, 40), TRAIN: (80, 90, 150), MOTORCYCLE: (70, 40, 90), BICYCLE: (30, 120, 120),
}  # fmt: skip


@dataclass(frozen=True)
class StreetStyle:
    """Rendering style: colour grading and texture statistics of one domain."""

    saturation: float
    tint: tuple[float, float, float]
    contrast: float
    fine_noise: float  # per-pixel noise amplitude
    blotch_noise: float  # low-frequency noise amplitude
    blotch_cells: int
    blur: float  # Gaussian blur sigma (soft real camera vs crisp render)


STYLES: dict[str, StreetStyle] = {
    "cityscapes": StreetStyle(0.55, (0.93, 0.99, 1.08), 0.8, 5.0, 6.0, 4, 0.7),
    "gta5": StreetStyle(1.6, (1.12, 1.0, 0.82), 1.25, 2.0, 22.0, 12, 0.0),
}


def _class_texture(label: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) luminance offset giving a class its texture (windows, tiles, foliage, sky gradient...)."""
    h, w = map(int, yy.shape)
    side = float(min(h, w))
    if label == BUILDING:
        period = side * 0.08
        return -35.0 * (((yy % period) < period * 0.45) & ((xx % period) < period * 0.5))
    if label == SIDEWALK:
        period = side * 0.1
        return -20.0 * (((yy % period) < 1) | ((xx % period) < 1))
    if label == VEGETATION:
        return 28.0 * smooth_noise(rng, h, w, max(4, int(side // 5)))
    if label == SKY:
        return 40.0 * (yy / h) + 6.0 * smooth_noise(rng, h, w, 3)
    if label in (ROAD, TERRAIN, GROUND):
        return 10.0 * smooth_noise(rng, h, w, max(4, int(side // 8)))
    if label in (CAR, TRUCK, BUS, TRAIN):
        return 25.0 * np.sin(yy * 2 * np.pi / (side * 0.25))
    return np.zeros_like(yy)


def render_street(
    rng: np.random.Generator,
    labels: np.ndarray,
    style: StreetStyle,
    colours: Mapping[int, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """Render Cityscapes label ids as an image in the given style (``colours``: base colour per label id).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    h, w = labels.shape
    yy, xx = _grid(h, w)
    image = np.zeros((h, w, 3), dtype=np.float32)
    for label in np.unique(labels).tolist():
        region = labels == label
        base = (_BASE_COLOURS if colours is None else colours).get(label, (90, 90, 90))
        colour = np.asarray(base, dtype=np.float32) * rng.uniform(0.9, 1.1)
        texture = _class_texture(label, yy, xx, rng)
        image[region] = colour + texture[region][:, None]
    # Style: saturation, tint, contrast, then the domain's noise statistics.
    grey = image.mean(axis=2, keepdims=True)
    image = grey + style.saturation * (image - grey)
    image = image * np.asarray(style.tint, dtype=np.float32)
    image = image.mean() + style.contrast * (image - image.mean())
    image += style.blotch_noise * smooth_noise(rng, h, w, style.blotch_cells)[..., None]
    image += rng.normal(0, style.fine_noise, size=image.shape).astype(np.float32)
    if style.blur > 0:
        image = ndimage.gaussian_filter(image, sigma=(style.blur, style.blur, 0))
    rgb: np.ndarray = np.clip(image, 0, 255).astype(np.uint8)
    return rgb


def street_split(
    seed: int, split_index: int, num_images: int, size: tuple[int, int], domain: str, difficulty: Difficulty
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images and label-id maps of one split of a street layout (every rare class cycled through in order)."""
    min_pixels = 3
    samples = []
    for index in range(num_images):
        # Two rare classes per scene, cycling, so that small val splits still cover all 19 classes.
        cycled = {RARE_LABELS[(2 * index + k) % len(RARE_LABELS)] for k in range(2)}
        for attempt in range(_MAX_ATTEMPTS):
            rng = np.random.default_rng([seed, split_index, index, attempt])
            extras = set(cycled)
            if rng.random() < 0.5:
                extras.add(RARE_LABELS[int(rng.integers(len(RARE_LABELS)))])
            labels = street_labels(rng, size, extras)
            counts = np.bincount(labels.reshape(-1), minlength=256)
            if all(counts[e] >= min_pixels for e in extras):
                break
        if difficulty == "hard":
            from wsss_lightning.data.synthetic_hard import render_street_hard  # builds on this module

            samples.append((render_street_hard(rng, labels, domain), labels))
        else:
            samples.append((render_street(rng, labels, STYLES[domain]), labels))
    return samples


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, compress_level=1)


def _write_cityscapes(
    root: Path, seed: int, n_train: int, n_val: int, size: tuple[int, int], difficulty: Difficulty
) -> None:
    cities = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau")}
    for split_index, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        for index, (image, labels) in enumerate(
            street_split(seed, split_index, n, size, "cityscapes", difficulty)
        ):
            city = cities[split][index % len(cities[split])]
            stem = f"{city}_{index:06d}_{19:06d}"
            _save_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
            gt = root / "gtFine" / split / city
            write_index_png(gt / f"{stem}_gtFine_labelIds.png", labels)
            write_index_png(gt / f"{stem}_gtFine_labelTrainIds.png", CITYSCAPES_ID_TO_TRAINID[labels])


def _write_gta5(
    root: Path, seed: int, n_train: int, n_val: int, size: tuple[int, int], difficulty: Difficulty
) -> None:
    palette = flat_palette(CITYSCAPES_LABELID_PALETTE, (0, 0, 0))
    offset = 1
    for split_index, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        names = [f"{offset + i:05d}" for i in range(n)]
        samples = street_split(seed, split_index, n, size, "gta5", difficulty)
        for name, (image, labels) in zip(names, samples, strict=True):
            _save_png(root / "images" / f"{name}.png", image)
            write_index_png(root / "labels" / f"{name}.png", labels, palette)
        write_id_list(root / f"{split}.txt", [f"{name}.png" for name in names])
        offset += n


_WRITERS: dict[str, Callable[[Path, int, int, int, tuple[int, int], Difficulty], None]] = {
    "voc": _write_voc,
    "coco": _write_coco,
    "coco_stuff": _write_coco_stuff,
    "cityscapes": _write_cityscapes,
    "gta5": _write_gta5,
}
