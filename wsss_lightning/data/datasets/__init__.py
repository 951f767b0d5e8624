"""Readers of the supported datasets in their real on-disk layouts."""

from __future__ import annotations

from pathlib import Path

from wsss_lightning.data.datasets.base import DataError, SegmentationSource
from wsss_lightning.data.datasets.cityscapes import CityscapesSource
from wsss_lightning.data.datasets.coco import COCOSource, COCOStuffSource
from wsss_lightning.data.datasets.gta5 import GTA5Source
from wsss_lightning.data.datasets.image_folder import ImageFolderSource
from wsss_lightning.data.datasets.voc import VOCSource

SOURCES: dict[str, type[SegmentationSource]] = {
    "voc": VOCSource,
    "coco": COCOSource,
    "coco_stuff": COCOStuffSource,
    "cityscapes": CityscapesSource,
    "gta5": GTA5Source,
}


def build_source(name: str, root: str | Path, split: str) -> SegmentationSource:
    """Create the reader of split ``split`` of dataset ``name`` stored under ``root``.

    Raises:
        KeyError: unknown ``name``; the message lists the valid names.
        FileNotFoundError: missing root or list file (see :class:`SegmentationSource`).
    """
    if name not in SOURCES:
        raise KeyError(f"unknown dataset {name!r}; valid names: {sorted(SOURCES)}")
    return SOURCES[name](root, split)


__all__ = [
    "SOURCES",
    "COCOSource",
    "COCOStuffSource",
    "CityscapesSource",
    "DataError",
    "GTA5Source",
    "ImageFolderSource",
    "SegmentationSource",
    "VOCSource",
    "build_source",
]
