"""Converters that turn real downloads into the layouts the readers expect, and derived supervision files.

* :func:`coco_instances_to_masks`: COCO instance JSON -> 81-id PNG masks (WSSS COCO layout).
* :func:`coco_stuff_to_voc`: COCO-Stuff 10k annotations -> VOC-20 masks.
* :func:`cityscapes_to_trainids`: ``*_gtFine_labelIds.png`` -> ``*_gtFine_labelTrainIds.png`` for a tree.
* :func:`write_tags`, :func:`write_partitions`, :func:`write_clicks`: tag file, semi partitions, click PNGs.
* :func:`write_clicks_from_json`: click PNGs from "What's the Point"-style click JSON files.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from wsss_lightning.data.classes import (
    COCO_ID_TO_CONTIGUOUS,
    DATASET_INFO,
    IGNORE_INDEX,
    VOC_TO_COCO_ID,
)
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import DataError, read_index_png, write_index_png
from wsss_lightning.data.datasets.cityscapes import label_ids_to_train_ids
from wsss_lightning.data.points import PointClicks, draw_clicks, parse_click_table
from wsss_lightning.data.supervision import (
    build_tags,
    clicks_from_mask,
    make_semi_split,
    save_tags,
    write_id_list,
)

#: The usual semi-supervised partitions of VOC / Cityscapes.
DEFAULT_FRACTIONS: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2)


# ---- COCO run-length encoding ----------------------------------------------------------------------
def rle_string_to_counts(encoded: str) -> list[int]:
    """Decode COCO's compressed RLE string (LEB128-like, 5 bits per char, deltas from two runs back).

    Returns:
        The run lengths (alternating background / foreground, starting with background).
    """
    counts: list[int] = []
    pos = 0
    data = encoded.encode("ascii")
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            char = data[pos] - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            pos += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Inverse of :func:`rle_string_to_counts` (COCO's compressed RLE string)."""
    chars = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            if more:
                char |= 0x20
            chars.append(chr(char + 48))
    return "".join(chars)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (``counts`` as a list or compressed string, ``size`` = [h, w]).

    Returns:
        (H, W) bool mask (COCO runs are column-major).
    """
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = rle_string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != height * width:
        raise DataError(f"RLE runs sum to {sum(runs)} but size {height}x{width} needs {height * width}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (lists of x0, y0, x1, y1, ... in pixels) with PIL.

    Returns:
        (H, W) bool mask.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 4:  # COCO holds a few degenerate polygons; two points still mark a line
            draw.polygon(
                [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)], fill=1, outline=1
            )
    return np.asarray(canvas, dtype=bool)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode any COCO ``segmentation`` field (polygons, uncompressed or compressed RLE) to an (H, W) bool mask.

    Uses pycocotools when it is installed (it is not a dependency), the pure NumPy/PIL decoders otherwise.
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        mask_utils = None
    if mask_utils is not None:
        if isinstance(segmentation, list):
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        mask: np.ndarray = mask_utils.decode(rle).astype(bool)
        return mask
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    return decode_rle(segmentation)


# ---- COCO 2014 -> WSSS PNG masks ----------------------------------------------------------------------
def _annotation_mask(ann: dict[str, Any], height: int, width: int, source: Path) -> np.ndarray:
    mask = segmentation_to_mask(ann["segmentation"], height, width)
    if mask.shape != (height, width):
        raise DataError(
            f"{source}: annotation {ann.get('id')} decodes to {mask.shape}, image is {height}x{width}"
        )
    return mask


def coco_instance_mask(
    annotations: Sequence[dict[str, Any]], height: int, width: int, source: Path
) -> np.ndarray:
    """Semantic mask of one image from its instance annotations.

    Crowd regions are painted 255 first; instances are then painted in order of decreasing area, so smaller
    (and, at equal area, later) instances win where they overlap, and individually annotated instances win over
    crowds.

    Returns:
        (H, W) uint8: 0 background, 1..80 contiguous COCO ids, 255 crowd.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    crowds = [a for a in annotations if a.get("iscrowd", 0)]
    instances = [a for a in annotations if not a.get("iscrowd", 0)]
    for ann in crowds:
        mask[_annotation_mask(ann, height, width, source)] = IGNORE_INDEX
    decoded = [(a, _annotation_mask(a, height, width, source)) for a in instances]
    # Stable sort: equal areas keep file order, so the later annotation is painted last.
    decoded.sort(key=lambda item: -float(item[0].get("area", item[1].sum())))
    for ann, region in decoded:
        mask[region] = COCO_ID_TO_CONTIGUOUS[int(ann["category_id"])]
    return mask


def _place_image(src: Path, dst: Path, link: bool) -> None:
    if dst.exists() or dst.is_symlink():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(src.resolve(), dst)
    else:
        shutil.copy2(src, dst)


def coco_instances_to_masks(
    annotation_json: str | Path,
    out_root: str | Path,
    split: str,
    images_dir: str | Path | None = None,
    link_images: bool = True,
    skip_empty: bool = True,
) -> list[str]:
    """Convert a COCO instance annotation file to the WSSS COCO layout.

    Writes ``<out_root>/SegmentationClass/<stem>.png`` (palette PNG, 81 ids, 255 = crowd) for every image,
    the list ``<out_root>/ImageSets/<split>.txt`` and, with ``images_dir``, ``<out_root>/JPEGImages/<stem>.jpg``
    (a symlink, or a copy when ``link_images`` is False). ``<stem>`` is the image file name without suffix,
    e.g. ``COCO_train2014_000000000009``.

    Args:
        annotation_json: e.g. ``instances_train2014.json``.
        out_root: output dataset root.
        split: list-file name (``train`` / ``val``).
        images_dir: folder holding the images named in the JSON (None: do not place images).
        link_images: symlink instead of copying images.
        skip_empty: leave images without any non-crowd instance out of the list file (as the usual WSSS
            COCO lists do); their masks are still written.

    Returns:
        The ids written to the list file.

    Raises:
        FileNotFoundError: missing JSON or image.
        DataError: malformed JSON, unknown category ids, undecodable segmentations.
    """
    annotation_json, out_root = Path(annotation_json), Path(out_root)
    if not annotation_json.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotation_json} does not exist")
    try:
        data = json.loads(annotation_json.read_text())
        images = data["images"]
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{annotation_json} is not a COCO instance file with 'images' and 'annotations': {exc}"
        ) from exc
    unknown = sorted({int(a["category_id"]) for a in annotations} - set(COCO_ID_TO_CONTIGUOUS))
    if unknown:
        raise DataError(f"{annotation_json}: category ids {unknown} are not among the 80 COCO categories")
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    palette = DATASET_INFO["coco"].palette_bytes()
    listed = []
    for image in images:
        stem = Path(image["file_name"]).stem
        anns = by_image.get(int(image["id"]), [])
        mask = coco_instance_mask(anns, int(image["height"]), int(image["width"]), annotation_json)
        write_index_png(out_root / "SegmentationClass" / f"{stem}.png", mask, palette)
        if images_dir is not None:
            src = Path(images_dir) / image["file_name"]
            if not src.is_file():
                raise FileNotFoundError(f"image {src} listed in {annotation_json} does not exist")
            _place_image(src, out_root / "JPEGImages" / f"{stem}.jpg", link_images)
        if not skip_empty or any(not a.get("iscrowd", 0) for a in anns):
            listed.append(stem)
    write_id_list(out_root / "ImageSets" / f"{split}.txt", listed)
    return listed


# ---- COCO-Stuff 10k -> VOC classes -----------------------------------------------------------------
def coco_stuff_lut(stuff_format: Literal["mat", "png"], unlabeled: int = IGNORE_INDEX) -> np.ndarray:
    """Lookup table raw COCO-Stuff label -> VOC train id.

    ``mat`` (COCO-Stuff 10k ``.mat``, key ``S``): 0 = unlabeled, 1..182 = COCO ids (things 1..91).
    ``png`` (COCO-Stuff 164k style): value = COCO id - 1, 255 = unlabeled. The 20 VOC classes keep their VOC
    id, every other thing / stuff class becomes background (0), unlabeled pixels become ``unlabeled``.

    Returns:
        (65536,) uint8 table.
    """
    lut = np.zeros(65536, dtype=np.uint8)
    offset = 0 if stuff_format == "mat" else -1
    for voc_id, coco_id in VOC_TO_COCO_ID.items():
        lut[coco_id + offset] = voc_id
    lut[0 if stuff_format == "mat" else 255] = unlabeled
    return lut


def _read_stuff_annotation(path: Path) -> np.ndarray:
    if path.suffix == ".mat":
        from scipy.io import loadmat

        try:
            return np.asarray(loadmat(path)["S"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read COCO-Stuff label map 'S' from {path}: {exc}") from exc
    return read_index_png(path)


def coco_stuff_to_voc(
    root: str | Path, out_root: str | Path | None = None, unlabeled: int = IGNORE_INDEX
) -> int:
    """Convert COCO-Stuff 10k annotations to VOC-20 masks (other classes -> background).

    Reads ``<root>/annotations/<id>.mat`` (the 10k release) or ``<id>.png`` (164k-style label PNGs) and
    writes ``<out_root>/annotations/<id>.png`` palette PNGs with VOC ids. With a separate ``out_root`` the
    ``imageLists`` are copied and ``images`` is linked there.

    Args:
        root: COCO-Stuff 10k root (``images/``, ``annotations/``, ``imageLists/``).
        out_root: output root (default: ``root``; required to differ when the sources are PNGs).
        unlabeled: value written for pixels COCO-Stuff leaves unlabeled.

    Returns:
        Number of masks written.
    """
    root = Path(root)
    out_root = Path(out_root) if out_root is not None else root
    ann_dir = root / "annotations"
    sources = sorted(ann_dir.glob("*.mat")) or sorted(ann_dir.glob("*.png"))
    if not sources:
        raise FileNotFoundError(f"no COCO-Stuff annotations (*.mat or *.png) found in {ann_dir}")
    stuff_format: Literal["mat", "png"] = "mat" if sources[0].suffix == ".mat" else "png"
    if stuff_format == "png" and out_root.resolve() == root.resolve():
        raise ValueError(
            f"converting PNG annotations in place would overwrite them: pass an out_root != {root}"
        )
    lut = coco_stuff_lut(stuff_format, unlabeled)
    palette = DATASET_INFO["coco_stuff"].palette_bytes()
    for src in sources:
        raw = _read_stuff_annotation(src).astype(np.int64)
        write_index_png(out_root / "annotations" / f"{src.stem}.png", lut[raw], palette)
    if out_root.resolve() != root.resolve():
        if (root / "imageLists").is_dir():
            shutil.copytree(root / "imageLists", out_root / "imageLists", dirs_exist_ok=True)
        if (root / "images").is_dir() and not (out_root / "images").exists():
            os.symlink((root / "images").resolve(), out_root / "images")
    return len(sources)


# ---- Cityscapes ----------------------------------------------------------------------------------------
def cityscapes_to_trainids(root: str | Path, overwrite: bool = False) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` under ``<root>/gtFine``.

    Args:
        root: Cityscapes root.
        overwrite: rewrite files that already exist.

    Returns:
        Number of files written.
    """
    gt_dir = Path(root) / "gtFine"
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"Cityscapes annotation folder {gt_dir} does not exist")
    written = 0
    for src in sorted(gt_dir.rglob("*_gtFine_labelIds.png")):
        dst = src.with_name(src.name.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
        if dst.exists() and not overwrite:
            continue
        write_index_png(dst, label_ids_to_train_ids(read_index_png(src), src))
        written += 1
    return written


# ---- derived supervision files ----------------------------------------------------------------------
def write_tags(dataset: str, root: str | Path, split: str, out: str | Path, num_workers: int = 0) -> Path:
    """Compute image tags of a split from its masks and save them (``.npy`` or ``.txt``, see ``save_tags``)."""
    tags = build_tags(build_source(dataset, root, split), num_workers=num_workers)
    save_tags(out, tags)
    return Path(out)


def fraction_name(fraction: float) -> str:
    """Folder name of a partition: 1/16 -> ``"1_16"``."""
    frac = Fraction(fraction).limit_denominator(1000)
    return f"{frac.numerator}_{frac.denominator}"


def write_partitions(
    ids: Sequence[str], out_dir: str | Path, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, tuple[int, int]]:
    """Write ``<out_dir>/<1_16|1_8|...>/{labeled,unlabeled}.txt`` semi-supervised partitions of ``ids``.

    Returns:
        ``{folder name: (n_labeled, n_unlabeled)}``.
    """
    sizes = {}
    for fraction in fractions:
        labeled, unlabeled = make_semi_split(ids, fraction, seed)
        name = fraction_name(fraction)
        write_id_list(Path(out_dir) / name / "labeled.txt", labeled)
        write_id_list(Path(out_dir) / name / "unlabeled.txt", unlabeled)
        sizes[name] = (len(labeled), len(unlabeled))
    return sizes


def sample_rng(seed: int, sample_id: str) -> np.random.Generator:
    """Random generator of one sample: depends on the seed and the id only, not on the processing order."""
    return np.random.default_rng([seed, zlib.crc32(sample_id.encode())])


def write_clicks(
    dataset: str,
    root: str | Path,
    split: str,
    out_dir: str | Path,
    seed: int = 0,
    background_clicks: int = 1,
    placement: Literal["center", "random"] = "center",
) -> int:
    """Simulate clicks from the masks of a split and write them as ``<out_dir>/<id>.png`` (mode "L").

    Each PNG holds the class id at click pixels and 255 elsewhere (see ``supervision.clicks_from_mask``);
    datasets without a background class get no background clicks.

    Returns:
        Number of click files written.
    """
    source = build_source(dataset, root, split)
    info = source.info
    background = 0 if info.has_background else None
    for sample_id in source.ids:
        mask = source.read_mask(sample_id)
        clicks = clicks_from_mask(
            mask,
            info.num_classes,
            sample_rng(seed, sample_id),
            background_clicks=background_clicks,
            ignore_index=info.ignore_index,
            background_class=background,
            placement=placement,
        )
        write_index_png(Path(out_dir) / f"{sample_id}.png", clicks)
    return len(source.ids)


# ---- clicks given as coordinates ("What's the Point") ------------------------------------------------------
def read_click_json(path: str | Path, num_classes: int) -> dict[str, PointClicks]:
    """Read and validate a click JSON file (``{image_id: [{"x", "y", "cls", ...}, ...]}``).

    See :mod:`wsss_lightning.data.points` for the format; errors name the file, the image id and the click.

    Returns:
        ``{image_id: PointClicks}`` in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: not JSON, or a malformed / out-of-range click (see ``points.parse_click_table``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"click file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON file: {exc}") from exc
    return parse_click_table(data, str(path), num_classes)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image, read from its header without decoding the pixels.

    Raises:
        DataError: the file is missing or not an image.
    """
    if not path.is_file():
        raise DataError(f"image file {path} does not exist")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from exc
    return int(height), int(width)


@dataclass(frozen=True)
class ClickFileSummary:
    """What :func:`write_clicks_from_json` did with one click file.

    Attributes:
        path: the file.
        images: image ids in the file.
        drawn: clicks of the split's images kept (clamped ones included; a later click may overwrite one).
        dropped: clicks of the split's images dropped for lying more than one pixel outside their image.
        skipped_images: ids of the file outside the split (present in the dataset; their clicks are not used).
        unknown_images: ids of the file without an image in the dataset (only with ``allow_unknown_ids``).
    """

    path: Path
    images: int
    drawn: int
    dropped: int
    skipped_images: int
    unknown_images: int


@dataclass(frozen=True)
class ClickConversion:
    """Summary of :func:`write_clicks_from_json`.

    Attributes:
        out_dir: folder of the click PNGs.
        written: PNGs written, one per id of the split.
        empty: ids of the split whose map holds no click (written all 255): no click in any file, or only
            dropped ones.
        skipped: distinct ids of the files outside the split but present in the dataset.
        unknown: distinct ids of the files without an image in the dataset (only with ``allow_unknown_ids``).
        files: the summary of each click file, in the order drawn.
    """

    out_dir: Path
    written: int
    empty: int
    skipped: int
    unknown: int
    files: tuple[ClickFileSummary, ...]

    @property
    def dropped(self) -> int:
        """Clicks dropped in all files for lying more than one pixel outside their image."""
        return sum(f.dropped for f in self.files)

    @property
    def drawn(self) -> int:
        """Clicks kept in all files."""
        return sum(f.drawn for f in self.files)


def write_clicks_from_json(
    dataset: str,
    root: str | Path,
    split: str,
    click_files: Sequence[str | Path],
    out_dir: str | Path,
    allow_unknown_ids: bool = False,
) -> ClickConversion:
    """Rasterise click JSON files into one click PNG ``<out_dir>/<id>.png`` (mode "L") per id of a split.

    Converts the "What's the Point" clicks used by Seminar Learning / Gated-CRF (the foreground file
    ``voc_whats_the_point.json`` and the background file ``voc_whats_the_point_bg_from_scribbles.json``) to
    the 1-px click maps :class:`~wsss_lightning.data.views.ClickView` reads (``clicks_dir``). Each PNG has the
    size of its image (read from the image file), the class id at click pixels and 255 elsewhere; rounding,
    clamping and dropping follow :mod:`wsss_lightning.data.points` (nearest pixel with ``floor(v + 0.5)``,
    clicks up to one pixel outside clamped to the border, farther ones dropped and counted). The files are
    drawn in the given order, so with ``[foreground, background]`` a background click wins a pixel both mark.
    Ids of the split without clicks get an all-255 map. Every file is read and checked before anything is
    written.

    Args:
        dataset: dataset name (e.g. ``"voc"``).
        root: dataset root.
        split: split whose ids get a PNG (e.g. ``"train_aug"``).
        click_files: JSON files, drawn in this order.
        out_dir: output folder.
        allow_unknown_ids: count ids without an image in the dataset instead of failing.

    Returns:
        A :class:`ClickConversion` summary (PNGs written, empty maps, skipped ids, per-file dropped clicks).

    Raises:
        FileNotFoundError: a missing click file, dataset root or list file.
        DataError (a ``ValueError``): a malformed click (the message names the file, the image id and the
            click's index), a class outside the dataset's classes, an id of a file that is neither in the split
            nor has an image in the dataset (the message names the file, the id and its entry index), or an
            unreadable image.
    """
    if not click_files:
        raise ValueError("write_clicks_from_json: give at least one click file")
    source = build_source(dataset, root, split)
    info = source.info
    tables = [(Path(path), read_click_json(path, info.num_classes)) for path in click_files]
    split_ids = set(source.ids)
    skipped: set[str] = set()
    unknown: set[str] = set()
    outside: list[tuple[int, int]] = []
    for path, table in tables:
        n_skipped = n_unknown = 0
        for entry, image_id in enumerate(table):
            if image_id in split_ids:
                continue
            image_path = source.image_path(image_id)
            if image_path.is_file():
                skipped.add(image_id)
                n_skipped += 1
            elif allow_unknown_ids:
                unknown.add(image_id)
                n_unknown += 1
            else:
                raise DataError(
                    f"{path}: image {image_id!r} (entry {entry}) is not in {info.name} split {split!r} and "
                    f"has no image {image_path}"
                )
        outside.append((n_skipped, n_unknown))
    drawn = [0] * len(tables)
    dropped = [0] * len(tables)
    empty = 0
    out_dir = Path(out_dir)
    for sample_id in source.ids:
        height, width = image_size(source.image_path(sample_id))
        clicks = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        for k, (_, table) in enumerate(tables):
            layer = table.get(sample_id)
            if layer is not None:
                n_dropped = draw_clicks(clicks, layer)  # in file order: a later file wins a shared pixel
                dropped[k] += n_dropped
                drawn[k] += len(layer) - n_dropped
        empty += int(not (clicks != IGNORE_INDEX).any())
        write_index_png(out_dir / f"{sample_id}.png", clicks)
    files = tuple(
        ClickFileSummary(
            path=path,
            images=len(table),
            drawn=drawn[k],
            dropped=dropped[k],
            skipped_images=outside[k][0],
            unknown_images=outside[k][1],
        )
        for k, (path, table) in enumerate(tables)
    )
    return ClickConversion(
        out_dir=out_dir,
        written=len(source.ids),
        empty=empty,
        skipped=len(skipped),
        unknown=len(unknown),
        files=files,
    )
