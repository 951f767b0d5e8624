from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from wsss_lightning.data.datasets.base import DataError
from wsss_lightning.data.supervision import (
    clicks_from_mask,
    load_tags,
    make_semi_split,
    read_id_list,
    save_tags,
    tags_from_mask,
    write_id_list,
)


def test_tags_from_mask_hand_computed() -> None:
    mask = np.array([[0, 0, 3], [255, 7, 3]], dtype=np.uint8)
    expected = np.zeros(10, dtype=np.float32)
    expected[[0, 3, 7]] = 1
    tags = tags_from_mask(mask, 10)
    assert tags.dtype == np.float32
    np.testing.assert_array_equal(tags, expected)
    np.testing.assert_array_equal(tags_from_mask(np.full((2, 2), 255, np.uint8), 10), np.zeros(10))
    with pytest.raises(ValueError, match="outside"):
        tags_from_mask(mask, 5)


@pytest.mark.parametrize("suffix", [".npy", ".txt"])
def test_tags_round_trip(tmp_path: Path, suffix: str) -> None:
    tags = {"a": np.array([1, 0, 1, 0], np.float32), "b": np.array([0, 1, 0, 0], np.float32)}
    save_tags(tmp_path / f"tags{suffix}", tags)
    loaded = load_tags(tmp_path / f"tags{suffix}", 4, ["b", "a"])
    assert list(loaded) == ["b", "a"]
    for key, row in tags.items():
        np.testing.assert_array_equal(loaded[key], row)


def test_tags_txt_format(tmp_path: Path) -> None:
    (tmp_path / "tags.txt").write_text("2007_000032 0 1 15\n2007_000039 0 20\n")
    loaded = load_tags(tmp_path / "tags.txt", 21)
    assert np.flatnonzero(loaded["2007_000032"]).tolist() == [0, 1, 15]
    assert np.flatnonzero(loaded["2007_000039"]).tolist() == [0, 20]


def test_tags_foreground_only_npy_gets_background(tmp_path: Path) -> None:
    fg_only = np.zeros(20, np.float32)
    fg_only[[0, 14]] = 1  # aeroplane, person
    np.save(tmp_path / "cls_labels_onehot.npy", np.array({"x": fg_only}, dtype=object), allow_pickle=True)
    row = load_tags(tmp_path / "cls_labels_onehot.npy", 21)["x"]
    assert np.flatnonzero(row).tolist() == [0, 1, 15]


def test_tags_add_background(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("x 3\n")
    assert np.flatnonzero(load_tags(tmp_path / "t.txt", 5, add_background=True)["x"]).tolist() == [0, 3]


def test_tags_missing_ids(tmp_path: Path) -> None:
    save_tags(tmp_path / "t.txt", {"a": np.ones(3, np.float32)})
    with pytest.raises(DataError, match=r"t\.txt has no tags for ids \['b', 'c'\]"):
        load_tags(tmp_path / "t.txt", 3, ["a", "b", "c"])


def test_tags_bad_class_index(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("a 1\nb 9\n")
    with pytest.raises(DataError, match=r"t\.txt line 2: class indices \[9\]"):
        load_tags(tmp_path / "t.txt", 3)


def _click_mask() -> np.ndarray:
    mask = np.zeros((20, 24), dtype=np.uint8)
    mask[2:7, 2:7] = 3  # 5x5 square: unique deepest pixel (4, 4)
    mask[10:15, 2:9] = 3  # second region of class 3
    mask[2:9, 14:21] = 5  # 7x7 square: deepest pixel (5, 17)
    mask[18:, :] = 255
    return mask


def test_clicks_one_per_region_plus_background() -> None:
    mask = _click_mask()
    clicks = clicks_from_mask(mask, 6, np.random.default_rng(0), background_clicks=3)
    assert clicks.dtype == np.uint8 and clicks.shape == mask.shape
    marked = clicks != 255
    # every click carries the class under it
    np.testing.assert_array_equal(clicks[marked], mask[marked])
    for cls in (3, 5):
        labels, n = ndimage.label(mask == cls, structure=np.ones((3, 3)))
        for region in range(1, n + 1):
            assert int((marked & (labels == region)).sum()) == 1
    assert int((clicks == 0).sum()) == 3
    assert int(marked.sum()) == 3 + 3
    assert clicks[4, 4] == 3 and clicks[5, 17] == 5  # "center": deepest pixel of the region


def test_clicks_deterministic_for_seed() -> None:
    mask = _click_mask()
    a = clicks_from_mask(mask, 6, np.random.default_rng(7), background_clicks=4, placement="random")
    b = clicks_from_mask(mask, 6, np.random.default_rng(7), background_clicks=4, placement="random")
    c = clicks_from_mask(mask, 6, np.random.default_rng(8), background_clicks=4, placement="random")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_clicks_min_region_and_no_background_class() -> None:
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[1, 1] = 2  # one-pixel region
    mask[4:9, 4:9] = 1
    clicks = clicks_from_mask(mask, 3, np.random.default_rng(0), min_region=2)
    assert clicks[1, 1] == 255 and int((clicks == 1).sum()) == 1 and int((clicks == 0).sum()) == 1
    # Without a background class every class (0 included) is clicked per region.
    clicks = clicks_from_mask(mask, 3, np.random.default_rng(0), background_class=None)
    assert sorted(clicks[clicks != 255].tolist()) == [0, 1, 2]


def test_semi_split_sizes() -> None:
    ids = [f"{i:05d}" for i in range(10582)]
    sizes = {frac: len(make_semi_split(ids, frac, seed=0)[0]) for frac in (1 / 16, 1 / 8, 1 / 4, 1 / 2)}
    assert sizes == {1 / 16: 662, 1 / 8: 1323, 1 / 4: 2646, 1 / 2: 5291}  # the usual VOC partition sizes


def test_semi_split_deterministic_and_disjoint() -> None:
    ids = [f"id{i}" for i in range(100)]
    labeled, unlabeled = make_semi_split(ids, 0.125, seed=3)
    assert (labeled, unlabeled) == make_semi_split(ids, 0.125, seed=3)
    assert labeled != make_semi_split(ids, 0.125, seed=4)[0]
    assert len(labeled) == 13 and len(unlabeled) == 87
    assert sorted(labeled + unlabeled) == sorted(ids)
    assert labeled == [i for i in ids if i in set(labeled)]  # original order kept
    with pytest.raises(ValueError, match="fraction"):
        make_semi_split(ids, 0.0, seed=0)


def test_id_list_round_trip(tmp_path: Path) -> None:
    write_id_list(tmp_path / "a" / "ids.txt", ["x", "y"])
    assert read_id_list(tmp_path / "a" / "ids.txt") == ["x", "y"]
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        read_id_list(tmp_path / "missing.txt")
