from __future__ import annotations

import colorsys
import hashlib
from pathlib import Path

import numpy as np
import pytest

from wsss_lightning.data.cli import main
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.synthetic import Layout, generate
from wsss_lightning.data.synthetic_hard import hard_class_styles, plan_hard_classes

# sha256 over (relative path, bytes) of every file of generate(layout, seed=3, 4 train, 3 val, 32x48),
# computed with the generator as it was before the hard mode existed: easy output must not move.
EASY_CHECKSUMS = {
    "voc": "7e0985978a3de59981999919fb13e474f596083dccf64b9bfb1f263617b8ef98",
    "coco": "78f066128eebf1b697751c69455694ada24b5987114af24cc08df02e305fe170",
    "coco_stuff": "d2e3276a801337e2a88ca4ec6b90b9990f9ebedd237cb6c84a2f03204c683786",
    "cityscapes": "df5957f73960498b448eb256c8fc3b79bc2b95e978348807b0af03b11cdc57ef",
    "gta5": "265a389f5226c2ab9413c3d2c59b2d3a6317fa465954a0a79e7a7dfb8fdf49a8",
}


def _tree_checksum(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _read_all(root: Path, layout: str, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    source = build_source(layout, root, split)
    return [(source.read_image(i), source.read_mask(i)) for i in source.ids]


@pytest.mark.parametrize("layout", sorted(EASY_CHECKSUMS))
def test_easy_output_unchanged(tmp_path: Path, layout: Layout) -> None:
    root = generate(layout, tmp_path, seed=3, num_train=4, num_val=3, image_size=(32, 48))
    assert _tree_checksum(root) == EASY_CHECKSUMS[layout]
    explicit = generate(layout, tmp_path / "x", 3, 4, 3, (32, 48), difficulty="easy")
    assert _tree_checksum(explicit) == EASY_CHECKSUMS[layout]


@pytest.mark.parametrize("layout", ["voc", "cityscapes"])
def test_hard_deterministic_and_not_easy(tmp_path: Path, layout: Layout) -> None:
    size = (48, 64)
    a, b, c = (
        _tree_checksum(generate(layout, tmp_path / name, seed, 4, 3, size, difficulty="hard"))
        for name, seed in (("a", 5), ("b", 5), ("c", 6))
    )
    easy = _tree_checksum(generate(layout, tmp_path / "easy", 5, 4, 3, size))
    assert a == b and a != c and a != easy


def test_every_class_in_hard_val(tmp_path: Path) -> None:
    # 5 val images for 20 classes: four forced classes per image, the tightest case the guarantee covers.
    root = generate("voc", tmp_path, seed=1, num_train=2, num_val=5, image_size=(96, 96), difficulty="hard")
    seen: set[int] = set()
    for _, mask in _read_all(root, "voc", "val"):
        seen |= set(np.unique(mask).tolist())
    assert set(range(21)) <= seen


def test_hard_coco_val_covers_80_classes(tmp_path: Path) -> None:
    root = generate("coco", tmp_path, seed=0, num_train=1, num_val=20, image_size=(96, 96), difficulty="hard")
    seen: set[int] = set()
    for _, mask in _read_all(root, "coco", "val"):
        seen |= set(np.unique(mask).tolist())
    assert set(range(81)) <= seen


def test_hard_class_frequency_long_tailed(tmp_path: Path) -> None:
    root = generate("voc", tmp_path, seed=0, num_train=300, num_val=5, image_size=(32, 32), difficulty="hard")
    images_with = np.zeros(21, dtype=np.int64)
    for _, mask in _read_all(root, "voc", "train_aug"):
        images_with[np.unique(mask[mask != 255])] += 1
    per_class = images_with[1:]
    assert per_class.min() >= 1 and per_class.max() >= 5 * per_class.min(), per_class
    # a rare class shows in only a few % of the images, a frequent one in a large share
    assert per_class.min() <= 0.06 * 300 and per_class.max() >= 0.25 * 300


def test_hard_class_statistics() -> None:
    styles = hard_class_styles(20)
    colours = [tuple(round(c) for c in s.colour) for s in styles]
    # colour-shared pairs (same texture, hues a small step apart) that differ in shape; shape-shared classes
    # that differ in colour and texture
    hues = [colorsys.rgb_to_hsv(*(c / 255 for c in s.colour))[0] for s in styles]
    shared = [
        k
        for k in range(0, 20, 2)
        if styles[k].texture == styles[k + 1].texture and 0 < (hues[k + 1] - hues[k]) % 1.0 <= 0.1
    ]
    assert len(shared) >= 4 and all(styles[k].shape != styles[k + 1].shape for k in shared)
    assert len(set(colours)) >= 12  # the other classes keep colours of their own
    for k in range(12):
        assert styles[k].shape == styles[k + 8].shape
        # clearly another colour, not a near-identical hue (golden-ratio hues repeat every 8 classes)
        assert np.linalg.norm(np.subtract(styles[k].colour, styles[k + 8].colour)) > 80
        assert styles[k].texture != styles[k + 8].texture
    sizes = [s.size for s in styles]
    assert max(sizes) >= 2 * min(sizes)  # typical sizes 20 % to 42 % of the image side
    # co-occurrence: a partner is brought along much more often than its own frequency
    plans = plan_hard_classes(np.random.default_rng(0), 2000, styles, force_all=False)
    first = next(k + 1 for k, s in enumerate(styles) if s.partner is not None)
    partner = styles[first - 1].partner
    with_first = [p for p in plans if first in p]
    without = [p for p in plans if first not in p]
    rate_with = np.mean([partner in p for p in with_first])
    rate_without = np.mean([partner in p for p in without])
    assert rate_with > 0.5 and rate_with > 3 * rate_without


def test_hard_illumination_varies(tmp_path: Path) -> None:
    root = generate("voc", tmp_path, seed=0, num_train=2, num_val=24, image_size=(48, 48), difficulty="hard")
    images = [image.astype(np.float64) for image, _ in _read_all(root, "voc", "val")]
    brightness = np.asarray([img.mean() for img in images])
    red_blue = np.asarray([img[..., 0].mean() / (img[..., 2].mean() + 1) for img in images])
    assert brightness.max() - brightness.min() > 40 and red_blue.max() / red_blue.min() > 1.3


def test_hard_street_gap(tmp_path: Path) -> None:
    city = _read_all(generate("cityscapes", tmp_path / "c", 0, 2, 3, (48, 96), "hard"), "cityscapes", "val")
    gta = _read_all(generate("gta5", tmp_path / "g", 0, 2, 3, (48, 96), "hard"), "gta5", "val")
    assert city[0][0].shape == gta[0][0].shape == (48, 96, 3)
    assert all(np.mean(mask[0] == 10) > 0.3 for _, mask in city + gta)  # same layout: sky on top


def test_cli_difficulty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "synthetic",
        "--layout",
        "voc",
        "--out",
        str(tmp_path / "h"),
        "--num-train",
        "2",
        "--num-val",
        "5",
    ]
    assert main([*argv, "--size", "48", "48", "--difficulty", "hard"]) == 0
    hard = _tree_checksum(tmp_path / "h")
    assert hard == _tree_checksum(generate("voc", tmp_path / "g", 0, 2, 5, (48, 48), difficulty="hard"))
    with pytest.raises(SystemExit) as info:
        main([*argv, "--difficulty", "extreme"])
    assert info.value.code == 2
    assert "--difficulty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="difficulty 'extreme'"):
        generate("voc", tmp_path / "bad", difficulty="extreme")  # type: ignore[arg-type]
