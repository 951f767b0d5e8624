"""DAFormer and U2PL+ DA adapt GTA5-style to Cityscapes-style: the target of benchmarks/README.md ("DAFormer and
U2PL+ DA vs source only and the target oracle").

Runs ``benchmarks/da_table.py`` (source only, target oracle, DAFormer, U2PL+ DA; 2 seeds) on the synthetic street
layouts (about an hour and a half on 2 cores). Run with ``make test-slow`` (``pytest -m slow``).
"""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark


@pytest.mark.slow
def test_daformer_closes_the_gap_and_u2pl_keeps_up(tmp_path):
    table = load_benchmark("da_table")
    source, target = tmp_path / "gta5", tmp_path / "cityscapes"
    table.make_data(source, target)
    result = table.run_table(
        tmp_path / "runs", [0, 1], 1500, 2, list(table.ROWS), source=source, target_root=target
    )
    mean = {row: sum(values) / len(values) for row, values in result.items()}
    assert table.bars(mean) == dict.fromkeys(table.BARS, True), mean
