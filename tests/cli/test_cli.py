"""End-to-end ``wsss fit / validate / test / predict`` on every synthetic layout with a tiny network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import Interrupt
from wsss_lightning.cli import run_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LAYOUTS = {"voc": "voc", "coco": "coco", "cityscapes": "cityscapes", "gta5": "gta5"}

TINY = [
    "--model.init_args.encoder=resnet18",
    "--model.init_args.inference.test_scales=[0.75,1.0]",
    "--data.init_args.crop_size=64",
    "--data.init_args.batch_size=2",
    "--data.init_args.num_workers=0",
    "--data.init_args.persistent_workers=false",
    "--data.init_args.pin_memory=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
]


def tiny_args(config: Path, root: Path, steps: int = 2) -> list[str]:
    # street scenes use sliding-window evaluation: shrink the 769-pixel window to the tiny images
    window = ["--model.init_args.inference.window=48", "--model.init_args.inference.stride=32"]
    return [
        "--config", str(config), "--data.root", str(root), *TINY, *(window if "window:" in config.read_text() else []),
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=2",
    ]  # fmt: skip


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fit_validate_test_predict(layout, synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = synthetic(layout)
    config = CONFIGS / "supervised" / f"{layout}.yaml"
    cli = run_cli(["fit", *tiny_args(config, root)])
    assert cli.trainer.global_step == 2
    assert "val/miou" in cli.trainer.callback_metrics
    ckpt = next(Path("outputs").rglob("last.ckpt"))

    cli = run_cli(["validate", *tiny_args(config, root), f"--ckpt_path={ckpt}"])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/miou"]) <= 1.0

    # test and predict go through multi-scale inference and the dense CRF in its process pool
    crf = ["--model.init_args.inference.crf.enabled=true", "--model.init_args.inference.crf.workers=2"]
    cli = run_cli(
        ["test", *tiny_args(config, root), f"--ckpt_path={ckpt}", "--trainer.limit_test_batches=2", *crf]
    )
    assert "test/miou" in cli.trainer.callback_metrics
    assert cli.model.inference.crf.enabled  # not replaced by the checkpoint's hyper-parameters

    out = tmp_path / "predictions"
    run_cli([
        "predict", *tiny_args(config, root), f"--ckpt_path={ckpt}", "--trainer.limit_predict_batches=2", *crf,
        "--trainer.callbacks+=wsss_lightning.callbacks.PredictionWriter",
        f"--trainer.callbacks.output_dir={out}",
    ])  # fmt: skip
    written = sorted(out.rglob("*.png"))
    assert len(written) >= 2
    pred = np.asarray(Image.open(written[0]))
    assert pred.ndim == 2 and pred.max() < cli.datamodule.num_classes


def test_fit_resumes_from_last_checkpoint_exactly(synthetic, tmp_path, monkeypatch):
    """An interrupted run continued with ``--ckpt_path last`` ends with the same weights."""
    root = synthetic("voc")
    config = CONFIGS / "supervised" / "voc.yaml"
    checkpoint = (
        '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "ckpts",'
        ' "every_n_train_steps": 2, "save_top_k": -1, "save_last": true}}]'
    )
    every2 = [
        f"--trainer.callbacks={checkpoint}",
        "--trainer.deterministic=true",
        "--trainer.val_check_interval=100",
    ]

    def run(workdir: Path, *extra: str):
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        args = [*tiny_args(config, root, steps=6), "--trainer.limit_val_batches=0", *every2, *extra]
        return run_cli(["fit", *args])

    straight = run(tmp_path / "straight").model.state_dict()
    with pytest.raises(Interrupt):
        run(
            tmp_path / "resumed",
            "--trainer.callbacks+=tests.helpers.InterruptAtStep",
            "--trainer.callbacks.step=4",
        )
    monkeypatch.chdir(tmp_path / "resumed")
    args = [*tiny_args(config, root, steps=6), "--trainer.limit_val_batches=0", *every2]
    resumed_cli = run_cli(["fit", *args, "--ckpt_path=last"])
    assert resumed_cli.trainer.global_step == 6
    resumed = resumed_cli.model.state_dict()
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "config",
    sorted(
        p.relative_to(CONFIGS).as_posix()
        for p in CONFIGS.rglob("*.yaml")
        if p.parent.name not in ("trainer", "logger")
    ),
)
def test_print_config_for_every_shipped_config(config, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--config", str(CONFIGS / config), "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


def test_data_root_override_reaches_the_datamodule(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    cli = run_cli(
        [
            "fit",
            *tiny_args(CONFIGS / "supervised" / "synthetic_voc.yaml", root)[:4],
            "--trainer.fast_dev_run=1",
            *TINY,
        ]
    )
    assert Path(cli.datamodule.root) == root
    # linked from the datamodule into the method
    assert cli.model.num_classes == cli.datamodule.num_classes == 21
    assert cli.model.class_names == list(cli.datamodule.class_names)


def test_normalisation_is_linked_from_the_datamodule(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    cli = run_cli([
        "fit", *tiny_args(CONFIGS / "supervised" / "synthetic_voc.yaml", root)[:4], "--trainer.fast_dev_run=1", *TINY,
        "--data.init_args.mean=[0.5,0.5,0.5]", "--data.init_args.std=[0.25,0.25,0.25]",
    ])  # fmt: skip
    assert cli.model.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert cli.model.image_std.flatten().tolist() == [0.25, 0.25, 0.25]


def test_checkpoint_hyperparameters_fill_in_but_never_override(synthetic, tmp_path, monkeypatch, caplog):
    """``--ckpt_path FILE`` takes the model options the run does not set from the checkpoint; whatever the
    config files or the command line set wins, and the differences are reported."""
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    config = CONFIGS / "supervised" / "voc.yaml"
    run_cli(["fit", *tiny_args(config, root), "--model.init_args.inference.flip_merge=max"])
    ckpt = next(Path("outputs").rglob("last.ckpt"))

    cli = run_cli(["validate", *tiny_args(config, root), f"--ckpt_path={ckpt}"])
    assert cli.model.inference.flip_merge == "max"  # from the checkpoint: the config does not set it

    with caplog.at_level("INFO"):
        cli = run_cli(
            [
                "validate",
                *tiny_args(config, root),
                f"--ckpt_path={ckpt}",
                "--model.init_args.inference.flip=false",
                "--model.init_args.inference.merge=max",
            ]
        )
    assert not cli.model.inference.flip and cli.model.inference.merge == "max"
    assert cli.model.inference.flip_merge == "max"
    assert "model.init_args.inference.flip: False (checkpoint: True)" in caplog.text
    assert "model.init_args.inference.merge: 'max' (checkpoint: 'sum')" in caplog.text
