"""Datasets, supervision views and the shared LightningDataModule."""

from wsss_lightning.data.classes import DATASET_INFO, DatasetInfo, get_dataset_info
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.datasets import SOURCES, DataError, SegmentationSource, build_source
from wsss_lightning.data.options import LoaderOptions, TransformOptions
from wsss_lightning.data.source import DEFAULT_SPLITS, DatasetSource
from wsss_lightning.data.views import ClickView, DomainView, FullView, SemiView, SupervisionView, TagsView

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
    "SegmentationSource",
    "SemiView",
    "SupervisionView",
    "TagsView",
    "TransformOptions",
    "WSSSDataModule",
    "build_source",
    "get_dataset_info",
]
