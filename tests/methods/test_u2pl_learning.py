"""U2PL learns: the CPU-sized synthetic run of configs/u2pl/synthetic_voc_1_8.yaml (about 10-15 minutes).

Run with ``make test-slow`` (``pytest -m slow``). The threshold sits below the figure recorded in
benchmarks/README.md, where the SupOnly baseline on the same 1/8 split is given too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wsss_lightning.cli import run_cli
from wsss_lightning.data.synthetic import generate

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "u2pl" / "synthetic_voc_1_8.yaml"
MIN_MIOU = 0.25


@pytest.mark.slow
def test_u2pl_learns_on_synthetic_voc_with_one_eighth_labeled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = generate("voc", tmp_path / "synthetic_voc", seed=0)
    cli = run_cli(
        ["fit", "--config", str(CONFIG), "--data.root", str(root), "--trainer.enable_progress_bar=false"]
    )
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert metrics["val/miou"] >= MIN_MIOU
