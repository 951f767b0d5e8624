"""One ``LightningDataModule`` for every dataset and every supervision view.

:class:`WSSSDataModule` reads PASCAL VOC (+SBD), COCO 2014, COCO-Stuff 10k, Cityscapes and GTA5 from their
real on-disk layouts and serves them as one of five supervision views (``supervision=``):

``"full"``    pixel masks.
``"image"``   image-level tags (multi-hot) from a tag file, or derived from the masks once and cached.
``"click"``   1-px clicks from click PNGs, or simulated from the masks (deterministic per image).
``"semi"``    a labeled / unlabeled partition of the training split (list files, or generated from a fraction).
``"domain"``  a labeled source dataset and an unlabeled target dataset with the same classes.

Batch format
------------
Every method receives dicts of tensors; B = batch size, C = number of classes, (H, W) = crop size in
training, the batch's largest image size in evaluation. 255 is the ignore label everywhere.

Training, single source (``full`` / ``image`` / ``click``), one dict per step:

=============  =================  ============================================================================
key            dtype, shape       meaning
=============  =================  ============================================================================
``image``      float32 (B,3,H,W)  crop normalised with ``mean`` / ``std`` (ImageNet by default)
``valid_box``  int64 (B, 4)       (top, left, bottom, right) of real image content in the crop (exclusive
                                  bottom / right); outside it is padding
``name``       list[str]          sample ids
``mask``       int64 (B, H, W)    train ids, 255 = ignore and padding. In the image / click views it is the
                                  ground truth for diagnostics only (e.g. CAM mIoU): methods must not train on
                                  it (``diagnostic_masks=False`` drops it)
``tags``       float32 (B, C)     multi-hot image-level labels over all C classes (background column = 1 when
                                  the dataset has a background class); whole-image labels, not crop labels
``clicks``     int64 (B, H, W)    click view only: class id at click pixels, 255 elsewhere (and in padding)
=============  =================  ============================================================================

Training, two sources: a dict of such batches, ``{"labeled": ..., "unlabeled": ...}`` (semi) or
``{"source": ..., "target": ...}`` (domain). Lightning wraps the dict of loaders in a ``CombinedLoader``
(``max_size_cycle``). ``labeled`` / ``source`` batches have ``image, valid_box, name, mask, tags``;
``unlabeled`` / ``target`` batches have ``image, valid_box, name`` only, plus ``mask`` if
``keep_target_masks=True`` (for diagnostics). The labeled set is oversampled to the unlabeled set's size, so
one epoch is one pass over the unlabeled images.

Evaluation (val / test), images at full resolution (or short side ``eval_short_side``), padded at the bottom /
right to the batch's largest size:

=============  =================  ============================================================================
``image``      float32 (B,3,H,W)  normalised image, 0 in the padding
``mask``       int64 (B, H, W)    train ids, 255 in the padding
``size``       int64 (B, 2)       (height, width) of each image's content, i.e. ``image[i, :, :h, :w]``
``tags``       float32 (B, C)     tags derived from the mask
``name``       list[str]          sample ids
=============  =================  ============================================================================

Prediction: the same, without ``mask`` and ``tags`` when the predict split has no masks.

Writing your own ``LightningDataModule`` for these methods means yielding these keys with these dtypes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsss_lightning.data.classes import DatasetInfo, get_dataset_info
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import SegmentationSource, parse_list_lines
from wsss_lightning.data.datasets.mask_folder import MaskFolderSource
from wsss_lightning.data.supervision import build_tags, load_tags, make_semi_split, write_id_list
from wsss_lightning.data.torch_datasets import (
    ClickConfig,
    EpochKeyedSampler,
    EvalSegDataset,
    TrainSegDataset,
    oversample_indices,
    pad_collate,
    seed_worker,
)
from wsss_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainTransform, eval_transform

DatasetName = Literal["voc", "coco", "coco_stuff", "cityscapes", "gta5"]
Supervision = Literal["full", "image", "click", "semi", "domain"]
Stage = Literal["fit", "validate", "test", "predict"]

#: (train split, evaluation split) used when a split argument is None.
DEFAULT_SPLITS: dict[str, tuple[str, str]] = {
    "voc": ("train_aug", "val"),  # 10,582 SBD-augmented images; the test split has no public masks
    "coco": ("train", "val"),
    "coco_stuff": ("train", "test"),  # COCO-Stuff 10k has no val split
    "cityscapes": ("train", "val"),  # test masks are not public
    "gta5": ("all", "val"),  # GTA5 is a source domain: all 24,966 images
}

_CACHE_VERSION = 1


def _split_label(split: str) -> str:
    """File-name-safe label of a split (a split may be a list-file path)."""
    label = Path(split).stem if split.endswith(".txt") or "/" in split else split
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _ids_digest(ids: Sequence[str], extra: str = "") -> str:
    digest = hashlib.sha1(extra.encode())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()[:12]


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via a temporary file and rename, so concurrent readers / writers (DDP ranks) never see half files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _newest_mask_mtime(source: SegmentationSource) -> float:
    newest = 0.0
    for sample_id in source.ids:
        path = source.mask_path(sample_id)
        if path is not None and path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


def _read_partition(path: Path, source: SegmentationSource) -> list[str]:
    """Read a partition list (ids or image paths, normalised like the source's own list files)."""
    if not path.is_file():
        raise FileNotFoundError(f"partition list {path} does not exist")
    ids = [source.parse_id(token) for token in parse_list_lines(path.read_text().splitlines())]
    if not ids:
        raise ValueError(f"partition list {path} is empty")
    known = set(source.ids)
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise ValueError(
            f"partition list {path}: {len(unknown)} ids are not in the {source.info.name} split "
            f"{source.split!r} under {source.root}, e.g. {unknown[:5]}"
        )
    seen: set[str] = set()
    duplicates = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
    if duplicates:
        raise ValueError(f"partition list {path}: ids listed more than once, e.g. {duplicates[:5]}")
    return ids


class WSSSDataModule(L.LightningDataModule):
    """Datasets x supervision views for label-efficient semantic segmentation.

    The batch format is documented in this module's docstring.

    Args:
        root: Dataset root folder (layouts: see ``wsss_lightning.data.datasets``). Required.
        dataset: Dataset name; the source dataset for ``supervision="domain"``.
        supervision: Supervision view (module docstring).
        train_split: Training split name or list-file path (None: ``DEFAULT_SPLITS``, e.g. VOC ``train_aug``).
        val_split: Validation split (None: the dataset's evaluation split, e.g. VOC ``val``; for ``domain`` the
            target dataset's).
        test_split: Test split (None: same as ``val_split``, because the usual test splits have no public masks).
        predict_split: Prediction split (None: same as ``val_split``; use the train split to write pseudo-labels).
        crop_size: Training crop, int or (height, width). 448 is DuPL's VOC / COCO crop; method configs set
            their published value (U2PL 513 / 769, Seminar 513, ASDT 321).
        scale_range: Range of the random rescale factor (0.5-2.0 is the common VOC / Cityscapes setting).
        hflip_p: Horizontal-flip probability.
        color_jitter: Colour jitter strength or (brightness, contrast, saturation, hue); None = off (the weak
            augmentation of the semi-supervised methods has none).
        color_jitter_p: Probability of applying the colour jitter.
        grayscale_p: Random-greyscale probability.
        blur_p: Gaussian-blur probability (0: off).
        blur_sigma: Range of the blur sigma in pixels.
        pad_position: Where a rescaled image smaller than the crop is placed before cropping ("random",
            "top_left", "center"); see :class:`wsss_lightning.data.transforms.TrainTransform`.
        image_pad_value: Raw RGB value of image padding in training crops.
        mask_pad_value: Label of padded crop pixels. 255 (ignored) is correct; 0 reproduces the U2PL code.
        mean: Normalisation mean for [0, 1] pixels (ImageNet, matching pretrained backbones).
        std: Normalisation std for [0, 1] pixels.
        eval_short_side: Resize evaluation images to this short side (None: full resolution, the standard
            protocol; the mask is resized with nearest neighbour too).
        batch_size: Training batch size per device (per loader for semi / domain).
        unlabeled_batch_size: Batch size of the unlabeled / target loader (None: ``batch_size``, as U2PL).
        eval_batch_size: Evaluation batch size per device. 1 because full-resolution images differ in size and
            batching pads them to the largest one.
        num_workers: DataLoader worker processes per loader. Decoding and augmenting a VOC image into a 448
            crop costs ~8-10 ms on one core (``benchmarks/data_pipeline.py``), so 4 workers supply ~400
            images/s, enough for one GPU; semi / domain runs start this many per loader.
        pin_memory: Pin host memory for faster host-to-GPU copies (ignored without CUDA).
        persistent_workers: Keep workers alive between epochs (avoids re-forking every epoch).
        drop_last: Drop the last incomplete training batch (BatchNorm misbehaves on tiny batches; U2PL does it).
        diagnostic_masks: In the image / click views, also load the ground-truth mask for diagnostics (set
            False to guarantee methods never see it and to skip decoding it).
        mask_dir: Full view: train on the masks in this folder (``<id>.png`` of train ids, e.g. the
            pseudo-masks a first-stage model wrote with ``wsss predict`` + ``PredictionWriter``) instead of the
            ground truth; validation and test keep the ground truth. This is the second stage of two-stage
            weakly supervised methods.
        tags_file: Image-level tags (``.npy`` dict or ``.txt``, see ``supervision.load_tags``) for the training
            split; None derives them from the masks and caches them.
        cache_dir: Where derived tags and generated partitions are stored. None: ``<root>/.wsss_cache`` if the
            root is writable, else ``$XDG_CACHE_HOME/wsss_lightning`` (``~/.cache/wsss_lightning``).
        clicks_dir: Folder of click PNGs ``<id>.png`` (relative to ``root`` unless absolute); None simulates
            clicks from the masks.
        click_seed: Seed of the simulated clicks.
        background_clicks: Simulated clicks on the background class (VOC-style datasets only).
        click_placement: Simulated click position in each object region: "center" (deepest pixel, like a
            careful annotator) or "random".
        click_mode: How clicks follow the crop geometry: "mask" (nearest-neighbour like a label map, as the
            rloss / Seminar code: clicks can vanish when down-scaled) or "points" (coordinates warped, always
            one pixel, as Gated-CRF).
        labeled_list: Semi: list file of labeled ids (ids or image paths, e.g. U2PL's ``labeled.txt``).
        unlabeled_list: Semi: list file of unlabeled ids (None: the rest of the training split).
        labeled_fraction: Semi: generate a partition with this labeled fraction instead of list files.
        split_seed: Semi: seed of the generated partition and of the oversampling.
        oversample_labeled: Semi: repeat labeled ids to the unlabeled set's size (U2PL); one epoch = one pass
            over the unlabeled set.
        target_dataset: Domain: the target dataset (must have the same classes as ``dataset``).
        target_root: Domain: the target dataset's root.
        target_split: Domain: the unlabeled target training split (None: its default training split).
        keep_target_masks: Semi / domain: keep ``mask`` in unlabeled / target batches for diagnostics.

    Raises:
        ValueError: inconsistent arguments (e.g. view-specific options with another view, domain datasets
            with different classes).
        KeyError: unknown dataset name.
    """

    def __init__(
        self,
        root: str,
        dataset: DatasetName = "voc",
        supervision: Supervision = "full",
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        predict_split: str | None = None,
        crop_size: int | tuple[int, int] = 448,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip_p: float = 0.5,
        color_jitter: float | tuple[float, float, float, float] | None = None,
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.0,
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        pad_position: Literal["random", "top_left", "center"] = "random",
        image_pad_value: int = 0,
        mask_pad_value: int = 255,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        eval_short_side: int | None = None,
        batch_size: int = 8,
        unlabeled_batch_size: int | None = None,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = True,
        diagnostic_masks: bool = True,
        mask_dir: str | None = None,
        tags_file: str | None = None,
        cache_dir: str | None = None,
        clicks_dir: str | None = None,
        click_seed: int = 0,
        background_clicks: int = 1,
        click_placement: Literal["center", "random"] = "center",
        click_mode: Literal["mask", "points"] = "mask",
        labeled_list: str | None = None,
        unlabeled_list: str | None = None,
        labeled_fraction: float | None = None,
        split_seed: int = 0,
        oversample_labeled: bool = True,
        target_dataset: DatasetName | None = None,
        target_root: str | None = None,
        target_split: str | None = None,
        keep_target_masks: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(root)
        self.dataset = dataset
        self.supervision = supervision
        # normalisation, linked into the method (which needs it to recover RGB images for the CRF)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.batch_size = batch_size
        self.unlabeled_batch_size = unlabeled_batch_size or batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last
        self.diagnostic_masks = diagnostic_masks
        self.mask_dir = mask_dir
        self._train_loaders: dict[str, DataLoader[Any]] = {}
        self._resume_positions: dict[str, dict[str, int]] = {}
        self.tags_file = tags_file
        self.cache_dir = cache_dir
        self.clicks_dir = clicks_dir
        self.click_seed = click_seed
        self.background_clicks = background_clicks
        self.click_placement = click_placement
        self.labeled_list = labeled_list
        self.unlabeled_list = unlabeled_list
        self.labeled_fraction = labeled_fraction
        self.split_seed = split_seed
        self.oversample_labeled = oversample_labeled
        self.target_dataset = target_dataset
        self.target_root = target_root
        self.target_split = target_split  # the dataset's default is filled in below, after the checks
        self.keep_target_masks = keep_target_masks
        self.info: DatasetInfo = get_dataset_info(dataset)
        if supervision not in ("full", "image", "click", "semi", "domain"):
            raise ValueError(
                f"supervision: expected 'full', 'image', 'click', 'semi' or 'domain', got {supervision!r}"
            )
        self._check_view_options()
        self.target_info: DatasetInfo | None = None
        if supervision == "domain":
            assert target_dataset is not None
            self.target_info = get_dataset_info(target_dataset)
            if self.target_info.class_names != self.info.class_names:
                raise ValueError(
                    f"domain adaptation needs the same classes in source and target: dataset={dataset!r} has "
                    f"{self.info.num_classes} classes {list(self.info.class_names)[:5]}..., target_dataset="
                    f"{target_dataset!r} has {self.target_info.num_classes} {list(self.target_info.class_names)[:5]}..."
                )
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value}")
        if unlabeled_batch_size is not None and unlabeled_batch_size <= 0:
            raise ValueError(
                f"unlabeled_batch_size: expected a positive int or None, got {unlabeled_batch_size}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        # Building the pipelines here validates the augmentation arguments at construction time.
        self.train_tf = TrainTransform(
            crop_size=crop_size,
            scale_range=scale_range,
            hflip_p=hflip_p,
            color_jitter=color_jitter,
            blur_p=blur_p,
            color_jitter_p=color_jitter_p,
            grayscale_p=grayscale_p,
            blur_sigma=blur_sigma,
            image_pad_value=image_pad_value,
            mask_pad_value=mask_pad_value,
            pad_position=pad_position,
            mean=mean,
            std=std,
            click_mode=click_mode,
        )
        self.eval_tf = eval_transform(eval_short_side, mean=mean, std=std)
        self.train_split = train_split or DEFAULT_SPLITS[dataset][0]
        self.eval_dataset = target_dataset if supervision == "domain" else dataset
        self.eval_root = Path(target_root) if supervision == "domain" and target_root else self.root
        assert self.eval_dataset is not None
        self.val_split = val_split or DEFAULT_SPLITS[self.eval_dataset][1]
        self.test_split = test_split or self.val_split
        self.predict_split = predict_split or self.val_split
        self.target_split = target_split or (DEFAULT_SPLITS[target_dataset][0] if target_dataset else None)
        self._train_sets: dict[str, Dataset[Any]] | None = None
        self._eval_sets: dict[str, EvalSegDataset] = {}

    # ---- label-space properties (available right after __init__, for argument linking) ------------------
    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return self.info.num_classes

    @property
    def ignore_index(self) -> int:
        """Label of ignored pixels (255)."""
        return self.info.ignore_index

    @property
    def class_names(self) -> list[str]:
        """Class names indexed by train id."""
        return list(self.info.class_names)

    @property
    def palette(self) -> list[list[int]]:
        """One RGB colour per class."""
        return [list(c) for c in self.info.palette]

    # ---- argument checks ---------------------------------------------------------------------------------
    def _check_view_options(self) -> None:
        view = self.supervision
        only = {
            "semi": ("labeled_list", "unlabeled_list", "labeled_fraction"),
            "domain": ("target_dataset", "target_root", "target_split"),
            "click": ("clicks_dir",),
            "full": ("mask_dir",),
        }
        for owner, names in only.items():
            for name in names:
                if view != owner and getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} is only used with supervision={owner!r}, got supervision={view!r}"
                    )
        if view == "semi":
            if self.labeled_list is None and self.labeled_fraction is None:
                raise ValueError("supervision='semi' needs labeled_list (partition file) or labeled_fraction")
            if self.labeled_list is not None and self.labeled_fraction is not None:
                raise ValueError("give either labeled_list or labeled_fraction, not both")
            if self.unlabeled_list is not None and self.labeled_list is None:
                raise ValueError("unlabeled_list needs labeled_list")
            if self.labeled_fraction is not None and not 0.0 < self.labeled_fraction < 1.0:
                raise ValueError(f"labeled_fraction: expected a value in (0, 1), got {self.labeled_fraction}")
        if view == "domain" and (self.target_dataset is None or self.target_root is None):
            raise ValueError("supervision='domain' needs target_dataset and target_root")

    # ---- paths -------------------------------------------------------------------------------------------
    def _resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def cache_path(self) -> Path:
        """Folder of derived tags and generated partitions."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        if self.root.is_dir() and os.access(self.root, os.W_OK):
            return self.root / ".wsss_cache"
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return base / "wsss_lightning"

    def _cache_is_external(self) -> bool:
        return self.root.resolve() not in self.cache_path.resolve().parents

    # ---- Lightning hooks ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check the roots exist and build caches (runs on one process per node, before ``setup``)."""
        roots = [("root", self.root)]
        if self.supervision == "domain":
            roots.append(("target_root", self.eval_root))
        for name, root in roots:
            if not root.is_dir():
                raise FileNotFoundError(f"{name} {root} does not exist or is not a folder")
        if self.clicks_dir is not None and not self._resolve(self.clicks_dir).is_dir():
            raise FileNotFoundError(f"clicks_dir {self._resolve(self.clicks_dir)} is not a folder")
        if self.supervision == "image" and self.tags_file is None:
            self._cached_tags(build_source(self.dataset, self.root, self.train_split))
        if self.supervision == "semi" and self.labeled_fraction is not None:
            self._partition(build_source(self.dataset, self.root, self.train_split), write=True)

    def setup(self, stage: str | None = None) -> None:
        """Build the torch datasets needed for ``stage`` (None: all)."""
        if stage in (None, "fit") and self._train_sets is None:
            self._train_sets = self._build_train_sets()
        wanted = {
            "fit": ["val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
            None: ["val", "test", "predict"],
        }.get(stage, [])
        splits = {"val": self.val_split, "test": self.test_split, "predict": self.predict_split}
        for kind in wanted:
            if kind not in self._eval_sets:
                assert self.eval_dataset is not None
                source = build_source(self.eval_dataset, self.eval_root, splits[kind])
                with_mask = kind != "predict" or source.has_masks
                if not source.has_masks and kind != "predict":
                    raise ValueError(
                        f"{kind}_split {splits[kind]!r} of {self.eval_dataset} has no masks to evaluate against; "
                        "pick a split with masks (or use it as predict_split)"
                    )
                self._eval_sets[kind] = EvalSegDataset(source, self.eval_tf, with_mask=with_mask)

    # ---- training datasets -------------------------------------------------------------------------------
    def _click_config(self) -> ClickConfig:
        return ClickConfig(
            num_classes=self.num_classes,
            clicks_dir=None if self.clicks_dir is None else self._resolve(self.clicks_dir),
            seed=self.click_seed,
            background_clicks=self.background_clicks,
            background_class=0 if self.info.has_background else None,
            placement=self.click_placement,
        )

    def _tags_for(self, source: SegmentationSource) -> np.ndarray | Literal["mask"]:
        """Tags of the training split: from the tag file, else from the masks (cached for the image view)."""
        if self.tags_file is not None:
            table = load_tags(
                self._resolve(self.tags_file),
                self.num_classes,
                source.ids,
                add_background=self.info.has_background,
            )
            return np.stack([table[i] for i in source.ids]).astype(np.float32)
        if self.supervision == "image":
            return self._cached_tags(source)
        return (
            "mask"  # the mask is decoded anyway in these views; counting its labels is cheaper than a cache
        )

    def _build_train_sets(self) -> dict[str, Dataset[Any]]:
        source = build_source(self.dataset, self.root, self.train_split)
        if self.mask_dir is not None:
            source = MaskFolderSource(source, self.mask_dir)
        tf, view = self.train_tf, self.supervision
        if view in ("full", "image", "click"):
            if not source.has_masks and (view != "image" or self.tags_file is None or self.diagnostic_masks):
                raise ValueError(
                    f"train_split {self.train_split!r} of {self.dataset} under {self.root} has no masks; "
                    f"supervision={view!r} needs them"
                    + (" (or a tags_file and diagnostic_masks=False)" if view == "image" else "")
                )
            with_mask = view == "full" or self.diagnostic_masks
            clicks = self._click_config() if view == "click" else None
            single = TrainSegDataset(
                source, tf, with_mask=with_mask, tags=self._tags_for(source), clicks=clicks
            )
            self._check_size("train", single, self.batch_size)
            return {"train": single}
        if view == "semi":
            labeled_ids, unlabeled_ids = self._partition(source, write=False)
            position = {sid: i for i, sid in enumerate(source.ids)}
            lab_pos = [position[i] for i in labeled_ids]
            unl_pos = [position[i] for i in unlabeled_ids]
            if self.oversample_labeled:
                lab_pos = [
                    lab_pos[k] for k in oversample_indices(len(lab_pos), len(unl_pos), self.split_seed)
                ]
            tags = self._tags_for(source)
            labeled = TrainSegDataset(source, tf, lab_pos, with_mask=True, tags=tags)
            unlabeled = TrainSegDataset(source, tf, unl_pos, with_mask=self.keep_target_masks)
            self._check_size("labeled", labeled, self.batch_size)
            self._check_size("unlabeled", unlabeled, self.unlabeled_batch_size)
            return {"labeled": labeled, "unlabeled": unlabeled}
        # domain
        assert self.target_dataset is not None and self.target_split is not None
        target_source = build_source(self.target_dataset, self.eval_root, self.target_split)
        src = TrainSegDataset(source, tf, with_mask=True, tags=self._tags_for(source))
        tgt = TrainSegDataset(target_source, tf, with_mask=self.keep_target_masks)
        self._check_size("source", src, self.batch_size)
        self._check_size("target", tgt, self.unlabeled_batch_size)
        return {"source": src, "target": tgt}

    def _check_size(self, name: str, dataset: TrainSegDataset, batch_size: int) -> None:
        if self.drop_last and len(dataset) < batch_size:
            raise ValueError(
                f"the {name} training set has {len(dataset)} samples, fewer than one batch ({batch_size}) with "
                f"drop_last=True ({dataset.source!r}); lower the batch size or set drop_last=False"
            )

    # ---- caches ------------------------------------------------------------------------------------------
    def _cached_tags(self, source: SegmentationSource) -> np.ndarray:
        """(N, C) tags of ``source`` derived from its masks, from the cache if it is up to date."""
        extra = str(source.root.resolve()) if self._cache_is_external() else ""
        name = f"tags_{source.info.name}_{_split_label(source.split)}_{_ids_digest(source.ids, extra)}.npz"
        path = self.cache_path / name
        newest = _newest_mask_mtime(source)
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as cached:
                    fresh = (
                        int(cached["version"]) == _CACHE_VERSION
                        and cached["tags"].shape == (len(source.ids), self.num_classes)
                        and cached["ids"].tolist() == list(source.ids)
                        and float(cached["mask_mtime"]) >= newest
                    )
                    if fresh:
                        return cached["tags"].astype(np.float32)
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: rebuilt below and overwritten
        if not source.has_masks:
            raise ValueError(
                f"cannot derive image tags: split {source.split!r} of {source.info.name} under {source.root} has "
                "no masks; give tags_file"
            )
        table = build_tags(source, num_workers=min(self.num_workers, os.cpu_count() or 1))
        tags = np.stack([table[i] for i in source.ids]).astype(np.float32)
        if self.info.has_background:
            tags[:, 0] = 1.0  # background is present in every image by convention (see image_tags)
        ids = np.asarray(source.ids, dtype=np.str_)

        def save(tmp: Path) -> None:
            with tmp.open("wb") as f:  # a file object stops numpy from appending ".npz" to the temporary name
                np.savez(f, version=_CACHE_VERSION, ids=ids, tags=tags, mask_mtime=newest)

        _atomic_write_bytes(path, save)
        return tags

    def _partition(self, source: SegmentationSource, write: bool) -> tuple[list[str], list[str]]:
        """Labeled / unlabeled ids of the semi view (validated list files, or a generated partition)."""
        if self.labeled_list is not None:
            lab_path = self._resolve(self.labeled_list)
            labeled = _read_partition(lab_path, source)
            if self.unlabeled_list is not None:
                unl_path = self._resolve(self.unlabeled_list)
                unlabeled = _read_partition(unl_path, source)
                overlap = sorted(set(labeled) & set(unlabeled))
                if overlap:
                    raise ValueError(
                        f"partition lists {lab_path} and {unl_path} share {len(overlap)} ids, e.g. {overlap[:5]}"
                    )
            else:
                chosen = set(labeled)
                unlabeled = [i for i in source.ids if i not in chosen]
        else:
            assert self.labeled_fraction is not None  # checked in __init__
            labeled, unlabeled = make_semi_split(source.ids, self.labeled_fraction, self.split_seed)
            if write:
                folder = self.partition_dir(source)
                for name, ids in (("labeled.txt", labeled), ("unlabeled.txt", unlabeled)):
                    path = folder / name
                    text = "".join(f"{i}\n" for i in ids)
                    if not path.is_file() or path.read_text() != text:
                        _atomic_write_bytes(path, lambda tmp, ids=ids: write_id_list(tmp, ids))
        if not labeled or not unlabeled:
            raise ValueError(
                f"semi-supervised partition of {source!r} has {len(labeled)} labeled and {len(unlabeled)} "
                "unlabeled ids; both must be non-empty"
            )
        return labeled, unlabeled

    def partition_dir(self, source: SegmentationSource | None = None) -> Path:
        """Folder where a generated partition (``labeled.txt`` / ``unlabeled.txt``) is written."""
        split = source.split if source is not None else self.train_split
        return (
            self.cache_path
            / "partitions"
            / f"{self.dataset}_{_split_label(split)}_{self.labeled_fraction:g}_seed{self.split_seed}"
        )

    # ---- loaders -----------------------------------------------------------------------------------------
    def _loader(
        self, dataset: Dataset[Any], batch_size: int, train: bool, collate: Any = None
    ) -> DataLoader[Any]:
        workers = self.num_workers
        options: dict[str, Any] = {
            "batch_size": batch_size,
            "drop_last": train and self.drop_last,
            "num_workers": workers,
            "collate_fn": collate,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers and workers > 0,
            "worker_init_fn": seed_worker if workers > 0 else None,
        }
        if not train:
            return DataLoader(dataset, **options)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochKeyedSampler(dataset, num_replicas=replicas, rank=rank)
        return DataLoader(dataset, sampler=sampler, **options)

    # ---- exact resume -------------------------------------------------------------------------------
    # Lightning restores a datamodule's state before it builds the loaders (its own loader-state hook runs
    # after ``estimated_stepping_batches`` may already have built them), so the position inside the epoch
    # travels here: (sampler epoch, samples consumed) per training loader.
    def state_dict(self) -> dict[str, Any]:
        """Position of every training loader inside its epoch (saved in checkpoints by Lightning)."""
        batches = 0
        if self.trainer is not None:
            batches = int(self.trainer.fit_loop.epoch_loop.batch_progress.current.ready)
        positions = {}
        for name, loader in self._train_loaders.items():
            assert isinstance(loader.sampler, EpochKeyedSampler)
            positions[name] = {
                "epoch": loader.sampler.epoch,
                "samples": batches * int(loader.batch_size or 1),
            }
        return {"train_positions": positions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember the checkpointed positions; the next training loaders start there."""
        self._resume_positions = dict(state_dict.get("train_positions", {}))

    def train_dataloader(self) -> DataLoader[Any] | dict[str, DataLoader[Any]]:
        """One loader (full / image / click) or a dict of two (semi / domain); see the module docstring."""
        if self._train_sets is None:
            self.setup("fit")
        assert self._train_sets is not None
        sizes = {
            "train": self.batch_size,
            "labeled": self.batch_size,
            "source": self.batch_size,
            "unlabeled": self.unlabeled_batch_size,
            "target": self.unlabeled_batch_size,
        }
        loaders = {k: self._loader(ds, sizes[k], train=True) for k, ds in self._train_sets.items()}
        for name, position in self._resume_positions.items():
            sampler = loaders[name].sampler
            assert isinstance(sampler, EpochKeyedSampler)
            sampler.resume_at = (int(position["epoch"]), int(position["samples"]))
        self._resume_positions = {}
        self._train_loaders = loaders
        if len(loaders) == 1:
            return loaders["train"]
        return loaders

    def _eval_loader(self, kind: str) -> DataLoader[Any]:
        if kind not in self._eval_sets:
            self.setup({"val": "validate"}.get(kind, kind))
        return self._loader(self._eval_sets[kind], self.eval_batch_size, train=False, collate=pad_collate)

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation images padded per batch; see the module docstring."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        """Test images padded per batch; see the module docstring."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader[Any]:
        """Prediction images padded per batch (no mask when the split has none)."""
        return self._eval_loader("predict")
