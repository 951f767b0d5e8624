"""Domain-adaptive data: per-source resize, rare-class sampling in the datamodule, bad source / target input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from wsss_lightning.data import DatasetSource, DomainView, LoaderOptions, TransformOptions, WSSSDataModule
from wsss_lightning.data.datasets import SOURCES, build_source
from wsss_lightning.data.datasets.base import DataError
from wsss_lightning.data.rare_classes import RareClassSampling, load_class_stats
from wsss_lightning.data.synthetic import generate
from wsss_lightning.data.views import view_from_config

HW = (24, 40)  # stored size of the generated images (height, width)


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("domain")
    size = {"num_train": 8, "num_val": 2, "image_size": HW}
    return Path(generate("gta5", out / "gta5", seed=0, **size)), Path(  # type: ignore[arg-type]
        generate("cityscapes", out / "cityscapes", seed=0, **size)  # type: ignore[arg-type]
    )


def make_dm(source: Path, target: Path, **view: Any) -> WSSSDataModule:
    return WSSSDataModule(
        DatasetSource(root=str(source), name="gta5", train_split="train"),
        view=DomainView(target=DatasetSource(root=str(target), name="cityscapes"), **view),
        transform=TransformOptions(crop_size=32, scale_range=(1.0, 1.0), hflip_p=0.5),
        loader=LoaderOptions(batch_size=2, num_workers=0),
    )


def test_view_options_validated_and_round_trip(tmp_path: Path) -> None:
    target = DatasetSource(root="/c", name="cityscapes")
    for bad in ((0, 10), (10,), (10.5, 4), "1280x720", (True, 3)):
        with pytest.raises(ValueError, match=r"DomainView\.source_resize: expected \(width, height\)"):
            DomainView(target=target, source_resize=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"DomainView\.target_resize"):
        DomainView(target=target, target_resize=(-1, 5))
    with pytest.raises(TypeError, match=r"DomainView\.rare_class_sampling: expected RareClassSampling"):
        DomainView(target=target, rare_class_sampling=0.01)  # type: ignore[arg-type]
    view = DomainView(
        target=target,
        source_resize=[1280, 720],  # type: ignore[arg-type]  # a YAML list
        target_resize=(1024, 512),
        rare_class_sampling=RareClassSampling(temperature=0.02),
    )
    assert view.source_resize == (1280, 720)
    config = view.as_config()
    assert config["init_args"]["rare_class_sampling"] == {
        "temperature": 0.02, "min_pixels": 3000, "min_crop_ratio": 0.5, "max_redraws": 10, "stats_file": None,
    }  # fmt: skip
    assert config["init_args"]["target_resize"] == (1024, 512)
    torch.save(config, tmp_path / "view.pt")
    assert view_from_config(torch.load(tmp_path / "view.pt", weights_only=True)) == view
    assert DomainView(target=target).rare_class_sampling is None  # off by default


def test_resize_per_domain(roots: tuple[Path, Path]) -> None:
    gta, city = roots
    plain = make_dm(gta, city)
    plain.setup("fit")
    assert plain._train_sets is not None
    # 24x40 images in a 32x32 crop: 8 rows of padding
    box = plain._train_sets["source"][(0, 0, 0)]["valid_box"]
    assert box[2] - box[0] == HW[0]
    dm = make_dm(gta, city, source_resize=(48, 32), target_resize=(36, 20))
    dm.setup("fit")
    assert dm._train_sets is not None
    src, tgt = dm._train_sets["source"], dm._train_sets["target"]
    for index in range(4):
        s, t = src[(0, 0, index)], tgt[(0, 0, index)]
        assert s["valid_box"].tolist() == [0, 0, 32, 32]  # 32x48: the crop is all content
        top, left, bottom, right = t["valid_box"].tolist()
        assert (bottom - top, right - left) == (20, 32)  # 20x36 in a 32x32 crop
        assert s["tags"].shape == (19,) and set(s["mask"].unique().tolist()) <= set(range(19)) | {255}


def test_resize_matches_bilinear_and_nearest(roots: tuple[Path, Path]) -> None:
    import cv2

    gta, city = roots
    dm = WSSSDataModule(
        DatasetSource(root=str(gta), name="gta5", train_split="train"),
        view=DomainView(target=DatasetSource(root=str(city), name="cityscapes"), source_resize=(60, 36)),
        transform=TransformOptions(crop_size=(36, 60), scale_range=(1.0, 1.0), hflip_p=0.0),
        loader=LoaderOptions(batch_size=2, num_workers=0),
    )
    dm.setup("fit")
    assert dm._train_sets is not None
    sample = dm._train_sets["source"][(0, 0, 1)]
    image, mask = build_source("gta5", gta, "train").read_sample(sample["name"])
    assert mask is not None
    expected_mask = cv2.resize(mask, (60, 36), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(sample["mask"].numpy(), expected_mask)
    expected_image = cv2.resize(image, (60, 36), interpolation=cv2.INTER_LINEAR)
    std, mean = torch.tensor(dm.std).view(3, 1, 1), torch.tensor(dm.mean).view(3, 1, 1)
    restored = ((sample["image"] * std + mean) * 255).round().permute(1, 2, 0).numpy()
    np.testing.assert_allclose(restored, expected_image, atol=1)


def _rcs_dm(gta: Path, city: Path, **options: Any) -> WSSSDataModule:
    rcs = RareClassSampling(min_pixels=20, **options)
    return make_dm(gta, city, rare_class_sampling=rcs, source_resize=(40, 24))


def _loader_batches(dm: WSSSDataModule) -> list[dict[str, Any]]:
    loaders: Any = dm.train_dataloader()
    return list(loaders["source"])


def test_rare_class_sampling_is_keyed_and_resumable(roots: tuple[Path, Path]) -> None:
    gta, city = roots
    dm = _rcs_dm(gta, city)
    dm.prepare_data()  # writes the statistics beside the dataset
    stats = load_class_stats(gta / "class_stats_train.npz")
    assert stats.ids == build_source("gta5", gta, "train").ids
    dm.setup("fit")
    assert dm._train_sets is not None
    src = dm._train_sets["source"]
    sampler = src.rare_classes  # type: ignore[attr-defined]
    assert sampler is not None
    keys = [(0, epoch, index) for epoch in range(3) for index in range(8)]
    other = _rcs_dm(gta, city)
    other.setup("fit")
    assert other._train_sets is not None
    for key in keys:  # two datasets, the same keys: the same samples
        a, b = src[key], other._train_sets["source"][key]
        assert (
            a["name"] == b["name"]
            and torch.equal(a["image"], b["image"])
            and torch.equal(a["mask"], b["mask"])
        )
    names = {src[key]["name"] for key in keys}
    pooled = {stats.ids[row] for pool in sampler.pools for row in pool}
    assert names <= pooled and len(names) > 1

    full = _loader_batches(dm)
    resumed = _rcs_dm(gta, city)
    resumed.load_state_dict({"train_positions": {"source": {"epoch": 0, "samples": 4}}})
    tail = _loader_batches(resumed)  # a run resumed after two batches of epoch 0
    assert [b["name"] for b in tail] == [b["name"] for b in full[2:]]
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(tail, full[2:], strict=True))


def test_rare_class_sampling_with_an_explicit_stats_file(roots: tuple[Path, Path], tmp_path: Path) -> None:
    gta, city = roots
    dm = _rcs_dm(gta, city, stats_file=str(tmp_path / "nowhere.npz"))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz does not exist"):
        dm.prepare_data()
    with pytest.raises(ValueError, match=r"min_pixels=100000"):
        make_dm(gta, city, rare_class_sampling=RareClassSampling(min_pixels=100000)).setup("fit")


def expected_layout(side: str) -> str:
    return SOURCES["gta5" if side == "source" else "cityscapes"].layout


@pytest.mark.parametrize("side", ["source", "target"])
def test_wrong_layout_names_the_root_and_layout(roots: tuple[Path, Path], tmp_path: Path, side: str) -> None:
    gta, city = roots
    empty = tmp_path / "empty"
    empty.mkdir()
    dm = make_dm(empty, city) if side == "source" else make_dm(gta, empty)
    expected = "<root>/images/<5-digit id>.png" if side == "source" else "<root>/leftImg8bit/<split>"
    with pytest.raises(FileNotFoundError, match=rf"{empty}.*expected layout:\n.*{expected}") as info:
        dm.setup("fit")
    assert str(empty) in str(info.value)
    # the right list / folders but no images: every missing file is counted, the root and layout named
    broken = tmp_path / "broken"
    broken.mkdir()
    if side == "source":
        (broken / "train.txt").write_text("00001.png\n")
        dm = make_dm(broken, city)
        name = "images/00001.png"
    else:
        (broken / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
        image = broken / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
        Image.new("RGB", (8, 8)).save(image)
        dm = make_dm(gta, broken, keep_target_masks=True)
        name = "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    with pytest.raises(
        DataError, match=rf"listed by .* under {broken} (is|are) missing:\n  {broken}/{name}"
    ) as err:
        dm.setup("fit")
    assert f"expected layout:\n{expected_layout(side)}" in str(err.value)


def test_gta5_label_of_another_size_is_named(tmp_path: Path) -> None:
    root = Path(generate("gta5", tmp_path / "gta5", seed=2, num_train=2, num_val=1, image_size=HW))
    source = build_source("gta5", root, "train")
    label = source.mask_path(source.ids[0])
    assert label is not None
    with Image.open(label) as img:
        img.resize((HW[1] + 6, HW[0] + 2), Image.NEAREST).save(label)  # GTA5 ships a few such frames
    image = source.image_path(source.ids[0])
    message = rf"image {image} is {HW[0]}x{HW[1]} \(HxW\) but mask {label} is {HW[0] + 2}x{HW[1] + 6}"
    with pytest.raises(DataError, match=message):
        source.read_sample(source.ids[0])


def test_options_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``wsss fit`` parses the new options into the view (dataclass group, (width, height) lists)."""
    from wsss_lightning.cli import run_cli

    config = Path(__file__).resolve().parents[2] / "configs" / "supervised" / "synthetic_voc.yaml"
    args = [
        "--data.source.name=gta5",
        "--data.source.val_split=null",
        "--data.view=wsss_lightning.data.DomainView",
        "--data.view.target.name=cityscapes",
        "--data.view.target.root=/cityscapes",
        "--data.view.source_resize=[1280, 720]",
        "--data.view.rare_class_sampling.temperature=0.02",
    ]
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--config", str(config), *args, "--print_config"])
    assert exc.value.code == 0
    view = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["view"]["init_args"]
    assert view["source_resize"] == [1280, 720] and view["target_resize"] is None
    assert view["rare_class_sampling"]["temperature"] == 0.02
    assert view["rare_class_sampling"]["min_pixels"] == 3000
