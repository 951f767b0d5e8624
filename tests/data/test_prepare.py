from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from wsss_lightning.data import prepare
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import DataError, read_index_png, write_index_png
from wsss_lightning.data.supervision import load_tags, read_id_list
from wsss_lightning.data.synthetic import generate


@pytest.fixture(autouse=True)
def _no_pycocotools(monkeypatch: pytest.MonkeyPatch) -> None:
    # Exercise the built-in decoders even where pycocotools happens to be installed.
    monkeypatch.setitem(sys.modules, "pycocotools", None)


@pytest.mark.parametrize(
    ("encoded", "counts"),
    [
        ("234", [2, 3, 4]),
        ("1213", [1, 2, 1, 5]),
        ("050L3", [0, 5, 0, 1, 3]),
        ("T3", [100]),
        ("7240m0", [7, 2, 4, 2, 33]),
    ],
)
def test_rle_string_codec(encoded: str, counts: list[int]) -> None:
    assert prepare.rle_string_to_counts(encoded) == counts
    assert prepare.rle_counts_to_string(counts) == encoded


def test_decode_rle_column_major() -> None:
    mask = prepare.decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    # column-major: flat index = col * H + row, so pixels (1, 0) and (0, 1) are set
    np.testing.assert_array_equal(mask, [[False, True, False], [True, False, False]])
    with pytest.raises(DataError, match="sum to 5"):
        prepare.decode_rle({"size": [2, 3], "counts": [1, 4]})


H, W = 6, 8
COCO_JSON: dict[str, Any] = {
    "images": [
        {"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": H, "width": W},
        {"id": 2, "file_name": "COCO_val2014_000000000002.jpg", "height": H, "width": W},
    ],
    "annotations": [
        # dog (category 18 -> 17): polygon over rows 0-3, cols 0-4
        {"id": 10, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 20.0,
         "segmentation": [[0, 0, 4, 0, 4, 3, 0, 3]]},
        # person (1 -> 1): compressed RLE, rows 1-2 x cols 1-2, drawn after the larger dog
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0,
         "segmentation": {"size": [H, W], "counts": "7240m0"}},
        # crowd of people: uncompressed RLE over rows 4-5 -> ignore
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 16.0,
         "segmentation": {"size": [H, W], "counts": [4, 2] * W}},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
}  # fmt: skip


def test_coco_instances_to_masks(tmp_path: Path) -> None:
    (tmp_path / "val2014").mkdir()
    for image in COCO_JSON["images"]:
        Image.new("RGB", (W, H)).save(tmp_path / "val2014" / image["file_name"])
    (tmp_path / "instances.json").write_text(json.dumps(COCO_JSON))
    listed = prepare.coco_instances_to_masks(
        tmp_path / "instances.json", tmp_path / "out", "val", tmp_path / "val2014"
    )
    assert listed == ["COCO_val2014_000000000001"]  # image 2 has no instances
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[0:4, 0:5] = 17
    expected[1:3, 1:3] = 1
    expected[4:6, :] = 255
    mask = read_index_png(tmp_path / "out" / "SegmentationClass" / "COCO_val2014_000000000001.png")
    np.testing.assert_array_equal(mask, expected)
    assert (tmp_path / "out" / "JPEGImages" / "COCO_val2014_000000000002.jpg").is_symlink()
    source = build_source("coco", tmp_path / "out", "val2014")
    np.testing.assert_array_equal(source.read_sample(listed[0])[1], expected)


def test_coco_unknown_category(tmp_path: Path) -> None:
    data = {**COCO_JSON, "annotations": [{**COCO_JSON["annotations"][0], "category_id": 12}]}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad\.json: category ids \[12\]"):
        prepare.coco_instances_to_masks(tmp_path / "bad.json", tmp_path / "out", "val")


def test_coco_stuff_mat_to_voc(tmp_path: Path) -> None:
    # 10k .mat labels: 0 unlabeled, COCO ids otherwise (1 person, 5 airplane, 18 dog, 27 backpack, 92+ stuff)
    raw = np.array([[0, 1, 5], [92, 18, 27]], dtype=np.uint16)
    (tmp_path / "annotations").mkdir()
    savemat(tmp_path / "annotations" / "COCO_train2014_000000000077.mat", {"S": raw})
    assert prepare.coco_stuff_to_voc(tmp_path) == 1
    mask = read_index_png(tmp_path / "annotations" / "COCO_train2014_000000000077.png")
    np.testing.assert_array_equal(mask, [[255, 15, 1], [0, 12, 0]])


def test_coco_stuff_png_to_voc(tmp_path: Path) -> None:
    # 164k-style PNG labels: COCO id - 1, 255 unlabeled
    src = tmp_path / "src"
    write_index_png(src / "annotations" / "x.png", np.array([[0, 4, 255, 100]], dtype=np.uint8))
    (src / "imageLists").mkdir()
    (src / "imageLists" / "train.txt").write_text("x\n")
    with pytest.raises(ValueError, match="overwrite"):
        prepare.coco_stuff_to_voc(src)
    prepare.coco_stuff_to_voc(src, tmp_path / "out")
    np.testing.assert_array_equal(
        read_index_png(tmp_path / "out" / "annotations" / "x.png"), [[15, 1, 255, 0]]
    )
    assert read_id_list(tmp_path / "out" / "imageLists" / "train.txt") == ["x"]


def test_cityscapes_to_trainids(tmp_path: Path) -> None:
    src = tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    write_index_png(src, np.array([[7, 26, 1], [23, 33, 4]], dtype=np.uint8))
    assert prepare.cityscapes_to_trainids(tmp_path) == 1
    out = src.with_name("lindau_000000_000019_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(read_index_png(out), [[0, 13, 255], [10, 18, 255]])
    assert prepare.cityscapes_to_trainids(tmp_path) == 0  # existing files are kept
    assert prepare.cityscapes_to_trainids(tmp_path, overwrite=True) == 1


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("voc", tmp_path_factory.mktemp("voc"), num_train=8, num_val=2, image_size=(32, 32))


def test_write_tags(voc_root: Path, tmp_path: Path) -> None:
    prepare.write_tags("voc", voc_root, "val", tmp_path / "tags.npy")
    source = build_source("voc", voc_root, "val")
    tags = load_tags(tmp_path / "tags.npy", 21, source.ids)
    for sample_id in source.ids:
        present = set(np.unique(source.read_mask(sample_id)).tolist()) - {255}
        assert set(np.flatnonzero(tags[sample_id]).tolist()) == present


def test_write_partitions(tmp_path: Path) -> None:
    ids = [str(i) for i in range(32)]
    sizes = prepare.write_partitions(ids, tmp_path, seed=1)
    assert sizes == {"1_16": (2, 30), "1_8": (4, 28), "1_4": (8, 24), "1_2": (16, 16)}
    assert len(read_id_list(tmp_path / "1_8" / "labeled.txt")) == 4


def test_write_clicks(voc_root: Path, tmp_path: Path) -> None:
    assert prepare.write_clicks("voc", voc_root, "val", tmp_path / "a", seed=3) == 2
    prepare.write_clicks("voc", voc_root, "val", tmp_path / "b", seed=3)
    source = build_source("voc", voc_root, "val")
    for sample_id in source.ids:
        a = read_index_png(tmp_path / "a" / f"{sample_id}.png")
        np.testing.assert_array_equal(a, read_index_png(tmp_path / "b" / f"{sample_id}.png"))
        mask = source.read_mask(sample_id)
        assert int((a == 0).sum()) == 1 and np.array_equal(a[a != 255], mask[a != 255])
