"""Point (click) annotations given as coordinates: parsing "What's the Point" click files and rasterising them.

The manual foreground clicks of "What's the Point" (Bearman et al., ECCV 2016) and the background clicks
derived from ScribbleSup scribbles are distributed (e.g. with the Gated-CRF code, and used by Seminar Learning)
as JSON objects ``{image_id: [click, ...]}``. Each click is an object with

* ``x`` (column) and ``y`` (row): pixel coordinates, mostly non-integer floats, a few ints; some lie outside
  the image (a few background clicks sit exactly on ``x == width``, one past the last pixel);
* ``cls``: the train id (VOC: 1..20 in the foreground file, 0 in the background file);
* ``rank`` (foreground file only): the instance index within its class; accepted and ignored, as are any
  other keys.

Rasterisation (the paper's clicks are 1x1 px): each click becomes the pixel ``(floor(y + 0.5),
floor(x + 0.5))``, i.e. the nearest pixel with halves rounded up (not NumPy's round-half-to-even, so
2.5 -> 3 and -0.5 -> 0). A click whose float coordinate lies within one pixel of the image, ``-1 <= x <= width``
and ``-1 <= y <= height``, is clamped to the nearest border pixel; clicks farther out are dropped and counted.
Later clicks overwrite earlier ones on the same pixel, so drawing the foreground file first and the background
file second lets the background win a collision, as Gated-CRF's concatenation of the two lists does.

Pure Python / NumPy (no file access); :func:`wsss_lightning.data.prepare.write_clicks_from_json` writes the
click PNGs of a dataset split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss_lightning.data.datasets.base import DataError

#: Label of pixels without a click.
UNLABELLED = 255


@dataclass(frozen=True)
class PointClicks:
    """The clicks of one image from one file: float coordinates and integer classes, in file order.

    Attributes:
        x: (N,) float64 columns.
        y: (N,) float64 rows.
        cls: (N,) int64 train ids.
    """

    x: np.ndarray
    y: np.ndarray
    cls: np.ndarray

    def __len__(self) -> int:
        return int(self.cls.shape[0])


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_click_table(data: Any, source: str, num_classes: int) -> dict[str, PointClicks]:
    """Validate a decoded click JSON object and convert it to per-image arrays.

    Args:
        data: the decoded JSON, ``{image_id: [{"x": .., "y": .., "cls": .., ("rank": ..)}, ...]}``.
        source: name of the file the data came from (used in error messages).
        num_classes: number of classes C; every ``cls`` must be an integer in [0, C).

    Returns:
        ``{image_id: PointClicks}`` in the object's order (an empty list gives zero clicks).

    Raises:
        DataError (a ``ValueError``): the data is not an object of lists, a click is not an object, ``x`` /
            ``y`` / ``cls`` is missing or not a number, a coordinate is not finite, or ``cls`` is not an integer
            in [0, C). The message names ``source``, the image id and the click's (0-based) index in its list,
            e.g. ``voc_fg.json: image '2008_003682' click 3: cls 25 is outside 0..20``.
    """
    if not isinstance(data, Mapping):
        raise DataError(
            f"{source}: expected a JSON object mapping image ids to lists of clicks, got {type(data).__name__}"
        )
    table: dict[str, PointClicks] = {}
    for image_id, clicks in data.items():
        where = f"{source}: image {str(image_id)!r}"
        if not isinstance(clicks, list):
            raise DataError(f"{where}: expected a list of clicks, got {type(clicks).__name__}")
        xs, ys, classes = [], [], []
        for index, click in enumerate(clicks):
            at = f"{where} click {index}"
            if not isinstance(click, Mapping):
                raise DataError(f"{at}: expected an object with x, y and cls, got {click!r}")
            for key in ("x", "y", "cls"):
                if key not in click:
                    raise DataError(
                        f"{at}: missing {key!r} (a click needs x, y and cls), got {dict(click)!r}"
                    )
                if not _number(click[key]):
                    raise DataError(f"{at}: {key} is not a number: {click[key]!r}")
            cls = click["cls"]
            try:
                x, y = float(click["x"]), float(click["y"])
            except OverflowError:  # an int too large for a float
                x = y = math.inf
            if not (math.isfinite(x) and math.isfinite(y)):
                raise DataError(f"{at}: coordinates must be finite, got x={click['x']!r} y={click['y']!r}")
            if isinstance(cls, float):
                if not (math.isfinite(cls) and cls.is_integer()):
                    raise DataError(f"{at}: cls must be an integer class id, got {cls!r}")
                cls = int(cls)
            if not 0 <= cls < num_classes:
                raise DataError(f"{at}: cls {cls} is outside 0..{num_classes - 1}")
            xs.append(x)
            ys.append(y)
            classes.append(cls)
        table[str(image_id)] = PointClicks(
            x=np.asarray(xs, dtype=np.float64),
            y=np.asarray(ys, dtype=np.float64),
            cls=np.asarray(classes, dtype=np.int64),
        )
    return table


def round_to_pixel(values: np.ndarray) -> np.ndarray:
    """Nearest pixel index of float coordinates, halves rounded up: ``floor(v + 0.5)`` (int64)."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def click_pixels(clicks: PointClicks, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel positions of clicks, with the clamping and dropping rules of this module.

    Args:
        clicks: the clicks of one image.
        height: image height H.
        width: image width W.

    Returns:
        ``(rows, cols, keep)``: (N,) int64 pixel rows / columns (clamped into the image) and the (N,) bool
        mask of the clicks kept: those with ``-1 <= x <= W`` and ``-1 <= y <= H``.
    """
    keep = (clicks.x >= -1) & (clicks.x <= width) & (clicks.y >= -1) & (clicks.y <= height)
    rows = np.clip(round_to_pixel(clicks.y), 0, height - 1)
    cols = np.clip(round_to_pixel(clicks.x), 0, width - 1)
    return rows, cols, keep


def draw_clicks(canvas: np.ndarray, clicks: PointClicks) -> int:
    """Draw clicks into an (H, W) uint8 label map in place, in order (a later click wins its pixel).

    Returns:
        The number of clicks dropped for lying more than one pixel outside the image.
    """
    if canvas.ndim != 2:
        raise ValueError(f"canvas: expected an (H, W) label map, got shape {canvas.shape}")
    height, width = canvas.shape
    rows, cols, keep = click_pixels(clicks, height, width)
    # A plain loop (images hold a handful of clicks): NumPy does not promise which of several values assigned
    # to one pixel by a fancy index wins, and the order matters here.
    for row, col, cls in zip(
        rows[keep].tolist(), cols[keep].tolist(), clicks.cls[keep].tolist(), strict=True
    ):
        canvas[row, col] = cls
    return int((~keep).sum())


def rasterise_clicks(
    layers: Sequence[PointClicks], height: int, width: int, ignore_index: int = UNLABELLED
) -> tuple[np.ndarray, int]:
    """Rasterise clicks into a 1-px click map.

    Args:
        layers: click sets drawn in this order (e.g. the foreground file's, then the background file's), so a
            later layer wins a pixel both mark.
        height: image height H.
        width: image width W.
        ignore_index: value of pixels without a click.

    Returns:
        ``(clicks, dropped)``: (H, W) uint8 map, the class id at click pixels and ``ignore_index`` elsewhere,
        and the number of clicks dropped for lying more than one pixel outside the image.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    canvas = np.full((height, width), ignore_index, dtype=np.uint8)
    dropped = sum(draw_clicks(canvas, layer) for layer in layers)
    return canvas, dropped
