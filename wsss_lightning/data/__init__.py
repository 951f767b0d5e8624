"""Datasets, supervision views and the shared LightningDataModule."""

from wsss_lightning.data.classes import DATASET_INFO, DatasetInfo, get_dataset_info
from wsss_lightning.data.datamodule import WSSSDataModule
from wsss_lightning.data.datasets import SOURCES, DataError, SegmentationSource, build_source

__all__ = [
    "DATASET_INFO",
    "SOURCES",
    "DataError",
    "DatasetInfo",
    "SegmentationSource",
    "WSSSDataModule",
    "build_source",
    "get_dataset_info",
]
