"""Class names, palettes and label-id maps of the supported datasets.

Every dataset is described by a :class:`DatasetInfo`; its ``class_names`` are indexed by *train id*, the
value stored in masks after decoding (255 = ignore). VOC, COCO and COCO-Stuff use 0 = background;
Cityscapes and GTA5 use the 19 Cityscapes train ids and have no background class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The 80 COCO categories with their (sparse, 1..90) category ids, in category-id order.
_COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip

COCO_CATEGORY_IDS: tuple[int, ...] = tuple(cid for cid, _ in _COCO_CATEGORIES)
COCO_CLASSES: tuple[str, ...] = ("background", *(name for _, name in _COCO_CATEGORIES))
#: COCO category id (1..90, sparse) -> contiguous train id (1..80); 0 stays background.
COCO_ID_TO_CONTIGUOUS: dict[int, int] = {cid: i + 1 for i, cid in enumerate(COCO_CATEGORY_IDS)}

#: COCO category id of each VOC foreground class (VOC train id 1..20 -> COCO category id).
VOC_TO_COCO_ID: dict[int, int] = {
    1: 5, 2: 2, 3: 16, 4: 9, 5: 44, 6: 6, 7: 3, 8: 17, 9: 62, 10: 21,
    11: 67, 12: 18, 13: 19, 14: 4, 15: 1, 16: 64, 17: 20, 18: 63, 19: 7, 20: 72,
}  # fmt: skip

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# Official colours of the 19 train ids (cityscapesScripts `labels.py`).
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# Official Cityscapes label ids 0..33: (train id, colour). Train id 255 = not evaluated.
_CITYSCAPES_LABELS: tuple[tuple[int, tuple[int, int, int]], ...] = (
    (255, (0, 0, 0)), (255, (0, 0, 0)), (255, (0, 0, 0)), (255, (0, 0, 0)), (255, (0, 0, 0)),  # 0-4 void
    (255, (111, 74, 0)), (255, (81, 0, 81)), (0, (128, 64, 128)), (1, (244, 35, 232)),  # dynamic..sidewalk
    (255, (250, 170, 160)), (255, (230, 150, 140)), (2, (70, 70, 70)), (3, (102, 102, 156)),  # parking..wall
    (4, (190, 153, 153)), (255, (180, 165, 180)), (255, (150, 100, 100)), (255, (150, 120, 90)),  # ..tunnel
    (5, (153, 153, 153)), (255, (153, 153, 153)), (6, (250, 170, 30)), (7, (220, 220, 0)),  # pole..sign
    (8, (107, 142, 35)), (9, (152, 251, 152)), (10, (70, 130, 180)), (11, (220, 20, 60)),  # veg..person
    (12, (255, 0, 0)), (13, (0, 0, 142)), (14, (0, 0, 70)), (15, (0, 60, 100)),  # rider..bus
    (255, (0, 0, 90)), (255, (0, 0, 110)), (16, (0, 80, 100)), (17, (0, 0, 230)), (18, (119, 11, 32)),
)  # fmt: skip
CITYSCAPES_NUM_LABEL_IDS = len(_CITYSCAPES_LABELS)  # 34: valid label ids are 0..33


def _build_id_to_trainid() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, (train_id, _) in enumerate(_CITYSCAPES_LABELS):
        lut[label_id] = train_id
    return lut


#: (256,) uint8 lookup table Cityscapes label id -> train id; unknown ids map to 255.
CITYSCAPES_ID_TO_TRAINID: np.ndarray = _build_id_to_trainid()
CITYSCAPES_ID_TO_TRAINID.setflags(write=False)


def _build_trainid_to_id() -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)  # 255 (ignore) and unknown values -> label id 0, "unlabeled"
    for label_id, (train_id, _) in enumerate(_CITYSCAPES_LABELS):  # each train id has one label id
        if train_id != IGNORE_INDEX:
            lut[train_id] = label_id
    return lut


#: (256,) uint8 lookup table Cityscapes train id -> label id, the values the Cityscapes benchmark server reads;
#: ignore (255) maps to 0, "unlabeled". The inverse of :data:`CITYSCAPES_ID_TO_TRAINID` on the 19 classes.
CITYSCAPES_TRAINID_TO_ID: np.ndarray = _build_trainid_to_id()
CITYSCAPES_TRAINID_TO_ID.setflags(write=False)

#: (34, 3) colours of the Cityscapes *label ids* (used by GTA5 label PNGs).
CITYSCAPES_LABELID_PALETTE: tuple[tuple[int, int, int], ...] = tuple(c for _, c in _CITYSCAPES_LABELS)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colormap.

    Bit ``j`` of the class index's red/green/blue triplet goes to bit ``7 - j // 3`` of the channel.

    Args:
        n: number of entries.

    Returns:
        (n, 3) uint8 array; entry 255 is (224, 224, 192).
    """
    idx = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (idx >> (3 * shift + channel)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def flat_palette(colours: tuple[tuple[int, int, int], ...], ignore_colour: tuple[int, int, int]) -> list[int]:
    """A 768-long palette for ``PIL.Image.putpalette``: the colours, black after them, ``ignore_colour`` at 255."""
    table = np.zeros((256, 3), dtype=np.int64)
    table[: len(colours)] = np.asarray(colours, dtype=np.int64).reshape(-1, 3)
    table[IGNORE_INDEX] = ignore_colour
    return table.reshape(-1).tolist()


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset's label space.

    Attributes:
        name: dataset key (see :data:`DATASET_INFO`).
        class_names: class names indexed by train id.
        palette: one RGB colour per class.
        has_background: whether class 0 is background.
        ignore_index: label of pixels that are not evaluated / not trained on.
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    has_background: bool
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        """Number of classes C (train ids 0..C-1)."""
        return len(self.class_names)

    def palette_bytes(self) -> list[int]:
        """Flat 768-long palette for ``putpalette``; index 255 is white, (224, 224, 192) for VOC-style sets."""
        ignore = (224, 224, 192) if self.has_background else (255, 255, 255)
        return flat_palette(self.palette, ignore)


def _voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    return tuple((int(r), int(g), int(b)) for r, g, b in voc_colormap(n))


DATASET_INFO: dict[str, DatasetInfo] = {
    "voc": DatasetInfo("voc", VOC_CLASSES, _voc_palette(len(VOC_CLASSES)), has_background=True),
    "coco": DatasetInfo("coco", COCO_CLASSES, _voc_palette(len(COCO_CLASSES)), has_background=True),
    "coco_stuff": DatasetInfo("coco_stuff", VOC_CLASSES, _voc_palette(len(VOC_CLASSES)), has_background=True),
    "cityscapes": DatasetInfo("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, has_background=False),
    "gta5": DatasetInfo("gta5", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, has_background=False),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset's :class:`DatasetInfo`.

    Raises:
        KeyError: unknown name; the message lists the valid names.
    """
    try:
        return DATASET_INFO[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid names: {sorted(DATASET_INFO)}") from None


def train_id_to_label_id(name: str) -> np.ndarray | None:
    """The train id -> label id lookup of dataset ``name`` for its benchmark server, if it has one.

    Returns:
        (256,) uint8 table (index it with a mask of train ids) for Cityscapes and GTA5, whose masks store
        Cityscapes label ids; None for VOC / COCO / COCO-Stuff, whose train ids are the values they store.
    """
    get_dataset_info(name)  # unknown names fail with the list of valid ones
    return CITYSCAPES_TRAINID_TO_ID if name in ("cityscapes", "gta5") else None
