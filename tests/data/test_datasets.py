from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_lightning.data.classes import CITYSCAPES_LABELID_PALETTE, DATASET_INFO, flat_palette
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import DataError, write_index_png
from wsss_lightning.data.synthetic import LAYOUTS, generate

SIZE = (40, 48)


def make_voc(root: Path, n: int = 2, size: tuple[int, int] = SIZE) -> list[str]:
    """A tiny hand-made VOC tree: n images with one square of class i + 1."""
    ids = [f"2007_{i:06d}" for i in range(n)]
    for i, sample_id in enumerate(ids):
        image = np.full((*size, 3), 100, dtype=np.uint8)
        mask = np.zeros(size, dtype=np.uint8)
        mask[5:15, 5:15] = i + 1
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "JPEGImages" / f"{sample_id}.jpg")
        write_index_png(
            root / "SegmentationClassAug" / f"{sample_id}.png", mask, DATASET_INFO["voc"].palette_bytes()
        )
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train_aug.txt").write_text("".join(f"{i}\n" for i in ids))
    return ids


@pytest.fixture(scope="module")
def synthetic_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("synthetic")
    size = {"cityscapes": (32, 64), "gta5": (32, 64)}
    return {
        layout: generate(
            layout, base / layout, seed=1, num_train=4, num_val=3, image_size=size.get(layout, (32, 32))
        )
        for layout in LAYOUTS
    }


@pytest.mark.parametrize(
    ("layout", "split", "n"),
    [
        ("voc", "train_aug", 4), ("voc", "val", 3), ("coco", "train", 4), ("coco", "val", 3),
        ("coco_stuff", "train", 4), ("coco_stuff", "test", 3), ("cityscapes", "train", 4),
        ("cityscapes", "val", 3), ("gta5", "train", 4), ("gta5", "val", 3), ("gta5", "all", 7),
    ],
)  # fmt: skip
def test_synthetic_round_trip(synthetic_roots: dict[str, Path], layout: str, split: str, n: int) -> None:
    source = build_source(layout, synthetic_roots[layout], split)
    assert len(source.ids) == n and source.has_masks
    num_classes = source.info.num_classes
    for sample_id in source.ids:
        image, mask = source.read_sample(sample_id)
        assert mask is not None
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
        values = np.unique(mask)
        assert np.all((values < num_classes) | (values == 255))
        assert (values < num_classes).any()


def test_voc_test_split_has_no_masks(synthetic_roots: dict[str, Path]) -> None:
    source = build_source("voc", synthetic_roots["voc"], "test")
    assert not source.has_masks and source.mask_path(source.ids[0]) is None
    image, mask = source.read_sample(source.ids[0])
    assert mask is None and image.shape == (32, 32, 3)
    with pytest.raises(DataError, match="has no masks"):
        source.read_mask(source.ids[0])


def test_split_may_be_a_list_file(synthetic_roots: dict[str, Path]) -> None:
    root = synthetic_roots["voc"]
    labeled = build_source("voc", root, "splits/1_2/labeled.txt")
    assert len(labeled.ids) == 2 and labeled.has_masks
    labeled.read_sample(labeled.ids[0])
    city = build_source("cityscapes", synthetic_roots["cityscapes"], "train")
    (synthetic_roots["cityscapes"] / "subset.txt").write_text(f"{city.ids[1]}\n")
    subset = build_source(
        "cityscapes", synthetic_roots["cityscapes"], str(synthetic_roots["cityscapes"] / "subset.txt")
    )
    assert subset.ids == [city.ids[1]]
    assert subset.read_sample(subset.ids[0])[1] is not None


def test_build_source_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="valid names"):
        build_source("pascal", tmp_path, "train")


def test_voc_two_column_list_lines(tmp_path: Path) -> None:
    ids = make_voc(tmp_path)
    lines = [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(lines) + "\n\n")
    source = build_source("voc", tmp_path, "train_aug")
    assert source.ids == ids
    assert np.unique(source.read_mask(ids[1])).tolist() == [0, 2]


# ---- one test per bad input ------------------------------------------------------------------------------
def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere.*JPEGImages/<id>\.jpg"):
        build_source("voc", tmp_path / "nowhere", "train_aug")


def test_missing_list_file(tmp_path: Path) -> None:
    make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"(?s)ImageSets/Segmentation/val\.txt.*expected layout"):
        build_source("voc", tmp_path, "val")


def test_missing_image_file(tmp_path: Path) -> None:
    ids = make_voc(tmp_path)
    (tmp_path / "JPEGImages" / f"{ids[0]}.jpg").unlink()
    source = build_source("voc", tmp_path, "train_aug")
    with pytest.raises(DataError, match=rf"{ids[0]}\.jpg does not exist"):
        source.read_sample(ids[0])


def test_corrupt_image_file(tmp_path: Path) -> None:
    ids = make_voc(tmp_path)
    path = tmp_path / "JPEGImages" / f"{ids[0]}.jpg"
    path.write_bytes(path.read_bytes()[:40])
    source = build_source("voc", tmp_path, "train_aug")
    with pytest.raises(DataError, match=rf"cannot read image file .*{ids[0]}\.jpg"):
        source.read_image(ids[0])


def test_mask_values_outside_classes(tmp_path: Path) -> None:
    ids = make_voc(tmp_path)
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 21, 254, 255
    write_index_png(tmp_path / "SegmentationClassAug" / f"{ids[0]}.png", mask)
    source = build_source("voc", tmp_path, "train_aug")
    with pytest.raises(DataError, match=rf"{ids[0]}\.png has values \[21, 254\] outside the 21 classes"):
        source.read_mask(ids[0])


def test_image_mask_size_mismatch(tmp_path: Path) -> None:
    ids = make_voc(tmp_path)
    write_index_png(tmp_path / "SegmentationClassAug" / f"{ids[0]}.png", np.zeros((20, 30), dtype=np.uint8))
    source = build_source("voc", tmp_path, "train_aug")
    with pytest.raises(DataError, match=rf"(?s){ids[0]}\.jpg is 40x48.*{ids[0]}\.png is 20x30"):
        source.read_sample(ids[0])


def test_rgb_mask_is_rejected(tmp_path: Path) -> None:
    ids = make_voc(tmp_path)
    Image.new("RGB", SIZE[::-1]).save(tmp_path / "SegmentationClassAug" / f"{ids[0]}.png")
    with pytest.raises(DataError, match="mode 'RGB'"):
        build_source("voc", tmp_path, "train_aug").read_mask(ids[0])


# ---- label decoding ----------------------------------------------------------------------------------------
LABEL_IDS = np.array([[7, 8, 26, 23], [0, 33, 9, 255]], dtype=np.uint8)
TRAIN_IDS = np.array([[0, 1, 13, 10], [255, 18, 255, 255]], dtype=np.uint8)


def _cityscapes_tree(root: Path) -> str:
    stem = "aachen_000000_000019"
    image_dir = root / "leftImg8bit" / "train" / "aachen"
    image_dir.mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(image_dir / f"{stem}_leftImg8bit.png")
    write_index_png(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", LABEL_IDS)
    return f"aachen/{stem}"


def test_cityscapes_label_ids_to_train_ids(tmp_path: Path) -> None:
    sample_id = _cityscapes_tree(tmp_path)
    source = build_source("cityscapes", tmp_path, "train")
    assert source.ids == [sample_id]
    np.testing.assert_array_equal(source.read_mask(sample_id), TRAIN_IDS)


def test_cityscapes_prefers_train_id_files(tmp_path: Path) -> None:
    sample_id = _cityscapes_tree(tmp_path)
    train_ids = np.full((2, 4), 5, dtype=np.uint8)
    write_index_png(tmp_path / "gtFine" / "train" / f"{sample_id}_gtFine_labelTrainIds.png", train_ids)
    np.testing.assert_array_equal(
        build_source("cityscapes", tmp_path, "train").read_mask(sample_id), train_ids
    )


def test_cityscapes_list_file_with_paths(tmp_path: Path) -> None:
    sample_id = _cityscapes_tree(tmp_path)
    (tmp_path / "train.txt").write_text(f"leftImg8bit/train/{sample_id}_leftImg8bit.png\n")
    assert build_source("cityscapes", tmp_path, "train").ids == [sample_id]


def test_gta5_palette_labels(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 2)).save(tmp_path / "images" / "00001.png")
    write_index_png(
        tmp_path / "labels" / "00001.png", LABEL_IDS, flat_palette(CITYSCAPES_LABELID_PALETTE, (0, 0, 0))
    )
    with Image.open(tmp_path / "labels" / "00001.png") as img:
        assert img.mode == "P"
    source = build_source("gta5", tmp_path, "all")  # no all.txt: images/ is scanned
    assert source.ids == ["00001"]
    np.testing.assert_array_equal(source.read_mask("00001"), TRAIN_IDS)


def test_gta5_unknown_label_ids(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 2)).save(tmp_path / "images" / "00001.png")
    write_index_png(tmp_path / "labels" / "00001.png", np.full((2, 4), 40, dtype=np.uint8))
    (tmp_path / "train.txt").write_text("00001.png\n")
    with pytest.raises(DataError, match=r"00001\.png has values \[40\]"):
        build_source("gta5", tmp_path, "train").read_mask("00001")


def test_coco_split_alias_and_subfolders(tmp_path: Path) -> None:
    sample_id = "COCO_val2014_000000000042"
    for folder in ("JPEGImages", "SegmentationClass"):
        (tmp_path / folder / "val2014").mkdir(parents=True)
    Image.new("RGB", (4, 2)).save(tmp_path / "JPEGImages" / "val2014" / f"{sample_id}.jpg")
    write_index_png(
        tmp_path / "SegmentationClass" / "val2014" / f"{sample_id}.png", np.full((2, 4), 80, np.uint8)
    )
    (tmp_path / "ImageSets").mkdir()
    (tmp_path / "ImageSets" / "val2014.txt").write_text(f"{sample_id}\n")
    source = build_source("coco", tmp_path, "val")
    image, mask = source.read_sample(sample_id)
    assert image.shape == (2, 4, 3) and mask is not None and mask.max() == 80


def test_empty_list_file_is_refused(tmp_path: Path) -> None:
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("\n# nothing listed\n")
    with pytest.raises(
        DataError, match=r"ImageSets/Segmentation/val\.txt of voc split 'val' lists no samples"
    ):
        build_source("voc", tmp_path, "val")
