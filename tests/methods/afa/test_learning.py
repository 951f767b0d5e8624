"""AFA and U2PL+ WS learn from image tags: the target of benchmarks/README.md ("AFA and U2PL+ WS vs the ceiling").

Runs ``benchmarks/afa_table.py`` (AFA, U2PL+ WS and the full-mask ceiling, 2 seeds) on the synthetic VOC set
(about an hour on 2 cores). Run with ``make test-slow`` (``pytest -m slow``).
"""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark
from wsss_lightning.data.synthetic import generate


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="the from-scratch MiT's CAMs do not localise on this set: the propagated CAM stays below the raw "
    "one, AFA reaches under 0.4 of the ceiling and, with the released defaults, U2PL+ WS is 0.04 below AFA "
    "(benchmarks/README.md, 'AFA and U2PL+ WS vs the ceiling'); an XPASS means the bars are reached",
)
def test_propagation_helps_afa_reaches_the_ceiling_share_and_u2pl_weak_keeps_up(tmp_path):
    table = load_benchmark("afa_table")
    root = generate("voc", tmp_path / "synthetic_voc800", seed=0, num_train=800)
    result = table.run_table(root, tmp_path / "runs", seeds=[0, 1], steps=1200, parallel=2)
    mean = {row: sum(values) / len(values) for row, values in result.items()}
    assert table.bars(mean) == dict.fromkeys(table.BARS, True), mean
