"""Reading one split of a segmentation dataset from its real on-disk layout.

Subclasses only say where files are (:meth:`SegmentationSource.image_path`, :meth:`mask_path`, the list
file) and how raw mask values become train ids (:meth:`decode_mask`); reading, validation and error
messages live here so that every dataset fails the same way on bad input.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss_lightning.data.classes import DatasetInfo

# Single-channel PNG modes whose array values are the stored indices (palette PNGs are never converted).
_INDEX_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L")


class DataError(ValueError):
    """A file of a dataset is missing, unreadable or holds values it must not hold."""


def read_rgb(path: Path) -> np.ndarray:
    """Read an image as RGB.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        DataError: the file is missing or cannot be decoded.
    """
    if not path.is_file():
        raise DataError(f"image file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from exc


def read_index_png(path: Path) -> np.ndarray:
    """Read a single-channel label image as its stored indices (a palette PNG gives palette indices).

    Returns:
        (H, W) integer array (uint8, or wider for 16/32-bit PNGs).

    Raises:
        DataError: missing file, undecodable file or a multi-channel (e.g. RGB) image.
    """
    if not path.is_file():
        raise DataError(f"mask file {path} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in _INDEX_MODES:
                raise DataError(
                    f"mask file {path} has PIL mode {img.mode!r}; expected a single-channel palette (P) or "
                    "grayscale (L) PNG of class indices, not a colour rendering"
                )
            return np.asarray(img)
    except (OSError, SyntaxError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read mask file {path}: {exc}") from exc


def write_index_png(path: Path, mask: np.ndarray, palette: list[int] | None = None) -> None:
    """Write (H, W) uint8 indices as a palette PNG (mode "P") when ``palette`` is given, else mode "L"."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"expected an (H, W) uint8 mask for {path}, got {mask.shape} {mask.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = mask.shape
    mode = "L" if palette is None else "P"
    img = Image.frombytes(mode, (w, h), np.ascontiguousarray(mask).tobytes())
    if palette is not None:
        img.putpalette(palette)
    img.save(path)


def check_label_values(mask: np.ndarray, num_classes: int, path: Path, ignore_index: int = 255) -> None:
    """Raise :class:`DataError` naming ``path`` and the offending values if any value is not a train id or 255."""
    bad = np.unique(mask[((mask < 0) | (mask >= num_classes)) & (mask != ignore_index)])
    if bad.size:
        shown = bad[:20].tolist()
        more = f" (and {bad.size - 20} more)" if bad.size > 20 else ""
        raise DataError(
            f"mask file {path} has values {shown}{more} outside the {num_classes} classes "
            f"(0..{num_classes - 1}) and the ignore index {ignore_index}"
        )


def parse_list_lines(lines: Iterable[str]) -> list[str]:
    """First whitespace-separated token of every non-empty, non-comment line."""
    return [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]


class SegmentationSource:
    """Reads one split of a dataset from its real on-disk layout (PIL; palette PNGs read as indices).

    Args:
        root: dataset root folder.
        split: split name (e.g. ``"train_aug"``, ``"val"``) or the path of a list file (absolute or relative
            to ``root``; anything ending in ``.txt``), e.g. a semi-supervised partition.

    Attributes:
        info: the dataset's :class:`DatasetInfo` (class attribute of each subclass).
        layout: human-readable description of the expected folder layout, used in error messages.
        unlabeled_splits: split names that come without masks.
        ids: sample ids in list-file order.

    Raises:
        FileNotFoundError: ``root`` or the split's list file does not exist (the message names the path and
            the expected layout).
    """

    info: ClassVar[DatasetInfo]
    layout: ClassVar[str] = ""
    unlabeled_splits: ClassVar[tuple[str, ...]] = ("test",)

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.info.name} root {self.root} does not exist or is not a folder; expected layout:\n"
                f"{self.layout}"
            )
        self.ids: list[str] = self.load_ids()

    # ---- hooks for subclasses -------------------------------------------------------------------
    def list_file(self) -> Path | None:
        """The list file of a named split (None: the subclass scans folders instead)."""
        raise NotImplementedError

    def scan_ids(self) -> list[str] | None:
        """Ids found by scanning folders when the split has no list file (None: not supported)."""
        return None

    def parse_id(self, token: str) -> str:
        """Normalise the first token of a list-file line to a sample id (default: the file stem)."""
        return Path(token).stem

    def image_path(self, sample_id: str) -> Path:
        """Path of the image of ``sample_id``."""
        raise NotImplementedError

    def mask_path(self, sample_id: str) -> Path | None:
        """Path of the mask of ``sample_id`` (None when the split has no masks)."""
        raise NotImplementedError

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map stored mask values to train ids (default: stored values are train ids)."""
        return raw

    # ---- shared behaviour ------------------------------------------------------------------------
    def _split_list_path(self) -> Path | None:
        if self.split.endswith(".txt") or "/" in self.split:
            path = Path(self.split)
            return path if path.is_absolute() else self.root / path
        return None

    def load_ids(self) -> list[str]:
        """Read the split's ids from its list file (or scan folders where the layout allows it)."""
        path = self._split_list_path() or self.list_file()
        if path is not None and path.is_file():
            ids = [self.parse_id(token) for token in parse_list_lines(path.read_text().splitlines())]
            if not ids:
                raise DataError(
                    f"list file {path} of {self.info.name} split {self.split!r} lists no samples: a split "
                    "with nothing to train on, validate or test on cannot be used; fill the list (one id per "
                    "line) or choose another split"
                )
            return ids
        scanned = self.scan_ids() if self._split_list_path() is None else None
        if scanned is not None:
            if not scanned:
                raise FileNotFoundError(
                    f"no {self.info.name} images found for split {self.split!r} under {self.root}; "
                    f"expected layout:\n{self.layout}"
                )
            return scanned
        raise FileNotFoundError(
            f"list file {path} of {self.info.name} split {self.split!r} does not exist; expected layout:\n"
            f"{self.layout}"
        )

    @property
    def has_masks(self) -> bool:
        """Whether the split comes with masks (False e.g. for VOC ``test``)."""
        return self.split not in self.unlabeled_splits

    def __len__(self) -> int:
        return len(self.ids)

    def check_files(self, masks: bool) -> None:
        """Check that every image (and, with ``masks``, every mask) the split lists exists.

        A stat per file, nothing decoded: decoding errors are named at the first read.

        Raises:
            DataError: naming the split, how many files are missing and the first of them.
        """
        missing = []
        for sample_id in self.ids:
            paths = [
                self.image_path(sample_id),
                self.mask_path(sample_id) if masks and self.has_masks else None,
            ]
            missing += [path for path in paths if path is not None and not path.is_file()]
        if missing:
            shown = "\n  ".join(str(path) for path in missing[:10])
            more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise DataError(
                f"{len(missing)} {'file' if len(missing) == 1 else 'files'} listed by {self.info.name} split "
                f"{self.split!r} under {self.root} {'is' if len(missing) == 1 else 'are'} missing:\n  {shown}{more}"
                f"\nexpected layout:\n{self.layout}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self.ids)})"

    def read_image(self, sample_id: str) -> np.ndarray:
        """Read the image of ``sample_id``.

        Returns:
            (H, W, 3) uint8 RGB array.

        Raises:
            DataError: missing or corrupt file (the message names it).
        """
        return read_rgb(self.image_path(sample_id))

    def read_mask(self, sample_id: str) -> np.ndarray:
        """Read the mask of ``sample_id`` as train ids.

        Returns:
            (H, W) uint8 array of train ids, 255 = ignore.

        Raises:
            DataError: no mask for this split, missing/corrupt file, or values outside [0, C) ∪ {255}
                (the message names the file and the bad values).
        """
        path = self.mask_path(sample_id)
        if path is None or not self.has_masks:
            raise DataError(f"{self.info.name} split {self.split!r} has no masks (sample {sample_id!r})")
        raw = read_index_png(path)
        mask = self.decode_mask(raw, path)
        check_label_values(mask, self.info.num_classes, path, self.info.ignore_index)
        return mask.astype(np.uint8, copy=False)

    def read_sample(self, sample_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Read image and mask (None when the split has no masks).

        Returns:
            ``(image, mask)``: (H, W, 3) uint8 RGB and (H, W) uint8 train ids or None.

        Raises:
            DataError: as :meth:`read_image` / :meth:`read_mask`, or the two sizes differ (the message names
                both files and both sizes).
        """
        image = self.read_image(sample_id)
        if not self.has_masks:
            return image, None
        mask = self.read_mask(sample_id)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"size mismatch for sample {sample_id!r}: image {self.image_path(sample_id)} is "
                f"{image.shape[0]}x{image.shape[1]} (HxW) but mask {self.mask_path(sample_id)} is "
                f"{mask.shape[0]}x{mask.shape[1]}"
            )
        return image, mask
