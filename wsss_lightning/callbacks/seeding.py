"""Per-step seeding, so a resumed run draws the same random numbers as an uninterrupted one."""

from __future__ import annotations

import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


def step_seed(base_seed: int, step: int, rank: int) -> int:
    """A 32-bit seed that depends only on the run's seed, the global step and the process rank."""
    return int(np.random.SeedSequence([base_seed, step, rank]).generate_state(1)[0])


class StepSeed(Callback):
    """Re-seed Python, NumPy and torch before every training batch from (seed, global step, rank).

    Lightning does not store random-number-generator state in checkpoints, so dropout masks, CutMix boxes
    or strong augmentations drawn inside ``training_step`` would differ after ``fit --ckpt_path last``.
    Seeding from the global step makes them a function of the step alone: the resumed run continues
    exactly. Ranks get different streams, as they would with independent generators.

    Args:
        seed: base seed; ``None`` takes the seed given to ``seed_everything`` (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", "0"))
        seed = step_seed(base, trainer.global_step, trainer.global_rank)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
