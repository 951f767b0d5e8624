from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import Interrupt, InterruptAtStep
from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.schedules import ema_decay_ramp
from wsss_lightning.teachers import EMATeacher

# the teacher is in eval mode on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")


class Tiny(L.LightningModule):
    """A student with BN, its EMA teacher, and a teacher train-mode forward per batch (as U2PL does)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        self.teacher = EMATeacher(self.student)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        with torch.no_grad(), self.teacher.train_mode():
            self.teacher(x)
        return F.mse_loss(self.student(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def loader(n: int, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)), batch_size
    )


def flat(module: nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).numpy().copy()


class Recorder(Callback):
    """Snapshots after every batch (runs after the EMA callback, which comes first in the list)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        decay = trainer.callback_metrics.get("teacher/decay")
        self.rows.append(
            {
                "step": trainer.global_step,
                "decay": None if decay is None else float(decay),
                "teacher": flat(pl_module.teacher),
                "student": flat(pl_module.student),
            }
        )


def trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "log_every_n_steps": 1,  # the decay reaches the logged metrics on logging steps
    }
    return L.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def run(
    tmp_path: Path, ema: EMATeacherCallback, n: int = 8, **kwargs: Any
) -> tuple[Tiny, list[dict[str, Any]], np.ndarray]:
    model = Tiny()
    initial_teacher = flat(model.teacher)
    recorder = Recorder()
    trainer(tmp_path, [ema, recorder], **kwargs).fit(model, loader(n))
    return model, recorder.rows, initial_teacher


def check_against_reference(rows: list[dict[str, Any]], initial: np.ndarray, decays: list[float]) -> None:
    """NumPy reference: teacher_i = d_i * teacher_{i-1} + (1 - d_i) * student after step i."""
    teacher = initial.astype(np.float64)
    for row, d in zip(rows, decays, strict=True):
        teacher = d * teacher + (1 - d) * row["student"]
        np.testing.assert_allclose(row["teacher"], teacher, rtol=1e-5, atol=1e-6)


def test_ramp_values_and_no_update_during_warmup(tmp_path: Path) -> None:
    ema = EMATeacherCallback(decay=0.9, warmup_steps=2, copy_at_warmup_end=False)
    model, rows, initial = run(tmp_path, ema, max_steps=6)
    expected = [1.0, 1.0] + [ema_decay_ramp(k, 0.9) for k in range(4)]
    assert expected[2:] == pytest.approx([0.0, 0.5, 2 / 3, 0.75])
    assert [r["decay"] for r in rows] == pytest.approx(expected)
    np.testing.assert_array_equal(rows[1]["teacher"], initial)  # untouched during warm-up
    check_against_reference(rows, initial, expected)
    assert not model.teacher.training and all(p.grad is None for p in model.teacher.parameters())


def test_daformer_ramp_starts_at_one_half(tmp_path: Path) -> None:
    # DAFormer: the teacher is the initial student, the first update (after step 0) averages with 0.5
    ema = EMATeacherCallback(decay=0.999, warmup_steps=0, copy_at_warmup_end=False, ramp_offset=1)
    _, rows, initial = run(tmp_path, ema, max_steps=4)
    expected = [0.5, 2 / 3, 0.75, 0.8]
    assert [r["decay"] for r in rows] == pytest.approx(expected)
    check_against_reference(rows, initial, expected)
    with pytest.raises(ValueError, match="ramp_offset"):
        EMATeacherCallback(ramp_offset=-1)


def test_constant_decay_without_ramp(tmp_path: Path) -> None:
    _, rows, initial = run(
        tmp_path, EMATeacherCallback(decay=0.8, ramp=False, copy_at_warmup_end=False), max_steps=3
    )
    assert [r["decay"] for r in rows] == pytest.approx([0.8] * 3)
    check_against_reference(rows, initial, [0.8] * 3)


def test_copy_phase_after_warmup(tmp_path: Path) -> None:
    # U2PL: warm-up epoch, then a copy epoch, then EMA with k counted from the end of warm-up
    ema = EMATeacherCallback(decay=0.99, warmup_epochs=1, copy_at_warmup_end=True)
    _, rows, initial = run(tmp_path, ema, n=8, max_steps=10)  # 4 steps per epoch
    assert ema.phases(None) == (4, 4)  # type: ignore[arg-type]  # resolved from the 4 steps per epoch
    expected = [1.0] * 4 + [0.0] * 4 + [ema_decay_ramp(4, 0.99), ema_decay_ramp(5, 0.99)]
    assert [r["decay"] for r in rows] == pytest.approx(expected)
    check_against_reference(rows, initial, expected)
    for row in rows[4:8]:
        np.testing.assert_array_equal(row["teacher"], row["student"])


class BNAtWarmupEnd(Callback):
    """Teacher and student BN running means right after the EMA callback's batch-start hook at step 2."""

    def __init__(self) -> None:
        self.seen: tuple[np.ndarray, np.ndarray] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 2:
            bn_t, bn_s = pl_module.teacher.module[1], pl_module.student[1]
            self.seen = (bn_t.running_mean.numpy().copy(), bn_s.running_mean.numpy().copy())


@pytest.mark.parametrize("copy_buffers", [False, True])
def test_warmup_end_copies_bn_statistics_only_when_asked(tmp_path: Path, copy_buffers: bool) -> None:
    ema = EMATeacherCallback(warmup_steps=2, copy_at_warmup_end=True, copy_steps=2,
                             copy_buffers_at_warmup_end=copy_buffers)  # fmt: skip
    probe = BNAtWarmupEnd()
    trainer(tmp_path, [ema, probe], max_steps=3).fit(Tiny(), loader(8))
    assert probe.seen is not None
    teacher_mean, student_mean = probe.seen
    # the teacher's own statistics come from train-mode forwards of its untrained weights: they differ
    assert np.array_equal(teacher_mean, student_mean) == copy_buffers


class WeightsAtStep(Callback):
    """Teacher and student parameters right after the EMA callback's batch-start hook at ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.seen: tuple[np.ndarray, np.ndarray] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.seen = (flat(pl_module.teacher), flat(pl_module.student))


@pytest.mark.parametrize("warmup", [0, 2])
def test_first_pseudo_labels_after_a_warmup_come_from_the_student_without_a_copy_phase(
    tmp_path: Path, warmup: int
) -> None:
    # without a copy phase the teacher still starts from the student after a warm-up (its own weights were never
    # trained); with no warm-up it keeps its initial weights until the first update (DAFormer, AEL)
    ema = EMATeacherCallback(decay=0.9, warmup_steps=warmup, copy_at_warmup_end=False)
    probe = WeightsAtStep(warmup)
    model = Tiny()
    initial = flat(model.teacher)
    trainer(tmp_path, [ema, probe], max_steps=warmup + 1).fit(model, loader(8))
    assert probe.seen is not None
    teacher, student = probe.seen
    if warmup:
        np.testing.assert_array_equal(teacher, student)
        assert not np.array_equal(teacher, initial)
    else:
        np.testing.assert_array_equal(teacher, initial)


def test_updates_only_on_optimizer_steps_with_accumulation(tmp_path: Path) -> None:
    ema = EMATeacherCallback(decay=0.9, warmup_steps=1, copy_steps=1)
    _, rows, initial = run(tmp_path, ema, n=8, max_epochs=2, accumulate_grad_batches=2)
    assert [r["step"] for r in rows] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert ema._resolved == (1, 1)
    step_rows = rows[1::2]  # batches that ended an accumulation window
    previous_teacher = initial
    for accumulating, stepped in zip(rows[0::2], step_rows, strict=True):
        if accumulating["step"] == 1:  # end of warm-up: the teacher was set to the student before the batch
            np.testing.assert_array_equal(accumulating["teacher"], accumulating["student"])
        else:  # mid-accumulation: no optimizer step, so the teacher did not move
            np.testing.assert_array_equal(accumulating["teacher"], previous_teacher)
        previous_teacher = stepped["teacher"]
    expected = [1.0, 0.0, ema_decay_ramp(1, 0.9), ema_decay_ramp(2, 0.9)]  # k = step - warm-up
    assert [r["decay"] for r in step_rows] == pytest.approx(expected)
    check_against_reference(step_rows, initial, expected)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resume_is_exact(tmp_path: Path) -> None:
    def callbacks(ckpt_dir: Path) -> list[Callback]:
        return [
            EMATeacherCallback(decay=0.9, warmup_steps=2, copy_steps=1),
            ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_last=True, save_top_k=-1),
        ]

    common: dict[str, Any] = {"max_steps": 4, "deterministic": True, "enable_checkpointing": True}
    straight = Tiny()
    trainer(tmp_path / "a", callbacks(tmp_path / "a"), **common).fit(straight, loader(4))

    interrupted = Tiny()
    with pytest.raises(Interrupt):
        trainer(tmp_path / "b", [*callbacks(tmp_path / "b"), InterruptAtStep(2)], **common).fit(
            interrupted, loader(4)
        )
    resumed = Tiny()
    resumed_trainer = trainer(tmp_path / "b", callbacks(tmp_path / "b"), **common)
    resumed_trainer.fit(resumed, loader(4), ckpt_path=tmp_path / "b" / "last.ckpt")
    assert resumed_trainer.global_step == 4

    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # teacher parameters and the teacher's own BN statistics
    assert not np.array_equal(flat(straight.teacher), flat(Tiny().teacher))  # the teacher did move


def test_resume_keeps_the_checkpoints_lengths_unless_the_settings_changed() -> None:
    saved = EMATeacherCallback(warmup_epochs=1, copy_at_warmup_end=True)
    saved._resolved = (4, 4)  # resolved with 4 steps per epoch
    state = saved.state_dict()

    class Steps:  # a trainer now running 6 steps per epoch (e.g. another device count)
        num_training_batches, accumulate_grad_batches = 6, 1

    same = EMATeacherCallback(warmup_epochs=1, copy_at_warmup_end=True)
    same.load_state_dict(state)
    with pytest.warns(UserWarning, match="steps per epoch changed"):
        assert same.phases(Steps()) == (4, 4)  # type: ignore[arg-type]

    no_copy = EMATeacherCallback(warmup_epochs=1, copy_at_warmup_end=False)
    no_copy.load_state_dict(state)
    with pytest.warns(UserWarning, match="settings changed"):
        assert no_copy.phases(Steps()) == (6, 0)  # type: ignore[arg-type]


def test_bad_configuration_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exclusive"):
        EMATeacherCallback(warmup_steps=2, warmup_epochs=1)
    with pytest.raises(ValueError, match="decay"):
        EMATeacherCallback(decay=1.5)
    with pytest.raises(AttributeError, match="'ema_teacher'"):
        run(tmp_path, EMATeacherCallback(teacher_attr="ema_teacher"), max_steps=1)
    with pytest.raises(TypeError, match="must be an EMATeacher"):
        run(tmp_path, EMATeacherCallback(teacher_attr="student"), max_steps=1)


def test_seminar_eq1_teacher_is_the_running_mean_of_student_iterates(tmp_path: Path) -> None:
    # Seminar Eq. 1: a_t = min(1 - 1/t, alpha) after optimizer step t = 1, 2, ...: for t <= 1/(1 - alpha) the
    # teacher is the uniform average of theta_1..theta_t (the initial weights drop out at t = 1)
    ema = EMATeacherCallback(decay=0.75, ramp=True, warmup_steps=0, copy_at_warmup_end=False)
    _, rows, initial = run(tmp_path, ema, max_steps=6)
    expected = [min(1 - 1 / t, 0.75) for t in range(1, 7)]
    assert [r["decay"] for r in rows] == pytest.approx(expected)
    check_against_reference(rows, initial, expected)
    for t in range(1, 5):  # a_t = 1 - 1/t <= 0.75 up to t = 4
        mean = np.mean([r["student"] for r in rows[:t]], axis=0)
        np.testing.assert_allclose(rows[t - 1]["teacher"], mean, rtol=1e-5, atol=1e-6)
