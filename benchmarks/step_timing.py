"""Shared pieces of the training-step benchmarks of the tag-supervised methods (``dupl_step.py``, ``afa_step.py``).

Functions are timed by wrapping them (:func:`timed`); only the steps after the warm-up count (:class:`StepTimer`);
:class:`RandomTags` feeds random crops with image-level tags.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset

#: seconds per timed part, summed over the counted steps
TIMES: dict[str, float] = defaultdict(float)
#: whether the current step counts
COUNTING = [False]


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` adding its wall time to ``TIMES[name]`` during counted steps."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if COUNTING[0]:
            TIMES[name] += time.perf_counter() - start
        return out

    return wrapper


class RandomTags(Dataset):
    """Random crops with 1-3 present classes and a valid box covering most of the crop."""

    def __init__(self, size: int, num_classes: int, length: int) -> None:
        self.size, self.num_classes, self.length = size, num_classes, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        tags = torch.zeros(self.num_classes)
        tags[0] = 1
        tags[1 + torch.randperm(self.num_classes - 1, generator=g)[: 1 + i % 3]] = 1
        s = self.size
        return {
            "image": torch.randn(3, s, s, generator=g),
            "tags": tags,
            "valid_box": torch.tensor([0, 0, s - s // 8, s]),
            "name": str(i),
        }


class StepTimer(L.Callback):
    """Counts the steps from ``skip`` on and times each whole step into ``TIMES["step"]``."""

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        COUNTING[0] = trainer.global_step >= self.skip
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if COUNTING[0]:
            TIMES["step"] += time.perf_counter() - self.start
