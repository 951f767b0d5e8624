"""``wsss predict`` on a folder or a list file of the user's own images (no masks, no dataset layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.test_cli import CONFIGS, TINY
from wsss_lightning.cli import run_cli
from wsss_lightning.data.classes import CITYSCAPES_TRAINID_TO_ID
from wsss_lightning.data.datasets.base import DataError

WINDOW = ["--model.init_args.inference.window=48", "--model.init_args.inference.stride=32"]


def image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def predict(dataset: str, images: Path, out: Path, *extra: str) -> None:
    """``wsss predict`` with an untrained tiny model; the config's dataset root does not exist here."""
    config = CONFIGS / "supervised" / f"{dataset}.yaml"
    window = WINDOW if "window:" in config.read_text() else []
    run_cli([
        "predict", "--config", str(config), *TINY, *window, f"--data.source.predict_images={images}",
        "--trainer.callbacks+=wsss_lightning.callbacks.PredictionWriter", f"--trainer.callbacks.output_dir={out}",
        *extra,
    ])  # fmt: skip


def test_folder_of_two_sizes_mirrors_names_at_own_sizes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image(tmp_path / "photos" / "a.jpg", 40, 30)
    image(tmp_path / "photos" / "street" / "a.png", 24, 50, seed=1)  # same stem, other folder
    image(tmp_path / "photos" / ".hidden" / "b.png", 8, 8)  # hidden: skipped
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    assert not (tmp_path / "data").exists()  # the config's dataset root is never needed
    predict("voc", Path("photos"), tmp_path / "out")
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == ["a.png", "street/a.png"]
    for name, size in (("a.png", (40, 30)), ("street/a.png", (24, 50))):
        pred = Image.open(tmp_path / "out" / name)
        assert pred.mode == "P"  # VOC: palette PNGs
        values = np.asarray(pred)
        assert values.shape == size and values.max() < 21


def test_list_file_without_masks_resized_back_to_image_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = image(tmp_path / "shots" / "day" / "x.png", 30, 44)
    image(tmp_path / "shots" / "night" / "y.jpg", 52, 36, seed=2)
    listing = tmp_path / "shots" / "list.txt"
    # a phone photo stored 24 x 40 with EXIF orientation 6 (shown rotated by 90 degrees: 40 x 24)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(
        tmp_path / "shots" / "night" / "phone shot.jpg", exif=exif
    )
    # absolute and relative to the list's folder; a name with a space
    listing.write_text(f"# my images\n{first}\nnight/y.jpg\nnight/phone shot.jpg\n")
    # evaluation resizes to a short side of 20; the written maps are back at each image's own size
    predict("voc", listing, tmp_path / "out", "--data.init_args.transform.eval_short_side=20")
    assert np.asarray(Image.open(tmp_path / "out" / "day" / "x.png")).shape == (30, 44)
    assert np.asarray(Image.open(tmp_path / "out" / "night" / "y.png")).shape == (52, 36)
    assert np.asarray(Image.open(tmp_path / "out" / "night" / "phone shot.png")).shape == (40, 24)  # upright


def test_cityscapes_label_ids_by_default_and_train_ids_on_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image(tmp_path / "frames" / "berlin" / "berlin_000000_000019_leftImg8bit.png", 32, 64)
    predict("cityscapes", tmp_path / "frames", tmp_path / "ids")
    label_ids = np.asarray(Image.open(tmp_path / "ids" / "berlin" / "berlin_000000_000019_leftImg8bit.png"))
    assert label_ids.shape == (32, 64)
    assert set(np.unique(label_ids).tolist()) <= set(CITYSCAPES_TRAINID_TO_ID[:19].tolist())

    predict("cityscapes", tmp_path / "frames", tmp_path / "train", "--trainer.callbacks.format=trainid")
    train_ids = np.asarray(Image.open(tmp_path / "train" / "berlin" / "berlin_000000_000019_leftImg8bit.png"))
    assert train_ids.max() < 19
    np.testing.assert_array_equal(CITYSCAPES_TRAINID_TO_ID[train_ids], label_ids)  # the same prediction


def test_bad_inputs_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match=r"predict_images folder .*empty holds no images"):
        predict("voc", tmp_path / "empty", tmp_path / "out")

    image(tmp_path / "some" / "ok.png", 10, 10)
    listing = tmp_path / "some" / "list.txt"
    listing.write_text("ok.png\ngone.jpg\n")
    with pytest.raises(DataError, match=r"(?s)list\.txt: 1 of 2 listed images do not exist.*gone\.jpg"):
        predict("voc", listing, tmp_path / "out")

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image file .*bad\.jpg"):
        predict("voc", tmp_path / "broken", tmp_path / "out")

    with pytest.raises(FileNotFoundError, match=r"predict_images .*nowhere does not exist"):
        predict("voc", tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing ran
