"""U2PL / U2PL+ (Wang et al., CVPR 2022 / IJCV 2024): unreliable pseudo-labels as contrastive negatives.

The module is imported on first access (PEP 562), so that reading :mod:`wsss_lightning.methods.u2pl.options`
(as the ``wsss`` command does for its messages on renamed options) loads no network code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsss_lightning.methods.u2pl.options import (
    ContrastiveConfig,
    SupervisedLossConfig,
    TeacherConfig,
    UnsupervisedConfig,
)

if TYPE_CHECKING:
    from wsss_lightning.methods.u2pl.module import U2PLModule

__all__ = ["ContrastiveConfig", "SupervisedLossConfig", "TeacherConfig", "U2PLModule", "UnsupervisedConfig"]


def __getattr__(name: str) -> Any:
    if name == "U2PLModule":
        value = importlib.import_module(f"{__name__}.module").U2PLModule
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
