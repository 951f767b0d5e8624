from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from wsss_lightning.data.cli import main
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.datasets.base import read_index_png, write_index_png
from wsss_lightning.data.supervision import load_tags, read_id_list


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "voc"
    argv = ["synthetic", "--layout", "voc", "--out", str(root), "--seed", "2", "--num-train", "6"]
    assert main([*argv, "--num-val", "3", "--size", "32", "40"]) == 0
    return root


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code)  # type: ignore[arg-type]


def test_synthetic(voc_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = build_source("voc", voc_root, "train_aug")
    assert len(source.ids) == 6 and source.read_image(source.ids[0]).shape == (32, 40, 3)
    assert _exit_code(["synthetic", "--layout", "ade20k", "--out", "x"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_tags(voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "tags",
        "--dataset",
        "voc",
        "--root",
        str(voc_root),
        "--split",
        "val",
        "--out",
        str(tmp_path / "t.txt"),
    ]
    assert main([*argv, "--workers", "2"]) == 0
    assert len(load_tags(tmp_path / "t.txt", 21)) == 3
    assert "wrote tags" in capsys.readouterr().out


def test_partitions(voc_root: Path, tmp_path: Path) -> None:
    list_file = voc_root / "ImageSets" / "Segmentation" / "train_aug.txt"
    assert (
        main(["partitions", "--list", str(list_file), "--out", str(tmp_path), "--fractions", "1/3", "0.5"])
        == 0
    )
    assert len(read_id_list(tmp_path / "1_3" / "labeled.txt")) == 2
    assert len(read_id_list(tmp_path / "1_2" / "unlabeled.txt")) == 3
    assert (
        _exit_code(["partitions", "--list", str(list_file), "--out", str(tmp_path), "--fractions", "2"]) == 2
    )


def test_clicks(voc_root: Path, tmp_path: Path) -> None:
    argv = ["clicks", "--dataset", "voc", "--root", str(voc_root), "--split", "val", "--out", str(tmp_path)]
    assert main([*argv, "--background-clicks", "2", "--seed", "1"]) == 0
    clicks = read_index_png(tmp_path / f"{build_source('voc', voc_root, 'val').ids[0]}.png")
    assert int((clicks == 0).sum()) == 2


def test_clicks_from_json(voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = build_source("voc", voc_root, "val").ids[0]
    fg = {first: [{"x": 3.5, "y": 2.49, "cls": 7, "rank": 1}, {"x": 45.0, "y": 1.0, "cls": 7, "rank": 2}]}
    bg = {first: [{"x": 40.0, "y": 0.0, "cls": 0}]}  # x = W: clamped to the last column
    for name, table in (("fg.json", fg), ("bg.json", bg)):
        (tmp_path / name).write_text(json.dumps(table))
    argv = ["clicks-from-json", "--dataset", "voc", "--root", str(voc_root), "--split", "val", "--out"]
    assert (
        main([*argv, str(tmp_path / "out"), "--clicks", str(tmp_path / "fg.json"), str(tmp_path / "bg.json")])
        == 0
    )
    clicks = read_index_png(tmp_path / "out" / f"{first}.png")
    assert (
        clicks.shape == (32, 40)
        and clicks[2, 4] == 7
        and clicks[0, 39] == 0
        and int((clicks != 255).sum()) == 2
    )
    out = capsys.readouterr().out
    assert "1 dropped" in out and "wrote 3 click files" in out and "2 without any click" in out


def test_coco_masks(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "COCO_val2014_000000000001.jpg", "height": 4, "width": 4}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 90, "iscrowd": 0, "area": 4.0,
                         "segmentation": {"size": [4, 4], "counts": [5, 2, 2, 2, 5]}}],
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(data))
    assert main(["coco-masks", "--annotations", str(tmp_path / "ann.json"), "--out", str(tmp_path / "o"),
                 "--split", "val"]) == 0  # fmt: skip
    mask = read_index_png(tmp_path / "o" / "SegmentationClass" / "COCO_val2014_000000000001.png")
    assert mask[1:3, 1:3].tolist() == [[80, 80], [80, 80]] and int(mask.sum()) == 320
    assert (
        _exit_code(["coco-masks", "--annotations", str(tmp_path / "none.json"), "--out", "o", "--split", "v"])
        == 2
    )


def test_coco_stuff(tmp_path: Path) -> None:
    write_index_png(tmp_path / "src" / "annotations" / "a.png", np.array([[0, 61]], dtype=np.uint8))
    assert main(["coco-stuff", "--root", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 0
    assert read_index_png(tmp_path / "out" / "annotations" / "a.png").tolist() == [[15, 9]]  # person, chair


def test_cityscapes_trainids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_index_png(
        tmp_path / "gtFine" / "train" / "c" / "c_0_1_gtFine_labelIds.png", np.full((2, 2), 24, np.uint8)
    )
    assert main(["cityscapes-trainids", "--root", str(tmp_path)]) == 0
    out = read_index_png(tmp_path / "gtFine" / "train" / "c" / "c_0_1_gtFine_labelTrainIds.png")
    assert out.tolist() == [[11, 11], [11, 11]]
    assert "wrote 1" in capsys.readouterr().out


def test_check_ok(voc_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--dataset", "voc", "--root", str(voc_root), "--split", "val"]) == 0
    assert "ok: 3 samples" in capsys.readouterr().out


def test_check_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "voc"
    main(
        [
            "synthetic",
            "--layout",
            "voc",
            "--out",
            str(root),
            "--num-train",
            "2",
            "--num-val",
            "2",
            "--size",
            "24",
            "24",
        ]
    )
    source = build_source("voc", root, "val")
    write_index_png(root / "SegmentationClassAug" / f"{source.ids[1]}.png", np.full((24, 24), 30, np.uint8))
    capsys.readouterr()
    assert _exit_code(["check", "--dataset", "voc", "--root", str(root), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert f"{source.ids[1]}.png has values [30]" in err and "1 of 2 samples" in err


def test_check_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        _exit_code(["check", "--dataset", "gta5", "--root", str(tmp_path / "nope"), "--split", "train"]) == 2
    )
    err = capsys.readouterr().err
    assert "wsss-data check: error: gta5 root" in err and "nope" in err


def test_check_refuses_an_empty_split(voc_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (voc_root / "ImageSets" / "Segmentation" / "empty.txt").write_text("")
    args = [
        "check",
        "--dataset",
        "voc",
        "--root",
        str(voc_root),
        "--split",
        "ImageSets/Segmentation/empty.txt",
    ]
    assert _exit_code(args) == 2
    err = capsys.readouterr().err
    assert "empty.txt of voc split" in err and "lists no samples" in err


def test_every_synthetic_option_has_help_with_its_default() -> None:
    from wsss_lightning.data import synthetic
    from wsss_lightning.data.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = [a for a in sub.choices["synthetic"]._actions if a.dest != "help"]
    assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]
    text = " ".join(sub.choices["synthetic"].format_help().split())  # line wrapping depends on the terminal
    for train, val in synthetic._DEFAULT_COUNTS.values():
        assert f"default: {train}" in text or f"{train} for" in text
        assert f"{val} for" in text
    for h, w in synthetic._DEFAULT_SIZE.values():
        assert f"{h} {w} for" in text
