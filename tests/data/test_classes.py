from __future__ import annotations

import numpy as np
import pytest

from wsss_lightning.data.classes import (
    CITYSCAPES_ID_TO_TRAINID,
    CITYSCAPES_LABELID_PALETTE,
    CITYSCAPES_PALETTE,
    CITYSCAPES_TRAINID_TO_ID,
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCO_ID_TO_CONTIGUOUS,
    DATASET_INFO,
    VOC_CLASSES,
    VOC_TO_COCO_ID,
    get_dataset_info,
    train_id_to_label_id,
    voc_colormap,
)


def test_voc_colormap_known_entries() -> None:
    cmap = voc_colormap()
    assert cmap.shape == (256, 3)
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[2].tolist() == [0, 128, 0]
    assert cmap[15].tolist() == [192, 128, 128]  # person
    assert cmap[20].tolist() == [0, 64, 128]  # tvmonitor
    assert cmap[255].tolist() == [224, 224, 192]


@pytest.mark.parametrize(
    ("name", "num_classes", "has_background"),
    [
        ("voc", 21, True),
        ("coco", 81, True),
        ("coco_stuff", 21, True),
        ("cityscapes", 19, False),
        ("gta5", 19, False),
    ],
)
def test_dataset_info(name: str, num_classes: int, has_background: bool) -> None:
    info = get_dataset_info(name)
    assert info.num_classes == num_classes
    assert len(info.palette) == num_classes
    assert info.has_background is has_background
    assert info.ignore_index == 255
    palette = info.palette_bytes()
    assert len(palette) == 768
    assert tuple(palette[:3]) == info.palette[0]
    assert tuple(palette[765:]) == ((224, 224, 192) if has_background else (255, 255, 255))


def test_get_dataset_info_unknown_lists_names() -> None:
    with pytest.raises(KeyError, match="cityscapes"):
        get_dataset_info("ade20k")
    assert set(DATASET_INFO) == {"voc", "coco", "coco_stuff", "cityscapes", "gta5"}


def test_coco_ids() -> None:
    assert len(COCO_CATEGORY_IDS) == 80 and len(COCO_CLASSES) == 81
    assert list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    assert (
        COCO_CLASSES[0] == "background" and COCO_CLASSES[1] == "person" and COCO_CLASSES[80] == "toothbrush"
    )
    assert (
        COCO_ID_TO_CONTIGUOUS[1] == 1 and COCO_ID_TO_CONTIGUOUS[13] == 12 and COCO_ID_TO_CONTIGUOUS[90] == 80
    )
    assert 12 not in COCO_ID_TO_CONTIGUOUS and 26 not in COCO_ID_TO_CONTIGUOUS
    assert sorted(COCO_ID_TO_CONTIGUOUS.values()) == list(range(1, 81))


def test_voc_to_coco_names_agree() -> None:
    renamed = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
               "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}  # fmt: skip
    for voc_id, coco_id in VOC_TO_COCO_ID.items():
        voc_name = VOC_CLASSES[voc_id]
        assert COCO_CLASSES[COCO_ID_TO_CONTIGUOUS[coco_id]] == renamed.get(voc_name, voc_name)
    assert sorted(VOC_TO_COCO_ID) == list(range(1, 21))


def test_cityscapes_lut() -> None:
    lut = CITYSCAPES_ID_TO_TRAINID
    assert lut.shape == (256,) and lut.dtype == np.uint8
    assert [int(lut[i]) for i in (7, 8, 11, 23, 24, 26, 31, 33)] == [0, 1, 2, 10, 11, 13, 16, 18]
    assert all(lut[i] == 255 for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 200, 255))
    train_ids = lut[lut != 255]
    assert sorted(train_ids.tolist()) == list(range(19))


def test_cityscapes_train_ids_back_to_label_ids() -> None:
    inverse = CITYSCAPES_TRAINID_TO_ID
    assert inverse.shape == (256,) and inverse.dtype == np.uint8
    # road 0 -> 7, sky 10 -> 23, car 13 -> 26, bicycle 18 -> 33; ignore -> 0 "unlabeled"
    assert [int(inverse[i]) for i in (0, 10, 13, 18, 255)] == [7, 23, 26, 33, 0]
    train_ids = np.arange(19, dtype=np.uint8)
    np.testing.assert_array_equal(CITYSCAPES_ID_TO_TRAINID[inverse[train_ids]], train_ids)
    assert train_id_to_label_id("cityscapes") is inverse and train_id_to_label_id("gta5") is inverse
    assert train_id_to_label_id("voc") is None and train_id_to_label_id("coco") is None
    with pytest.raises(KeyError, match="valid names"):
        train_id_to_label_id("kitti")


def test_cityscapes_palettes_agree() -> None:
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[10] == (70, 130, 180)
    for label_id, colour in enumerate(CITYSCAPES_LABELID_PALETTE):
        train_id = int(CITYSCAPES_ID_TO_TRAINID[label_id])
        if train_id != 255:
            assert CITYSCAPES_PALETTE[train_id] == colour
