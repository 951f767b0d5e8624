"""Predicting on a user's own images: a folder, or a list file of image paths, with no dataset layout or masks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wsss_lightning.data.classes import DatasetInfo
from wsss_lightning.data.datasets.base import DataError, SegmentationSource

#: File extensions (lower case) a folder is searched for.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def scan_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (sub-folders included, any letter case of :data:`IMAGE_EXTENSIONS`), sorted.

    Hidden files and folders (a leading ".", e.g. ``.DS_Store``, ``._x.jpg``, caches) are skipped.
    """
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found)


def read_image_list(list_file: Path) -> list[Path]:
    """Image paths of a list file: one per line, relative to the list file's folder ("#" comments).

    The whole line is the path, so names may hold spaces.

    Raises:
        DataError: the list names no image, or names files that do not exist (all of them in one message).
    """
    lines = (line.strip() for line in list_file.read_text().splitlines())
    tokens = [line for line in lines if line and not line.startswith("#")]
    if not tokens:
        raise DataError(f"predict_images list file {list_file} lists no images (one image path per line)")
    paths = [(list_file.parent / Path(token).expanduser()) for token in tokens]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(
            f"predict_images list file {list_file}: {len(missing)} of {len(paths)} listed images do not exist "
            f"(relative paths are read from {list_file.parent}):\n  {shown}{more}"
        )
    return paths


def image_names(paths: Sequence[Path], base: Path) -> list[str]:
    """Each path relative to ``base``, without extension, "/"-separated: the names predictions are written under.

    Raises:
        DataError: two images share a name (e.g. ``a.jpg`` and ``a.png`` in one folder), which would write one
            prediction over the other.
    """
    names = [PurePosixPath(*p.relative_to(base).with_suffix("").parts).as_posix() for p in paths]
    first: dict[str, Path] = {}
    for name, path in zip(names, paths, strict=True):
        if name in first:
            raise DataError(
                f"images {first[name]} and {path} would both be predicted as {name}.png; rename one of them"
            )
        first[name] = path
    return names


class ImageFolderSource(SegmentationSource):
    """Images to predict on, without masks: a folder searched for images, or a list file of image paths.

    A folder is searched recursively for :data:`IMAGE_EXTENSIONS` and sorted; a list file (any other file)
    holds one image path per line, absolute or relative to the list file's folder, in the order listed.
    Sample ids are the images' paths without extension, relative to the folder (for a list: to the folder
    all listed images share), so predictions mirror the input tree and equal names in different
    sub-folders do not collide.

    Args:
        path: the folder or the list file.
        info: the label space of the model that predicts (classes, palette).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataError: no images found, listed images missing, or two images with the same name.
    """

    def __init__(self, path: str | Path, info: DatasetInfo) -> None:
        self.info = info  # type: ignore[misc]
        given = Path(path).expanduser()
        if given.is_dir():
            self.images = scan_images(given)
            if not self.images:
                raise DataError(
                    f"predict_images folder {given} holds no images (searched its sub-folders for "
                    f"{', '.join(IMAGE_EXTENSIONS)}, any letter case)"
                )
            base = given
        elif given.is_file():
            self.images = read_image_list(given)
            # absolute, links kept: names follow the list, not the targets of links (git-annex, DVC trees)
            self.images = [Path(os.path.abspath(p)) for p in self.images]
            base = Path(os.path.commonpath([p.parent for p in self.images]))
        else:
            raise FileNotFoundError(
                f"predict_images {given} does not exist: expected a folder of images or a list file of image paths"
            )
        self.layout = f"images under {given}"  # type: ignore[misc]
        self.root, self.split = base, str(given)
        self.ids = image_names(self.images, base)
        self._paths = dict(zip(self.ids, self.images, strict=True))

    @property
    def has_masks(self) -> bool:
        """Always False: the images come without masks."""
        return False

    def image_path(self, sample_id: str) -> Path:
        """The image file of ``sample_id``."""
        return self._paths[sample_id]

    def mask_path(self, sample_id: str) -> Path | None:
        """None: no masks."""
        return None

    def read_image(self, sample_id: str) -> np.ndarray:
        """The image upright as viewers show it (its EXIF orientation applied, as phone photos need), RGB.

        Raises:
            DataError: the file cannot be decoded (the message names it).
        """
        path = self.image_path(sample_id)
        try:
            with Image.open(path) as img:
                return np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image file {path}: {exc}") from exc

    def check_files(self, masks: bool = False) -> None:
        """Check that every image can be identified as an image (its header only; pixels are decoded later).

        Raises:
            DataError: naming the first file that is not a readable image.
        """
        for path in self.images:
            try:
                with Image.open(path):
                    pass
            except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
                raise DataError(f"predict_images: cannot read image file {path}: {exc}") from exc
