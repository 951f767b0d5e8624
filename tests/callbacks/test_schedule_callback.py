from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import MemoryLogger
from wsss_lightning.callbacks.schedule import ScheduleCallback, fit_boundaries, scaled_message, schedule_value
from wsss_lightning.schedules import linear_ramp


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)
        self.loss_fn = nn.Module()
        self.loss_fn.threshold = 0.0  # type: ignore[assignment]
        self.percent_unreliable = 20.0
        self.register_buffer("tau", torch.zeros(()))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Recorder(Callback):
    def __init__(self, path: str) -> None:
        self.path = path
        self.values: list[tuple[int, int, Any]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        owner = pl_module
        for name in self.path.split("."):
            owner = getattr(owner, name)
        value = owner.clone() if isinstance(owner, torch.Tensor) else owner
        self.values.append((trainer.current_epoch, trainer.global_step, value))


def fit(
    tmp_path: Path, schedule: ScheduleCallback, n: int = 8, **kwargs: Any
) -> tuple[Tiny, Recorder, MemoryLogger]:
    model, recorder, logger = Tiny(), Recorder(schedule.attribute), MemoryLogger()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=1,
        callbacks=[schedule, recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g))
    trainer.fit(model, DataLoader(data, batch_size=2))
    return model, recorder, logger


def test_u2pl_alpha_by_epoch(tmp_path: Path) -> None:
    schedule = ScheduleCallback("percent_unreliable", kind="linear", start=20.0, end=0.0, interval="epoch")
    model, recorder, logger = fit(tmp_path, schedule, max_epochs=4)  # 4 steps per epoch
    assert len(recorder.values) == 16
    for epoch, _, value in recorder.values:
        assert value == pytest.approx(linear_ramp(epoch, 4, 20.0, 0.0))
        assert value == pytest.approx(
            20.0 * (1 - epoch / 4)
        )  # U2PL train_semi.py: (100 - 80) * (1 - epoch / epochs)
    assert model.percent_unreliable == pytest.approx(5.0)
    logged = [
        (step, m["schedule/percent_unreliable"])
        for step, m in logger.metrics
        if "schedule/percent_unreliable" in m
    ]
    assert logged == [(s, pytest.approx(linear_ramp(s // 4, 4, 20.0, 0.0))) for s in range(16)]


def test_cosine_by_step_with_start_step(tmp_path: Path) -> None:
    schedule = ScheduleCallback(
        "loss_fn.threshold", kind="cosine", start=0.9, end=0.5, total_steps=4, start_step=2
    )
    model, recorder, _ = fit(tmp_path, schedule, max_steps=8)
    values = [v for _, _, v in recorder.values]
    expected = [0.9, 0.9] + [0.5 + 0.2 * (1 + math.cos(math.pi * k / 4)) for k in range(5)] + [0.5]
    assert values == pytest.approx(expected)
    assert [s for _, s, _ in recorder.values] == list(range(8))
    assert model.loss_fn.threshold == pytest.approx(0.5)


def test_tensor_attribute_is_filled_in_place(tmp_path: Path) -> None:
    schedule = ScheduleCallback("tau", kind="linear", start=1.0, end=0.0, total_steps=4)
    model, recorder, _ = fit(tmp_path, schedule, max_steps=3)
    assert [float(v) for _, _, v in recorder.values] == pytest.approx([1.0, 0.75, 0.5])
    assert isinstance(model.tau, torch.Tensor) and "tau" in dict(model.named_buffers())


def test_total_defaults_to_end_of_training(tmp_path: Path) -> None:
    schedule = ScheduleCallback("percent_unreliable", kind="linear", start=10.0, end=0.0)
    _, recorder, _ = fit(tmp_path, schedule, max_steps=5)
    assert [v for _, _, v in recorder.values] == pytest.approx([10.0, 8.0, 6.0, 4.0, 2.0])


def test_constant_and_pure_values() -> None:
    assert schedule_value("constant", 7, 10, 0.3, 0.9) == 0.3
    assert schedule_value("linear", -3, 10, 1.0, 0.0) == 1.0
    assert schedule_value("linear", 50, 10, 1.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="kind"):
        schedule_value("exp", 0, 10, 1.0, 0.0)  # type: ignore[arg-type]


def test_bad_arguments_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        ScheduleCallback("x", kind="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="total_steps"):
        ScheduleCallback("x", total_steps=0)
    with pytest.raises(AttributeError, match=r"'loss_fn.missing'.*has no attribute 'missing'"):
        fit(tmp_path, ScheduleCallback("loss_fn.missing"), max_steps=1)


def test_linear_ramp_gives_u2pl_percentages() -> None:
    # VOC: drop_percent 80 -> alpha_0 = 20, 80 epochs, t = epoch index (warm-up epoch included)
    assert linear_ramp(0, 80, 20.0, 0.0) == 20.0
    assert linear_ramp(1, 80, 20.0, 0.0) == pytest.approx(19.75)
    assert linear_ramp(79, 80, 20.0, 0.0) == pytest.approx(0.25)
    assert linear_ramp(100, 80, 20.0, 0.0) == 0.0
    assert linear_ramp(-5, 80, 20.0, 0.0) == 20.0
    assert linear_ramp(2500, 10_000, 20.0, 0.0) == pytest.approx(15.0)  # the iteration-wise variant


def test_per_element_end_values_follow_dupl_threshold_formula(tmp_path: Path) -> None:
    """DuPL Eq. 5 with the code's per-class ends: delta_c(s) = end_c + (start - end_c)(1 + cos(pi s / (N-1))) / 2."""
    ends = [0.55, 0.70, 0.60]
    schedule = ScheduleCallback("tau3", kind="cosine", start=0.7, end=ends, start_step=2, total_steps=4)

    class WithVector(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("tau3", torch.zeros(3))

    model, recorder = WithVector(), Recorder("tau3")
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[schedule, recorder], max_steps=8,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)),
                                  batch_size=2))  # fmt: skip
    for _, step, value in recorder.values:
        s = min(max(step - 2, 0), 4)
        expected = [e + (0.7 - e) * (1 + math.cos(math.pi * s / 4)) / 2 for e in ends]
        torch.testing.assert_close(value, torch.tensor(expected))
    torch.testing.assert_close(model.tau3, torch.tensor(ends))


def test_per_element_end_values_must_match_the_attribute(tmp_path: Path) -> None:
    schedule = ScheduleCallback("tau", kind="cosine", start=0.7, end=[0.5, 0.6])
    with pytest.raises(ValueError, match="end has 2 values"):
        fit(tmp_path, schedule, max_steps=2)


def test_epoch_schedule_of_a_max_steps_run_ends_with_the_run(tmp_path: Path) -> None:
    """max_steps alone (max_epochs unset) used to fail naming total_steps; the run's epochs are the length."""
    schedule = ScheduleCallback("percent_unreliable", kind="linear", start=20.0, end=0.0, interval="epoch")
    _, recorder, _ = fit(tmp_path, schedule, max_steps=10)  # 4 steps per epoch: epochs 0, 1, 2
    assert [v for _, _, v in recorder.values] == pytest.approx(
        [20.0] * 4 + [20.0 * 2 / 3] * 4 + [20.0 / 3] * 2
    )


def test_retime_moves_the_schedule_before_the_first_batch(tmp_path: Path) -> None:
    schedule = ScheduleCallback("loss_fn.threshold", kind="linear", start=1.0, end=0.0, start_step=100)
    schedule.retime(2, 4)
    _, recorder, _ = fit(tmp_path, schedule, max_steps=7)
    assert [v for _, _, v in recorder.values] == pytest.approx([1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match="total_steps must be positive"):
        schedule.retime(0, 0)


def test_fit_boundaries_scales_only_a_schedule_longer_than_the_run() -> None:
    phases = {"seg_start": 200, "noise_filter_start": 400, "ptc_start": 0}
    assert fit_boundaries(phases, 600) == phases  # fits: untouched
    assert fit_boundaries(phases, 10) == {"seg_start": 3, "noise_filter_start": 6, "ptc_start": 0}
    assert fit_boundaries({"ramp": 11}, 5) == {"ramp": 3}
    # a run too short to keep them apart still keeps distinct boundaries in strict order
    one = fit_boundaries({"a": 0, "b": 2000, "c": 2000, "d": 8000}, 1)
    assert one == {"a": 0, "b": 1, "c": 1, "d": 2}
    message = scaled_message("M", "step", 10, phases, fit_boundaries(phases, 10))
    assert message.startswith("M: schedule scaled to the run's 10 steps")
    assert "seg_start 200 -> 3, noise_filter_start 400 -> 6" in message and "ptc_start" not in message
