"""Plain NumPy references and random inputs shared by the loss tests."""

from __future__ import annotations

import numpy as np
import torch


def np_softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + 1e-10)).sum(1)


def random_seg(seed: int, b: int = 2, c: int = 5, h: int = 6, w: int = 7, ignore: float = 0.15):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(b, c, h, w)) * 2).astype(np.float32)
    target = rng.integers(0, c, size=(b, h, w))
    target[rng.random((b, h, w)) < ignore] = 255
    teacher = np_softmax(rng.normal(size=(b, c, h, w)).astype(np.float32) * 3)
    return logits, target, teacher.astype(np.float32)


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def np_ce_rce(logits: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel CE and reverse CE written out as U2PL's helpers compute them."""
    logp = np.log(np_softmax(logits.astype(np.float64)))
    p = np.exp(logp)
    c = logits.shape[1]
    safe = np.where(target == 255, 0, target)
    onehot = np.eye(c)[safe].transpose(0, 3, 1, 2)
    ce = -(onehot * logp).sum(1)
    rce = -(p * np.log(np.clip(onehot, 1e-4, 1.0))).sum(1)
    return ce, rce


def np_log_softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))


def np_pixel_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-pixel CE, 0 where the label is not a class index."""
    logp = np_log_softmax(logits.astype(np.float64))
    k = logits.shape[1]
    safe = np.where(labels < k, labels, 0)
    ce = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    return np.where(labels < k, ce, 0.0)


def random_labels(
    rng: np.random.Generator, shape: tuple[int, ...], k: int, ignore: float = 0.2
) -> np.ndarray:
    labels = rng.integers(0, k, size=shape)
    labels[rng.random(shape) < ignore] = 255
    return labels
