"""``last.ckpt`` on a cadence and on pre-emption, so an interrupted run loses at most a few steps."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from wsss_lightning.runs import CHECKPOINTS, LAST, slurm_job_id


class Preempted(SIGTERMException):
    """The run stopped on SIGTERM after writing ``last.ckpt``; exits with status 143 (128 + SIGTERM)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class LastCheckpoint(Checkpoint):
    """Writes ``<run>/checkpoints/last.ckpt`` every N training steps, every M minutes, on SIGTERM and SIGUSR1.

    Lightning's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only when it saves a monitored
    checkpoint, so a run killed between validations loses everything since the last one. Here:

    * every ``every_n_steps`` optimizer steps (at most that many steps are recomputed after ``kill -9``);
    * when ``every_n_minutes`` have passed since the last write (long steps, slow validations);
    * on SIGTERM (cluster pre-emption, ``scancel``): written at the end of the current step, then the run
      stops with status 143; ``fit --ckpt_path last`` continues it exactly. With several processes Lightning
      stops each one at the end of the step in which it saw the signal, possibly not the same step, so no
      collective write is attempted then: there the pre-emption warning SIGUSR1 is the signal to use;
    * on SIGUSR1 (Lightning's requeue signal): written at the end of the current step and training goes on.
      Under SLURM with auto-requeue (``#SBATCH --signal=SIGUSR1@90``) the job is then requeued with ``scontrol
      requeue``, as Lightning's own handler does; that handler writes its ``hpc_ckpt`` wherever the signal lands
      (mid-step), which does not continue exactly, so this callback takes the signal over. The requeued job
      finds its run folder and continues from ``last.ckpt`` (:mod:`wsss_lightning.runs`);
    * at the end of training.

    As a :class:`~lightning.pytorch.callbacks.Checkpoint` it runs after every other callback's hook of the same
    step (Lightning moves checkpoint callbacks to the end), so the file holds the state after the step's EMA
    update and schedule values. The file is written beside the target and renamed over it, so a kill during the write leaves the previous
    ``last.ckpt`` intact. With several processes the step rule needs no communication (every rank counts the
    same steps); time and signals are local, so the ranks agree on them every ``sync_every`` steps (one small
    collective, which waits for the device: beside Lightning's own SIGTERM broadcast, which does so every step
    of a multi-process run) and write together.

    Args:
        every_n_steps: write every this many optimizer steps; ``None`` or 0: not by step count.
        every_n_minutes: write when this many minutes have passed since the last write; ``None``: never by time.
        sync_every: steps between the ranks' agreements on time / signals (multi-process runs only).
        dirpath: the folder of ``last.ckpt``; ``None``: ``<trainer.default_root_dir>/checkpoints``.
    """

    def __init__(
        self,
        every_n_steps: int | None = 500,
        every_n_minutes: float | None = 30.0,
        sync_every: int = 10,
        dirpath: str | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(f"LastCheckpoint.every_n_steps must be >= 0 or null, got {every_n_steps}")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(f"LastCheckpoint.every_n_minutes must be > 0 or null, got {every_n_minutes}")
        if sync_every < 1:
            raise ValueError(f"LastCheckpoint.sync_every must be >= 1, got {sync_every}")
        self.every_n_steps = every_n_steps or None
        self.every_n_minutes = every_n_minutes
        self.sync_every = sync_every
        self.dirpath = dirpath
        self._last_write = time.monotonic()
        self._saved_step = -1
        self._sigusr1 = False
        self._wrote_this_run = False
        self._previous_sigusr1: Any = None

    @property
    def path(self) -> Path:
        """Where ``last.ckpt`` is written (valid from ``setup`` on)."""
        return Path(self._dir) / LAST

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._dir = self.dirpath or os.path.join(trainer.default_root_dir, CHECKPOINTS)
        # from set-up on, so that Lightning's own SLURM handler (a mid-step hpc_ckpt) never takes the signal
        if stage == "fit" and hasattr(signal, "SIGUSR1") and self._previous_sigusr1 is None:
            self._previous_sigusr1 = signal.signal(signal.SIGUSR1, self._on_sigusr1)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_signal()

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_write = time.monotonic()
        self._saved_step = trainer.global_step  # a resumed run starts from what it loaded
        self._wrote_this_run = False
        # Lightning restores the handlers it found at start-up when it tears down, this one included: it is to
        # restore the one this callback replaced
        connector = getattr(trainer, "_signal_connector", None)
        originals = getattr(connector, "_original_handlers", None)
        if self._previous_sigusr1 is not None and isinstance(originals, dict) and hasattr(signal, "SIGUSR1"):
            originals[signal.SIGUSR1] = self._previous_sigusr1

    def _on_sigusr1(self, signum: int, frame: FrameType | None) -> None:
        self._sigusr1 = True

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        sigterm = bool(getattr(trainer, "received_sigterm", False))
        # time and signals wait for the end of a gradient accumulation: the partial gradients are not saved
        local = (
            self._sigusr1 or sigterm or self._time_is_up()
        ) and not trainer.fit_loop.epoch_loop._should_accumulate()
        if trainer.world_size > 1:  # ranks agree on local events every sync_every steps only
            local = step % self.sync_every == 0 and trainer.strategy.reduce_boolean_decision(local, all=False)
        if (by_steps or local) and step != self._saved_step:
            self._write(trainer, "step" if by_steps else "SIGTERM" if sigterm else "SIGUSR1 or time")
        if local and self._sigusr1 and trainer.is_global_zero and _slurm_requeue(trainer):
            _requeue()
        if local:
            self._sigusr1 = False
        # with several processes Lightning stops them itself (see on_exception)
        if sigterm and trainer.world_size == 1:
            raise Preempted()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rewrite_after_step(trainer)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._rewrite_after_step(trainer)

    def _rewrite_after_step(self, trainer: L.Trainer) -> None:
        """A step written at its end is written again after the epoch-end hooks / the validation that follow it.

        Both belong to that step (schedules and teachers advance at epoch ends; the loops record the
        validation as done), so the file stays the state a continued run needs at that step, as Lightning's
        ``ModelCheckpoint`` does with ``last.ckpt``.
        """
        if self._wrote_this_run and trainer.global_step == self._saved_step:
            self._write(trainer, "step")

    def _time_is_up(self) -> bool:
        minutes = self.every_n_minutes
        return minutes is not None and time.monotonic() - self._last_write >= 60.0 * minutes

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self._write(trainer, "end of training")

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # One process stopped by Lightning on SIGTERM (not through on_train_batch_end) is between two steps:
        # its state is whole. With several processes Lightning may stop them at different steps, so no
        # collective save is attempted; last.ckpt is then the latest step / time / SIGUSR1 write.
        stopped = isinstance(exception, SIGTERMException) and not isinstance(exception, Preempted)
        if (
            stopped
            and trainer.world_size == 1
            and trainer.global_step != self._saved_step
            and trainer.state.fn == "fit"
        ):
            self._write(trainer, "SIGTERM")
        self._restore_signal()

    def _restore_signal(self) -> None:
        if self._previous_sigusr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_sigusr1)
            self._previous_sigusr1 = None

    def _write(self, trainer: L.Trainer, why: str) -> None:
        target = self.path
        partial = target.with_name(target.name + ".partial")
        if trainer.is_global_zero:
            target.parent.mkdir(parents=True, exist_ok=True)
        # a full checkpoint (optimizer, loops, callbacks): what `fit --ckpt_path last` continues from; saying so
        # also keeps Lightning from logging its default at every write
        trainer.save_checkpoint(partial, weights_only=False)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, target)
        trainer.strategy.barrier("last_checkpoint")
        self._saved_step = trainer.global_step
        self._last_write = time.monotonic()
        self._wrote_this_run = True
        if why not in ("step", "end of training"):
            rank_zero_info(f"wsss: wrote {target} at step {trainer.global_step} ({why})")


def _slurm_requeue(trainer: L.Trainer) -> bool:
    from lightning.fabric.plugins.environments.slurm import SLURMEnvironment

    environment = trainer._accelerator_connector.cluster_environment
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


def _requeue() -> None:
    """``scontrol requeue`` this SLURM job (the job id of an array task is ``<array job>_<task>``)."""
    job = slurm_job_id(os.environ)
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
        ok, detail = result.returncode == 0, result.stderr.strip()
    except OSError as exc:
        ok, detail = False, str(exc)
    if ok:
        rank_zero_info(f"wsss: requeued SLURM job {job}")
    else:
        rank_zero_warn(f"wsss: could not requeue SLURM job {job} ({detail}); last.ckpt is written")
