"""Datasets, supervision views and the shared LightningDataModule.

The names below are imported on first access (PEP 562), so that ``wsss-data`` and the dataset readers start
without loading Lightning, torch or the augmentation libraries, which only the datamodule needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsss_lightning.data.classes import DATASET_INFO, DatasetInfo, get_dataset_info
    from wsss_lightning.data.datamodule import WSSSDataModule
    from wsss_lightning.data.datasets import SOURCES, DataError, SegmentationSource, build_source
    from wsss_lightning.data.options import LoaderOptions, TransformOptions
    from wsss_lightning.data.rare_classes import RareClassSampling
    from wsss_lightning.data.source import DEFAULT_SPLITS, DatasetSource
    from wsss_lightning.data.views import ClickView, DomainView, FullView, SemiView, SupervisionView, TagsView

# public name -> submodule of this package that defines it
_LAZY = {
    "DATASET_INFO": "classes",
    "DatasetInfo": "classes",
    "get_dataset_info": "classes",
    "WSSSDataModule": "datamodule",
    "SOURCES": "datasets",
    "DataError": "datasets",
    "SegmentationSource": "datasets",
    "build_source": "datasets",
    "LoaderOptions": "options",
    "TransformOptions": "options",
    "RareClassSampling": "rare_classes",
    "DEFAULT_SPLITS": "source",
    "DatasetSource": "source",
    "ClickView": "views",
    "DomainView": "views",
    "FullView": "views",
    "SemiView": "views",
    "SupervisionView": "views",
    "TagsView": "views",
}

__all__ = [
    "DATASET_INFO",
    "DEFAULT_SPLITS",
    "SOURCES",
    "ClickView",
    "DataError",
    "DatasetInfo",
    "DatasetSource",
    "DomainView",
    "FullView",
    "LoaderOptions",
    "RareClassSampling",
    "SegmentationSource",
    "SemiView",
    "SupervisionView",
    "TagsView",
    "TransformOptions",
    "WSSSDataModule",
    "build_source",
    "get_dataset_info",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
