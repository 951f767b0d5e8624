"""DuPLModule through the CLI on synthetic VOC: every phase, bad configuration.

Exact resume and DDP are checked for every method by ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.methods import tiny
from wsss_lightning.cli import run_cli

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "dupl" / "voc.yaml"

TINY = [
    *tiny.DUPL,
    *tiny.CPU,
    "--model.init_args.inference.crf.enabled=false",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=3",
]


def args(root: Path, steps: int = 6) -> list[str]:
    return ["--config", str(CONFIG), "--data.source.root", str(root), *TINY, f"--trainer.max_steps={steps}"]


def test_fit_runs_every_phase_and_logs_cam_pseudo_and_seg_miou(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *args(synthetic("voc"))])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 6
    for key in ("train/loss_cls", "train/loss_ptc", "train/loss_dis", "train/loss_seg", "train/loss_reg",
                "train/noise_fraction", "train/pseudo_accuracy1", "train/threshold_high", "val/miou",
                "val/best_subnet"):  # fmt: skip
        assert key in metrics, key
    for output in ("seg1", "seg2", "cam1", "cam2", "pseudo1", "pseudo2"):
        assert 0.0 <= float(metrics[f"val/{output}/miou"]) <= 1.0, output
    # the cosine descent ran: the last step's thresholds sit at the per-class end values (0.55 / hard 0.70)
    thresholds = cli.model.class_thresholds
    names = cli.model.class_names[1:]
    assert thresholds[names.index("person")] == pytest.approx(0.55)
    assert thresholds[names.index("aeroplane")] == pytest.approx(0.70)
    # test: the recorded better sub-net, multi-scale + flip
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert 0.0 <= results["test/miou"] <= 1.0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (["--model.init_args.backbone=no_such_vit"], "backbone"),
        (["--model.init_args.threshold.start=1.5"], "threshold.start"),
        (["--model.init_args.threshold.low=0.8"], "threshold"),
        (["--model.init_args.threshold.hard_classes=[unicorn]"], "hard_classes"),
        (["--model.init_args.phases.noise_filter_start=0"], "noise_filter_start"),
        (["--model.init_args.strong_view.confidence=2"], "strong_view.confidence"),
        (["--model.init_args.global_batch_size=4"], "global_batch_size"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_field(override, field, synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, SystemExit)) as err:
        run_cli(["fit", *args(synthetic("voc")), *override])
    text = str(err.value) + str(err.value.__context__)
    assert field in text, text


def test_evaluation_uses_the_configured_or_best_subnet():
    from wsss_lightning.methods import DuPLModule

    kwargs = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 1, "img_size": 32}, "aux_layer": 0,
              "head_channels": 8}  # fmt: skip
    images = torch.randn(1, 3, 40, 56)  # not a multiple of the patch: padded, then cropped back
    for evaluate, index in (("1", 0), ("2", 1)):
        model = DuPLModule(evaluate=evaluate, **kwargs).eval()
        with torch.no_grad():
            out = model(images)
        assert out.shape == (1, 21, 40, 56)
        expected = model.students[index].segment(torch.nn.functional.pad(images, (0, 8, 0, 8)))
        expected = torch.nn.functional.interpolate(expected, size=(48, 64), mode="bilinear")[..., :40, :56]
        torch.testing.assert_close(out, expected)
    model = DuPLModule(evaluate="best", **kwargs).eval()
    model.best_subnet.fill_(1)
    assert model.eval_subnet() == 1
