"""Shared pieces of the training-step benchmarks (``dupl_step.py``, ``afa_step.py``, ``daformer_step.py``).

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
from torch.utils.data import DataLoader, Dataset

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


def fit_timed(model: L.LightningModule, args: Any, skip: int, dataset: Dataset | None = None) -> float:
    """Fit ``model`` on random tagged crops for ``skip`` untimed then ``args.steps`` timed steps.

    ``args`` carries ``device``, ``size``, ``batch`` and ``steps``; ``dataset`` (at least
    ``args.batch * (skip + args.steps)`` items) replaces the tagged crops. Splits the optimizer closure's time into
    the training step, backward (both timed by the caller's wrappers, ``training_step`` / ``backward`` /
    ``optimizer_step``) and ``optimizer update + hooks``; returns the mean seconds of a whole step.
    """
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=skip + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepTimer(skip)],
    )
    if dataset is None:
        dataset = RandomTags(args.size, 21, args.batch * (skip + args.steps))
    data = DataLoader(dataset, batch_size=args.batch)
    trainer.fit(model, data)
    # Lightning runs training_step and backward inside optimizer_step's closure
    closure = TIMES.pop("optimizer_step")
    TIMES["optimizer update + hooks"] = closure - TIMES["backward"] - TIMES.pop("training_step")
    return TIMES.pop("step") / args.steps


def print_parts(step: float, steps: int, rest: str) -> None:
    """One row per timed part (seconds per step, share of ``step``), largest first, then the rest."""
    print(f"{'part':55s} {'s/step':>8s} {'share':>7s}")
    accounted = 0.0
    for part, total in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        per_step = total / steps
        accounted += per_step
        print(f"{part:55s} {per_step:8.3f} {100 * per_step / step:6.1f}%")
    print(f"{rest:55s} {step - accounted:8.3f} {100 * (step - accounted) / step:6.1f}%")
