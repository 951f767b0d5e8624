"""Seminar learns from clicks: the target of benchmarks/README.md ("Seminar Learning vs its baselines").

Runs ``benchmarks/seminar_table.py``'s partial-CE, ancillary and primary rows with 2 seeds on the synthetic VOC
set of 64-px images (about 15 minutes on 2 cores). Run with ``make test-slow`` (``pytest -m slow``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from wsss_lightning.data.synthetic import generate

TABLE = Path(__file__).resolve().parents[3] / "benchmarks" / "seminar_table.py"
#: the ancillary model must beat partial CE alone by this much (mean of the seeds)
MIN_GAIN = 0.05


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="the ancillary beats partial CE by 0.069 but the primary stays below it (0.782 vs 0.794: it learns "
    "the ancillary's errors; benchmarks/README.md, 'Seminar Learning vs its baselines'); an XPASS means both "
    "targets are reached",
)
def test_ancillary_beats_partial_ce_and_primary_keeps_up(tmp_path):
    spec = importlib.util.spec_from_file_location("seminar_table", TABLE)
    assert spec is not None and spec.loader is not None
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    size = (table.IMAGE_SIZE, table.IMAGE_SIZE)
    root = generate("voc", tmp_path / "synthetic_voc64", seed=0, image_size=size)
    rows = ["partial CE", table.ANCILLARY, table.PRIMARY_ROW]
    result = table.run_table(root, tmp_path / "runs", seeds=[1, 2], steps=400, parallel=2, rows=rows)
    mean = {row: sum(values) / len(values) for row, values in result.items()}
    assert mean[table.ANCILLARY] - mean["partial CE"] >= MIN_GAIN, mean
    assert mean[table.PRIMARY_ROW] >= mean[table.ANCILLARY], mean
