"""Seminar learns from clicks: the targets of benchmarks/README.md ("Seminar Learning vs its baselines").

Runs ``benchmarks/seminar_table.py``'s partial-CE, ancillary and primary rows with 2 seeds on the synthetic VOC
set of 64-px images once (about 17 minutes on 2 cores), then checks each target. Run with ``make test-slow``
(``pytest -m slow``).
"""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark
from wsss_lightning.data.synthetic import generate

#: the ancillary model must beat partial CE alone by this much (mean of the seeds)
MIN_GAIN = 0.05


@pytest.fixture(scope="module")
def table_means(tmp_path_factory) -> dict[str, float]:
    table = load_benchmark("seminar_table")
    tmp_path = tmp_path_factory.mktemp("seminar_table")
    size = (table.IMAGE_SIZE, table.IMAGE_SIZE)
    root = generate("voc", tmp_path / "synthetic_voc64", seed=0, image_size=size)
    rows = ["partial CE", table.ANCILLARY, table.PRIMARY_ROW]
    result = table.run_table(root, tmp_path / "runs", seeds=[1, 2], steps=400, parallel=2, rows=rows)
    means = {row: sum(values) / len(values) for row, values in result.items()}
    return {
        "partial CE": means["partial CE"],
        "ancillary": means[table.ANCILLARY],
        "primary": means[table.PRIMARY_ROW],
    }


@pytest.mark.slow
def test_ancillary_beats_partial_ce(table_means):
    assert table_means["ancillary"] - table_means["partial CE"] >= MIN_GAIN, table_means


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="on these seeds the primary is below the ancillary (0.782 vs 0.794); over six seeds no difference "
    "can be detected (-0.002, standard error 0.008) and the paper's gain does not show (benchmarks/README.md, "
    "'Seminar Learning vs its baselines'); an XPASS means the two-seed result changed: check it over six seeds",
)
def test_primary_keeps_up_with_the_ancillary(table_means):
    assert table_means["primary"] >= table_means["ancillary"], table_means
