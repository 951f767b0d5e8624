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


def fit_ddp_cpu_and_dump(fit_args: list[str], workdir: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``wsss fit`` through the installed console script with 2 gloo CPU processes; each rank's final state.

    ``fit_args`` are the run's own arguments (config, data root, sizes); the DDP trainer fragment, no
    logger / checkpoints / validation and a :class:`DumpState` callback are added. Returns the state dicts of
    rank 0 and rank 1. Fails with the tail of the run's stderr if it does not exit cleanly.
    """
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import torch

    repo = Path(__file__).resolve().parents[1]
    wsss = shutil.which("wsss", path=str(Path(sys.executable).parent)) or shutil.which("wsss")
    assert wsss, "the wsss console script is not installed"
    dump = Path(workdir) / "dump"
    cmd = [
        wsss, "fit", *fit_args, "-c", str(repo / "configs" / "trainer" / "ddp_cpu.yaml"),
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.logger=false",
        "--trainer.limit_val_batches=0", "--trainer.callbacks+=tests.helpers.DumpState",
        f"--trainer.callbacks.out={dump}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "WANDB_MODE": "disabled"}
    result = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")


#: a ModelCheckpoint that writes last.ckpt after every optimizer step (as a --trainer.callbacks value)
CHECKPOINT_EVERY_STEP = (
    '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "ckpts",'
    ' "every_n_train_steps": 1, "save_top_k": -1, "save_last": true}}]'
)


def straight_and_resumed_states(
    fit_args: list[str], workdir: Any, monkeypatch: Any, interrupt_at: int
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Fit once straight through, and once interrupted at ``interrupt_at`` then continued with ``--ckpt_path last``.

    ``fit_args`` must make ``last.ckpt`` current at the interruption (e.g. :data:`CHECKPOINT_EVERY_STEP`).
    Returns (straight state dict, resumed state dict, global step the resumed run ended at).
    """
    from pathlib import Path

    import pytest

    from wsss_lightning.cli import run_cli

    def run(name: str, *extra: str) -> Any:
        (Path(workdir) / name).mkdir(exist_ok=True)
        monkeypatch.chdir(Path(workdir) / name)
        return run_cli(["fit", *fit_args, *extra])

    straight = run("straight").model.state_dict()
    with pytest.raises(Interrupt):
        run(
            "resumed",
            "--trainer.callbacks+=tests.helpers.InterruptAtStep",
            f"--trainer.callbacks.step={interrupt_at}",
        )
    resumed_cli = run("resumed", "--ckpt_path=last")
    return straight, resumed_cli.model.state_dict(), resumed_cli.trainer.global_step
