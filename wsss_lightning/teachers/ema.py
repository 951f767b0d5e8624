"""Mean teacher: a frozen copy of a student network, updated by an exponential moving average."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import Self, override


class EMATeacher(nn.Module):
    """Exponential-moving-average teacher of a student network.

    The teacher is a frozen copy of the student (``requires_grad_(False)``, eval mode) that the method keeps
    as a submodule, e.g. ``self.teacher = EMATeacher(self.student)``. Being a submodule, its weights are in
    the checkpoint and follow ``.to(device)``; having no trainable parameters, DDP never registers it and no
    optimizer built from trainable parameters sees it. Every rank applies the same update, so ranks agree.
    After each optimizer step (see :class:`~wsss_lightning.callbacks.ema.EMATeacherCallback`)::

        teacher <- decay * teacher + (1 - decay) * student

    applied with ``torch._foreach_lerp_`` under ``no_grad`` (the approach of timm's ``ModelEmaV3``).

    Why not Lightning's ``EMAWeightAveraging``: that callback wraps the *whole* LightningModule in an
    ``AveragedModel``, swaps the averaged weights in for validation and into ``state_dict`` on save. It is
    an evaluation-time Polyak average. A mean teacher instead runs inside ``training_step`` to make
    pseudo-labels, needs method-specific decay schedules and warm-ups, sometimes averages parameters but not
    BN statistics, and must not be averaged itself.

    Mode handling: ``train()`` (which Lightning calls on the whole LightningModule) leaves the teacher in
    eval mode. Methods that run the teacher in train mode on purpose (U2PL warms the teacher's BN statistics
    and computes its entropy with train-mode forwards, U2PL ``train_semi.py``) use :meth:`train_mode`.
    Lightning's "Found N module(s) in eval mode at the start of training" warning names these modules and is
    expected.

    Args:
        student: network to copy; its structure must stay the same for later updates.
        params_only: average parameters only and keep the teacher's own buffers (U2PL: BN running
            statistics are not averaged but updated by the teacher's train-mode forwards, U2PL issue #64).
            ``False`` also lerps floating-point buffers and copies integer buffers (``num_batches_tracked``).
        copy_student: ``True`` deep-copies ``student``; ``False`` takes ``student`` itself as the teacher
            network (for a teacher constructed independently, as U2PL's ``train_semi.py`` does).
    """

    def __init__(self, student: nn.Module, params_only: bool = True, copy_student: bool = True) -> None:
        super().__init__()
        self.params_only = params_only
        self.module = copy.deepcopy(student) if copy_student else student
        self.module.requires_grad_(False)
        self.module.eval()
        self.training = False
        self._force_train = False

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the teacher network (call under ``torch.no_grad()``; the teacher's weights need no grad)."""
        return self.module(*args, **kwargs)

    @override
    def train(self, mode: bool = True) -> Self:
        """Keep eval mode unless inside :meth:`train_mode`; ``LightningModule.train()`` cannot flip it."""
        effective = self._force_train
        self.training = effective
        self.module.train(effective)
        return self

    @contextmanager
    def train_mode(self) -> Iterator[EMATeacher]:
        """Temporarily run the teacher in train mode (BN uses and updates batch statistics, dropout is on).

        Example::

            with torch.no_grad(), self.teacher.train_mode():
                out = self.teacher(images)
        """
        previous = self._force_train
        self._force_train = True
        self.train()
        try:
            yield self
        finally:
            self._force_train = previous
            self.train()

    def _pairs(self, student: nn.Module, with_buffers: bool) -> tuple[list[Tensor], list[Tensor], list[str]]:
        """Matching teacher / student tensors, checked by name so a changed structure fails loudly."""
        teacher_named: list[tuple[str, Tensor]] = list(self.module.named_parameters())
        student_named: list[tuple[str, Tensor]] = list(student.named_parameters())
        if with_buffers:
            teacher_named += list(self.module.named_buffers())
            student_named += list(student.named_buffers())
        teacher_names = [n for n, _ in teacher_named]
        student_names = [n for n, _ in student_named]
        if teacher_names != student_names:
            missing = sorted(set(teacher_names) ^ set(student_names))
            raise ValueError(
                "EMATeacher: teacher and student tensors differ (expected identical names in the same "
                f"order); mismatched names: {missing[:10] or 'order differs'}"
            )
        teacher_tensors = [t for _, t in teacher_named]
        student_tensors = [s.detach() for _, s in student_named]
        for name, t, s in zip(teacher_names, teacher_tensors, student_tensors, strict=True):
            if t.shape != s.shape:
                raise ValueError(
                    f"EMATeacher: shape of '{name}' differs: teacher {tuple(t.shape)} "
                    f"vs student {tuple(s.shape)}"
                )
        return teacher_tensors, student_tensors, teacher_names

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float | Tensor) -> None:
        """Move the teacher towards the student: ``t <- decay * t + (1 - decay) * s``.

        Floating-point tensors are lerped in one foreach call; integer tensors (only buffers such as
        ``num_batches_tracked``, when ``params_only=False``) are copied.

        Args:
            student: the student network (same structure as the teacher).
            decay: EMA decay in [0, 1], a float or a 0-dim tensor (kept on the device: no host sync).
        """
        if isinstance(decay, float | int) and not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMATeacher.update: decay must be in [0, 1], got {decay}")
        teacher_tensors, student_tensors, _ = self._pairs(student, with_buffers=not self.params_only)
        lerp_t: list[Tensor] = []
        lerp_s: list[Tensor] = []
        copy_t: list[Tensor] = []
        copy_s: list[Tensor] = []
        for t, s in zip(teacher_tensors, student_tensors, strict=True):
            if t.is_floating_point():
                lerp_t.append(t)
                lerp_s.append(s.to(dtype=t.dtype, device=t.device))
            else:
                copy_t.append(t)
                copy_s.append(s)
        if not lerp_t:
            pass
        elif isinstance(decay, Tensor):
            # a 0-dim tensor passed to _foreach_lerp_ is read back as a Python scalar (a host sync on GPU);
            # t += (s - t) * (1 - decay) keeps the decay on the device
            weight = (1.0 - decay).to(device=lerp_t[0].device, dtype=torch.float32)
            step = torch._foreach_sub(lerp_s, lerp_t)
            torch._foreach_mul_(step, weight)
            torch._foreach_add_(lerp_t, step)
        else:
            torch._foreach_lerp_(lerp_t, lerp_s, 1.0 - decay)
        for t, s in zip(copy_t, copy_s, strict=True):
            t.copy_(s)

    @torch.no_grad()
    def copy_from(self, student: nn.Module, include_buffers: bool | None = None) -> None:
        """Set the teacher equal to the student (an update with decay 0, exactly).

        Args:
            student: the student network (same structure as the teacher).
            include_buffers: also copy buffers; ``None`` follows ``params_only`` (U2PL's per-step copy during
                its first semi-supervised epoch copies parameters only, ``train_semi.py``).
        """
        with_buffers = not self.params_only if include_buffers is None else include_buffers
        teacher_tensors, student_tensors, _ = self._pairs(student, with_buffers=with_buffers)
        torch._foreach_copy_(teacher_tensors, student_tensors)

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Average the teacher's floating-point buffers (BN statistics) over all DDP ranks.

        With ``params_only`` the teacher's BN statistics come from its own train-mode forwards, which see
        each rank's own images; averaging them after those forwards keeps every rank's teacher identical
        (on GPUs with ``sync_batchnorm`` they already agree and this changes nothing). One all-reduce of
        the flattened buffers; a no-op outside distributed runs.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        world = torch.distributed.get_world_size()
        buffers = [b for b in self.module.buffers() if b.is_floating_point()]
        if world == 1 or not buffers:
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers])
        torch.distributed.all_reduce(flat)
        flat /= world
        torch._foreach_copy_(
            buffers,
            [
                chunk.view_as(b)
                for chunk, b in zip(torch.split(flat, [b.numel() for b in buffers]), buffers, strict=True)
            ],
        )
