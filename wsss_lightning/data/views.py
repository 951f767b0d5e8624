"""Supervision views: what a method is given to train on, and the options only that view has.

The datamodule's ``view`` argument takes one of these classes (None = :class:`FullView`). In a config they
are selected like any class::

    data:
      class_path: wsss_lightning.data.WSSSDataModule
      init_args:
        source: {name: voc, root: data/VOC2012}
        view:
          class_path: wsss_lightning.data.SemiView
          init_args: {labeled_list: splits/pascal/1464/labeled.txt}

Each view has a ``name`` (``"full"``, ``"image"``, ``"click"``, ``"semi"``, ``"domain"``), returned by
``WSSSDataModule.supervision``. The batches each view yields are documented in
:mod:`wsss_lightning.data.datamodule`.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, ClassVar, Literal

from wsss_lightning.data.rare_classes import RareClassSampling
from wsss_lightning.data.source import DatasetSource

ClickPlacement = Literal["center", "random"]
ClickMode = Literal["mask", "points"]


def _optional_path(owner: str, field: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):  # a pathlib.Path from Python code
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}.{field}: expected a path or None, got {value!r}")
    if value in ("None", "null"):  # a command-line `null` for an optional string arrives as text
        raise ValueError(
            f"{owner}.{field}: got the text {value!r}, not a path; to unset it write `{field}: null` in a YAML "
            "config (on the command line the value reaches the view as a string)"
        )
    return value


def _optional_positive(owner: str, field: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{owner}.{field}: expected a positive int or None, got {value!r}")
    return value


def _optional_size(owner: str, field: str, value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, list | tuple) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise ValueError(
            f"{owner}.{field}: expected (width, height), two positive ints, or None, got {value!r}"
        )
    return (int(value[0]), int(value[1]))


def _check_choice(owner: str, field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{field}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


class SupervisionView(ABC):
    """Base class of the supervision views (abstract: use one of the subclasses)."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The view's name, the value of ``WSSSDataModule.supervision``."""

    def as_config(self) -> dict[str, Any]:
        """The view as ``{"class_path": ..., "init_args": {...}}`` of plain values.

        This is how configs and checkpoints hold it; :func:`view_from_config` reverses it.
        """
        init_args = {
            key: asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
            for key, value in vars(self).items()
        }
        cls = type(self)
        exported = VIEWS.get(getattr(cls, "name", ""), None) is cls
        module = "wsss_lightning.data" if exported else cls.__module__
        return {"class_path": f"{module}.{cls.__qualname__}", "init_args": init_args}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value


class FullView(SupervisionView):
    """Full supervision: pixel masks (the default view).

    Args:
        mask_dir: Train on the masks in this folder (``<id>.png`` of train ids, e.g. the pseudo-masks a
            first-stage model wrote with ``wsss predict`` + ``PredictionWriter``) instead of the ground truth;
            validation and test keep the ground truth. This is the second stage of two-stage weakly
            supervised methods. None: the dataset's own masks.

    Raises:
        ValueError: ``mask_dir`` is not a path.
    """

    name: ClassVar[str] = "full"

    def __init__(self, mask_dir: str | None = None) -> None:
        self.mask_dir = _optional_path("FullView", "mask_dir", mask_dir)


class TagsView(SupervisionView):
    """Image-level tags (multi-hot class labels per image); ``supervision`` name ``"image"``.

    Args:
        tags_file: Image-level tags (``.npy`` dict or ``.txt``, see ``supervision.load_tags``) of the training
            split, relative to the source root unless absolute. None derives them from the masks once and
            caches them (see the datamodule's ``cache_dir``).
        diagnostic_masks: Also load the ground-truth mask into training batches, for diagnostics only (e.g.
            CAM mIoU). False guarantees methods never see it and skips decoding it.

    Raises:
        ValueError: ``tags_file`` is not a path.
    """

    name: ClassVar[str] = "image"

    def __init__(self, tags_file: str | None = None, diagnostic_masks: bool = True) -> None:
        self.tags_file = _optional_path("TagsView", "tags_file", tags_file)
        self.diagnostic_masks = bool(diagnostic_masks)


class ClickView(SupervisionView):
    """Point supervision: 1-px clicks (class id at each click, 255 elsewhere).

    Args:
        clicks_dir: Folder of click PNGs ``<id>.png`` (relative to the source root unless absolute); None
            simulates clicks from the masks (deterministic per image).
        click_seed: Seed of the simulated clicks.
        background_clicks: Simulated clicks on the background class (VOC-style datasets only).
        click_placement: Simulated click position in each object region: ``"center"`` (deepest pixel, like a
            careful annotator) or ``"random"``.
        click_mode: How clicks follow the crop geometry: ``"mask"`` (nearest-neighbour like a label map, as the
            rloss / Seminar code: clicks can vanish when down-scaled) or ``"points"`` (coordinates warped,
            always one pixel, as Gated-CRF).
        diagnostic_masks: Also load the ground-truth mask into training batches, for diagnostics only.

    Raises:
        ValueError: a negative ``background_clicks``, an unknown placement or mode.
        TypeError: a seed that is not an int.
    """

    name: ClassVar[str] = "click"

    def __init__(
        self,
        clicks_dir: str | None = None,
        click_seed: int = 0,
        background_clicks: int = 1,
        click_placement: ClickPlacement = "center",
        click_mode: ClickMode = "mask",
        diagnostic_masks: bool = True,
    ) -> None:
        if (
            isinstance(background_clicks, bool)
            or not isinstance(background_clicks, int)
            or background_clicks < 0
        ):
            raise ValueError(f"ClickView.background_clicks: expected an int >= 0, got {background_clicks!r}")
        if isinstance(click_seed, bool) or not isinstance(click_seed, int):
            raise TypeError(f"ClickView.click_seed: expected an int, got {click_seed!r}")
        self.clicks_dir = _optional_path("ClickView", "clicks_dir", clicks_dir)
        self.click_seed = click_seed
        self.background_clicks = background_clicks
        _check_choice("ClickView", "click_placement", click_placement, ("center", "random"))
        _check_choice("ClickView", "click_mode", click_mode, ("mask", "points"))
        self.click_placement: ClickPlacement = click_placement
        self.click_mode: ClickMode = click_mode
        self.diagnostic_masks = bool(diagnostic_masks)


class SemiView(SupervisionView):
    """Semi-supervised: a labeled / unlabeled partition of the training split (two loaders per step).

    Give either ``labeled_list`` (optionally with ``unlabeled_list``) or ``labeled_fraction``.

    Args:
        labeled_list: List file of labeled ids (ids or image paths, e.g. U2PL's ``labeled.txt``), relative to the
            source root unless absolute.
        unlabeled_list: List file of unlabeled ids (None: the rest of the training split).
        labeled_fraction: Generate a partition with this labeled fraction instead of list files (written to
            the cache folder for reproducibility).
        split_seed: Seed of the generated partition and of the oversampling.
        oversample_labeled: Repeat labeled ids to the unlabeled set's size (U2PL); one epoch = one pass over
            the unlabeled set.
        unlabeled_batch_size: Batch size of the unlabeled loader (None: the loader's ``batch_size``, as U2PL).
        keep_target_masks: Keep ``mask`` in unlabeled batches, for diagnostics only.
        labeled_only: Train on the labeled part alone, as one plain loader (no unlabeled loader, no
            oversampling; one epoch = one pass over the labeled images): the supervised-only baseline of the
            same partition (U2PL's SupOnly, ``configs/u2pl/suponly.yaml``). Such a view may label every id
            (``labeled_list`` = the whole split, no ``unlabeled_list``): the full-mask ceiling of the same module.

    Raises:
        ValueError: neither or both of ``labeled_list`` / ``labeled_fraction``, ``unlabeled_list`` without
            ``labeled_list``, a fraction outside (0, 1), a non-positive batch size.
        TypeError: a seed that is not an int.
    """

    name: ClassVar[str] = "semi"

    def __init__(
        self,
        labeled_list: str | None = None,
        unlabeled_list: str | None = None,
        labeled_fraction: float | None = None,
        split_seed: int = 0,
        oversample_labeled: bool = True,
        unlabeled_batch_size: int | None = None,
        keep_target_masks: bool = False,
        labeled_only: bool = False,
    ) -> None:
        self.labeled_list = _optional_path("SemiView", "labeled_list", labeled_list)
        self.unlabeled_list = _optional_path("SemiView", "unlabeled_list", unlabeled_list)
        if labeled_list is None and labeled_fraction is None:
            raise ValueError("SemiView needs labeled_list (a partition file) or labeled_fraction")
        if labeled_list is not None and labeled_fraction is not None:
            raise ValueError("SemiView: give either labeled_list or labeled_fraction, not both")
        if unlabeled_list is not None and labeled_list is None:
            raise ValueError("SemiView.unlabeled_list needs labeled_list")
        if labeled_fraction is not None and not 0.0 < labeled_fraction < 1.0:
            raise ValueError(f"SemiView.labeled_fraction: expected a value in (0, 1), got {labeled_fraction}")
        if isinstance(split_seed, bool) or not isinstance(split_seed, int):
            raise TypeError(f"SemiView.split_seed: expected an int, got {split_seed!r}")
        self.labeled_fraction = labeled_fraction
        self.split_seed = split_seed
        self.oversample_labeled = bool(oversample_labeled)
        self.unlabeled_batch_size = _optional_positive(
            "SemiView", "unlabeled_batch_size", unlabeled_batch_size
        )
        self.keep_target_masks = bool(keep_target_masks)
        self.labeled_only = bool(labeled_only)


class DomainView(SupervisionView):
    """Domain adaptation: the labeled source dataset plus an unlabeled target dataset (two loaders per step).

    The datamodule's ``source`` is the labeled domain (its ``train_split`` is trained on, its evaluation
    splits are not used). Validation, test and prediction run on the target.

    Args:
        target: The target domain, with the same classes as the source: its ``train_split`` holds the unlabeled
            images trained on (None: its default training split), its ``val_split`` / ``test_split`` /
            ``predict_split`` are evaluated.
        unlabeled_batch_size: Batch size of the target loader (None: the loader's ``batch_size``).
        keep_target_masks: Keep ``mask`` in target batches, for diagnostics only.
        source_resize: ``(width, height)``: every source training image is resized (bilinear; its mask nearest
            neighbour) to exactly this size before the training transform (scale, crop, flip). DAFormer: GTA5
            1280x720 (``img_scale`` in lhoyer/DAFormer ``configs/_base_/datasets/uda_gta_to_cityscapes_512x512.py``).
            None: the stored size.
        target_resize: The same for the target training images (DAFormer: Cityscapes 1024x512). Evaluation is
            not affected (see ``transform.eval_short_side``).
        rare_class_sampling: Draw source samples by DAFormer's rare-class sampling
            (:class:`~wsss_lightning.data.rare_classes.RareClassSampling`); None (the default): in order, as
            every other view. Its class statistics are read from (or written to)
            ``<source root>/class_stats_<train split>.npz``.

    Raises:
        TypeError: ``target`` is not a :class:`DatasetSource`, or ``rare_class_sampling`` is not a
            :class:`RareClassSampling`.
        ValueError: a non-positive batch size or resize size.
    """

    name: ClassVar[str] = "domain"

    def __init__(
        self,
        target: DatasetSource,
        unlabeled_batch_size: int | None = None,
        keep_target_masks: bool = False,
        source_resize: tuple[int, int] | None = None,
        target_resize: tuple[int, int] | None = None,
        rare_class_sampling: RareClassSampling | None = None,
    ) -> None:
        if isinstance(rare_class_sampling, Mapping):  # plain values from a checkpoint (as_config)
            rare_class_sampling = RareClassSampling(**rare_class_sampling)
        if rare_class_sampling is not None and not isinstance(rare_class_sampling, RareClassSampling):
            raise TypeError(
                "DomainView.rare_class_sampling: expected RareClassSampling(...) or None, got "
                f"{type(rare_class_sampling).__name__}"
            )
        if not isinstance(target, DatasetSource):
            raise TypeError(
                f"DomainView.target: expected a DatasetSource(root=..., name=...), got {type(target).__name__}"
            )
        self.target = target
        self.unlabeled_batch_size = _optional_positive(
            "DomainView", "unlabeled_batch_size", unlabeled_batch_size
        )
        self.keep_target_masks = bool(keep_target_masks)
        self.source_resize = _optional_size("DomainView", "source_resize", source_resize)
        self.target_resize = _optional_size("DomainView", "target_resize", target_resize)
        self.rare_class_sampling = rare_class_sampling


#: view name (``WSSSDataModule.supervision``) -> view class
VIEWS: dict[str, type[SupervisionView]] = {
    view.name: view for view in (FullView, TagsView, ClickView, SemiView, DomainView)
}


def view_from_config(config: Mapping[str, Any]) -> SupervisionView:
    """Build a view from ``{"class_path": ..., "init_args": {...}}`` (the form of :meth:`SupervisionView.as_config`).

    Raises:
        TypeError: the class path does not name a :class:`SupervisionView`.
    """
    class_path = str(config["class_path"])
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    if not (isinstance(cls, type) and issubclass(cls, SupervisionView)):
        raise TypeError(f"view: {class_path!r} is not a supervision view ({', '.join(VIEWS)})")
    init_args = dict(config.get("init_args") or {})
    if isinstance(init_args.get("target"), Mapping):
        init_args["target"] = DatasetSource(**init_args["target"])
    return cls(**init_args)
