"""Non-finite losses and weights: what a method does when training diverges.

A diverging run (a learning rate far too high, a loss that takes the log of zero) produces NaN or infinite
losses and, one optimizer step later, NaN weights. Left alone it runs on, logs NaN figures, overwrites its
checkpoints with NaN weights and ends with exit status 0. :class:`SegmentationMethod` uses the pieces here to
stop it instead (or to skip such steps, up to a limit) and never to write a checkpoint with non-finite weights.

The loss values of each step stay on the device (:class:`LossWatch`); they are copied to the host only at a
few moments (logging steps, before a checkpoint is written, at the end of training), so a training step reads
nothing on the host.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "LossWatch",
    "NonFiniteConfig",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "first_nonfinite_tensor",
    "loss_terms",
]

#: steps whose values may wait on the device before they are read even without a logging step
MAX_PENDING_STEPS = 256


class NonFiniteLossError(RuntimeError):
    """A training loss (or one of its terms) was NaN or infinite."""


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint was about to be written with NaN or infinite weights."""


@dataclass
class NonFiniteConfig:
    """What training does with a non-finite (NaN or infinite) loss.

    Attributes:
        action: ``stop`` (default): the run fails naming the first step and the loss terms that were not
            finite. The values are read on the host only on logging steps (``trainer.log_every_n_steps``),
            before a checkpoint is written and at the end of training, so the run may go on for up to one log
            interval after the bad step; no checkpoint is written from it. ``skip``: a step whose loss is not
            finite makes no update (its backward pass is not run; under fp16 AMP the gradient scaler drops the
            step), is counted and logged as ``train/skipped_steps``, and the run fails once more than
            ``max_skipped`` steps were skipped. Like AMP's gradient scaler, ``skip`` reads one value on the host
            every step (and, under DDP, reduces it over the processes), which stalls an accelerator's queue
            once per step. State a step changes in its forward pass (BatchNorm statistics, memory banks) is not
            rolled back; with gradient accumulation only the bad micro-batch is left out.
        max_skipped: ``skip``: most steps skipped before the run fails.
    """

    action: Literal["stop", "skip"] = "stop"
    max_skipped: int = 10

    def __post_init__(self) -> None:
        if self.action not in ("stop", "skip"):
            raise ValueError(f"nonfinite.action must be 'stop' or 'skip', got {self.action!r}")
        if self.max_skipped < 0:
            raise ValueError(f"nonfinite.max_skipped must be >= 0, got {self.max_skipped}")


def loss_terms(
    loss: Tensor, terms: Mapping[str, Tensor] | None, total: str = "train/loss"
) -> dict[str, Tensor]:
    """The loss terms among a step's logged values, with the total loss last.

    Args:
        loss: the step's total loss.
        terms: the step's logged values; those whose last key part starts with ``loss`` are loss terms (other
            logged values, such as pseudo-label diagnostics, are not).
        total: the name of the total loss.

    Returns:
        ``{name: value}``, each value a detached tensor.
    """
    named = {
        name: value.detach()
        for name, value in (terms or {}).items()
        if name != total and name.rsplit("/", 1)[-1].startswith("loss")
    }
    named[total] = loss.detach()
    return named


def _describe(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


class LossWatch:
    """The loss values of recent training steps, kept on the device until :meth:`first_nonfinite` reads them."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, tuple[str, ...], Tensor]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, step: int, terms: Mapping[str, Tensor]) -> None:
        """Keep the values of ``terms`` (0-d tensors) of global step ``step``; no host read."""
        values = torch.stack([value.float().sum() for value in terms.values()])
        self._pending.append((step, tuple(terms), values))

    def clear(self) -> None:
        """Drop the pending values unread."""
        self._pending.clear()

    def first_nonfinite(self) -> tuple[int, dict[str, str]] | None:
        """Read the pending values (one host copy) and forget them.

        Returns:
            ``(step, {term: "nan" | "inf" | "-inf"})`` of the first step with a non-finite term, or None.
        """
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        host = torch.cat([values.reshape(-1) for _, _, values in pending]).cpu().tolist()
        start = 0
        for step, names, values in pending:
            row = host[start : start + values.numel()]
            start += values.numel()
            bad = {name: _describe(v) for name, v in zip(names, row, strict=True) if not math.isfinite(v)}
            if bad:
                return step, bad
        return None


def nonfinite_loss_message(step: int, bad: Mapping[str, str]) -> str:
    """The error of :class:`NonFiniteLossError` for the terms ``bad`` (name -> nan / inf) at ``step``."""
    listed = ", ".join(f"{name} is {kind}" for name, kind in bad.items())
    return (
        f"non-finite loss: {listed} at step {step}; lower the learning rate (model.init_args.optim.lr) or "
        "add warm-up (optim.warmup_steps), check the data, or set model.init_args.nonfinite.action=skip to "
        "skip such steps"
    )


def first_nonfinite_tensor(tensors: Mapping[str, Tensor]) -> str | None:
    """Name of the first floating-point tensor of ``tensors`` holding a NaN or infinite value, or None.

    One host read per device: the per-tensor checks are stacked before they are copied.
    """
    named = [
        (name, t)
        for name, t in tensors.items()
        if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())
    ]
    if not named:
        return None
    checks = [torch.isfinite(t.detach()).all() for _, t in named]
    device = checks[0].device
    finite = torch.stack([c.to(device) for c in checks]).cpu().tolist()
    return next((name for (name, _), ok in zip(named, finite, strict=True) if not ok), None)
