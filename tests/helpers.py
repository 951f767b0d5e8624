"""Helpers importable from test configs (``class_path: tests.helpers.X``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class Interrupt(RuntimeError):
    """Raised to simulate a run that dies (pre-emption, node failure)."""


class InterruptAtStep(Callback):
    """Kill the run once ``global_step`` reaches ``step`` (after that step's checkpoint was written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.step:
            raise Interrupt(f"interrupted at step {trainer.global_step}")


class DumpState(Callback):
    """At the end of fit, save this rank's module state (teacher, memory bank, ...) to ``<out>/rank<r>.pt``."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import os

        import torch

        os.makedirs(self.out, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.out, f"rank{trainer.global_rank}.pt"))
