"""Non-finite losses and weights: the watch, the checkpoint refusal, ``skip`` mode and finite runs."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.methods import tiny
from wsss_lightning.cli import run_cli
from wsss_lightning.methods import (
    NonFiniteConfig,
    NonFiniteLossError,
    NonFiniteWeightsError,
    SupervisedModule,
)
from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.nonfinite import LossWatch, first_nonfinite_tensor, loss_terms

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "supervised" / "synthetic_voc.yaml"


def test_loss_watch_names_the_first_bad_step_and_its_terms() -> None:
    watch = LossWatch()
    watch.record(0, {"train/loss_a": torch.tensor(1.0), "train/loss": torch.tensor(2.0)})
    watch.record(1, {"train/loss_a": torch.tensor(float("nan")), "train/loss": torch.tensor(float("inf"))})
    watch.record(2, {"train/loss": torch.tensor(float("-inf"))})
    assert watch.first_nonfinite() == (1, {"train/loss_a": "nan", "train/loss": "inf"})
    assert len(watch) == 0 and watch.first_nonfinite() is None


def test_loss_terms_keeps_loss_entries_and_the_total_last() -> None:
    terms = {"train/loss_seg": torch.tensor(1.0), "train/noise_fraction": torch.tensor(0.5)}
    assert list(loss_terms(torch.tensor(3.0), terms)) == ["train/loss_seg", "train/loss"]


def test_first_nonfinite_tensor() -> None:
    good = {"a": torch.ones(3), "steps": torch.tensor([1, 2])}
    assert first_nonfinite_tensor(good) is None
    assert (
        first_nonfinite_tensor(
            {**good, "b": torch.tensor([0.0, float("inf")]), "c": torch.full((2,), torch.nan)}
        )
        == "b"
    )


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match=r"nonfinite\.action"):
        NonFiniteConfig(action="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"nonfinite\.max_skipped"):
        NonFiniteConfig(max_skipped=-1)


def test_checkpoint_with_nonfinite_weights_is_refused() -> None:
    model = SupervisedModule(encoder="resnet18", num_classes=3)
    with torch.no_grad():
        model.network.net.encoder.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(
        NonFiniteWeightsError, match=r"at step \?: network\.net\.encoder\.conv1\.weight holds NaN"
    ):
        model.on_save_checkpoint({"state_dict": model.state_dict()})


def _args(root: Path, steps: int, *extra: str) -> list[str]:
    checkpoint = (
        '--trainer.callbacks=[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
        '{"dirpath": "ckpts", "every_n_train_steps": 1, "save_top_k": 0, "save_last": true}}]'
    )
    return [
        "fit", "--config", str(CONFIG), "--data.source.root", str(root), "--model.init_args.encoder=resnet18",
        *tiny.SMALL_BATCHES, *tiny.CPU, f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
        "--model.init_args.optim.warmup_steps=0", checkpoint, "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir=logs", *extra,
    ]  # fmt: skip


def _logged(key: str) -> list[float]:
    values = []
    for path in Path("logs").rglob("metrics.csv"):
        with path.open() as f:
            values += [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    return values


def _nan_logits_at(monkeypatch: pytest.MonkeyPatch, bad: Callable[[int], bool]) -> None:
    """Make the segmentation logits NaN at the training steps ``bad`` says (the weights stay finite)."""
    forward = SupervisedModule.forward

    def patched(self: SupervisedModule, images: torch.Tensor) -> torch.Tensor:
        logits = forward(self, images)
        return logits * float("nan") if self.training and bad(self.global_step) else logits

    monkeypatch.setattr(SupervisedModule, "forward", patched)


def test_skip_mode_skips_counts_and_logs(
    synthetic: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _nan_logits_at(monkeypatch, lambda step: step in (1, 3))
    skip = ["--model.init_args.nonfinite.action=skip", "--model.init_args.nonfinite.max_skipped=2"]
    with pytest.warns(UserWarning, match=r"skipping step 1 \(non-finite loss: train/loss is nan at step 1\)"):
        cli = run_cli(_args(synthetic("voc"), 5, *skip))
    assert cli.trainer.global_step == 5
    assert _logged("train/skipped_steps") == [0.0, 1.0, 1.0, 2.0, 2.0]
    state = torch.load("ckpts/last.ckpt", map_location="cpu", weights_only=False)
    assert state["nonfinite_skipped_steps"] == 2 and first_nonfinite_tensor(state["state_dict"]) is None


def test_skip_mode_stops_past_the_limit(
    synthetic: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _nan_logits_at(monkeypatch, lambda step: step >= 1)
    skip = ["--model.init_args.nonfinite.action=skip", "--model.init_args.nonfinite.max_skipped=2"]
    with pytest.raises(
        NonFiniteLossError, match=r"3 training steps were skipped .*max_skipped = 2 .* at step 3\)"
    ):
        run_cli(_args(synthetic("voc"), 10, *skip))
    for ckpt in Path("ckpts").glob("*.ckpt"):  # a skipped step makes no update
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert first_nonfinite_tensor(state) is None, ckpt


def test_stop_mode_names_the_first_bad_step(
    synthetic: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _nan_logits_at(monkeypatch, lambda step: step >= 2)
    with pytest.raises(NonFiniteLossError, match=r"train/loss is nan at step 2; lower the learning rate"):
        run_cli(_args(synthetic("voc"), 6, "--trainer.log_every_n_steps=4"))


def _fit_weights(
    root: Path, folder: Path, monkeypatch: pytest.MonkeyPatch, *extra: str
) -> dict[str, torch.Tensor]:
    folder.mkdir()
    monkeypatch.chdir(folder)
    cli = run_cli(_args(root, 2, *extra))
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def test_finite_run_is_unaffected(
    synthetic: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = synthetic("voc")
    stop = _fit_weights(root, tmp_path / "stop", monkeypatch)
    skip = _fit_weights(root, tmp_path / "skip", monkeypatch, "--model.init_args.nonfinite.action=skip")
    # the same run without any of the guard's hooks
    with monkeypatch.context() as m:
        m.setattr(SegmentationMethod, "backward", L.LightningModule.backward)
        m.setattr(SegmentationMethod, "_check_losses", lambda self: None)
        m.setattr(LossWatch, "record", lambda self, step, terms: None)
        plain = _fit_weights(root, tmp_path / "plain", monkeypatch)
    for name in plain:
        torch.testing.assert_close(stop[name], plain[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(skip[name], plain[name], rtol=0, atol=0, msg=name)
