"""Rare-class sampling: probabilities, draws, the crop re-draw and the class statistics file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import wsss_lightning.data.rare_classes as rc
from wsss_lightning.data.cli import main as data_main
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import SegmentationSource
from wsss_lightning.data.rare_classes import (
    ClassStats,
    RareClassSampler,
    RareClassSampling,
    compute_class_stats,
    default_stats_path,
    load_class_stats,
    rare_class_probabilities,
    resolve_class_stats,
    save_class_stats,
)
from wsss_lightning.data.synthetic import generate
from wsss_lightning.data.transforms import TrainTransform, derived_seed

COUNTS = np.array(
    [
        [5000, 100, 0, 4000, 0],
        [9000, 3001, 0, 0, 2000],
        [8000, 0, 0, 3500, 2500],
    ],
    dtype=np.int64,
)


def test_probabilities_follow_the_daformer_formula() -> None:
    classes, p = rare_class_probabilities(COUNTS, min_pixels=3000, temperature=0.05)
    # class 2 is absent, class 4 never exceeds 3000 px in one image: neither can be drawn
    assert classes.tolist() == [0, 1, 3]
    freq = COUNTS.sum(0) / COUNTS.sum()
    expected = np.exp((1 - freq[[0, 1, 3]]) / 0.05)
    np.testing.assert_allclose(p, expected / expected.sum(), rtol=1e-12)
    assert p.argmax() == 1  # the rarest drawable class is the likeliest
    with pytest.raises(ValueError, match="min_pixels=10000"):
        rare_class_probabilities(COUNTS, min_pixels=10000, temperature=0.01)


def test_draws_are_keyed_and_follow_p() -> None:
    options = RareClassSampling(temperature=0.5, min_pixels=3000)  # every class drawn often enough to count
    sampler = RareClassSampler(COUNTS, options)
    assert [pool.tolist() for pool in sampler.pools] == [[0, 1, 2], [1], [0, 2]]
    draws = [sampler.draw(seed) for seed in range(6000)]
    assert draws == [sampler.draw(seed) for seed in range(6000)]  # a pure function of the seed
    classes = np.array([c for c, _ in draws])
    for c, row in draws[:200]:
        assert COUNTS[row, c] > 3000  # the image comes from the class's pool
    observed = np.array([(classes == c).sum() for c in sampler.classes])
    expected = sampler.probabilities * len(draws)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001
    rows_of_class0 = np.array([row for c, row in draws if c == 0])
    assert (
        np.bincount(rows_of_class0, minlength=3).min() > len(rows_of_class0) / 3 * 0.8
    )  # uniform over the pool


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("min_pixels", -1),
        ("min_pixels", 1.5),
        ("min_crop_ratio", -0.1),
        ("max_redraws", -2),
    ],
)
def test_options_are_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"RareClassSampling\.{field}: expected"):
        RareClassSampling(**{field: value})  # type: ignore[arg-type]


def _transform() -> TrainTransform:
    return TrainTransform(crop_size=16, scale_range=(1.0, 1.0), hflip_p=0.5, color_jitter=0.2)


def test_crop_is_redrawn_until_the_class_is_in_it() -> None:
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :32] = 7  # class 7 only in the top-left quarter: most 16x16 crops miss it
    tf = _transform()
    kept = first = 0
    for seed in range(40):
        plain = tf(image, mask, seed=seed)
        out = tf(image, mask, seed=seed, required_class=7, min_class_pixels=20, max_redraws=10)
        again = tf(image, mask, seed=seed, required_class=7, min_class_pixels=20, max_redraws=10)
        assert all(np.array_equal(out[k], again[k]) for k in ("image", "mask", "valid_box"))  # deterministic
        if (plain["mask"] == 7).sum() > 20:
            assert np.array_equal(out["image"], plain["image"])  # the first crop is kept when it qualifies
            first += 1
        kept += int((out["mask"] == 7).sum() > 20)
    # a crop holds > 20 px of the quarter with P ~ 0.37; one of 11 tries does with P ~ 0.99
    assert first < 25 and kept >= 38


def test_last_redraw_is_kept_unchecked() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    tf = _transform()
    out = tf(image, mask, seed=3, required_class=5, min_class_pixels=0, max_redraws=4)
    last = tf(image, mask, seed=derived_seed(3, 4))  # the 4th re-draw, whatever it holds
    assert np.array_equal(out["valid_box"], last["valid_box"]) and np.array_equal(out["image"], last["image"])
    with pytest.raises(ValueError, match="needs the mask"):
        tf(image, None, seed=1, required_class=5, max_redraws=1)


# ---- statistics files ------------------------------------------------------------------------------------
@pytest.fixture()
def gta(tmp_path: Path) -> Path:
    return Path(generate("gta5", tmp_path / "gta5", seed=1, num_train=6, num_val=2, image_size=(24, 40)))


def _reference_counts(source: SegmentationSource) -> np.ndarray:
    return np.array(
        [[(source.read_mask(i) == c).sum() for c in range(source.info.num_classes)] for i in source.ids]
    )


def test_cli_writes_class_stats_beside_the_dataset(gta: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert data_main(["class-stats", "--dataset", "gta5", "--root", str(gta), "--split", "train"]) == 0
    path = gta / "class_stats_train.npz"
    assert str(path) in capsys.readouterr().out
    source = build_source("gta5", gta, "train")
    stats = load_class_stats(path)
    assert stats.ids == source.ids and stats.num_classes == 19 and stats.version == rc.STATS_VERSION
    assert stats.counts.dtype == np.int64
    np.testing.assert_array_equal(stats.counts, _reference_counts(source))
    assert stats.label_mtime == max(source.mask_path(i).stat().st_mtime for i in source.ids)  # type: ignore[union-attr]


def test_stats_are_written_reused_and_rebuilt_when_stale(gta: Path, tmp_path: Path) -> None:
    source = build_source("gta5", gta, "train")
    lines: list[str] = []
    first = resolve_class_stats(source, None, tmp_path / "cache", log=lines.append)
    path = default_stats_path(gta, "train")
    assert path.is_file() and len(lines) == 1 and str(path) in lines[0]
    again = resolve_class_stats(source, None, tmp_path / "cache", log=lines.append)
    assert len(lines) == 1 and np.array_equal(again.counts, first.counts)  # fresh: read, not rebuilt

    label = source.mask_path(source.ids[0])
    assert label is not None
    future = first.label_mtime + 100
    os.utime(label, (future, future))
    resolve_class_stats(source, None, tmp_path / "cache", log=lines.append)
    assert "stale (a label file is newer" in lines[1] and load_class_stats(path).label_mtime == future

    fewer = build_source("gta5", gta, "val")  # other ids under the same file name
    save_class_stats(default_stats_path(gta, "val"), first)
    stats = resolve_class_stats(fewer, None, tmp_path / "cache", log=lines.append)
    assert "ids differ" in lines[-2] and stats.ids == fewer.ids

    save_class_stats(path, ClassStats(first.ids, first.counts, 19, future, version=0))
    resolve_class_stats(source, None, tmp_path / "cache", log=lines.append)
    assert "version is 0, expected 1" in lines[-2] and load_class_stats(path).version == rc.STATS_VERSION


def test_unwritable_root_writes_to_the_cache(
    gta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = build_source("gta5", gta, "train")
    real_access = os.access
    monkeypatch.setattr(rc.os, "access", lambda p, mode: False if Path(p) == gta else real_access(p, mode))
    lines: list[str] = []
    resolve_class_stats(source, None, tmp_path / "cache", log=lines.append)
    cached = tmp_path / "cache" / "class_stats_gta5_train.npz"
    assert cached.is_file() and not default_stats_path(gta, "train").exists()
    assert len(lines) == 1 and "not writable" in lines[0] and str(cached) in lines[0]
    resolve_class_stats(source, None, tmp_path / "cache", log=lines.append)
    assert len(lines) == 1  # read back from the cache


def test_explicit_stats_file_must_match(gta: Path, tmp_path: Path) -> None:
    source = build_source("gta5", gta, "train")
    stats = compute_class_stats(source)
    given = save_class_stats(tmp_path / "given.npz", stats)
    assert resolve_class_stats(source, given, tmp_path).ids == source.ids
    save_class_stats(given, ClassStats(stats.ids, stats.counts[:, :5], 5, stats.label_mtime))
    with pytest.raises(ValueError, match=rf"{given}: num_classes is 5, expected 19"):
        resolve_class_stats(source, given, tmp_path)
    save_class_stats(given, ClassStats(stats.ids[:-1], stats.counts[:-1], 19, stats.label_mtime))
    with pytest.raises(ValueError, match=rf"{given}: ids differ .*missing e\.g\. \['{source.ids[-1]}'\]"):
        resolve_class_stats(source, given, tmp_path)
    with pytest.raises(FileNotFoundError, match="wsss-data class-stats"):
        resolve_class_stats(source, tmp_path / "missing.npz", tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"broken\.npz cannot be read"):
        resolve_class_stats(source, tmp_path / "broken.npz", tmp_path)
    shutil.rmtree(tmp_path / "gta5" / "labels")
    with pytest.raises(Exception, match="mask file"):
        compute_class_stats(source)
