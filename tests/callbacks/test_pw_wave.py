from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import HostSyncCheck, MemoryLogger
from wsss_lightning.callbacks import PWWaveCallback
from wsss_lightning.callbacks.pw_wave import TeachingMode
from wsss_lightning.schedules import pw_phase


class Student(L.LightningModule):
    """Records the teacher the callback set for every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)
        self.active_teacher = "unset"
        self.seen: list[tuple[int, str]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.trainer.global_step, self.active_teacher))
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(
    root: Path,
    callback: PWWaveCallback,
    max_steps: int,
    ckpt_path: Path | None = None,
    extra_callbacks: tuple[Callback, ...] = (),
    **kwargs: Any,
) -> tuple[Student, L.Trainer, MemoryLogger]:
    model, logger = Student(), MemoryLogger()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=logger,
        callbacks=[*extra_callbacks, callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(10, 4, generator=g), torch.randn(10, 2, generator=g))
    trainer.fit(model, DataLoader(data, batch_size=2), ckpt_path=ckpt_path)  # 5 batches per epoch
    return model, trainer, logger


def test_alternate_mode_follows_the_wave_and_logs_it_without_host_reads(tmp_path: Path) -> None:
    check = HostSyncCheck()
    model, _, logger = fit(
        tmp_path,
        PWWaveCallback(period=5, tau=2.5),
        max_steps=12,
        extra_callbacks=(check,),
        log_every_n_steps=1,
    )
    assert check.checked_steps == 12
    expected = [pw_phase(t, 5, 2.5) for t in range(12)]
    assert expected[:5] == ["class", "class", "seg", "seg", "seg"]
    assert model.seen == list(enumerate(expected))
    logged = [
        (step, m["schedule/pw_class_teacher"])
        for step, m in logger.metrics
        if "schedule/pw_class_teacher" in m
    ]
    assert logged == [(t, 1.0 if teacher == "class" else 0.0) for t, teacher in enumerate(expected)]


def test_logs_on_logging_steps_only(tmp_path: Path) -> None:
    _, _, logger = fit(tmp_path, PWWaveCallback(period=5, tau=2.5), max_steps=12, log_every_n_steps=4)
    steps = [step for step, m in logger.metrics if "schedule/pw_class_teacher" in m]
    assert steps == [3, 7, 11]


@pytest.mark.parametrize("mode", ["class", "seg", "max", "mean"])
def test_ablation_modes_set_their_teacher_every_step(tmp_path: Path, mode: TeachingMode) -> None:
    callback = PWWaveCallback(period=5, tau=2.5, mode=mode)
    model, _, logger = fit(tmp_path, callback, max_steps=6, log_every_n_steps=1)
    assert model.seen == [(t, mode) for t in range(6)]
    logged = {m["schedule/pw_class_teacher"] for _, m in logger.metrics if "schedule/pw_class_teacher" in m}
    assert logged == {1.0 if mode == "class" else 0.0}


def test_gradient_accumulation_keeps_one_teacher_per_optimizer_step(tmp_path: Path) -> None:
    model, _, _ = fit(tmp_path, PWWaveCallback(period=3, tau=3.0), max_steps=4, accumulate_grad_batches=2)
    # 5 batches per epoch: the epoch's last batch steps alone
    assert [step for step, _ in model.seen] == [0, 0, 1, 1, 2, 3, 3]
    assert [teacher for _, teacher in model.seen] == ["class"] * 2 + ["seg"] * 3 + ["class"] * 2


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_resumed_fit_continues_the_same_sequence(tmp_path: Path) -> None:
    straight, _, _ = fit(tmp_path / "straight", PWWaveCallback(period=5, tau=2.5, first="seg"), max_steps=14)

    first, trainer, _ = fit(tmp_path / "resumed", PWWaveCallback(period=5, tau=2.5, first="seg"), max_steps=7)
    checkpoint = tmp_path / "resumed" / "mid.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert torch.load(checkpoint, weights_only=False)["callbacks"]["PWWaveCallback"] == {
        "period": 5, "tau": 2.5, "first": "seg", "mode": "alternate", "last_step": 6,
    }  # fmt: skip
    callback = PWWaveCallback(period=5, tau=2.5, first="seg")
    second, _, _ = fit(tmp_path / "resumed", callback, max_steps=14, ckpt_path=checkpoint)

    assert [step for step, _ in second.seen] == list(range(7, 14))
    assert first.seen + second.seen == straight.seen
    assert straight.seen == [(t, pw_phase(t, 5, 2.5, "seg")) for t in range(14)]
    assert callback.last_step == 13


@pytest.mark.parametrize(
    ("changed", "option"),
    [
        ({"period": 6}, "pw.period = 6, but the checkpoint was trained with pw.period = 5"),
        ({"tau": 2.0}, "pw.tau = 2.0, but the checkpoint was trained with pw.tau = 2.5"),
        ({"first": "seg"}, "pw.first = 'seg', but the checkpoint was trained with pw.first = 'class'"),
        (
            {"mode": "mean"},
            "teaching.mode = 'mean', but the checkpoint was trained with teaching.mode = 'alternate'",
        ),
    ],
)
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_mismatching_resume_names_the_option(tmp_path: Path, changed: dict[str, Any], option: str) -> None:
    _, trainer, _ = fit(tmp_path, PWWaveCallback(period=5, tau=2.5), max_steps=3)
    checkpoint = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(checkpoint)
    settings: dict[str, Any] = {"period": 5, "tau": 2.5, **changed}
    with pytest.raises(ValueError, match=option):
        fit(tmp_path, PWWaveCallback(**settings), max_steps=6, ckpt_path=checkpoint)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"period": 1}, "pw.period must be an integer >= 2"),
        ({"tau": 1.0}, "pw.tau must be a finite number > 1"),
        ({"first": "student"}, "pw.first must be 'class' or 'seg'"),
        (
            {"mode": "both"},
            "teaching.mode must be one of 'alternate', 'class', 'seg', 'max', 'mean', got 'both'",
        ),
    ],
)
def test_invalid_settings_name_the_option(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PWWaveCallback(**kwargs)


def test_the_wave_starts_after_the_modules_warmup() -> None:
    """With a classification warm-up the first distillation steps are the first level's (class-teacher)."""
    callback = PWWaveCallback(period=10, tau=5.0)
    assert [callback.teacher_at(s, start=7) for s in range(7, 17)] == ["class"] * 2 + ["seg"] * 8
    assert [callback.teacher_at(s) for s in range(10)] == ["class"] * 2 + ["seg"] * 8
