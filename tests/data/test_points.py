"""Clicks given as coordinates ("What's the Point" JSON): parsing, rasterising, the ``clicks-from-json`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsss_lightning.data import ClickView, DatasetSource, LoaderOptions, TransformOptions, WSSSDataModule
from wsss_lightning.data.cli import main
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import DataError, read_index_png
from wsss_lightning.data.points import PointClicks, parse_click_table, rasterise_clicks, round_to_pixel
from wsss_lightning.data.prepare import write_clicks_from_json
from wsss_lightning.data.synthetic import generate, write_whats_the_point_json

H, W = 40, 48  # synthetic image size (rows, columns)
N_TRAIN = 6


def clicks(*points: tuple[float, float, int]) -> PointClicks:
    """PointClicks from (x, y, cls) triples."""
    x, y, cls = zip(*points, strict=True) if points else ((), (), ())
    return PointClicks(np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(cls, np.int64))


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("points") / "voc"
    return generate("voc", root, seed=1, num_train=N_TRAIN, num_val=2, image_size=(H, W))


@pytest.fixture()
def wtp(voc: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Foreground / background click files of the train_aug split, the first image with out-of-image clicks."""
    return write_whats_the_point_json(
        voc, "train_aug", tmp_path / "voc_fg.json", tmp_path / "voc_bg.json", seed=3, outside_clicks=1
    )


# ---- rounding, clamping, dropping ----------------------------------------------------------------------
def test_rounding_is_floor_of_v_plus_half() -> None:
    values = np.array([2.5, 3.5, 2.49, -0.5, -0.51, 0.0, 7.0])
    # halves go up (NumPy's round would give 2 and 4 for 2.5 and 3.5)
    assert round_to_pixel(values).tolist() == [3, 4, 2, 0, -1, 0, 7]


def test_clamping_and_dropping() -> None:
    h, w = 4, 5
    layer = clicks(
        (float(w), 1.0, 1),  # x = W exactly: one past the last column -> clamped to W - 1
        (w + 5.0, 2.0, 2),  # far right: dropped
        (-0.6, 3.0, 3),  # rounds to -1 -> clamped to 0
        (-3.0, 0.0, 4),  # far left: dropped
        (2.0, -1.0, 5),  # y = -1 -> row 0
        (1.2, h + 0.7, 6),  # more than 1 px below: dropped
        (3.4, 2.6, 7),  # inside -> (3, 3)
    )
    out, dropped = rasterise_clicks([layer], h, w)
    assert dropped == 3
    assert out.dtype == np.uint8 and out.shape == (h, w)
    expected = np.full((h, w), 255, np.uint8)
    expected[1, w - 1] = 1
    expected[3, 0] = 3
    expected[0, 2] = 5
    expected[3, 3] = 7
    np.testing.assert_array_equal(out, expected)


def test_later_layers_win_a_shared_pixel() -> None:
    fg = clicks((2.2, 1.9, 15), (0.0, 0.0, 3))
    bg = clicks((1.6, 2.4, 0))  # rounds to the same pixel (2, 2) as the first foreground click
    out, dropped = rasterise_clicks([fg, bg], 4, 4)
    assert dropped == 0 and out[2, 2] == 0 and out[0, 0] == 3
    assert rasterise_clicks([bg, fg], 4, 4)[0][2, 2] == 15
    # within one layer the later click wins too
    assert rasterise_clicks([clicks((1.0, 1.0, 4), (1.3, 0.8, 9))], 3, 3)[0][1, 1] == 9


# ---- parsing and validation ------------------------------------------------------------------------------
def test_parse_accepts_rank_ints_and_empty_lists() -> None:
    data = {
        "2007_000032": [{"x": 10.5, "y": 3.25, "cls": 1, "rank": 1}, {"x": 4, "y": 7, "cls": 20, "rank": 2}],
        "2007_000033": [],
    }
    table = parse_click_table(data, "voc_fg.json", 21)
    assert list(table) == ["2007_000032", "2007_000033"]
    first = table["2007_000032"]
    assert (
        first.x.tolist() == [10.5, 4.0] and first.y.tolist() == [3.25, 7.0] and first.cls.tolist() == [1, 20]
    )
    assert len(table["2007_000033"]) == 0
    assert parse_click_table({"a": [{"x": 1.0, "y": 2.0, "cls": 3.0}]}, "f", 21)["a"].cls.tolist() == [3]


GOOD = {"x": 1.5, "y": 2.5, "cls": 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([GOOD], r"voc_fg\.json: expected a JSON object mapping image ids to lists of clicks, got list"),
        ({"2008_003682": GOOD}, r"voc_fg\.json: image '2008_003682': expected a list of clicks, got dict"),
        (
            {"2008_003682": [GOOD, [1, 2, 3]]},
            r"image '2008_003682' click 1: expected an object with x, y and cls",
        ),
        ({"2008_003682": [{"y": 1.0, "cls": 1}]}, r"image '2008_003682' click 0: missing 'x'"),
        ({"2008_003682": [GOOD, {"x": 1.0, "y": 1.0}]}, r"image '2008_003682' click 1: missing 'cls'"),
        ({"2008_003682": [{**GOOD, "y": "12"}]}, r"image '2008_003682' click 0: y is not a number: '12'"),
        ({"2008_003682": [{**GOOD, "cls": True}]}, r"click 0: cls is not a number: True"),
        ({"2008_003682": [{**GOOD, "x": float("nan")}]}, r"click 0: coordinates must be finite, got x=nan"),
        ({"2008_003682": [{**GOOD, "y": float("inf")}]}, r"click 0: coordinates must be finite"),
        ({"2008_003682": [{**GOOD, "cls": 2.5}]}, r"click 0: cls must be an integer class id, got 2\.5"),
        (
            {"2008_003682": [GOOD, GOOD, GOOD, {**GOOD, "cls": 25}]},
            r"^voc_fg\.json: image '2008_003682' click 3: cls 25 is outside 0\.\.20$",
        ),
        ({"2008_003682": [{**GOOD, "cls": 255}]}, r"image '2008_003682' click 0: cls 255 is outside 0\.\.20"),
        ({"2008_003682": [{**GOOD, "cls": -1}]}, r"image '2008_003682' click 0: cls -1 is outside 0\.\.20"),
    ],
)
def test_parse_errors_name_file_image_and_click(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_click_table(data, "voc_fg.json", 21)


# ---- write_clicks_from_json ------------------------------------------------------------------------------
def test_synthetic_json_format(voc: Path, wtp: tuple[Path, Path]) -> None:
    fg, bg = (json.loads(p.read_text()) for p in wtp)
    ids = build_source("voc", voc, "train_aug").ids
    assert list(fg) == ids and list(bg) == ids
    fg_clicks = [c for v in fg.values() for c in v]
    bg_clicks = [c for v in bg.values() for c in v]
    assert all(
        set(c) == {"x", "y", "cls", "rank"} and 1 <= c["cls"] <= 20 and c["rank"] >= 1 for c in fg_clicks
    )
    assert all(set(c) == {"x", "y", "cls"} and c["cls"] == 0 for c in bg_clicks)
    coords = [c[k] for c in fg_clicks + bg_clicks for k in ("x", "y")]
    assert any(isinstance(v, float) and not v.is_integer() for v in coords)
    assert any(isinstance(v, int) for v in coords)


def test_write_clicks_from_json(voc: Path, wtp: tuple[Path, Path], tmp_path: Path) -> None:
    fg_path, bg_path = wtp
    out = tmp_path / "clicks"
    summary = write_clicks_from_json("voc", voc, "train_aug", [fg_path, bg_path], out)
    source = build_source("voc", voc, "train_aug")
    assert summary.written == N_TRAIN and summary.empty == 0 and summary.skipped == 0
    assert [f.path for f in summary.files] == [fg_path, bg_path]
    # image 0 has one foreground click 5.5 px right of the image (dropped) and one background click on x = W
    assert [f.dropped for f in summary.files] == [1, 0] and summary.dropped == 1
    fg, bg = (json.loads(p.read_text()) for p in wtp)
    assert summary.files[0].drawn == sum(map(len, fg.values())) - 1
    assert summary.files[1].drawn == sum(map(len, bg.values()))
    for index, sample_id in enumerate(source.ids):
        png = read_index_png(out / f"{sample_id}.png")
        mask = source.read_mask(sample_id)
        assert png.shape == mask.shape == (H, W)
        expected = np.full((H, W), 255, np.uint8)
        for click in fg[sample_id] + bg[sample_id]:
            if click["x"] <= W:  # the one click farther right is dropped
                row, col = (min(int(np.floor(click[k] + 0.5)), n - 1) for k, n in (("y", H), ("x", W)))
                expected[row, col] = click["cls"]
        np.testing.assert_array_equal(png, expected)
        on = (png != 255) & (mask != 255)
        if index == 0:
            assert png[0, W - 1] == 0  # the background click on x = W, clamped to the last column
            on[0, W - 1] = False
        np.testing.assert_array_equal(png[on], mask[on])  # every click lies on its own class


def test_split_selection_skips_other_ids_and_counts_empty_images(
    voc: Path, wtp: tuple[Path, Path], tmp_path: Path
) -> None:
    fg_path, _ = wtp
    train = build_source("voc", voc, "train").ids  # the first half of train_aug
    fg = json.loads(fg_path.read_text())
    del fg[train[1]]
    fg[train[2]] = []
    fg_path.write_text(json.dumps(fg))
    summary = write_clicks_from_json("voc", voc, "train", [fg_path], tmp_path / "out")
    assert summary.written == len(train) == 3
    assert summary.skipped == N_TRAIN - len(train) == summary.files[0].skipped_images
    assert summary.empty == 2
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == sorted(train)
    assert (read_index_png(tmp_path / "out" / f"{train[1]}.png") == 255).all()


def test_unknown_ids_fail_or_are_counted(voc: Path, wtp: tuple[Path, Path], tmp_path: Path) -> None:
    fg_path, bg_path = wtp
    bg = json.loads(bg_path.read_text())
    bg["2099_123456"] = [{"x": 1.5, "y": 1.5, "cls": 0}]
    bg_path.write_text(json.dumps(bg))
    with pytest.raises(
        ValueError, match=rf"voc_bg\.json: image '2099_123456' \(entry {N_TRAIN}\) is not in voc"
    ):
        write_clicks_from_json("voc", voc, "train_aug", [fg_path, bg_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # everything is checked before anything is written
    summary = write_clicks_from_json(
        "voc", voc, "train_aug", [fg_path, bg_path], tmp_path / "out", allow_unknown_ids=True
    )
    assert summary.unknown == 1 and summary.files[1].unknown_images == 1 and summary.written == N_TRAIN


def test_class_errors_name_the_file(voc: Path, tmp_path: Path) -> None:
    sample_id = build_source("voc", voc, "train_aug").ids[0]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({sample_id: [{"x": 1.5, "y": 1.5, "cls": 21}]}))
    with pytest.raises(
        DataError, match=rf"bad\.json: image '{sample_id}' click 0: cls 21 is outside 0\.\.20"
    ):
        write_clicks_from_json("voc", voc, "train_aug", [path], tmp_path / "out")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not a JSON file"):
        write_clicks_from_json("voc", voc, "train_aug", [path], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="click file"):
        write_clicks_from_json("voc", voc, "train_aug", [tmp_path / "none.json"], tmp_path / "out")


# ---- the command, and the datamodule reading its output --------------------------------------------------
def test_command_end_to_end(
    voc: Path, wtp: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fg_path, bg_path = wtp
    out = tmp_path / "wtp_clicks"
    argv = [
        "clicks-from-json",
        "--dataset",
        "voc",
        "--root",
        str(voc),
        "--clicks",
        str(fg_path),
        str(bg_path),
    ]
    assert main([*argv, "--out", str(out)]) == 0  # default split: train_aug
    printed = capsys.readouterr().out
    assert f"{fg_path}: {N_TRAIN} images" in printed and "1 dropped (more than 1 px outside" in printed
    assert f"{bg_path}: {N_TRAIN} images" in printed and "0 dropped" in printed
    assert f"wrote {N_TRAIN} click files to {out}" in printed and "1 clicks dropped in total" in printed

    dm = WSSSDataModule(
        DatasetSource(root=str(voc), name="voc"),
        view=ClickView(clicks_dir=str(out), click_mode="points"),
        transform=TransformOptions(crop_size=(H, W), scale_range=(1.0, 1.0), hflip_p=0.0),
        loader=LoaderOptions(batch_size=N_TRAIN, num_workers=0, drop_last=False),
    )
    dm.prepare_data()
    dm.setup("fit")
    loader: Any = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["clicks"].shape == (N_TRAIN, H, W) and batch["clicks"].dtype == torch.int64
    for name, loaded in zip(batch["name"], batch["clicks"], strict=True):
        expected = torch.from_numpy(read_index_png(out / f"{name}.png").astype(np.int64))
        assert torch.equal(loaded, expected)
    assert set(batch["clicks"].unique().tolist()) - {255} and (batch["clicks"] == 0).any()


def test_command_errors_exit_2(voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample_id = build_source("voc", voc, "train_aug").ids[0]
    path = tmp_path / "voc_fg.json"
    path.write_text(json.dumps({sample_id: [GOOD, GOOD, GOOD, {**GOOD, "cls": 25}]}))
    argv = ["clicks-from-json", "--dataset", "voc", "--root", str(voc), "--split", "train_aug"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--clicks", str(path), "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"wsss-data clicks-from-json: error: {path}: image '{sample_id}' click 3: cls 25 is outside 0..20"
        in err
    )
