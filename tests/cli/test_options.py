"""Options the CLI cannot honour are refused in one line; short runs scale the methods' schedules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_cli import CONFIGS, tiny_args
from tests.methods import tiny
from wsss_lightning import demo
from wsss_lightning.cli import run_cli

SUPERVISED = CONFIGS / "supervised" / "synthetic_voc.yaml"
QUICKSTART = CONFIGS / "quickstart.yaml"

#: the quickstart's DuPL at test size, its schedule (seg_start 200, noise_filter_start 400) as configured
DUPL_SMALL = [
    a for a in tiny.DUPL if not a.startswith(("--model.init_args.phases", "--model.init_args.optim.warmup"))
]


def quickstart_args(root: Path, steps: int = 10) -> list[str]:
    """The quickstart config at test size on CPU, its schedule as configured, ``steps`` optimizer steps."""
    return [
        "--config", str(QUICKSTART), "--data.source.root", str(root), *tiny.CPU, *DUPL_SMALL,
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=1",
    ]  # fmt: skip


def _config_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """Run ``args``, expect exit status 2 and return the last line of stderr."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) <= 4, lines  # a usage hint and the message, not the whole usage and a Namespace dump
    return lines[-1]


def test_parse_errors_end_with_the_message(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *tiny_args(SUPERVISED, synthetic("voc"))]
    assert (
        _config_error(capsys, [*args, "--trainer.bogus=1"])
        == "error: unrecognized arguments: --trainer.bogus=1"
    )
    last = _config_error(capsys, [*args, "--trainer.max_steps=abc"])
    assert last.startswith('error: Parser key "trainer.max_steps":') and "Got value: abc" in last
    last = _config_error(capsys, [*args, "-c", "missing.yaml"])
    assert "missing.yaml" in last and "does not exist" in last


def test_option_checks_at_instantiation_end_with_their_message(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *quickstart_args(synthetic("voc"))]
    last = _config_error(capsys, [*args, "--model.init_args.phases.seg_start=-5"])
    assert last == "error: DuPLModule: phases.seg_start = -5; expected >= 0"


def test_optimizer_and_lr_scheduler_are_refused(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *tiny_args(SUPERVISED, synthetic("voc"))]
    for option in ("--optimizer=Adam", "--lr_scheduler=ConstantLR"):
        last = _config_error(capsys, [*args, option])
        assert (
            last.startswith(f"error: {option.split('=')[0]} is not supported")
            and "model.init_args.optim" in last
        )


def test_linked_model_arguments_must_agree_with_the_dataset(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_args(SUPERVISED, synthetic("voc"))
    last = _config_error(capsys, ["fit", *args, "--model.init_args.num_classes=5"])
    assert last == (
        "error: model.init_args.num_classes = 5 but it is set from the dataset (data.num_classes = 21); "
        "remove model.init_args.num_classes from the config / command line"
    )
    last = _config_error(capsys, ["fit", *args, "--model.init_args.ignore_index=0"])
    assert "data.ignore_index = 255" in last
    # a value that agrees with the data is honoured
    cli = run_cli(
        [*args, "--model.init_args.num_classes=21", "--model.init_args.image_std=[0.229,0.224,0.225]"],
        run=False,
    )
    assert cli.model.num_classes == 21


def _scaled_line(text: str) -> list[str]:
    return [line for line in text.splitlines() if "schedule scaled to the run's" in line]


@pytest.mark.parametrize("length", [["--trainer.max_steps=10"], ["--trainer.fast_dev_run=1"]])
def test_dupl_short_run_scales_its_phases(length, synthetic, tmp_path, monkeypatch, caplog):
    """The quickstart's 600-step schedule in a 10-step run (or fast_dev_run) used to fail naming
    threshold.start_step; the phases are scaled to the run and the change is reported in one line."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", *quickstart_args(synthetic("voc")), *length]
    with caplog.at_level("INFO"):
        cli = run_cli(args)
    (line,) = _scaled_line(caplog.text)
    steps = cli.trainer.global_step
    assert steps == (10 if "max_steps" in length[0] else 1)
    if steps == 10:
        assert "phases.seg_start 200 -> 3, phases.noise_filter_start 400 -> 6" in line
        assert cli.model.phases.seg_start == 3 and cli.model.hparams["phases"]["seg_start"] == 200
    schedule = cli.model._threshold_schedule
    assert (
        schedule.start_step == cli.model.phases.seg_start
        and schedule.start_step + schedule.total_steps <= max(steps, schedule.start_step + 1)
    )


def test_dupl_schedule_that_fits_is_untouched(synthetic, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    args = ["fit", *quickstart_args(synthetic("voc"), steps=4), *tiny.DUPL]  # seg_start 1, noise 3
    with caplog.at_level("INFO"):
        cli = run_cli(args)
    assert not _scaled_line(caplog.text)
    assert cli.model.phases.seg_start == 1 and cli.model._threshold_schedule.total_steps == 4 - 1 - 1


def test_demo_with_a_short_run(synthetic, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    root = Path(synthetic("voc"))  # the demo generates its data only where the folder is missing
    with caplog.at_level("INFO"):
        summary = demo.run([
            "--config", str(QUICKSTART), "--data-dir", str(root), *DUPL_SMALL,
            "--trainer.max_steps=6", "--trainer.limit_val_batches=1",
        ])  # fmt: skip
    assert _scaled_line(caplog.text) and "val/miou" in summary


U2PL_CONFIG = CONFIGS / "u2pl" / "synthetic_voc_1_8.yaml"
#: the tiny U2PL at one or two steps per epoch with the config's 4-epoch warm-up
U2PL_SMALL = [a for a in tiny.U2PL if not a.startswith("--model.init_args.warmup_epochs")]


def u2pl_args(root: Path, *extra: str) -> list[str]:
    return [
        "--config", str(U2PL_CONFIG), "--data.source.root", str(root), *tiny.CPU, *U2PL_SMALL,
        "--trainer.limit_val_batches=1", "--trainer.check_val_every_n_epoch=100", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("length", [["--trainer.max_steps=3"], ["--trainer.fast_dev_run=1"]])
def test_u2pl_short_run_scales_its_warmup(length, synthetic, tmp_path, monkeypatch, caplog):
    """A 3-step run of the 12-epoch config stayed in its 4-epoch supervised warm-up: the warm-up is scaled
    into the run (reported in one line) and alpha_t anneals over the run's epochs."""
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("INFO"):
        cli = run_cli(["fit", *u2pl_args(synthetic("voc"), *length)])
    (line,) = _scaled_line(caplog.text)
    model, metrics = cli.model, cli.trainer.callback_metrics
    assert "U2PLModule: schedule scaled to the run's" in line
    assert model.hparams["warmup_epochs"] == 4
    if "max_steps" in length[0]:  # 2 epochs of 2 steps (limit_train_batches): warm-up in epoch 0 only
        assert cli.trainer.global_step == 3 and "run's 2 epochs" in line and "warmup_epochs 4 -> 1" in line
        assert model.warmup_epochs == 1
        assert float(metrics["schedule/anneal"]) == pytest.approx(0.5)  # epoch 1 of the run's 2, not of 12
    else:
        assert cli.trainer.global_step == 1 and "warmup_epochs 4 -> 0" in line and model.warmup_epochs == 0
    # the unsupervised and contrastive losses trained before the run ended; the teacher left its warm-up
    assert {"train/loss_unsup", "train/loss_contrastive"} <= set(metrics)
    assert float(metrics["teacher/decay"]) < 1.0


def test_u2pl_schedule_that_fits_is_untouched(synthetic, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    args = u2pl_args(synthetic("voc"), "--model.init_args.warmup_epochs=1", "--trainer.limit_train_batches=1")
    with caplog.at_level("INFO"):
        cli = run_cli(["fit", *args, "--trainer.max_steps=3"])  # 3 epochs of 1 step, max_epochs 12
    assert not _scaled_line(caplog.text)
    assert cli.model.warmup_epochs == 1 and cli.model._teacher_schedule.warmup_epochs == 1
    # alpha_t's T is the run's 3 epochs (max_steps ends it before max_epochs): 1 - 2/3 at its last epoch
    assert float(cli.trainer.callback_metrics["schedule/anneal"]) == pytest.approx(1 / 3)


SEMINAR_CONFIGS = CONFIGS / "seminar"
#: the tiny Seminar at two steps per epoch with the config's 11-epoch consistency ramp
SEMINAR_SMALL = [a for a in tiny.SEMINAR if not a.startswith("--model.init_args.consistency.ramp_epochs")]


def seminar_args(root: Path, stage: str, *extra: str) -> list[str]:
    return [
        "--config", str(SEMINAR_CONFIGS / f"synthetic_voc_{stage}.yaml"), "--data.source.root", str(root),
        *tiny.CPU, *SEMINAR_SMALL, "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip


def _seminar_short_run(args: list[str], caplog: pytest.LogCaptureFixture):  # -> (LightningCLI, the line)
    caplog.clear()
    with caplog.at_level("INFO"):
        cli = run_cli(["fit", *args])
    (line,) = _scaled_line(caplog.text)
    assert "SeminarModule: schedule scaled to the run's" in line
    assert cli.model.hparams["consistency"]["ramp_epochs"] == 11
    # the consistency loss trained at its full weight before the run ended
    metrics = cli.trainer.callback_metrics
    assert "train/loss_consistency" in metrics and float(metrics["schedule/consistency_ramp"]) == 1.0
    return cli, line


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
def test_seminar_short_runs_scale_the_consistency_ramp(synthetic, tmp_path, monkeypatch, caplog):
    """The 11-epoch ramp never reached its weight in a short run of either stage: it is scaled into the run."""
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    short = ["--trainer.max_steps=4", "--trainer.val_check_interval=4"]  # 2 epochs of 2 steps
    _, line = _seminar_short_run(seminar_args(root, "ancillary", *short), caplog)
    assert "run's 2 epochs" in line and "consistency.ramp_epochs 11 -> 1" in line
    ckpt = next(Path("outputs").rglob("last.ckpt"))
    _, line = _seminar_short_run(seminar_args(root, "ancillary", "--trainer.fast_dev_run=1"), caplog)
    assert "run's 1 epoch " in line and "consistency.ramp_epochs 11 -> 0" in line
    primary = seminar_args(
        root, "primary", f"--model.init_args.ancillary_checkpoint={ckpt}", "--trainer.fast_dev_run=1"
    )
    cli, line = _seminar_short_run(primary, caplog)
    assert "consistency.ramp_epochs 11 -> 0" in line and "train/loss_pseudo" in cli.trainer.callback_metrics


@pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")
def test_seminar_ramp_that_fits_is_untouched(synthetic, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    args = seminar_args(
        synthetic("voc"), "ancillary", "--model.init_args.consistency.ramp_epochs=2",
        "--trainer.limit_train_batches=1", "--trainer.max_steps=3", "--trainer.val_check_interval=1",
    )  # fmt: skip
    with caplog.at_level("INFO"):
        cli = run_cli(["fit", *args])  # 3 epochs of 1 step: the ramp completes in the last
    assert not _scaled_line(caplog.text)
    assert cli.model._ramp_schedule.total_steps == 2
    assert float(cli.trainer.callback_metrics["schedule/consistency_ramp"]) == 1.0
