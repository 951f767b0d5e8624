"""Test-time inference helpers: multi-scale + flip, sliding window, dense CRF post-processing (CPU or device).

The torch-based helpers are imported on first access, so that CRF pool workers (which import this
package to reach :mod:`wsss_lightning.inference.crf`) start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wsss_lightning.inference.crf import CRFParams, CRFPostProcessor, crf_labels, dense_crf

if TYPE_CHECKING:
    from wsss_lightning.inference.device_crf import mean_field_crf, mean_field_labels
    from wsss_lightning.inference.multiscale import Forward, multiscale_flip_logits
    from wsss_lightning.inference.sliding_window import (
        sliding_window_forward,
        sliding_window_logits,
        window_starts,
    )

_LAZY = {
    "mean_field_crf": "device_crf",
    "mean_field_labels": "device_crf",
    "Forward": "multiscale",
    "multiscale_flip_logits": "multiscale",
    "sliding_window_forward": "sliding_window",
    "sliding_window_logits": "sliding_window",
    "window_starts": "sliding_window",
}

__all__ = [
    "CRFParams",
    "CRFPostProcessor",
    "Forward",
    "crf_labels",
    "dense_crf",
    "mean_field_crf",
    "mean_field_labels",
    "multiscale_flip_logits",
    "sliding_window_forward",
    "sliding_window_logits",
    "window_starts",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
