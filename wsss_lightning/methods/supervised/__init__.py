"""Fully supervised segmentation: the upper bound, and the second stage of two-stage methods."""

from wsss_lightning.methods.supervised.module import SupervisedModule

__all__ = ["SupervisedModule"]
