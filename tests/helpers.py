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


def _gloo_entry(rank: int, world_size: int, port: int, fn: Any, args: tuple[Any, ...]) -> None:
    import os

    import torch
    import torch.distributed as dist

    # One intra-op thread: a forked child must not enter an OpenMP region the parent may have started.
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_gloo(fn: Any, *args: Any, world_size: int = 2) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` CPU processes joined by a gloo process group.

    "fork" starts in ~0.1 s where "spawn" re-imports torch in each rank (~12 s on 2 cores).
    """
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _gloo_entry,
        args=(world_size, port, fn, args),
        nprocs=world_size,
        join=True,
        start_method=start_method,
    )
