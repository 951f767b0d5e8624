"""A quiet, quick command line: lazy imports, and no warning a user cannot act on in a normal run."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.cli.test_cli import CONFIGS, tiny_args
from tests.methods import tiny
from wsss_lightning.callbacks import RunProgressBar, StepSeed
from wsss_lightning.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("lightning", "torch", "albumentations", "cv2", "timm", "segmentation_models_pytorch", "wandb")

#: messages of the warnings and notes a run used to print that users cannot act on
UNACTIONABLE = (
    "isinstance(treespec, LeafSpec)",
    "Tip: For seamless cloud",
    "anonymous setting",
    "git root",
    "dirpath has changed",
    "not resumable",
    "will override existing callbacks",
    "/-2",
    "`weights_only` was not set",
)


def _loaded_after(code: str, cwd: Path) -> set[str]:
    """The heavy packages a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    env = {"PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return set(done.stdout.splitlines()[-1].split()[1:])


def test_data_commands_that_train_nothing_load_no_framework(tmp_path):
    code = (
        "from wsss_lightning.data.cli import main\n"
        "main(['synthetic', '--layout', 'voc', '--out', 'voc', '--num-train', '2', '--num-val', '2',"
        " '--size', '32', '32'])\n"
        "main(['check', '--dataset', 'voc', '--root', 'voc', '--split', 'val'])\n"
        "main(['tags', '--dataset', 'voc', '--root', 'voc', '--split', 'val', '--out', 'tags.npy'])\n"
        "main(['partitions', '--list', 'voc/ImageSets/Segmentation/train_aug.txt', '--out', 'splits'])\n"
    )
    assert _loaded_after(code, tmp_path) == set()


def test_top_level_help_loads_no_method(tmp_path):
    code = (
        "from wsss_lightning.cli import run_cli\n"
        "try:\n    run_cli(['--help'])\nexcept SystemExit:\n    pass\n"
    )
    assert _loaded_after(code, tmp_path) <= {"lightning", "torch"}


def test_public_names_still_import():
    from wsss_lightning import data, methods
    from wsss_lightning.data import WSSSDataModule
    from wsss_lightning.methods import DuPLModule, SegmentationMethod, U2PLModule

    assert issubclass(DuPLModule, SegmentationMethod) and issubclass(U2PLModule, SegmentationMethod)
    assert WSSSDataModule.__module__ == "wsss_lightning.data.datamodule"
    assert set(data.__all__) <= set(dir(data)) and set(methods.__all__) <= set(dir(methods))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = methods.Nope


def _heard(recwarn, capsys, caplog) -> str:
    """Everything a run said: its warnings, its output and its log records."""
    out, err = capsys.readouterr()
    said = [str(w.message) for w in recwarn] + [out, err] + [r.getMessage() for r in caplog.records]
    recwarn.clear()
    caplog.clear()
    return "\n".join(said)


def test_fit_resume_validate_predict_say_nothing_unactionable(
    synthetic, tmp_path, monkeypatch, recwarn, capsys, caplog
):
    warnings.simplefilter("always")
    caplog.set_level(logging.INFO)
    # Lightning's loggers do not propagate to the root logger that caplog listens on
    for name in ("lightning.pytorch", "lightning.fabric"):
        monkeypatch.setattr(logging.getLogger(name), "handlers", [caplog.handler])
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    # a project checkout with a remote, as users run from: W&B then looks for the git root of its folder
    for git in (["init", "-q"], ["remote", "add", "origin", "https://example.invalid/project.git"]):
        subprocess.run(["git", *git], check=True)
    root = synthetic("voc")
    config = CONFIGS / "supervised" / "voc.yaml"
    wandb = ["-c", str(CONFIGS / "logger" / "wandb.yaml"), "--trainer.logger.init_args.save_dir=wandb_runs"]

    # a step-bounded fit whose checkpoint at step 2 falls inside the first epoch, logged to W&B offline
    cli = run_cli(["fit", *tiny_args(config, root), *wandb])
    assert cli.trainer.num_training_batches > 2  # the checkpoint is a mid-epoch one
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, RunProgressBar) and bar._get_train_description(0).strip() == "Epoch 0"
    ckpt = Path("outputs/supervised_voc/version_0/checkpoints/last.ckpt")
    assert ckpt.is_file()
    heard = _heard(recwarn, capsys, caplog)
    assert "Epoch 0" in heard  # the bar was drawn and reached the captured output

    # resuming mid-epoch: the loader is resumable, so Lightning has nothing to warn about
    cli = run_cli(["fit", *tiny_args(config, root, steps=3), "--ckpt_path=last"])
    assert cli.trainer.global_step == 3
    heard += _heard(recwarn, capsys, caplog)

    # validate twice on one trainer
    cli = run_cli(["validate", *tiny_args(config, root), f"--ckpt_path={ckpt}"])
    heard += _heard(recwarn, capsys, caplog)
    # (outside run_cli its warning filters do not hold, so only the callbacks' note is checked here)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    assert sum(isinstance(c, StepSeed) for c in cli.trainer.callbacks) == 1
    assert "will override existing callbacks" not in _heard(recwarn, capsys, caplog)

    # predict from another run folder than the one that wrote the checkpoint (the default callbacks, so the
    # checkpoint callback is there and is handed the checkpoint's state)
    cli = run_cli([
        "predict", *tiny_args(config, root), f"--ckpt_path={ckpt}", "--trainer.limit_predict_batches=1",
        "--trainer.default_root_dir=elsewhere",
    ])  # fmt: skip
    assert cli.trainer.predict_loop.batch_progress.total.completed == 1
    heard += _heard(recwarn, capsys, caplog)

    found = [m for m in UNACTIONABLE if m in heard]
    assert not found, f"unactionable messages in the runs' output: {found}"


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("quickstart.yaml", tiny.DUPL),
        ("u2pl/synthetic_voc_1_8.yaml", tiny.U2PL),
        ("seminar/synthetic_voc_ancillary.yaml", tiny.SEMINAR),
    ],
    ids=["dupl", "u2pl", "seminar"],
)
def test_a_second_validate_keeps_the_methods_callbacks(config, extra, synthetic, tmp_path, monkeypatch):
    """The schedule / teacher callbacks a method attaches to a trainer stay attached on its next validate."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli([
        "validate", "-c", str(CONFIGS / config), "--data.source.root", str(synthetic("voc")), *extra, *tiny.CPU,
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
    ])  # fmt: skip
    attached = list(cli.trainer.callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    assert not [w for w in caught if "will override existing callbacks" in str(w.message)]
    assert [id(c) for c in cli.trainer.callbacks] == [id(c) for c in attached]
