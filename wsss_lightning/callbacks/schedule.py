"""Apply a pure schedule to an attribute of the LightningModule before every training batch."""

from __future__ import annotations

import math
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from wsss_lightning.callbacks.step_logging import is_logging_step
from wsss_lightning.schedules import cosine_descent, linear_ramp

ScheduleKind = Literal["linear", "cosine", "constant"]


def resolve_attribute(root: object, path: str) -> tuple[object, str]:
    """Split a dotted attribute path into (owner object, last name), checking that it exists.

    Raises:
        AttributeError: naming the missing part of ``path`` and the class where it was looked up.
    """
    owner = root
    parts = path.split(".")
    for i, name in enumerate(parts):
        if not hasattr(owner, name):
            where = ".".join(parts[:i]) or type(root).__name__
            raise AttributeError(
                f"attribute '{path}': {type(owner).__name__} ({where}) has no attribute '{name}'; "
                f"the callback needs an existing attribute of the LightningModule"
            )
        if i < len(parts) - 1:
            owner = getattr(owner, name)
    return owner, parts[-1]


def fit_boundaries(boundaries: dict[str, int], run_length: int, fraction: float = 2 / 3) -> dict[str, int]:
    """A schedule's step (or epoch) boundaries, scaled into a run of ``run_length`` steps when they do not fit.

    A short run (``--trainer.max_steps 10``, ``fast_dev_run``, a few ``limit_train_batches``) would otherwise
    never reach the later phases of a schedule tuned for thousands of steps. Boundaries that all lie before
    ``run_length`` come back unchanged. Otherwise every boundary is multiplied by one factor that puts the
    latest at ``fraction`` of the run (floored), so the phases keep their proportions and the last phase gets
    the final third; boundaries that differed stay in the same strict order (a run too short for that pushes
    the later ones past its end).

    Args:
        boundaries: name -> boundary (>= 0), e.g. ``{"phases.seg_start": 200, "phases.noise_filter_start": 400}``.
        run_length: steps (or epochs) the run trains for.
        fraction: where the latest boundary lands in a scaled schedule.

    Returns:
        name -> boundary, in the order of ``boundaries``.
    """
    if not boundaries or max(boundaries.values()) < run_length:
        return dict(boundaries)
    factor = int(fraction * run_length) / max(boundaries.values())
    scaled: dict[str, int] = {}
    previous: tuple[int, int] | None = None  # (original, scaled) of the last boundary in ascending order
    for name, value in sorted(boundaries.items(), key=lambda item: item[1]):
        new = math.floor(value * factor)
        if previous is not None:
            new = max(new, previous[1] + 1) if value > previous[0] else previous[1]
        scaled[name] = new
        previous = (value, new)
    return {name: scaled[name] for name in boundaries}


def scaled_message(owner: str, unit: str, run_length: int, old: dict[str, int], new: dict[str, int]) -> str:
    """One line saying which boundaries a short run scaled: ``"DuPLModule: schedule scaled to 10 steps ..."``."""
    changes = ", ".join(f"{name} {old[name]} -> {new[name]}" for name in old if old[name] != new[name])
    return (
        f"{owner}: schedule scaled to the run's {run_length} {unit}{'s' if run_length != 1 else ''} (it was "
        f"longer than the run): {changes}; "
        "set these options to keep other values"
    )


def fit_to_run(owner: str, unit: str, run_length: int, boundaries: dict[str, int]) -> dict[str, int]:
    """:func:`fit_boundaries`, saying in one line (:func:`scaled_message`) when the boundaries were scaled."""
    fitted = fit_boundaries(boundaries, run_length)
    if fitted != boundaries:
        rank_zero_info(scaled_message(owner, unit, run_length, boundaries, fitted))
    return fitted


def run_length(trainer: L.Trainer, interval: Literal["step", "epoch"] = "step") -> int | None:
    """Optimizer steps (or epochs) the fit trains for, from max_steps / max_epochs / limit_train_batches.

    ``None`` for an endless run. Epochs count the one a ``max_steps`` limit ends in. Counting batches needs the
    training dataloader: one built here (in ``setup``, before Lightning restores a checkpoint) is dropped again,
    so Lightning builds it anew after the restore, from the restored position (``fit --ckpt_path`` continues
    mid-epoch exactly).
    """
    unbuilt = trainer.train_dataloader is None
    try:
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            return None
        if interval == "step":
            return int(steps)
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
    finally:
        if unbuilt and trainer.train_dataloader is not None:
            trainer.fit_loop._combined_loader = None
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
    if not math.isfinite(batches) or batches <= 0:
        return max_epochs
    epochs = math.ceil(steps / math.ceil(batches / trainer.accumulate_grad_batches))
    return min(epochs, max_epochs) if max_epochs is not None else epochs


def schedule_value(kind: ScheduleKind, t: int, total: int, start: float, end: float) -> float:
    """Value of a schedule at progress ``t`` (clamped to ``[0, total]``).

    Args:
        kind: ``"linear"`` and ``"cosine"`` go from ``start`` at ``t = 0`` to ``end`` at ``t = total``;
            ``"constant"`` is always ``start``.
        t: progress since the schedule began (steps or epochs).
        total: length of the schedule in the same unit.
        start: value at the beginning.
        end: value at the end.
    """
    if kind == "constant":
        return start
    if kind == "linear":
        return linear_ramp(t, total, start, end)
    if kind == "cosine":
        return cosine_descent(t, total, start, end)
    raise ValueError(f"schedule kind must be one of 'linear', 'cosine', 'constant', got {kind!r}")


class ScheduleCallback(Callback):
    """Before every training batch, set ``pl_module.<attribute>`` to a schedule's value and log it.

    The value is a pure function of the trainer's progress (global step or epoch index), so a resumed run
    sees the same values at the same steps and nothing needs checkpointing. Before ``start_step`` the value
    is ``start``; after ``start_step + total_steps`` it is ``end``.

    U2PL's unreliable-pixel percentage ``alpha_t = 20 * (1 - epoch / epochs)`` (U2PL+ Eq. 13) is::

        ScheduleCallback(attribute="percent_unreliable", kind="linear", start=20.0, end=0.0, interval="epoch")

    If the attribute currently holds a tensor (e.g. a buffer) it is filled in place; otherwise a Python
    float is assigned. ``end`` may be a list (one end value per element of a tensor attribute): DuPL's
    per-class background thresholds descend from one start value to per-class end values (DuPL Eq. 5 with the
    per-class ends of DuPL's ``train_final_voc.py``)::

        ScheduleCallback(attribute="class_thresholds", kind="cosine", start=0.7, end=[0.7, 0.55, ...],
                         start_step=2000, total_steps=17999)

    Args:
        attribute: attribute of the LightningModule to set; dotted paths reach submodules
            (``"loss_fn.threshold"``). It must exist when training starts.
        kind: ``"linear"``, ``"cosine"`` (from ``start`` to ``end``) or ``"constant"`` (``start``).
        start: value at ``start_step``.
        end: value at ``start_step + total_steps``, or one value per element of a tensor attribute.
        total_steps: length of the schedule, in optimizer steps (``interval="step"``) or epochs
            (``interval="epoch"``). ``None`` runs it to the end of training: ``trainer.max_epochs`` or
            ``trainer.estimated_stepping_batches``, minus ``start_step``.
        start_step: step (or epoch) at which the schedule begins.
        interval: ``"step"`` evaluates at ``trainer.global_step`` (optimizer steps taken so far);
            ``"epoch"`` at ``trainer.current_epoch`` (constant within an epoch, as U2PL's code does).
        log_name: name of the logged value; default ``"schedule/<attribute>"``.
    """

    def __init__(
        self,
        attribute: str,
        kind: ScheduleKind = "linear",
        start: float = 0.0,
        end: float | list[float] = 0.0,
        total_steps: int | None = None,
        start_step: int = 0,
        interval: Literal["step", "epoch"] = "step",
        log_name: str | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("linear", "cosine", "constant"):
            raise ValueError(f"ScheduleCallback.kind must be 'linear', 'cosine' or 'constant', got {kind!r}")
        if interval not in ("step", "epoch"):
            raise ValueError(f"ScheduleCallback.interval must be 'step' or 'epoch', got {interval!r}")
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"ScheduleCallback.total_steps must be positive or None, got {total_steps}")
        if start_step < 0:
            raise ValueError(f"ScheduleCallback.start_step must be >= 0, got {start_step}")
        self.attribute = attribute
        self.kind: ScheduleKind = kind
        self.start = float(start)
        self.end: float | list[float] = (
            [float(e) for e in end] if isinstance(end, (list, tuple)) else float(end)
        )
        self.total_steps = total_steps
        self.start_step = start_step
        self.interval = interval
        self.log_name = log_name or f"schedule/{attribute}"
        self._total: int | None = None  # resolved once per fit: estimated_stepping_batches is not free
        self._ends: torch.Tensor | None = None  # ``end`` on the module's device

    def retime(self, start_step: int, total_steps: int | None) -> None:
        """Move the schedule to ``start_step`` with length ``total_steps`` (before the fit's first batch).

        A method that scales its schedule to a short run calls this from its ``setup``, once the run's length
        is known (callbacks are built before it is).
        """
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"ScheduleCallback.total_steps must be positive or None, got {total_steps}")
        if start_step < 0:
            raise ValueError(f"ScheduleCallback.start_step must be >= 0, got {start_step}")
        self.start_step, self.total_steps, self._total = start_step, total_steps, None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(attribute=self.attribute)

    def total(self, trainer: L.Trainer) -> int:
        """Length of the schedule in its unit, resolved from the trainer when ``total_steps`` is None."""
        if self.total_steps is not None:
            return self.total_steps
        if self.interval == "epoch":
            # a run limited by max_steps alone ends in the epoch that step falls in
            epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
            epochs = epochs or run_length(trainer, "epoch")
            if epochs is None:
                raise ValueError(
                    f"ScheduleCallback({self.attribute}): total_steps=None with interval='epoch' needs a finite "
                    f"run (Trainer max_epochs, or max_steps with a sized dataloader)"
                )
            end = epochs
        else:
            estimated = trainer.estimated_stepping_batches
            if not math.isfinite(estimated):
                raise ValueError(
                    f"ScheduleCallback({self.attribute}): total_steps=None needs a finite run "
                    "(Trainer max_steps or max_epochs with a sized dataloader)"
                )
            end = int(estimated)
        if end - self.start_step <= 0:
            raise ValueError(
                f"ScheduleCallback({self.attribute}): start_step={self.start_step} is not before the end of "
                f"training ({end} {self.interval}s)"
            )
        return end - self.start_step

    def value(self, trainer: L.Trainer) -> float | list[float]:
        """The schedule's value at the trainer's current progress (a list when ``end`` is a list)."""
        if self._total is None:
            self._total = self.total(trainer)
        now = trainer.current_epoch if self.interval == "epoch" else trainer.global_step
        t = now - self.start_step
        if isinstance(self.end, list):
            return [schedule_value(self.kind, t, self._total, self.start, end) for end in self.end]
        return schedule_value(self.kind, t, self._total, self.start, self.end)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._total, self._ends = None, None
            # fail before training, not at the first batch
            owner, name = resolve_attribute(pl_module, self.attribute)
            current = getattr(owner, name)
            if isinstance(self.end, list) and (
                not isinstance(current, torch.Tensor) or current.numel() != len(self.end)
            ):
                size = current.numel() if isinstance(current, torch.Tensor) else "not a tensor"
                raise ValueError(
                    f"ScheduleCallback({self.attribute}): end has {len(self.end)} values but the attribute "
                    f"holds {size} elements"
                )

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        owner, name = resolve_attribute(pl_module, self.attribute)
        current = getattr(owner, name)
        if isinstance(self.end, list):
            current.copy_(self._tensor_value(trainer, current).view_as(current))
        elif isinstance(current, torch.Tensor):
            current.fill_(cast(float, self.value(trainer)))  # a Python scalar argument: no transfer
        else:
            setattr(owner, name, self.value(trainer))
        if is_logging_step(trainer):  # a Python number is copied to the device to be logged
            value = self.value(trainer)
            logged = sum(value) / len(value) if isinstance(value, list) else value  # the mean over elements
            pl_module.log(self.log_name, logged, on_step=True, on_epoch=False, batch_size=1)

    def _tensor_value(self, trainer: L.Trainer, like: torch.Tensor) -> torch.Tensor:
        """The per-element values as a tensor on ``like``'s device, computed there from Python scalars.

        The ends move to the device once per fit, never per step. The arithmetic is ``schedule_value``'s, in
        the same order and in float64, so the values are bitwise those of the Python computation.
        """
        assert isinstance(self.end, list)
        if self._ends is None or self._ends.device != like.device:
            dtype = torch.float32 if like.device.type == "mps" else torch.float64
            self._ends = torch.tensor(self.end, dtype=dtype).to(like.device)
        if self._total is None:
            self._total = self.total(trainer)
        total, ends = self._total, self._ends
        now = trainer.current_epoch if self.interval == "epoch" else trainer.global_step
        progress = min(max(now - self.start_step, 0), total) / max(total, 1)
        if self.kind == "constant":
            return torch.full_like(ends, self.start)
        if self.kind == "linear":
            return (ends - self.start) * progress + self.start
        return ends + (self.start - ends) * 0.5 * (1.0 + math.cos(math.pi * progress))
