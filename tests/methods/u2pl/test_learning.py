"""U2PL learns: the CPU-sized synthetic runs of configs/u2pl/synthetic_voc_1_8.yaml and
configs/u2pl/synthetic_voc800_1_8.yaml (about 10-15 minutes each).

Run with ``make test-slow`` (``pytest -m slow``). The thresholds sit below the figures recorded in
benchmarks/README.md, where the SupOnly baselines on the same 1/8 splits are given too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from wsss_lightning.cli import run_cli
from wsss_lightning.data.synthetic import generate

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "u2pl"
CONFIG = CONFIGS / "synthetic_voc_1_8.yaml"
MIN_MIOU = 0.25


@pytest.mark.slow
def test_u2pl_learns_on_synthetic_voc_with_one_eighth_labeled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = generate("voc", tmp_path / "synthetic_voc", seed=0)
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--data.source.root",
            str(root),
            "--trainer.enable_progress_bar=false",
        ]
    )
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert metrics["val/miou"] >= MIN_MIOU


@pytest.mark.slow
def test_u2pl_semi_supervised_phase_learns_with_100_labeled_images(tmp_path, monkeypatch):
    """800 images, 1/8 labeled, one supervised-only epoch: the semi-supervised epochs lift the teacher far
    above the end of the warm-up (measured 0.641 -> 0.873 -> 0.935)."""
    monkeypatch.chdir(tmp_path)
    root = generate("voc", tmp_path / "synthetic_voc800", seed=0, num_train=800)
    cli = run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / "synthetic_voc800_1_8.yaml"),
            "--data.source.root",
            str(root),
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.trainer.logger is not None and cli.trainer.logger.log_dir is not None
    with open(Path(cli.trainer.logger.log_dir) / "metrics.csv") as f:
        mious = [float(row["val/miou"]) for row in csv.DictReader(f) if row.get("val/miou")]
    assert len(mious) == 3  # end of the warm-up, then each semi-supervised epoch
    assert mious[-1] >= 0.85 and mious[-1] >= mious[0] + 0.2, mious
