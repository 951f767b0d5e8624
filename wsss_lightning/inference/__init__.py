"""Test-time inference helpers: multi-scale + flip, sliding window, dense CRF post-processing."""

from __future__ import annotations

from wsss_lightning.inference.crf import CRFParams, CRFPostProcessor, crf_labels, dense_crf
from wsss_lightning.inference.multiscale import Forward, multiscale_flip_logits
from wsss_lightning.inference.sliding_window import (
    sliding_window_forward,
    sliding_window_logits,
    window_starts,
)

__all__ = [
    "CRFParams",
    "CRFPostProcessor",
    "Forward",
    "crf_labels",
    "dense_crf",
    "multiscale_flip_logits",
    "sliding_window_forward",
    "sliding_window_logits",
    "window_starts",
]
