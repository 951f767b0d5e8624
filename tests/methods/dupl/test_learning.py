"""DuPL learns from image tags: `make demo` (configs/quickstart.yaml) on synthetic VOC, about 6 minutes on CPU.

Run with ``make test-slow`` (``pytest -m slow``). The thresholds sit below the figures recorded in
benchmarks/README.md (600 steps: CAM 0.89 / 0.90, pseudo-labels 0.96 / 0.97, segmentation 0.82 / 0.80).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wsss_lightning.demo import run

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"


@pytest.mark.slow
def test_dupl_quickstart_learns_cams_pseudo_labels_and_segmentation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run(["--config", str(CONFIG), "--data-dir", str(tmp_path / "synthetic_voc")])
    for k in (1, 2):
        assert summary[f"val/cam{k}/miou"] >= 0.7
        assert summary[f"val/pseudo{k}/miou"] >= 0.8
    assert summary["val/miou"] >= 0.6  # the target is 0.50
