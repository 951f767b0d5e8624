from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest

from wsss_lightning.data import synthetic
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import read_index_png
from wsss_lightning.data.supervision import load_tags, read_id_list, tags_from_mask
from wsss_lightning.data.synthetic import Layout, generate, generate_once, object_class_styles, plan_classes


def _read_all(root: Path, layout: str, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    source = build_source(layout, root, split)
    return [(source.read_image(i), source.read_mask(i)) for i in source.ids]


@pytest.mark.parametrize("layout", ["voc", "gta5"])
def test_deterministic_given_seed(tmp_path: Path, layout: Layout) -> None:
    a, b, c = (
        _read_all(generate(layout, tmp_path / name, seed, 3, 2, image_size=(32, 48)), layout, "val")
        for name, seed in (("a", 5), ("b", 5), ("c", 6))
    )
    for (img_a, mask_a), (img_b, mask_b) in zip(a, b, strict=True):
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(mask_a, mask_b)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_default_voc_size(tmp_path: Path) -> None:
    root = generate("voc", tmp_path)
    source = build_source("voc", root, "train_aug")
    assert len(source.ids) == 200 and len(read_id_list(root / "ImageSets/Segmentation/val.txt")) == 40
    assert source.read_image(source.ids[0]).shape == (128, 128, 3)


def test_voc_extra_files(tmp_path: Path) -> None:
    root = generate("voc", tmp_path, num_train=32, num_val=7, image_size=(40, 40))
    train = build_source("voc", root, "train_aug")
    assert len(build_source("voc", root, "train").ids) == 16
    for name, n_labeled in (("1_16", 2), ("1_8", 4), ("1_4", 8), ("1_2", 16)):
        labeled = read_id_list(root / "splits" / name / "labeled.txt")
        unlabeled = read_id_list(root / "splits" / name / "unlabeled.txt")
        assert len(labeled) == n_labeled and sorted(labeled + unlabeled) == sorted(train.ids)
    val_ids = build_source("voc", root, "val").ids
    tags = load_tags(root / "cls_labels.txt", 21, train.ids + val_ids)
    for sample_id in train.ids:
        mask = train.read_mask(sample_id)
        np.testing.assert_array_equal(tags[sample_id], tags_from_mask(mask, 21))
        clicks = read_index_png(root / "SegmentationClicks" / f"{sample_id}.png")
        marked = clicks != 255
        assert marked.any() and clicks.shape == mask.shape
        np.testing.assert_array_equal(clicks[marked], mask[marked])
        assert set(np.unique(clicks[marked])) == set(np.unique(mask[mask != 255]))


@pytest.mark.parametrize(
    ("layout", "num_val", "split"), [("voc", 7, "val"), ("coco", 27, "val"), ("cityscapes", 6, "val")]
)
def test_every_class_in_val(tmp_path: Path, layout: Layout, num_val: int, split: str) -> None:
    size = (32, 64) if layout == "cityscapes" else (32, 32)
    root = generate(layout, tmp_path, num_train=2, num_val=num_val, image_size=size)
    source = build_source(layout, root, split)
    seen = set()
    for sample_id in source.ids:
        seen |= set(np.unique(source.read_mask(sample_id)).tolist())
    assert set(range(source.info.num_classes)) <= seen


def test_objects_per_image_and_background(tmp_path: Path) -> None:
    root = generate("coco_stuff", tmp_path, num_train=12, num_val=2, image_size=(48, 48))
    source = build_source("coco_stuff", root, "train")
    for sample_id in source.ids:
        present = set(np.unique(source.read_mask(sample_id)).tolist())
        assert 0 in present and 1 <= len(present - {0, 255}) <= 3


def test_class_styles_distinct() -> None:
    styles = object_class_styles(80)
    assert len({(s.texture, s.shape) for s in styles[:36]}) == 36
    assert len({(s.texture, s.shape, tuple(round(c) for c in s.colour)) for s in styles}) == 80


def test_plan_classes_balanced() -> None:
    plans = plan_classes(np.random.default_rng(0), 30, 20)
    counts = np.bincount(np.concatenate(plans), minlength=21)[1:]
    assert all(1 <= len(p) <= 3 for p in plans) and counts.max() - counts.min() <= 1


def _mean_saturation(images: list[np.ndarray]) -> float:
    pixels = np.concatenate([img.reshape(-1, 3) for img in images])[::7] / 255.0
    return float(np.mean([colorsys.rgb_to_hsv(*p)[1] for p in pixels]))


def test_street_domain_gap(tmp_path: Path) -> None:
    city = _read_all(generate("cityscapes", tmp_path / "c", 0, 2, 4, (48, 96)), "cityscapes", "val")
    gta = _read_all(generate("gta5", tmp_path / "g", 0, 2, 4, (48, 96)), "gta5", "val")
    # same layout statistics: sky on top, road at the bottom
    for _, mask in city + gta:
        assert np.mean(mask[0] == 10) > 0.3 and np.mean(mask[-8] == 0) > 0.2
    # different style: GTA5 is more saturated and warmer
    assert _mean_saturation([i for i, _ in gta]) > _mean_saturation([i for i, _ in city]) + 0.1
    warmth = [np.mean(img[..., 0].astype(float) - img[..., 2]) for img, _ in city + gta]
    assert np.mean(warmth[4:]) > np.mean(warmth[:4]) + 10


def test_bad_layout(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="valid layouts"):
        generate("ade20k", tmp_path)  # type: ignore[arg-type]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_once_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = synthetic._WRITERS["voc"]

    def interrupted(root: Path, *args: object) -> None:
        (root / "JPEGImages").mkdir(parents=True)
        (root / "JPEGImages" / "half_written.jpg").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setitem(synthetic._WRITERS, "voc", interrupted)
    out = tmp_path / "sets" / "voc_small"
    with pytest.raises(KeyboardInterrupt):
        generate_once("voc", out, 3, 4, 2, (32, 32))
    assert list((tmp_path / "sets").iterdir()) == []  # neither the set nor its temporary folder
    monkeypatch.setitem(synthetic._WRITERS, "voc", writer)
    assert generate_once("voc", out, 3, 4, 2, (32, 32)) == out
    assert _tree(out) == _tree(generate("voc", tmp_path / "direct", 3, 4, 2, (32, 32)))
    assert [p.name for p in (tmp_path / "sets").iterdir()] == ["voc_small"]


def test_generate_once_reuses_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = generate_once("voc", tmp_path / "voc_small", 3, 4, 2, (32, 32))
    (out / "marker").write_text("kept")
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert generate_once("voc", out, 3, 4, 2, (32, 32)) == out and (out / "marker").read_text() == "kept"


def test_generate_once_fills_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "voc_small").mkdir()
    out = generate_once("voc", tmp_path / "voc_small", 3, 4, 2, (32, 32))
    assert _tree(out) == _tree(generate("voc", tmp_path / "direct", 3, 4, 2, (32, 32)))


def test_generate_once_another_process_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "voc_small"
    real = synthetic.generate

    def racing(layout: Layout, staged: Path, *args: object) -> Path:
        real(layout, out, *args)  # another process renames its complete set into place meanwhile
        (out / "theirs").write_text("")
        return real(layout, staged, *args)

    monkeypatch.setattr(synthetic, "generate", racing)
    assert generate_once("voc", out, 3, 4, 2, (32, 32)) == out
    assert (out / "theirs").exists() and [p.name for p in tmp_path.iterdir()] == ["voc_small"]
