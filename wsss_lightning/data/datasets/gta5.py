"""GTA5 (Playing for Data): synthetic street scenes labelled with Cityscapes label ids."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from wsss_lightning.data.classes import DATASET_INFO, DatasetInfo
from wsss_lightning.data.datasets.base import SegmentationSource
from wsss_lightning.data.datasets.cityscapes import label_ids_to_train_ids


class GTA5Source(SegmentationSource):
    """GTA5 ``images/`` + ``labels/``.

    Label PNGs are palette images whose indices are Cityscapes *label ids*; they are mapped to the 19 train
    ids (unknown ids -> 255). Split lists ``<root>/{train,val,all}.txt`` hold file names or 5-digit ids; for
    ``all`` without a list file, ``images/`` is scanned.
    """

    info: ClassVar[DatasetInfo] = DATASET_INFO["gta5"]
    layout: ClassVar[str] = (
        "  <root>/images/<5-digit id>.png\n"
        "  <root>/labels/<5-digit id>.png     (palette PNG, indices = Cityscapes label ids)\n"
        "  <root>/{train,val,all}.txt          (all.txt optional: images/ is scanned)"
    )

    def list_file(self) -> Path:
        """``<root>/<split>.txt``."""
        return self.root / f"{self.split}.txt"

    def scan_ids(self) -> list[str] | None:
        """For ``all``: the stems of ``images/*.png``, sorted (None for other splits)."""
        if self.split != "all":
            return None
        return sorted(p.stem for p in (self.root / "images").glob("*.png"))

    def image_path(self, sample_id: str) -> Path:
        """``images/<id>.png``."""
        return self.root / "images" / f"{sample_id}.png"

    def mask_path(self, sample_id: str) -> Path | None:
        """``labels/<id>.png`` (None without masks)."""
        return self.root / "labels" / f"{sample_id}.png" if self.has_masks else None

    def decode_mask(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Cityscapes label ids mapped to the 19 train ids."""
        return label_ids_to_train_ids(raw, path)
