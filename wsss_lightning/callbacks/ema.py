"""Drive an :class:`~wsss_lightning.teachers.EMATeacher` after every optimizer step."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from wsss_lightning.callbacks.step_logging import is_logging_step
from wsss_lightning.schedules import ema_decay_ramp
from wsss_lightning.teachers.ema import EMATeacher


class EMATeacherCallback(Callback):
    """Update ``pl_module.<teacher_attr>`` from ``pl_module.<student_attr>`` after each optimizer step.

    With ``i`` the index of the optimizer step just taken (``trainer.global_step - 1``), ``W`` the warm-up
    length and ``C`` the copy length (both in optimizer steps):

    * ``i < W`` — supervised-only warm-up: the teacher is left alone (logged decay 1).
    * ``W <= i < W + C`` — the teacher is set equal to the student (logged decay 0); it is also set equal
      before the first step after a warm-up (``W > 0``, with or without a copy phase), so the first
      pseudo-labels come from the current student, not from the teacher's never-trained weights.
    * ``i >= W + C`` — EMA with decay ``min(1 - 1/(k+1), decay)`` (``ramp=True``) or ``decay``, where
      ``k = i - W + ramp_offset``.

    This reproduces U2PL's released code (``train_semi.py``): ``warmup_epochs=1`` (``sup_only_epoch``
    falls back to 1 when absent, VOC configs), ``decay=0.99``, ramp on, and ``copy_at_warmup_end=True``:
    during the first semi-supervised epoch the code points each teacher parameter at the student's tensor
    before every step and averages two identical tensors after it, so the teacher equals the student
    throughout that epoch and EMA proper starts at ``k = len(loader)``. Cityscapes sets ``sup_only_epoch: 0``
    (``warmup_epochs=0``: the copy epoch is the first epoch). The AEL branch of U2PL has neither warm-up nor
    copy (``warmup_steps=0, copy_at_warmup_end=False``: ``k`` counts from step 0, so the first update is a
    copy). Whether buffers are averaged is the teacher's ``params_only`` option.

    Updates happen only when an optimizer step happened in the batch (``trainer.global_step`` advanced), so
    ``accumulate_grad_batches`` is respected. The applied decay is logged as ``<teacher_attr>/decay``.
    Everything is derived from ``trainer.global_step`` and the teacher's weights live in the module's
    checkpoint, so ``fit --ckpt_path last`` continues exactly. The resolved warm-up and copy lengths are
    saved in the callback state, so a resumed run keeps them even if the number of steps per epoch changed.

    Args:
        teacher_attr: attribute of the LightningModule holding the :class:`EMATeacher`.
        student_attr: attribute of the LightningModule holding the student network.
        decay: EMA decay (the upper bound when ``ramp`` is on); U2PL ``ema_decay`` = 0.99.
        ramp: use ``min(1 - 1/(k+1), decay)`` (U2PL) instead of a constant decay.
        warmup_steps: optimizer steps of supervised-only warm-up without EMA.
        warmup_epochs: warm-up in epochs instead (converted with the optimizer steps per training epoch);
            mutually exclusive with a non-zero ``warmup_steps``.
        copy_at_warmup_end: keep the teacher equal to the student for ``copy_steps`` steps after the warm-up
            (U2PL code behaviour, ``train_semi.py``; default).
        copy_steps: length of the copy phase; ``None`` = one training epoch of optimizer steps (U2PL).
        ramp_offset: added to ``k``. DAFormer (``mmseg/models/uda/dacs.py``) copies the student into the
            teacher before its first step and averages with ``min(1 - 1/(t+1), alpha)`` from iteration t = 1
            on, i.e. after optimizer step i with ``k = i + 1`` (first decay 0.5): ``ramp_offset=1``. U2PL and
            Seminar count from 0 (the first update is a copy).
        copy_buffers_at_warmup_end: at the end of the warm-up, before the first teacher forward, copy the
            student's parameters AND buffers (BN running statistics) into the teacher. Off in the reference:
            there the teacher keeps its own statistics, gathered during the warm-up by train-mode forwards of
            its never-updated weights (close to the student's when both start from the same pretrained
            encoder; statistics of random weights when trained from scratch).
    """

    def __init__(
        self,
        teacher_attr: str = "teacher",
        student_attr: str = "student",
        decay: float = 0.99,
        ramp: bool = True,
        warmup_steps: int = 0,
        warmup_epochs: int | None = None,
        copy_at_warmup_end: bool = True,
        copy_steps: int | None = None,
        copy_buffers_at_warmup_end: bool = False,
        ramp_offset: int = 0,
    ) -> None:
        super().__init__()
        if ramp_offset < 0:
            raise ValueError(f"EMATeacherCallback.ramp_offset must be >= 0, got {ramp_offset}")
        self.ramp_offset = ramp_offset
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMATeacherCallback.decay must be in [0, 1], got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"EMATeacherCallback.warmup_steps must be >= 0, got {warmup_steps}")
        if warmup_epochs is not None and (warmup_epochs < 0 or warmup_steps):
            raise ValueError(
                f"EMATeacherCallback: warmup_epochs={warmup_epochs} must be >= 0 and is exclusive with "
                f"warmup_steps={warmup_steps}"
            )
        if copy_steps is not None and copy_steps < 0:
            raise ValueError(f"EMATeacherCallback.copy_steps must be >= 0 or None, got {copy_steps}")
        self.teacher_attr = teacher_attr
        self.student_attr = student_attr
        self.decay = decay
        self.ramp = ramp
        self.warmup_steps = warmup_steps
        self.warmup_epochs = warmup_epochs
        self.copy_at_warmup_end = copy_at_warmup_end
        self.copy_steps = copy_steps
        self.copy_buffers_at_warmup_end = copy_buffers_at_warmup_end
        # resolved (W, C) in optimizer steps; restored from the checkpoint on resume
        self._resolved: tuple[int, int] | None = None
        self._loaded: tuple[int, int] | None = None
        self._loaded_settings: list[Any] | None = None
        self._step_at_batch_start = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(teacher_attr=self.teacher_attr, student_attr=self.student_attr)

    def networks(self, pl_module: L.LightningModule) -> tuple[EMATeacher, nn.Module]:
        """The (teacher, student) pair of ``pl_module``; errors name the attribute and what was expected."""
        cls = type(pl_module).__name__
        for attr in (self.teacher_attr, self.student_attr):
            if not hasattr(pl_module, attr):
                raise AttributeError(f"EMATeacherCallback: {cls} has no attribute '{attr}'")
        teacher = getattr(pl_module, self.teacher_attr)
        student = getattr(pl_module, self.student_attr)
        if not isinstance(teacher, EMATeacher):
            raise TypeError(
                f"EMATeacherCallback: {cls}.{self.teacher_attr} must be an EMATeacher, "
                f"got {type(teacher).__name__}"
            )
        if not isinstance(student, nn.Module) or student is teacher:
            raise TypeError(
                f"EMATeacherCallback: {cls}.{self.student_attr} must be the student nn.Module "
                f"(not the teacher), got {type(student).__name__}"
            )
        return teacher, student

    def phases(self, trainer: L.Trainer) -> tuple[int, int]:
        """Warm-up and copy lengths ``(W, C)`` in optimizer steps."""
        if self._resolved is not None:
            return self._resolved
        needs_epoch = self.warmup_epochs is not None or (self.copy_at_warmup_end and self.copy_steps is None)
        per_epoch = self._steps_per_epoch(trainer) if needs_epoch else 0
        warmup = self.warmup_steps if self.warmup_epochs is None else self.warmup_epochs * per_epoch
        copy = 0
        if self.copy_at_warmup_end:
            copy = per_epoch if self.copy_steps is None else self.copy_steps
        resolved = (warmup, copy)
        if self._loaded is not None and self._loaded != resolved:
            if self._loaded_settings is not None and self._loaded_settings != self._settings():
                rank_zero_warn(
                    f"EMATeacherCallback: warm-up/copy settings changed since the checkpoint "
                    f"({self._loaded_settings} -> {self._settings()} as [warmup_steps, warmup_epochs, "
                    f"copy_at_warmup_end, copy_steps]); using this run's lengths {resolved} instead of {self._loaded}"
                )
            else:
                rank_zero_warn(
                    f"EMATeacherCallback: the checkpoint's warm-up/copy lengths {self._loaded} differ from this "
                    f"run's {resolved} (steps per epoch changed?); continuing with the checkpoint's"
                )
                resolved = self._loaded
        self._resolved = resolved
        return resolved

    @staticmethod
    def _steps_per_epoch(trainer: L.Trainer) -> int:
        batches = trainer.num_training_batches
        if not math.isfinite(batches) or batches <= 0:
            raise ValueError(
                "EMATeacherCallback: warmup_epochs / a one-epoch copy phase need a sized training "
                "dataloader; pass warmup_steps and copy_steps instead"
            )
        # Lightning steps on every accumulate_grad_batches-th batch and on the last batch of an epoch
        return math.ceil(int(batches) / trainer.accumulate_grad_batches)

    def decay_at(self, step_index: int, trainer: L.Trainer) -> float:
        """Decay applied after optimizer step ``step_index`` (1 = no change in warm-up, 0 = copy)."""
        warmup, copy = self.phases(trainer)
        if step_index < warmup:
            return 1.0
        if step_index < warmup + copy:
            return 0.0
        if not self.ramp:
            return self.decay
        return ema_decay_ramp(step_index - warmup + self.ramp_offset, self.decay)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.networks(pl_module)  # fail before training starts
            self._resolved = None
            self._loaded = None  # a checkpoint's state is loaded after setup

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_batch_start = trainer.global_step
        warmup, copy = self.phases(trainer)
        if trainer.global_step == warmup and (warmup or copy or self.copy_buffers_at_warmup_end):
            # U2PL re-points the teacher at the student before the first post-warm-up forward. Without a copy
            # phase the teacher is still set equal to the student after a warm-up: its weights were never
            # trained, and the first pseudo-labels would otherwise come from them
            teacher, student = self.networks(pl_module)
            teacher.copy_from(student, include_buffers=True if self.copy_buffers_at_warmup_end else None)

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # accumulating gradients: no optimizer step in this batch
        decay = self.decay_at(trainer.global_step - 1, trainer)
        if decay < 1.0:
            teacher, student = self.networks(pl_module)
            if decay == 0.0:
                teacher.copy_from(student)
            else:
                teacher.update(student, decay)
        if is_logging_step(trainer):  # a Python number is copied to the device to be logged
            pl_module.log(f"{self.teacher_attr}/decay", decay, on_step=True, on_epoch=False, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "resolved": list(self._resolved) if self._resolved is not None else None,
            "settings": self._settings(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        resolved = state_dict.get("resolved")
        self._loaded = (int(resolved[0]), int(resolved[1])) if resolved is not None else None
        self._loaded_settings = state_dict.get("settings")  # absent in older checkpoints
        self._resolved = None

    def _settings(self) -> list[Any]:
        """The options the warm-up and copy lengths are resolved from."""
        return [self.warmup_steps, self.warmup_epochs, self.copy_at_warmup_end, self.copy_steps]
