"""PASCAL VOC 2012 with the SBD-augmented masks (``SegmentationClassAug``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from wsss_lightning.data.classes import DATASET_INFO, DatasetInfo
from wsss_lightning.data.datasets.base import SegmentationSource


class VOCSource(SegmentationSource):
    """PASCAL VOC 2012 (+SBD) in its usual WSSS layout.

    Masks are palette (or grayscale) PNGs whose indices are the 21 train ids, 255 on object boundaries.
    List-file lines may be a bare id or the two-column ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` form.
    """

    info: ClassVar[DatasetInfo] = DATASET_INFO["voc"]
    layout: ClassVar[str] = (
        "  <root>/JPEGImages/<id>.jpg\n"
        "  <root>/SegmentationClassAug/<id>.png   (palette indices 0..20, 255 = ignore)\n"
        "  <root>/ImageSets/Segmentation/{train_aug,train,val,test}.txt   (one id per line)"
    )
    mask_dir: ClassVar[str] = "SegmentationClassAug"

    def list_file(self) -> Path:
        """``ImageSets/Segmentation/<split>.txt``."""
        return self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"

    def image_path(self, sample_id: str) -> Path:
        """``JPEGImages/<id>.jpg``."""
        return self.root / "JPEGImages" / f"{sample_id}.jpg"

    def mask_path(self, sample_id: str) -> Path | None:
        """``SegmentationClassAug/<id>.png`` (None without masks)."""
        return self.root / self.mask_dir / f"{sample_id}.png" if self.has_masks else None
