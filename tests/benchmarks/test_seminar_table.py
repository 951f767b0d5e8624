"""``benchmarks/seminar_table.py`` refuses a synthetic set of another image size than its configs assume."""

from __future__ import annotations

import pytest

from tests.helpers import load_benchmark
from wsss_lightning.data.synthetic import generate


def test_the_image_size_of_the_set_is_checked(tmp_path):
    table = load_benchmark("seminar_table")
    size = table.IMAGE_SIZE
    table.check_image_size(generate("voc", tmp_path / "ok", num_train=2, num_val=1, image_size=(size, size)))
    wrong = generate("voc", tmp_path / "wrong", num_train=2, num_val=1, image_size=(2 * size, 2 * size))
    with pytest.raises(SystemExit, match=rf"{2 * size}x{2 * size} px.*expect {size}x{size}"):
        table.check_image_size(wrong)
    with pytest.raises(SystemExit, match=r"no \.jpg image"):
        table.check_image_size(tmp_path / "missing")
