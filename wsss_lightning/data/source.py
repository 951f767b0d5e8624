"""Where a dataset lives and which of its splits are used: :class:`DatasetSource`."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal, get_args

DatasetName = Literal["voc", "coco", "coco_stuff", "cityscapes", "gta5"]

#: (train split, evaluation split) used when a split argument is None.
DEFAULT_SPLITS: dict[str, tuple[str, str]] = {
    "voc": ("train_aug", "val"),  # 10,582 SBD-augmented images; the test split has no public masks
    "coco": ("train", "val"),
    "coco_stuff": ("train", "test"),  # COCO-Stuff 10k has no val split
    "cityscapes": ("train", "val"),  # test masks are not public
    "gta5": ("all", "val"),  # GTA5 is a source domain: all 24,966 images
}


@dataclass
class DatasetSource:
    """One dataset on disk and the splits read from it.

    The datamodule's ``source``; a domain-adaptive run names its target domain with a second one
    (:class:`~wsss_lightning.data.views.DomainView`).

    Args:
        root: Dataset root folder (layouts: see ``wsss_lightning.data.datasets``).
        name: Dataset name, one of ``voc``, ``coco``, ``coco_stuff``, ``cityscapes``, ``gta5``.
        train_split: Training split name or list-file path (None: ``DEFAULT_SPLITS``, e.g. VOC ``train_aug``).
            For a domain target: the unlabeled target images trained on.
        val_split: Validation split (None: the dataset's evaluation split, e.g. VOC ``val``).
        test_split: Test split (None: same as ``val_split``, because the usual test splits have no public masks).
        predict_split: Prediction split (None: same as ``val_split``; use the train split to write pseudo-labels).
            Predicting reads no masks, so any split or list file of ids works.
        predict_images: Predict on your own images instead of a split: a folder (searched with its sub-folders
            for .jpg / .jpeg / .png / .bmp / .tif / .tiff / .webp, sorted) or a list file of image paths
            (relative to the list file's folder). Relative to the working directory, not ``root``; needs no
            masks and no dataset layout (``root`` need not exist). Predictions are named after the images'
            paths inside the folder. Not together with ``predict_split``.

    Raises:
        ValueError: unknown dataset name (the message lists the valid names), empty root or split, or both
            ``predict_split`` and ``predict_images``.
    """

    root: str
    name: DatasetName = "voc"
    train_split: str | None = None
    val_split: str | None = None
    test_split: str | None = None
    predict_split: str | None = None
    predict_images: str | None = None

    def __post_init__(self) -> None:
        if self.name not in DEFAULT_SPLITS:
            valid = ", ".join(repr(n) for n in get_args(DatasetName))
            raise ValueError(f"DatasetSource.name: unknown dataset {self.name!r}; valid names: {valid}")
        if isinstance(self.root, os.PathLike):  # a pathlib.Path from Python code
            self.root = os.fspath(self.root)
        if not isinstance(self.root, str) or not self.root:
            raise ValueError(f"DatasetSource.root: expected a folder path, got {self.root!r}")
        for field in _SPLIT_FIELDS:
            value = getattr(self, field)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(
                    f"DatasetSource.{field}: expected a split name, a list-file path or None, got {value!r}"
                )
        if isinstance(self.predict_images, os.PathLike):
            self.predict_images = os.fspath(self.predict_images)
        if self.predict_images is not None:
            if not isinstance(self.predict_images, str) or not self.predict_images:
                raise ValueError(
                    "DatasetSource.predict_images: expected a folder of images or a list file of image paths, "
                    f"got {self.predict_images!r}"
                )
            if self.predict_split is not None:
                raise ValueError(
                    f"DatasetSource: predict_split={self.predict_split!r} and predict_images="
                    f"{self.predict_images!r} both name what to predict on; give one of them"
                )

    def resolved(self) -> DatasetSource:
        """A copy with every split that is None filled in from :data:`DEFAULT_SPLITS` (the splits in use).

        ``predict_split`` stays None when ``predict_images`` names the images to predict on.
        """
        train, evaluation = DEFAULT_SPLITS[self.name]
        val = self.val_split or evaluation
        return replace(
            self,
            train_split=self.train_split or train,
            val_split=val,
            test_split=self.test_split or val,
            predict_split=self.predict_split or (val if self.predict_images is None else None),
        )


_SPLIT_FIELDS = ("train_split", "val_split", "test_split", "predict_split")
