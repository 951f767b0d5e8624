"""Training on masks from a folder (the pseudo-masks of a first stage) instead of the ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsss_lightning.data.datasets.base import DataError, SegmentationSource


class MaskFolderSource(SegmentationSource):
    """The images and ids of ``base`` with masks read from ``mask_dir/<id>.png``.

    The PNGs hold train ids (palette or grayscale; 255 = ignore), as the prediction writer produces them,
    so ``wsss predict`` of a first-stage model followed by ``fit`` with ``mask_dir`` is a two-stage run.

    Args:
        base: the reader of the training split whose images are used.
        mask_dir: folder of mask PNGs, one per id of ``base`` (ids with ``/`` live in sub-folders).

    Raises:
        FileNotFoundError: ``mask_dir`` does not exist, or masks are missing for some ids (the message
            names the folder, the number missing and a few of them).
    """

    def __init__(self, base: SegmentationSource, mask_dir: str | Path) -> None:
        self.base = base
        self.info = base.info  # type: ignore[misc]
        self.layout = f"{mask_dir}/<id>.png (one mask of train ids per image of {base!r})"  # type: ignore[misc]
        self.root, self.split, self.ids = base.root, base.split, base.ids
        self.mask_dir = Path(mask_dir)
        if not self.mask_dir.is_dir():
            raise FileNotFoundError(f"mask_dir {self.mask_dir} does not exist; expected {self.layout}")
        missing = [i for i in self.ids if not self.mask_path(i).is_file()]
        if missing:
            raise FileNotFoundError(
                f"mask_dir {self.mask_dir} lacks masks for {len(missing)} of {len(self.ids)} ids of {base!r}, "
                f"e.g. {', '.join(missing[:5])}"
            )

    @property
    def has_masks(self) -> bool:
        """Always True: every id has a mask in ``mask_dir``."""
        return True

    def image_path(self, sample_id: str) -> Path:
        """The image path of ``base``."""
        return self.base.image_path(sample_id)

    def mask_path(self, sample_id: str) -> Path:
        """``mask_dir/<id>.png``."""
        return self.mask_dir / f"{sample_id}.png"

    def read_mask(self, sample_id: str) -> np.ndarray:
        """Read the mask of ``sample_id`` from ``mask_dir`` as train ids.

        Returns:
            (H, W) uint8 array of train ids, 255 = ignore.

        Raises:
            DataError: missing/corrupt file or values outside [0, C) ∪ {255} (the message names the
                pseudo-mask folder and the file).
        """
        try:
            return super().read_mask(sample_id)
        except DataError as err:
            raise DataError(f"pseudo-mask folder {self.mask_dir}: {err}") from err
