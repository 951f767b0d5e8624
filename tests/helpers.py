"""Helpers importable from test configs (``class_path: tests.helpers.X``)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torch.utils._python_dispatch import TorchDispatchMode

from wsss_lightning.host_reads import accelerator_paths


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
    """Save this rank's module state (teacher, memory bank, ...) to ``<out>/rank<r>.pt`` at the end of fit (or of
    validation, ``at="validation_end"``)."""

    def __init__(self, out: str, at: str = "train_end") -> None:
        self.out = out
        self.at = at

    def _dump(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import os

        os.makedirs(self.out, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, os.path.join(self.out, f"rank{trainer.global_rank}.pt"))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at == "train_end":
            self._dump(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at == "validation_end":
            self._dump(trainer, pl_module)


class StepLog(Callback):
    """Append each finished training step's ``global_step`` to the file ``out`` (flushed at once)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.is_global_zero:
            with open(self.out, "a") as f:
                f.write(f"{trainer.global_step}\n")


class SignalAtStep(Callback):
    """Send ``signal`` (a name: ``SIGTERM``, ``SIGUSR1``) to this process when training step ``step`` begins."""

    def __init__(self, step: int, signal: str) -> None:
        self.step = step
        self.signal = signal

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        import os
        import signal

        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), getattr(signal, self.signal))


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


_SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static", "argwhere"}
_SYNC_OPS |= {"masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount"}


class NoSyncMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Raise on every ATen op below autograd that reads a device value on the host or has a data-dependent
    output size: scalar reads (``item``, ``int``, ``bool`` of a tensor all end in ``_local_scalar_dense``),
    ``nonzero``, ``unique``, ``bincount``, boolean-mask indexing and ``repeat_interleave`` without output
    size. It sees the ops of composite functions and of the custom backward too, not only Python calls.

    Args:
        allowed: op names (``"nonzero"``, ``"_local_scalar_dense"``, ...) let through.
    """

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.allowed = frozenset(allowed)
        self.paused = False

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        name = func.overloadpacket.__name__.rstrip("_")
        kwargs = kwargs or {}
        bool_index = name in ("index", "index_put") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())
        )
        no_size = name == "repeat_interleave" and kwargs.get("output_size") is None
        if (name in _SYNC_OPS or bool_index or no_size) and not self.paused and name not in self.allowed:
            raise AssertionError(f"host synchronisation: aten.{name}")
        return func(*args, **kwargs)


def forbid_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python-level host reads raise too (``tolist`` reads the data without a dispatched op)."""

    def forbidden(*_args: object, **_kwargs: object) -> NoReturn:
        raise AssertionError("host synchronisation")

    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "unique", forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)


_PYTHON_READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero")


class HostSyncCheck(Callback):
    """Fail the fit when a training step reads a device value on the host (the method contract's sync test).

    From ``start_step`` on, every training batch runs under :class:`NoSyncMode`, with the Python-level reads
    (``tolist``, ``item``, ``cpu``, ``numpy``, ...) raising too: the callbacks' batch-start hooks (schedules,
    teachers), ``training_step``, ``backward`` and the batch-end hooks (EMA updates) up to the checkpoint
    callbacks. The optimizer's own ``step`` is let through: torch keeps its step counters on the host on
    purpose, but ``training_step`` and ``backward``, which Lightning runs inside it as the closure, are
    checked. During the fit the CPU takes the accelerators' sync-free paths
    (:func:`wsss_lightning.host_reads.accelerator_paths`), so those are the paths checked on CPU machines.
    Ops a method lists in its ``HOST_READS`` (op name -> reason, in its docstring) are allowed.
    Give it first in the trainer's callbacks: it must start before the other callbacks' hooks.
    """

    def __init__(self, start_step: int = 0) -> None:
        self.start_step = start_step
        self.mode: NoSyncMode | None = None
        self.checked_steps = 0
        self._originals: dict[str, Any] = {}
        self._patched_module: L.LightningModule | None = None
        self._paths: AbstractContextManager[None] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the end of the checked window: after every batch-end hook but the checkpoint callbacks' (saving
        # a checkpoint copies to the host by design); Lightning keeps checkpoint callbacks last
        first_checkpoint = next(
            (i for i, c in enumerate(trainer.callbacks) if isinstance(c, L.pytorch.callbacks.Checkpoint)),
            len(trainer.callbacks),
        )
        trainer.callbacks.insert(first_checkpoint, _WindowEnd(self))
        # the progress bar shows the logged values, which Lightning reads on logging steps: by design
        for callback in trainer.callbacks:
            if isinstance(callback, L.pytorch.callbacks.ProgressBar):
                for hook in ("on_train_batch_start", "on_train_batch_end"):
                    setattr(callback, hook, self._paused(getattr(callback, hook)))

    def _paused(self, hook: Callable[..., Any], paused: bool = True) -> Callable[..., Any]:
        """``hook`` run with the check paused (or, with ``paused=False``, active), then restored."""

        def run(*args: Any, **kwargs: Any) -> Any:
            before = self.mode is not None and self.mode.paused
            self._pause(paused)
            try:
                return hook(*args, **kwargs)
            finally:
                self._pause(before)

        return run

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            optimizer.register_step_pre_hook(lambda *_: self._pause(True))
            optimizer.register_step_post_hook(lambda *_: self._pause(False))
        # Lightning runs training_step and backward inside optimizer.step(closure): the closure is checked
        original_step = pl_module.optimizer_step

        def optimizer_step(epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> Any:
            closure = None if optimizer_closure is None else self._paused(optimizer_closure, paused=False)
            return original_step(epoch, batch_idx, optimizer, closure)

        pl_module.optimizer_step = optimizer_step  # type: ignore[method-assign]
        self._patched_module = pl_module
        # the CPU takes the accelerators' sync-free paths, so those are what is checked
        self._paths = accelerator_paths()
        self._paths.__enter__()
        allowed = dict(getattr(pl_module, "HOST_READS", {}))
        for name in _PYTHON_READS:
            self._originals[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._guard(name, self._originals[name], allowed))

    def _guard(self, name: str, original: Callable[..., Any], allowed: dict[str, str]) -> Callable[..., Any]:
        def guarded(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.mode is not None and not self.mode.paused and name not in allowed:
                raise AssertionError(f"host synchronisation: Tensor.{name}")
            return original(tensor, *args, **kwargs)

        return guarded

    def _pause(self, paused: bool) -> None:
        if self.mode is not None:
            self.mode.paused = paused

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step >= self.start_step and self.mode is None:
            self.mode = NoSyncMode(allowed=dict(getattr(pl_module, "HOST_READS", {})))
            self.mode.__enter__()

    def end_window(self) -> None:
        if self.mode is not None:
            mode, self.mode = self.mode, None
            mode.__exit__(None, None, None)
            self.checked_steps += 1

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.end_window()
        self._restore()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.end_window()
        self._restore()
        if self.checked_steps == 0:
            raise AssertionError(f"HostSyncCheck: no training step at or after step {self.start_step} ran")

    def _restore(self) -> None:
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        self._originals.clear()
        if self._patched_module is not None:
            del self._patched_module.optimizer_step  # the class's method again
            self._patched_module = None
        if self._paths is not None:
            self._paths.__exit__(None, None, None)
            self._paths = None


class _WindowEnd(Callback):
    """Closes :class:`HostSyncCheck`'s window after the batch-end hooks before it."""

    def __init__(self, check: HostSyncCheck) -> None:
        self.check = check

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.check.end_window()


class MemoryLogger(Logger):
    """Keeps every ``log_metrics`` call as (step, metrics), for tests of what a fit logs."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script, not a package) with the folder's shared helpers
    (``learning_runs``) importable while it loads; registered in ``sys.modules`` so its dataclasses resolve."""
    path = BENCHMARKS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def adam_steps(optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> set[int]:
    """The step counts the optimizer holds for ``module``'s trainable parameters (0: never stepped)."""
    trained = (p for p in module.parameters() if p.requires_grad)
    return {int(optimizer.state[p]["step"]) if p in optimizer.state else 0 for p in trained}
