"""One ``LightningDataModule`` for every dataset and every supervision view.

:class:`WSSSDataModule` reads PASCAL VOC (+SBD), COCO 2014, COCO-Stuff 10k, Cityscapes and GTA5 from their
real on-disk layouts and serves them as one of five supervision views (``view=``, see
:mod:`wsss_lightning.data.views`; ``WSSSDataModule.supervision`` holds the view's name):

============  ==============  ===========================================================================
name          view            what the method trains on
============  ==============  ===========================================================================
``"full"``    ``FullView``    pixel masks (the default).
``"image"``   ``TagsView``    image-level tags (multi-hot) from a tag file, or derived from the masks once
                              and cached.
``"click"``   ``ClickView``   1-px clicks from click PNGs, or simulated from the masks (deterministic per
                              image).
``"semi"``    ``SemiView``    a labeled / unlabeled partition of the training split (list files, or
                              generated from a fraction).
``"domain"``  ``DomainView``  a labeled source dataset and an unlabeled target dataset with the same
                              classes.
============  ==============  ===========================================================================

Its arguments come in four groups, plus ``cache_dir``: ``source``
(:class:`~wsss_lightning.data.source.DatasetSource`: dataset name, root, splits), ``view``, ``transform``
(:class:`~wsss_lightning.data.options.TransformOptions`) and ``loader``
(:class:`~wsss_lightning.data.options.LoaderOptions`).

Batch format
------------
Every method receives dicts of tensors; B = batch size, C = number of classes, (H, W) = crop size in
training, the batch's largest image size in evaluation. 255 is the ignore label everywhere.

Training, single source (``full`` / ``image`` / ``click``), one dict per step:

=============  =================  ============================================================================
key            dtype, shape       meaning
=============  =================  ============================================================================
``image``      float32 (B,3,H,W)  crop normalised with ``transform.mean`` / ``std`` (ImageNet by default)
``valid_box``  int64 (B, 4)       (top, left, bottom, right) of real image content in the crop (exclusive
                                  bottom / right); outside it is padding
``name``       list[str]          sample ids
``mask``       int64 (B, H, W)    train ids, 255 = ignore and padding. In the image / click views it is the
                                  ground truth for diagnostics only (e.g. CAM mIoU): methods must not train on
                                  it (the view's ``diagnostic_masks=False`` drops it)
``tags``       float32 (B, C)     multi-hot image-level labels over all C classes (background column = 1 when
                                  the dataset has a background class); whole-image labels, not crop labels
``clicks``     int64 (B, H, W)    click view only: class id at click pixels, 255 elsewhere (and in padding)
=============  =================  ============================================================================

Training, two sources: a dict of such batches, ``{"labeled": ..., "unlabeled": ...}`` (semi) or
``{"source": ..., "target": ...}`` (domain). Lightning wraps the dict of loaders in a ``CombinedLoader``
(``max_size_cycle``). ``labeled`` / ``source`` batches have ``image, valid_box, name, mask, tags``;
``unlabeled`` / ``target`` batches have ``image, valid_box, name`` only, plus ``mask`` if the view's
``keep_target_masks=True`` (for diagnostics). The labeled set is oversampled to the unlabeled set's size, so
one epoch is one pass over the unlabeled images.

Evaluation (val / test), images at full resolution (or short side ``transform.eval_short_side``, then optionally
a ``transform.eval_center_crop`` square), padded at the bottom / right to the batch's largest size:

=============  =================  ============================================================================
``image``      float32 (B,3,H,W)  normalised image, 0 in the padding
``mask``       int64 (B, H, W)    train ids, 255 in the padding
``size``       int64 (B, 2)       (height, width) of each image's content, i.e. ``image[i, :, :h, :w]``
``tags``       float32 (B, C)     tags derived from the mask
``name``       list[str]          sample ids
=============  =================  ============================================================================

Prediction: ``image``, ``size`` and ``name`` as above (no masks are read, whatever the split), without the
centre crop (a prediction covers the whole image), plus ``image_size`` int64 (B, 2), each image's (height,
width) as stored, before ``eval_short_side`` resizing: the size predictions are written at. The images are the
``predict_split`` of the dataset, or ``source.predict_images``: a folder or list file of the user's own images
(names = their paths inside the folder, without extension).

Writing your own ``LightningDataModule`` for these methods means yielding these keys with these dtypes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from wsss_lightning.data.classes import DatasetInfo, get_dataset_info, train_id_to_label_id
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import DataError, SegmentationSource, parse_list_lines
from wsss_lightning.data.datasets.image_folder import ImageFolderSource
from wsss_lightning.data.datasets.mask_folder import MaskFolderSource
from wsss_lightning.data.options import LoaderOptions, TransformOptions
from wsss_lightning.data.rare_classes import (
    ClassStats,
    RareClassSampler,
    newest_label_mtime,
    resolve_class_stats,
    split_label,
)
from wsss_lightning.data.source import DEFAULT_SPLITS, DatasetName, DatasetSource
from wsss_lightning.data.supervision import build_tags, load_tags, make_semi_split, write_id_list
from wsss_lightning.data.torch_datasets import (
    ClickConfig,
    EpochKeyedSampler,
    EvalSegDataset,
    ResumableLoader,
    TrainSegDataset,
    oversample_indices,
    pad_collate,
    seed_worker,
)
from wsss_lightning.data.transforms import eval_transform
from wsss_lightning.data.views import (
    ClickView,
    DomainView,
    FullView,
    SemiView,
    SupervisionView,
    TagsView,
    view_from_config,
)
from wsss_lightning.files import atomic_savez, atomic_write

Supervision = Literal["full", "image", "click", "semi", "domain"]
Stage = Literal["fit", "validate", "test", "predict"]

__all__ = ["DEFAULT_SPLITS", "DatasetName", "Stage", "Supervision", "WSSSDataModule"]

_CACHE_VERSION = 1


def _ids_digest(ids: Sequence[str], extra: str = "") -> str:
    digest = hashlib.sha1(extra.encode())
    digest.update("\n".join(ids).encode())
    return digest.hexdigest()[:12]


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


def _plain(value: Any) -> Any:
    """An option group as plain values (dataclass -> dict, view -> class_path / init_args)."""
    if isinstance(value, SupervisionView):
        return value.as_config()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _groups(
    source: Any, view: Any, transform: Any, loader: Any
) -> tuple[DatasetSource, SupervisionView, TransformOptions, LoaderOptions]:
    """The option groups with defaults filled in; mappings (plain values from a checkpoint) are built."""
    if isinstance(source, Mapping):
        source = DatasetSource(**source)
    if view is None:
        view = FullView()
    elif isinstance(view, Mapping):
        view = view_from_config(view)
    if transform is None or isinstance(transform, Mapping):
        transform = TransformOptions(**(transform or {}))
    if loader is None or isinstance(loader, Mapping):
        loader = LoaderOptions(**(loader or {}))
    return source, view, transform, loader


class WSSSDataModule(L.LightningDataModule):
    """Datasets x supervision views for label-efficient semantic segmentation.

    The batch format is documented in this module's docstring. In Python::

        WSSSDataModule(
            DatasetSource(root="/data/VOC2012", name="voc"),
            view=SemiView(labeled_fraction=0.125),
            transform=TransformOptions(crop_size=513, pad_position="top_left"),
            loader=LoaderOptions(batch_size=16),
        )

    and in a config, ``source`` / ``transform`` / ``loader`` are nested mappings and ``view`` is a
    ``class_path`` (+ ``init_args``), e.g. ``view: {class_path: wsss_lightning.data.TagsView}``.

    Args:
        source: The dataset (name, root) and its train / val / test / predict splits. With a
            :class:`DomainView` this is the labeled source domain; evaluation runs on the view's target.
        view: Supervision view: :class:`FullView` (None: full masks), :class:`TagsView`,
            :class:`ClickView`, :class:`SemiView` or :class:`DomainView`, each with its own options.
        transform: Training augmentation, evaluation resizing and normalisation (None: the defaults of
            :class:`TransformOptions`).
        loader: Batch sizes and DataLoader settings (None: the defaults of :class:`LoaderOptions`).
        cache_dir: Where derived tags and generated partitions are stored. None: ``<root>/.wsss_cache`` if the
            source root is writable, else ``$XDG_CACHE_HOME/wsss_lightning`` (``~/.cache/wsss_lightning``).

    Raises:
        ValueError: inconsistent groups: domain datasets with different classes, or evaluation splits on the
            source of a domain-adaptive run (they belong to the target).
        TypeError: a group of the wrong type.
    """

    def __init__(
        self,
        source: DatasetSource,
        view: SupervisionView | None = None,
        transform: TransformOptions | None = None,
        loader: LoaderOptions | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # from the CLI: the config's values; from Python: the objects given
        plain = {key: _plain(value) for key, value in self.hparams.items()}
        if plain != dict(self.hparams):
            # Plain values, as the CLI stores them: checkpoints then load with torch's weights-only unpickler
            # and loggers receive readable values. __init__ accepts them back (load_from_checkpoint).
            self.save_hyperparameters(plain)
        source, view, transform, loader = _groups(source, view, transform, loader)
        if not isinstance(source, DatasetSource):
            raise TypeError(
                f"source: expected a DatasetSource(root=..., name=...), got {type(source).__name__}"
            )
        if not isinstance(view, SupervisionView):
            raise TypeError(
                f"view: expected FullView, TagsView, ClickView, SemiView or DomainView, got {type(view).__name__}"
            )
        self.view = view
        self.transform = transform
        self.loader = loader
        self.cache_dir = cache_dir
        self.info: DatasetInfo = get_dataset_info(source.name)
        self.target: DatasetSource | None = None
        self.target_info: DatasetInfo | None = None
        if isinstance(view, DomainView):
            given = [
                f for f in ("val_split", "test_split", "predict_split") if getattr(source, f) is not None
            ]
            if given:
                raise ValueError(
                    f"source.{given[0]} is not used with DomainView: evaluation runs on the target domain; set "
                    f"view.init_args.target.{given[0]} instead"
                )
            self.target = view.target.resolved()
            self.target_info = get_dataset_info(self.target.name)
            if self.target_info.class_names != self.info.class_names:
                raise ValueError(
                    f"domain adaptation needs the same classes in source and target: source.name={source.name!r} "
                    f"has {self.info.num_classes} classes {list(self.info.class_names)[:5]}..., target.name="
                    f"{self.target.name!r} has {self.target_info.num_classes} "
                    f"{list(self.target_info.class_names)[:5]}..."
                )
        self.source = source.resolved()
        self.root = Path(self.source.root)
        # Evaluation reads the target domain in domain-adaptive runs, else the source.
        self.eval_source = self.target if self.target is not None else self.source
        self.eval_root = Path(self.eval_source.root)
        self.train_tf = self.transform.train_transform(
            click_mode=view.click_mode if isinstance(view, ClickView) else "mask"
        )
        self.eval_tf = self.transform.eval_transform()
        # a prediction covers the whole image: no centre crop (the resize is undone when writing)
        self.predict_tf = eval_transform(
            self.transform.eval_short_side, mean=transform.mean, std=transform.std
        )
        self._train_sets: dict[str, Dataset[Any]] | None = None
        self._eval_sets: dict[str, EvalSegDataset] = {}
        self._train_loaders: dict[str, DataLoader[Any]] = {}
        self._resume_positions: dict[str, dict[str, int]] = {}

    # ---- properties read by the CLI links, methods and callbacks (available right after __init__) -------
    @property
    def supervision(self) -> Supervision:
        """Name of the supervision view: ``"full"``, ``"image"``, ``"click"``, ``"semi"`` or ``"domain"``."""
        return self.view.name  # type: ignore[return-value]

    @property
    def batch_size(self) -> int:
        """Training batch size per device (of the labeled / source loader in two-loader views)."""
        return self.loader.batch_size

    @property
    def unlabeled_batch_size(self) -> int:
        """Batch size of the unlabeled / target loader (the view's, else ``batch_size``)."""
        size = getattr(self.view, "unlabeled_batch_size", None)
        return self.loader.batch_size if size is None else size

    @property
    def mean(self) -> list[float]:
        """Normalisation mean for [0, 1] pixels (linked into the method, which recovers RGB images with it)."""
        return [float(v) for v in self.transform.mean]

    @property
    def std(self) -> list[float]:
        """Normalisation std for [0, 1] pixels."""
        return [float(v) for v in self.transform.std]

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

    @property
    def label_ids(self) -> np.ndarray | None:
        """(256,) uint8 train id -> label id table of the evaluated dataset (Cityscapes / GTA5), else None.

        The prediction writer uses it to write Cityscapes label ids for the benchmark server.
        """
        return train_id_to_label_id(self.eval_source.name)

    @property
    def predict_images(self) -> str | None:
        """The folder / list file of own images to predict on (``source.predict_images``), if any."""
        target = self.target.predict_images if self.target is not None else None
        return self.source.predict_images or target

    def _predicting_images(self) -> bool:
        trainer = self.trainer
        return self.predict_images is not None and trainer is not None and trainer.state.fn == "predict"

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

    def _train_source(self) -> SegmentationSource:
        assert self.source.train_split is not None  # resolved
        return build_source(self.source.name, self.root, self.source.train_split)

    # ---- Lightning hooks ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Check the roots exist and build caches (runs on one process per node, before ``setup``)."""
        if self._predicting_images():
            return  # own images need no dataset root and no caches
        roots = [("source.root", self.root)]
        if self.target is not None:
            roots.append(("view.target.root", self.eval_root))
        for name, root in roots:
            if not root.is_dir():
                raise FileNotFoundError(f"{name} {root} does not exist or is not a folder")
        view = self.view
        clicks_dir = view.clicks_dir if isinstance(view, ClickView) else None
        if clicks_dir is not None and not self._resolve(clicks_dir).is_dir():
            raise FileNotFoundError(f"clicks_dir {self._resolve(clicks_dir)} is not a folder")
        if isinstance(view, TagsView) and view.tags_file is None:
            self._cached_tags(self._train_source())
        if isinstance(view, SemiView) and view.labeled_fraction is not None:
            self._partition(self._train_source(), write=True)
        if isinstance(view, DomainView) and view.rare_class_sampling is not None:
            self._class_stats(self._train_source())

    def setup(self, stage: str | None = None) -> None:
        """Build the torch datasets needed for ``stage`` (None: all)."""
        if stage == "fit" and self.trainer is not None:
            self.loader.check_global_batch(self.trainer.world_size, self.trainer.accumulate_grad_batches)
        if stage in (None, "fit") and self._train_sets is None:
            self._train_sets = self._build_train_sets()
        wanted = {
            "fit": ["val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
            None: ["val", "test", "predict"],
        }.get(stage, [])
        evaluated = self.eval_source
        splits = {
            "val": evaluated.val_split,
            "test": evaluated.test_split,
            "predict": evaluated.predict_split,
        }
        for kind in wanted:
            if kind == "predict" and kind not in self._eval_sets:
                self._eval_sets[kind] = self._predict_set()
            if kind not in self._eval_sets:
                split = splits[kind]
                assert split is not None  # resolved
                source = build_source(evaluated.name, self.eval_root, split)
                source.check_files(masks=True)
                if not source.has_masks:
                    raise ValueError(
                        f"{kind}_split {split!r} of {evaluated.name} has no masks to evaluate against; "
                        "pick a split with masks (or use it as predict_split)"
                    )
                self._eval_sets[kind] = EvalSegDataset(source, self.eval_tf)

    def _predict_set(self) -> EvalSegDataset:
        """The prediction images: own images (``predict_images``) or the predict split; masks are never read.

        With the ``TagsView``, a predict split of the dataset carries the image tags as the training split gets
        them (the tag file, else the split's masks): methods make their pseudo masks from them (ASDT).
        """
        evaluated = self.eval_source
        images = self.predict_images
        tags = None
        if images is not None:
            source: SegmentationSource = ImageFolderSource(images, self.target_info or self.info)
        else:
            assert evaluated.predict_split is not None  # resolved
            source = build_source(evaluated.name, self.eval_root, evaluated.predict_split)
            if isinstance(self.view, TagsView) and (self.view.tags_file is not None or source.has_masks):
                try:
                    found = self._tags_for(source)
                    tags = None if isinstance(found, str) else found
                except DataError:  # e.g. a tag file of the training split only: no tags, as before
                    tags = None
        source.check_files(masks=False)
        return EvalSegDataset(source, self.predict_tf, with_mask=False, image_size=True, tags=tags)

    # ---- training datasets -------------------------------------------------------------------------------
    def _click_config(self, view: ClickView) -> ClickConfig:
        return ClickConfig(
            num_classes=self.num_classes,
            clicks_dir=None if view.clicks_dir is None else self._resolve(view.clicks_dir),
            seed=view.click_seed,
            background_clicks=view.background_clicks,
            background_class=0 if self.info.has_background else None,
            placement=view.click_placement,
        )

    def _tags_for(self, source: SegmentationSource) -> np.ndarray | Literal["mask"]:
        """Tags of the training split: from the tag file, else from the masks (cached for the image view)."""
        if isinstance(self.view, TagsView):
            if self.view.tags_file is not None:
                table = load_tags(
                    self._resolve(self.view.tags_file),
                    self.num_classes,
                    source.ids,
                    add_background=self.info.has_background,
                )
                return np.stack([table[i] for i in source.ids]).astype(np.float32)
            return self._cached_tags(source)
        return (
            "mask"  # the mask is decoded anyway in these views; counting its labels is cheaper than a cache
        )

    def _build_train_sets(self) -> dict[str, Dataset[Any]]:
        source = self._train_source()
        view, tf = self.view, self.train_tf
        # every listed file is stat-ed before the first step; masks where the view trains on all of them
        # (a semi-supervised split needs masks of its labeled part only: those are named at first read)
        source.check_files(
            masks=isinstance(view, DomainView) or (isinstance(view, FullView) and view.mask_dir is None)
        )
        if isinstance(view, FullView) and view.mask_dir is not None:
            source = MaskFolderSource(source, view.mask_dir)
        if isinstance(view, FullView | TagsView | ClickView):
            diagnostic = isinstance(view, TagsView | ClickView) and view.diagnostic_masks
            tags_file = view.tags_file if isinstance(view, TagsView) else None
            if not source.has_masks and (not isinstance(view, TagsView) or tags_file is None or diagnostic):
                raise ValueError(
                    f"train_split {self.source.train_split!r} of {self.source.name} under {self.root} has no "
                    f"masks; the {type(view).__name__} needs them"
                    + (" (or a tags_file and diagnostic_masks=False)" if isinstance(view, TagsView) else "")
                )
            with_mask = isinstance(view, FullView) or diagnostic
            clicks = self._click_config(view) if isinstance(view, ClickView) else None
            single = TrainSegDataset(
                source, tf, with_mask=with_mask, tags=self._tags_for(source), clicks=clicks
            )
            self._check_size("train", single, self.batch_size)
            return {"train": single}
        if isinstance(view, SemiView):
            labeled_ids, unlabeled_ids = self._partition(source, write=False)
            position = {sid: i for i, sid in enumerate(source.ids)}
            lab_pos = [position[i] for i in labeled_ids]
            unl_pos = [position[i] for i in unlabeled_ids]
            tags = self._tags_for(source)
            if view.labeled_only:  # the supervised-only baseline of this partition
                train = TrainSegDataset(source, tf, lab_pos, with_mask=True, tags=tags)
                self._check_size("train", train, self.batch_size)
                return {"train": train}
            if view.oversample_labeled:
                lab_pos = [
                    lab_pos[k] for k in oversample_indices(len(lab_pos), len(unl_pos), view.split_seed)
                ]
            labeled = TrainSegDataset(source, tf, lab_pos, with_mask=True, tags=tags)
            unlabeled = TrainSegDataset(source, tf, unl_pos, with_mask=view.keep_target_masks)
            self._check_size("labeled", labeled, self.batch_size)
            self._check_size("unlabeled", unlabeled, self.unlabeled_batch_size)
            return {"labeled": labeled, "unlabeled": unlabeled}
        if not isinstance(view, DomainView):
            raise TypeError(f"unsupported supervision view {type(view).__name__}")
        assert self.target is not None and self.target.train_split is not None
        target_source = build_source(self.target.name, self.eval_root, self.target.train_split)
        target_source.check_files(masks=view.keep_target_masks)
        rare = None
        if view.rare_class_sampling is not None:
            rare = RareClassSampler(self._class_stats(source).counts, view.rare_class_sampling)
        src = TrainSegDataset(
            source,
            tf,
            with_mask=True,
            tags=self._tags_for(source),
            resize=view.source_resize,
            rare_classes=rare,
        )
        tgt = TrainSegDataset(target_source, tf, with_mask=view.keep_target_masks, resize=view.target_resize)
        self._check_size("source", src, self.batch_size)
        self._check_size("target", tgt, self.unlabeled_batch_size)
        return {"source": src, "target": tgt}

    def _check_size(self, name: str, dataset: TrainSegDataset, batch_size: int) -> None:
        if self.loader.drop_last and len(dataset) < batch_size:
            raise ValueError(
                f"the {name} training set has {len(dataset)} samples, fewer than one batch ({batch_size}) with "
                f"drop_last=True ({dataset.source!r}); lower the batch size or set loader.drop_last=False"
            )

    # ---- caches ------------------------------------------------------------------------------------------
    def _cached_tags(self, source: SegmentationSource) -> np.ndarray:
        """(N, C) tags of ``source`` derived from its masks, from the cache if it is up to date."""
        extra = str(source.root.resolve()) if self._cache_is_external() else ""
        name = f"tags_{source.info.name}_{split_label(source.split)}_{_ids_digest(source.ids, extra)}.npz"
        path = self.cache_path / name
        newest = newest_label_mtime(source)
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
                        tags: np.ndarray = cached["tags"].astype(np.float32)
                        return tags
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: rebuilt below and overwritten
        if not source.has_masks:
            raise ValueError(
                f"cannot derive image tags: split {source.split!r} of {source.info.name} under {source.root} has "
                "no masks; give tags_file"
            )
        table = build_tags(source, num_workers=min(self.loader.num_workers, os.cpu_count() or 1))
        tags = np.stack([table[i] for i in source.ids]).astype(np.float32)
        if self.info.has_background:
            tags[:, 0] = 1.0  # background is present in every image by convention (see image_tags)
        ids = np.asarray(source.ids, dtype=np.str_)
        atomic_savez(path, version=_CACHE_VERSION, ids=ids, tags=tags, mask_mtime=newest)
        return tags

    def _class_stats(self, source: SegmentationSource) -> ClassStats:
        """Per-image class pixel counts of the source training split, for rare-class sampling."""
        assert isinstance(self.view, DomainView) and self.view.rare_class_sampling is not None
        stats_file = self.view.rare_class_sampling.stats_file
        return resolve_class_stats(
            source,
            None if stats_file is None else self._resolve(stats_file),
            self.cache_path,
            num_workers=min(self.loader.num_workers, os.cpu_count() or 1),
            log=rank_zero_info,
        )

    def _partition(self, source: SegmentationSource, write: bool) -> tuple[list[str], list[str]]:
        """Labeled / unlabeled ids of the semi view (validated list files, or a generated partition)."""
        view = self.view
        assert isinstance(view, SemiView)
        if view.labeled_list is not None:
            lab_path = self._resolve(view.labeled_list)
            labeled = _read_partition(lab_path, source)
            if view.unlabeled_list is not None:
                unl_path = self._resolve(view.unlabeled_list)
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
            assert view.labeled_fraction is not None  # checked by SemiView
            labeled, unlabeled = make_semi_split(source.ids, view.labeled_fraction, view.split_seed)
            if write:
                folder = self.partition_dir(source)
                for name, ids in (("labeled.txt", labeled), ("unlabeled.txt", unlabeled)):
                    path = folder / name
                    text = "".join(f"{i}\n" for i in ids)
                    if not path.is_file() or path.read_text() != text:
                        atomic_write(path, partial(write_id_list, ids=ids))
        if not labeled or not (unlabeled or view.labeled_only):
            raise ValueError(
                f"semi-supervised partition of {source!r} has {len(labeled)} labeled and {len(unlabeled)} "
                "unlabeled ids; both must be non-empty (only a labeled_only view may label every id)"
            )
        return labeled, unlabeled

    def partition_dir(self, source: SegmentationSource | None = None) -> Path:
        """Folder where a generated partition (``labeled.txt`` / ``unlabeled.txt``) is written.

        Only a semi view with ``labeled_fraction`` generates one.
        """
        view = self.view
        if not isinstance(view, SemiView) or view.labeled_fraction is None:
            raise ValueError("partition_dir: only a SemiView with labeled_fraction generates a partition")
        split = source.split if source is not None else self.source.train_split
        assert split is not None  # resolved
        return (
            self.cache_path
            / "partitions"
            / f"{self.source.name}_{split_label(split)}_{view.labeled_fraction:g}_seed{view.split_seed}"
        )

    # ---- loaders -----------------------------------------------------------------------------------------
    def _loader(
        self, dataset: Dataset[Any], batch_size: int, train: bool, collate: Any = None
    ) -> DataLoader[Any]:
        workers = self.loader.num_workers
        options: dict[str, Any] = {
            "batch_size": batch_size,
            "drop_last": train and self.loader.drop_last,
            "num_workers": workers,
            "collate_fn": collate,
            "pin_memory": self.loader.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.loader.persistent_workers and workers > 0,
            "worker_init_fn": seed_worker if workers > 0 else None,
        }
        if not train:
            return DataLoader(dataset, **options)
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochKeyedSampler(dataset, num_replicas=replicas, rank=rank)
        return ResumableLoader(dataset, sampler=sampler, **options)

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
        return self._loader(
            self._eval_sets[kind], self.loader.eval_batch_size, train=False, collate=pad_collate
        )

    def val_dataloader(self) -> DataLoader[Any]:
        """Validation images padded per batch; see the module docstring."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        """Test images padded per batch; see the module docstring."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader[Any]:
        """Prediction images padded per batch (no mask when the split has none)."""
        return self._eval_loader("predict")
