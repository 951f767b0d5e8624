"""Hard mode of the synthetic datasets (``difficulty="hard"``): scenes where colour alone does not segment.

Object layouts: half of the classes share their texture and nearly their colour (hues 0.08 of a turn apart)
with one other class and differ from it mainly in shape (classes ``2g`` and ``2g + 1``, counted from 0, for
even ``g``); every class shares its shape with others of a clearly different colour and another texture
(classes ``k`` and ``k + 8``). Shapes include thin limbs, handles and thin bars. Class frequency is
long-tailed (Zipf over a fixed class order), each class has its own typical size (20 % to 42 % of the image
side, instances vary around it), some frequent classes pull a partner class next to them (co-occurrence,
touching or overlapping it), objects may overlap and be cut by the image border. Backgrounds hold smooth
multi-scale colour noise and distractor blobs and bands (class 0) that often take a class's colour. Every
image then gets its own illumination (gain, gamma, tint, a light gradient), noise and sometimes blur.

Street layouts: stronger Cityscapes / GTA5 styles, a Cityscapes palette shifted per class away from the
GTA5 colours, per-image lighting and cast shadows that ignore the labels.

Every class appears in the val split of an object layout: class ``c`` is forced into val image
``(c - 1) % num_val`` and drawn above the other objects; an image is redrawn (up to 20 tries, the last one
drawing its forced objects at least 15 % of the image side) until each of its planned classes keeps enough
pixels. With ``4 * num_val >= number of object classes`` (VOC: 5, COCO: 20; the defaults hold 40) an image
holds at most four forced objects and they stay visible (the tests check VOC with 5 val images and COCO
with 20).
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsss_lightning.data.synthetic import (
    _BASE_COLOURS,
    TEXTURES,
    StreetStyle,
    render_street,
    smooth_noise,
    texture_pattern,
)

HARD_SHAPES = ("ellipse", "rectangle", "triangle", "diamond", "thin_cross", "handle", "legged", "bar")
#: Zipf exponent of the class frequencies: with 20 classes the rarest is drawn 1/11 as often as the first.
_ZIPF = 0.8
#: Hue step between the two classes of a colour-shared pair: close enough that lighting and colour jitter
#: blur them, far enough that many examples separate them.
_PAIR_HUE_OFFSET = 0.08
_MIN_SIZE, _MAX_SIZE = 0.2, 0.42  # typical half-extents of the smallest and largest class
_PARTNER_PROB = 0.6  # chance that a class with a partner brings it along
_MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class HardClass:
    """Appearance and statistics of one object class in hard mode.

    Attributes:
        colour: RGB colour (0..255), a small hue step from the class's colour partner's.
        texture: texture name; ``pattern`` is its contrast.
        shape: one of :data:`HARD_SHAPES`.
        period: texture period in units of the image side.
        size: typical half-extent in units of the image side.
        weight: relative drawing frequency (long-tailed).
        partner: train id of the class that tends to appear next to this one, or ``None``.
    """

    colour: tuple[float, float, float]
    texture: str
    shape: str
    period: float
    size: float
    weight: float
    partner: int | None


def hard_class_styles(num_object_classes: int) -> list[HardClass]:
    """Appearances and statistics of the object classes 1..K (index 0 of the result is class 1)."""
    k_all = num_object_classes
    # A fixed class order for the frequencies, not tied to the colour or shape pairs.
    rank = np.argsort(np.random.default_rng(7 + k_all).permutation(k_all))
    by_rank = np.argsort(rank)
    styles = []
    for k in range(k_all):
        group = k // 2
        shared = group % 2 == 0  # every other pair shares colour and texture
        index = 2 * group if shared else k
        # Golden-ratio hues repeat within 0.06 every 8 steps, the shape period: a third of a turn per block of
        # 8 classes keeps the classes that share a shape apart in colour.
        hue = (index * 0.618034 + (k // 8) / 3 + (_PAIR_HUE_OFFSET * (k % 2) if shared else 0.0)) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.6 + 0.3 * ((index // 5) % 2), 0.9 - 0.2 * ((index // 2) % 2))
        # Frequent classes (the first fifth) bring a mid-frequency class along.
        partner = int(by_rank[rank[k] + k_all // 2]) + 1 if rank[k] < max(1, k_all // 5) else None
        styles.append(
            HardClass(
                colour=(255 * r, 255 * g, 255 * b),
                texture=TEXTURES[(group + (0 if shared else 3 * (k % 2))) % len(TEXTURES)],
                shape=HARD_SHAPES[k % len(HARD_SHAPES)],
                period=(0.06, 0.09, 0.12)[group % 3],
                size=float(_MIN_SIZE * (_MAX_SIZE / _MIN_SIZE) ** (((k * 7) % k_all) / max(1, k_all - 1))),
                weight=float((rank[k] + 1.0) ** -_ZIPF),
                partner=partner,
            )
        )
    return styles


def hard_shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of a hard-mode shape in normalised object coordinates (u across, v down, radius 1)."""
    mask: np.ndarray
    if shape == "ellipse":
        mask = u**2 + v**2 <= 1
    elif shape == "rectangle":
        mask = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    elif shape == "triangle":
        mask = (v <= 0.8) & (v >= 2.0 * np.abs(u) - 1.0)
    elif shape == "diamond":
        mask = np.abs(u) + np.abs(v) <= 1
    elif shape == "thin_cross":
        mask = ((np.abs(u) <= 0.12) & (np.abs(v) <= 1)) | ((np.abs(u) <= 1) & (np.abs(v) <= 0.12))
    elif shape == "handle":  # a box with a thin ring handle on its right (a mug, a bag)
        ring = (u - 0.55) ** 2 + v**2
        mask = ((np.abs(u) <= 0.55) & (np.abs(v) <= 0.7)) | ((ring <= 0.45**2) & (ring >= 0.33**2))
    elif shape == "legged":  # a body on four thin legs (an animal, a chair)
        body = (u / 0.95) ** 2 + ((v + 0.35) / 0.45) ** 2 <= 1
        legs = (np.abs(np.abs(u) - np.array([0.25, 0.7])[:, None, None]) <= 0.07).any(axis=0)
        mask = body | (legs & (v >= -0.2) & (v <= 1.0))
    elif shape == "bar":  # a thin elongated class (a pole, a bottle on its side)
        mask = (np.abs(u) <= 1) & (np.abs(v) <= 0.16)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {HARD_SHAPES}")
    return mask


def plan_hard_classes(
    rng: np.random.Generator, num_images: int, styles: list[HardClass], force_all: bool
) -> list[list[int]]:
    """Object classes of each image: long-tailed draws plus partners, then (val) one forced class each.

    Args:
        rng: random generator.
        num_images: number of images.
        styles: :func:`hard_class_styles`.
        force_all: put class ``c`` into image ``(c - 1) % num_images`` too (kept last, drawn on top).

    Returns:
        Per image, the train ids of its objects in drawing order (a class may appear twice).
    """
    k_all = len(styles)
    weights = np.asarray([s.weight for s in styles])
    counts = 1 + rng.binomial(3, 0.4, size=num_images)
    draws = rng.choice(k_all, size=int(counts.sum()), p=weights / weights.sum()) + 1
    bring = rng.random(int(counts.sum())) < _PARTNER_PROB
    bounds = np.concatenate([[0], np.cumsum(counts)])
    plans = []
    for i in range(num_images):
        drawn = draws[bounds[i] : bounds[i + 1]].tolist()
        partners = [
            partner
            for c, b in zip(drawn, bring[bounds[i] : bounds[i + 1]].tolist(), strict=True)
            if b and (partner := styles[c - 1].partner) is not None
        ]
        plans.append(drawn + partners)
    if force_all:
        for c in range(1, k_all + 1):
            plans[(c - 1) % num_images].append(c)
    return plans


def hard_background(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, styles: list[HardClass]
) -> np.ndarray:
    """(H, W, 3) float32 cluttered background: coloured multi-scale noise, blobs and bands of no class.

    About half of the distractors take a class's colour (and maybe its texture) on an irregular blob or a
    straight band, so that colour and texture alone do not mark an object.
    """
    h, w = yy.shape
    side = min(h, w)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.35, 0.85))
    image = np.empty((h, w, 3), dtype=np.float32)
    image[:] = (255 * r, 255 * g, 255 * b)
    for c in range(3):
        image[..., c] += rng.uniform(6, 18) * smooth_noise(rng, h, w, int(rng.integers(2, 6)))
    image += (rng.uniform(8, 20) * smooth_noise(rng, h, w, max(4, side // 8)))[..., None]
    for _ in range(int(rng.integers(0, 3))):
        if rng.random() < 0.4:
            style = styles[int(rng.integers(len(styles)))]
            colour = np.asarray(style.colour, dtype=np.float32) * rng.uniform(0.8, 1.15)
            texture = style.texture if rng.random() < 0.3 else TEXTURES[int(rng.integers(len(TEXTURES)))]
        else:
            rr, gg, bb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.3, 0.95))
            colour = np.asarray((255 * rr, 255 * gg, 255 * bb), dtype=np.float32)
            texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.7:  # an irregular blob
            radius = rng.uniform(0.06, 0.2) * side
            r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
            region = r2 <= 1 + 0.7 * smooth_noise(rng, h, w, 3)
        else:  # a straight band (a table edge, a wall)
            angle = rng.uniform(0, np.pi)
            dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
            region = dist <= rng.uniform(0.02, 0.08) * side
        pattern = texture_pattern(texture, yy, xx, rng.uniform(0.05, 0.14) * side)
        pixels = colour * (1.0 - rng.uniform(0.25, 0.6) * pattern[..., None])
        image[region] = pixels[region]
    return image


def _place(
    rng: np.random.Generator,
    size: tuple[int, int],
    style: HardClass,
    anchor: tuple[float, float, float] | None,
    min_radius: float,
) -> tuple[float, float, float, float]:
    """Centre (y, x) and half-extents (ry, rx) of an object; next to ``anchor`` (y, x, r) for a partner."""
    h, w = size
    side = min(h, w)
    r = max(min_radius, style.size * side * float(np.exp(rng.normal(0.0, 0.3))))
    aspect = float(np.exp(rng.normal(0.0, 0.15)))
    if anchor is None:
        cy, cx = rng.uniform(-0.1 * h, 1.1 * h), rng.uniform(-0.1 * w, 1.1 * w)
    else:  # touching or overlapping its companion
        angle = rng.uniform(0, 2 * np.pi)
        dist = (anchor[2] + r) * rng.uniform(0.5, 1.0)
        cy, cx = anchor[0] + dist * np.sin(angle), anchor[1] + dist * np.cos(angle)
    # Keep the centre inside the image so that at most part of the object is cut off.
    return float(np.clip(cy, 0, h - 1)), float(np.clip(cx, 0, w - 1)), r * aspect, r / aspect


def lighting(rng: np.random.Generator, image: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Per-image illumination and camera: gain, gamma, tint, a light gradient, noise, sometimes blur.

    Args:
        rng: random generator.
        image: (H, W, 3) float32 in 0..255.
        yy: (H, W) row coordinates.
        xx: (H, W) column coordinates.

    Returns:
        (H, W, 3) uint8.
    """
    h, w = yy.shape
    unit = np.clip(image / 255.0, 0.0, 1.0) ** rng.uniform(0.85, 1.2)
    tint = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((yy / h - 0.5) * np.sin(angle) + (xx / w - 0.5) * np.cos(angle)) * rng.uniform(0.0, 0.3)
    out = 255.0 * rng.uniform(0.75, 1.15) * unit * tint * (1.0 + ramp)[..., None]
    out += rng.normal(0, rng.uniform(2, 6), size=out.shape).astype(np.float32)
    if rng.random() < 0.3:
        out = ndimage.gaussian_filter(out, sigma=(rng.uniform(0.5, 1.2),) * 2 + (0.0,))
    rgb: np.ndarray = np.clip(out, 0, 255).astype(np.uint8)
    return rgb


def hard_object_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    classes: list[int],
    styles: list[HardClass],
    num_forced: int,
    min_forced_radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one hard image holding an object of each of ``classes`` (its last ``num_forced`` on top).

    Unforced objects are drawn largest first (small ones occlude large ones); a partner is drawn next to
    the object that brought it.

    Returns:
        ``(image, mask)``: (H, W, 3) uint8 and (H, W) uint8 train ids (0 = background).
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = hard_background(rng, yy, xx, styles)
    mask = np.zeros((h, w), dtype=np.uint8)
    free = classes[: len(classes) - num_forced]
    placed: dict[int, tuple[float, float, float]] = {}
    objects = []
    for index, cls in enumerate(classes):
        style = styles[cls - 1]
        anchor = next((placed[c] for c in placed if styles[c - 1].partner == cls), None)
        forced = index >= len(free)
        cy, cx, ry, rx = _place(rng, size, style, anchor, min_forced_radius if forced else 0.0)
        placed.setdefault(cls, (cy, cx, (ry + rx) / 2))
        objects.append((forced, -(ry * rx), cls, cy, cx, ry, rx, rng.uniform(-0.6, 0.6)))
    for _, _, cls, cy, cx, ry, rx, angle in sorted(objects, key=lambda o: (o[0], o[1])):
        style = styles[cls - 1]
        dy, dx = yy - cy, xx - cx
        u = (np.sin(angle) * dy + np.cos(angle) * dx) / rx
        v = (np.cos(angle) * dy - np.sin(angle) * dx) / ry
        region = hard_shape_mask(style.shape, u, v)
        period = style.period * min(h, w) * rng.uniform(0.8, 1.25)
        pattern = texture_pattern(style.texture, yy, xx, period)
        colour = np.asarray(style.colour, dtype=np.float32) * rng.uniform(0.88, 1.1, size=3)
        shading = 1.0 + 0.15 * smooth_noise(rng, h, w, 2)
        pixels = colour * (1.0 - rng.uniform(0.4, 0.6) * pattern[..., None]) * shading[..., None]
        image[region] = pixels[region]
        mask[region] = cls
    return lighting(rng, image, yy, xx), mask


def hard_object_split(
    seed: int, split_index: int, num_images: int, size: tuple[int, int], num_object_classes: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images and masks (without ignored boundaries) of one split of an object layout in hard mode.

    The val split (``split_index`` 1) holds every class; see the module docstring.
    """
    styles = hard_class_styles(num_object_classes)
    force = split_index == 1
    plans = plan_hard_classes(
        np.random.default_rng([seed, split_index, 10**6, 1]), num_images, styles, force_all=force
    )
    min_pixels = max(12, min(size) ** 2 // 300)
    samples = []
    for index, classes in enumerate(plans):
        # plan_hard_classes put the classes c with (c - 1) % num_images == index last in this image
        num_forced = len(range(index, num_object_classes, num_images)) if force else 0
        for attempt in range(_MAX_ATTEMPTS):
            last = attempt == _MAX_ATTEMPTS - 1
            image, mask = hard_object_scene(
                np.random.default_rng([seed, split_index, index, attempt, 1]),
                size,
                classes,
                styles,
                num_forced,
                0.15 * min(size) if last else 0.0,
            )
            counts = np.bincount(mask.reshape(-1), minlength=256)
            if all(counts[c] >= min_pixels for c in classes):
                break
        samples.append((image, mask))
    return samples


# Street scenes: the easy renderer with stronger styles, a per-class palette shift for the Cityscapes side,
# per-image lighting and cast shadows that ignore the labels.
HARD_STREET_STYLES: dict[str, StreetStyle] = {
    "cityscapes": StreetStyle(0.45, (0.9, 0.97, 1.1), 0.7, 7.0, 10.0, 6, 0.9),
    "gta5": StreetStyle(1.8, (1.15, 1.0, 0.78), 1.3, 2.0, 28.0, 14, 0.0),
}


@functools.cache  # one palette per domain, read by every image
def hard_street_colours(domain: str) -> Mapping[int, tuple[int, int, int]]:
    """Base colour of each Cityscapes label id in ``domain`` (``"cityscapes"`` or ``"gta5"``).

    GTA5 keeps the easy colours; Cityscapes shifts each class's hue and brightness by a fixed amount of its
    own, so the gap is a different palette per class, not one global colour cast.
    """
    if domain == "gta5":
        return _BASE_COLOURS
    rng = np.random.default_rng(1234)  # fixed: the palette belongs to the domain, not to the seed
    colours = {}
    for label, rgb in sorted(_BASE_COLOURS.items()):
        hue, sat, val = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        r, g, b = colorsys.hsv_to_rgb(
            (hue + rng.uniform(-0.12, 0.12)) % 1.0,
            sat * rng.uniform(0.6, 1.0),
            min(1.0, val * rng.uniform(0.75, 1.2)),
        )
        colours[label] = (round(255 * r), round(255 * g), round(255 * b))
    return colours


def render_street_hard(rng: np.random.Generator, labels: np.ndarray, domain: str) -> np.ndarray:
    """Render Cityscapes label ids in the hard style of ``domain`` (``"cityscapes"`` or ``"gta5"``).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    h, w = labels.shape
    image = render_street(rng, labels, HARD_STREET_STYLES[domain], hard_street_colours(domain)).astype(
        np.float32
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):  # cast shadows: darker irregular blobs across any class
        radius = rng.uniform(0.1, 0.3) * min(h, w)
        cy, cx = rng.uniform(0.3 * h, h), rng.uniform(0, w)
        r2 = ((yy - cy) / radius) ** 2 + ((xx - cx) / (2 * radius)) ** 2
        image[r2 <= 1 + 0.6 * smooth_noise(rng, h, w, 3)] *= rng.uniform(0.45, 0.75)
    return lighting(rng, image, yy, xx)
