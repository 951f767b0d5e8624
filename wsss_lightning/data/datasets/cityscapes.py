"""Cityscapes (fine annotations) with the 19 train ids."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from wsss_lightning.data.classes import CITYSCAPES_ID_TO_TRAINID, DATASET_INFO, DatasetInfo
from wsss_lightning.data.datasets.base import DataError, SegmentationSource

_IMAGE_SUFFIX = "_leftImg8bit.png"
_TRAINIDS_SUFFIX = "_gtFine_labelTrainIds.png"
_LABELIDS_SUFFIX = "_gtFine_labelIds.png"
_SPLIT_DIRS = ("train", "val", "test", "train_extra")


class CityscapesSource(SegmentationSource):
    """Cityscapes ``leftImg8bit`` / ``gtFine``.

    Sample ids are ``"<city>/<city>_xxxxxx_yyyyyy"``. Masks are read from ``*_gtFine_labelTrainIds.png`` when
    present (already train ids), otherwise from ``*_gtFine_labelIds.png`` mapped with
    :data:`CITYSCAPES_ID_TO_TRAINID`. Without a list file ``<root>/<split>.txt`` the split folder is scanned.
    """

    info: ClassVar[DatasetInfo] = DATASET_INFO["cityscapes"]
    layout: ClassVar[str] = (
        "  <root>/leftImg8bit/<split>/<city>/<city>_xxxxxx_yyyyyy_leftImg8bit.png\n"
        "  <root>/gtFine/<split>/<city>/<city>_xxxxxx_yyyyyy_gtFine_labelTrainIds.png\n"
        "      (or *_gtFine_labelIds.png, mapped to train ids)\n"
        "  optional list file <root>/<split>.txt with ids <city>/<city>_xxxxxx_yyyyyy"
    )

    def list_file(self) -> Path:
        """The optional list file ``<root>/<split>.txt``."""
        return self.root / f"{self.split}.txt"

    def scan_ids(self) -> list[str]:
        """Ids of the images under ``leftImg8bit/<split>/<city>/``, sorted."""
        folder = self.root / "leftImg8bit" / self.split
        return sorted(
            f"{p.parent.name}/{p.name[: -len(_IMAGE_SUFFIX)]}" for p in folder.glob(f"*/*{_IMAGE_SUFFIX}")
        )

    def parse_id(self, token: str) -> str:
        """The ``<city>/<city>_xxxxxx_yyyyyy`` id of a bare id or of an image / label path."""
        # Accept bare ids as well as image / label paths from other tools' list files.
        for suffix in (_IMAGE_SUFFIX, _TRAINIDS_SUFFIX, _LABELIDS_SUFFIX):
            token = token.removesuffix(suffix)
        parts = Path(token).parts
        return "/".join(parts[-2:])

    def _split_dir(self, sample_id: str) -> str:
        if self._split_list_path() is None:
            return self.split
        # A list-file split does not name the folder: use the first split folder holding the image.
        for name in _SPLIT_DIRS:
            if (self.root / "leftImg8bit" / name / f"{sample_id}{_IMAGE_SUFFIX}").is_file():
                return name
        return self.split

    def image_path(self, sample_id: str) -> Path:
        """``leftImg8bit/<split>/<id>_leftImg8bit.png``."""
        return self.root / "leftImg8bit" / self._split_dir(sample_id) / f"{sample_id}{_IMAGE_SUFFIX}"

    def mask_path(self, sample_id: str) -> Path | None:
        """``gtFine/<split>/<id>_gtFine_labelTrainIds.png`` if present, else ``*_gtFine_labelIds.png``.

        None when the split has no masks.
        """
        if not self.has_masks:
            return None
        stem = self.root / "gtFine" / self._split_dir(sample_id) / sample_id
        train_ids = stem.parent / f"{stem.name}{_TRAINIDS_SUFFIX}"
        return train_ids if train_ids.is_file() else stem.parent / f"{stem.name}{_LABELIDS_SUFFIX}"

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Train-id masks as stored; label-id masks mapped with :data:`CITYSCAPES_ID_TO_TRAINID`."""
        if path.name.endswith(_TRAINIDS_SUFFIX):
            return raw
        return label_ids_to_train_ids(raw, path)


def label_ids_to_train_ids(raw: np.ndarray, path: Path) -> np.ndarray:
    """Map Cityscapes label ids (0..33, 255) to train ids; other values raise :class:`DataError` naming ``path``.

    Returns:
        (H, W) uint8 train ids.
    """
    bad = np.unique(raw[((raw < 0) | (raw > 33)) & (raw != 255)])
    if bad.size:
        raise DataError(
            f"label file {path} has values {bad[:20].tolist()} that are not Cityscapes label ids (0..33, 255)"
        )
    return CITYSCAPES_ID_TO_TRAINID[raw.astype(np.int64)]
