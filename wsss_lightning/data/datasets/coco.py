"""MS COCO 2014 in the WSSS form (81-id PNG masks) and COCO-Stuff 10k restricted to the VOC classes."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from wsss_lightning.data.classes import DATASET_INFO, DatasetInfo
from wsss_lightning.data.datasets.base import SegmentationSource

# Split names used interchangeably by WSSS code bases for the COCO 2014 lists.
_COCO_SPLIT_ALIASES = {"train": "train2014", "train2014": "train", "val": "val2014", "val2014": "val"}
# Image sub-folders of lists that are subsets of a split (DuPL validates on the 5000-image ``val_part``).
_COCO_SUBDIR_ALIASES = {**_COCO_SPLIT_ALIASES, "val_part": "val2014"}


class COCOSource(SegmentationSource):
    """MS COCO 2014 converted to VOC-style masks (see ``prepare.coco_instances_to_masks``).

    Masks hold 81 ids: 0 background, 1..80 the COCO categories in category-id order, 255 ignore (crowds).
    Images and masks may also sit in a per-split sub-folder (``JPEGImages/train2014/<id>.jpg``).

    Args:
        root: dataset root folder.
        split: split name (``train`` / ``val``, ``train2014`` / ``val2014`` or ``val_part``) or the path of a
            list file (absolute or relative to ``root``; anything ending in ``.txt``).

    Raises:
        FileNotFoundError: ``root`` or the split's list file does not exist (the message names the path and
            the expected layout).
    """

    info: ClassVar[DatasetInfo] = DATASET_INFO["coco"]
    layout: ClassVar[str] = (
        "  <root>/JPEGImages/<id>.jpg            (ids like COCO_train2014_000000000009)\n"
        "  <root>/SegmentationClass/<id>.png     (indices 0..80, 255 = ignore)\n"
        "  <root>/ImageSets/{train,val}.txt      (train2014/val2014 also accepted)"
    )

    def __init__(self, root: str | Path, split: str) -> None:
        super().__init__(root, split)
        # Some releases keep one sub-folder per split; use it when it exists.
        sub = [
            s
            for s in (split, _COCO_SUBDIR_ALIASES.get(split, ""))
            if s and (self.root / "JPEGImages" / s).is_dir()
        ]
        self._subdir = sub[0] if sub else ""

    def list_file(self) -> Path:
        """``ImageSets/<split>.txt``, or the file of the split's alias (``train2014`` <-> ``train``)."""
        folder = self.root / "ImageSets"
        path = folder / f"{self.split}.txt"
        alias = _COCO_SPLIT_ALIASES.get(self.split)
        if not path.is_file() and alias and (folder / f"{alias}.txt").is_file():
            return folder / f"{alias}.txt"
        return path

    def image_path(self, sample_id: str) -> Path:
        """``JPEGImages[/<split sub-folder>]/<id>.jpg``."""
        return self.root / "JPEGImages" / self._subdir / f"{sample_id}.jpg"

    def mask_path(self, sample_id: str) -> Path | None:
        """``SegmentationClass[/<split sub-folder>]/<id>.png`` (None without masks)."""
        return self.root / "SegmentationClass" / self._subdir / f"{sample_id}.png" if self.has_masks else None


class COCOStuffSource(SegmentationSource):
    """COCO-Stuff 10k with the 20 VOC classes kept (everything else background).

    Masks are the PNGs written by ``prepare.coco_stuff_to_voc`` (VOC ids 0..20, 255 ignore); both list files
    (``train``: 9000 images, ``test``: 1000) come with masks.
    """

    info: ClassVar[DatasetInfo] = DATASET_INFO["coco_stuff"]
    layout: ClassVar[str] = (
        "  <root>/images/<id>.jpg\n"
        "  <root>/annotations/<id>.png     (VOC ids 0..20, 255 = ignore; written by `wsss-data coco-stuff`)\n"
        "  <root>/imageLists/{train,test}.txt"
    )
    unlabeled_splits: ClassVar[tuple[str, ...]] = ()

    def list_file(self) -> Path:
        """``imageLists/<split>.txt``."""
        return self.root / "imageLists" / f"{self.split}.txt"

    def image_path(self, sample_id: str) -> Path:
        """``images/<id>.jpg``."""
        return self.root / "images" / f"{sample_id}.jpg"

    def mask_path(self, sample_id: str) -> Path | None:
        """``annotations/<id>.png``."""
        return self.root / "annotations" / f"{sample_id}.png"
