"""U2PL / U2PL+ (Wang et al., CVPR 2022 / IJCV 2024): unreliable pseudo-labels as contrastive negatives.

The module is imported on first access (PEP 562), so that reading :mod:`wsss_lightning.methods.u2pl.options`
(as the ``wsss`` command does for its messages on renamed options) loads no network code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsss_lightning.methods.u2pl.options import (
    ContrastiveConfig,
    DomainContrastiveConfig,
    SupervisedLossConfig,
    TeacherConfig,
    UnsupervisedConfig,
    WeakContrastiveConfig,
)

if TYPE_CHECKING:
    from wsss_lightning.methods.u2pl.domain_module import U2PLDomainModule
    from wsss_lightning.methods.u2pl.module import U2PLModule
    from wsss_lightning.methods.u2pl.weak_module import U2PLWeakModule

__all__ = [
    "ContrastiveConfig",
    "DomainContrastiveConfig",
    "SupervisedLossConfig",
    "TeacherConfig",
    "U2PLDomainModule",
    "U2PLModule",
    "U2PLWeakModule",
    "UnsupervisedConfig",
    "WeakContrastiveConfig",
]

#: lazily imported modules: public name -> submodule
_LAZY = {"U2PLModule": "module", "U2PLWeakModule": "weak_module", "U2PLDomainModule": "domain_module"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
