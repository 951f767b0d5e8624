"""Switch ASDT's active teacher before every training batch, following the pulse-width wave."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from wsss_lightning.callbacks.step_logging import is_logging_step
from wsss_lightning.schedules import pw_duty, pw_phase

TeachingMode = Literal["alternate", "class", "seg", "max", "mean"]
TEACHING_MODES: tuple[str, ...] = ("alternate", "class", "seg", "max", "mean")

# state key -> option name in the method's configuration, for errors on a mismatching resume
_FIELDS = {"period": "pw.period", "tau": "pw.tau", "first": "pw.first", "mode": "teaching.mode"}


class PWWaveCallback(Callback):
    """Set ``pl_module.active_teacher`` before every training batch and log it.

    ``mode="alternate"`` is ASDT's alternate distillation (Zhang et al., IEEE TIP, Eq. 4; Table 4 row V): the
    attribute is :func:`~wsss_lightning.schedules.pw_phase` of ``trainer.global_step`` (``"class"`` or
    ``"seg"``). The ablation modes of Table 4 set their name every step: ``"class"`` (row I, class-teacher
    only), ``"seg"`` (row II, seg-teacher only), ``"max"`` / ``"mean"`` (rows III / IV, naive dual teacher).
    With gradient accumulation the batches of one optimizer step share its teacher.

    ``schedule/pw_class_teacher`` is logged on logging steps: 1.0 when the class-teacher alone is active, else
    0.0 (a Python float: no read from the device).

    The wave starts at the module's ``warmup_steps`` (an attribute; 0 when it has none), so its first ``T_h``
    distillation steps are the first level's whatever the warm-up's length. The wave is a function of the global
    step, which the checkpoint restores; the callback's state keeps the
    settings and the last step it set, and a resumed fit whose ``period`` / ``tau`` / ``first`` / ``mode``
    differ from the checkpoint's fails at the restore (the wave would jump) with an error naming the option.

    Args:
        period: ``T`` of the wave in optimizer steps (>= 2; ASDT 150).
        tau: duty ratio ``τ = T / T_h`` (> 1; ASDT 5).
        first: level of the wave's first ``T_h`` (``"class"``) or ``T − T_h`` (``"seg"``) steps.
        mode: ``"alternate"`` or one of the ablation modes above.
    """

    def __init__(
        self,
        period: int = 150,
        tau: float = 5.0,
        first: Literal["class", "seg"] = "class",
        mode: TeachingMode = "alternate",
    ) -> None:
        super().__init__()
        pw_duty(period, tau)  # errors name pw.period / pw.tau
        if first not in ("class", "seg"):
            raise ValueError(f"pw.first must be 'class' or 'seg', got {first!r}")
        if mode not in TEACHING_MODES:
            raise ValueError(
                f"teaching.mode must be one of {', '.join(map(repr, TEACHING_MODES))}, got {mode!r}"
            )
        self.period = period
        self.tau = float(tau)
        self.first: Literal["class", "seg"] = first
        self.mode: TeachingMode = mode
        self.last_step: int | None = None  # global step of the last batch the teacher was set for

    def teacher_at(self, step: int, start: int = 0) -> str:
        """The teacher active at optimizer step ``step`` of a wave that starts at step ``start``."""
        if self.mode == "alternate":
            return pw_phase(max(step - start, 0), self.period, self.tau, self.first)
        return self.mode

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # the wave starts when the distillation does: after the module's classification warm-up, if any
        teacher = self.teacher_at(step, int(getattr(pl_module, "warmup_steps", 0)))
        pl_module.active_teacher = teacher  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors
        self.last_step = step
        if is_logging_step(trainer):
            value = 1.0 if teacher == "class" else 0.0
            pl_module.log("schedule/pw_class_teacher", value, on_step=True, on_epoch=False, batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "tau": self.tau,
            "first": self.first,
            "mode": self.mode,
            "last_step": self.last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, option in _FIELDS.items():
            saved, now = state_dict.get(key), getattr(self, key)
            if saved is not None and saved != now:
                raise ValueError(
                    f"PWWaveCallback: {option} = {now!r}, but the checkpoint was trained with {option} = "
                    f"{saved!r}; resuming would make the teacher wave jump. Resume with {option} = {saved!r} "
                    "or start a new fit"
                )
        last = state_dict.get("last_step")
        self.last_step = int(last) if last is not None else None
