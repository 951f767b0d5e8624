"""The datamodule's option groups: validation messages, views selected by the CLI parser, old flat configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml

from wsss_lightning.cli import run_cli
from wsss_lightning.data import (
    ClickView,
    DatasetSource,
    DomainView,
    FullView,
    LoaderOptions,
    SemiView,
    SupervisionView,
    TagsView,
    TransformOptions,
    WSSSDataModule,
)
from wsss_lightning.data.datasets import build_source
from wsss_lightning.data.legacy import (
    OLD_KEYS,
    convert_flat_options,
    flat_options_message,
    legacy_data_options_message,
    new_spelling,
)
from wsss_lightning.data.synthetic import generate
from wsss_lightning.data.transforms import denormalize_to_uint8

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "supervised" / "synthetic_voc.yaml"

#: a data block in the flat form the datamodule used to take
FLAT_SEMI = {
    "dataset": "voc",
    "root": "data/VOC2012",
    "supervision": "semi",
    "train_split": "train_aug",
    "labeled_list": "splits/pascal/92/labeled.txt",
    "unlabeled_list": "splits/pascal/92/unlabeled.txt",
    "unlabeled_batch_size": 16,
    "val_split": "val",
    "crop_size": 513,
    "mask_pad_value": 255,
    "batch_size": 16,
    "num_workers": 8,
    "cache_dir": "/tmp/cache",
}


# ---- option groups ----------------------------------------------------------------------------------------
def test_dataset_source_names_and_default_splits() -> None:
    with pytest.raises(
        ValueError, match=r"DatasetSource\.name: unknown dataset 'pascal'; valid names: 'voc'"
    ):
        DatasetSource(root="/data", name="pascal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"DatasetSource\.root: expected a folder path"):
        DatasetSource(root="")
    with pytest.raises(ValueError, match=r"DatasetSource\.val_split"):
        DatasetSource(root="/data", val_split="")
    assert DatasetSource(root=Path("/data")).root == "/data"  # type: ignore[arg-type]
    voc = DatasetSource(root="/data").resolved()
    assert (voc.train_split, voc.val_split, voc.test_split, voc.predict_split) == (
        "train_aug",
        "val",
        "val",
        "val",
    )
    stuff = DatasetSource(root="/data", name="coco_stuff", predict_split="train").resolved()
    assert (stuff.train_split, stuff.val_split, stuff.test_split, stuff.predict_split) == (
        "train",
        "test",
        "test",
        "train",
    )
    assert DatasetSource(root="/data", name="gta5").resolved().train_split == "all"
    assert DatasetSource(root="/data").train_split is None  # what the user wrote is kept
    own = DatasetSource(root="/nowhere", predict_images="photos").resolved()
    assert (own.predict_split, own.predict_images) == (None, "photos")
    with pytest.raises(ValueError, match=r"predict_split='test' and predict_images='photos' .* give one"):
        DatasetSource(root="/data", predict_split="test", predict_images="photos")
    with pytest.raises(ValueError, match=r"DatasetSource\.predict_images: expected a folder of images"):
        DatasetSource(root="/data", predict_images="")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crop_size": 0}, r"transform\.crop_size: sizes must be positive"),
        ({"crop_size": (32, 32, 3)}, r"transform\.crop_size: expected an int or \(height, width\)"),
        ({"scale_range": (2.0, 1.0)}, r"transform\.scale_range: expected 0 < low <= high"),
        ({"hflip_p": 1.5}, r"transform\.hflip_p: expected a probability in \[0, 1\], got 1\.5"),
        ({"blur_p": -0.1}, r"transform\.blur_p: expected a probability"),
        ({"blur_sigma": (2.0, 1.0)}, r"transform\.blur_sigma: expected 0 < low <= high"),
        ({"color_jitter": (0.4, 0.4)}, r"transform\.color_jitter: expected a float or"),
        ({"mask_pad_value": 300}, r"transform\.mask_pad_value: expected a uint8 label"),
        ({"image_pad_value": -1}, r"transform\.image_pad_value: expected a uint8 colour"),
        ({"pad_position": "left"}, r"transform\.pad_position: expected 'random', 'top_left' or 'center'"),
        ({"std": (0.5, 0.5, 0.0)}, r"transform\.mean/std: expected 3 values each \(std > 0\)"),
        ({"eval_short_side": 0}, r"transform\.eval_short_side: expected a positive int or None, got 0"),
        (
            {"eval_short_side": 64, "eval_center_crop": 0},
            r"transform\.eval_center_crop: expected a positive int or None, got 0",
        ),
        (
            {"eval_short_side": 64, "eval_center_crop": True},
            r"transform\.eval_center_crop: expected a positive int or None, got True",
        ),
        (
            {"eval_center_crop": 513},
            (
                r"transform\.eval_center_crop: a 513 x 513 centre crop needs transform\.eval_short_side >= 513 "
                r"\(so that every resized image covers the crop\), got None"
            ),
        ),
        ({"eval_short_side": 512, "eval_center_crop": 513}, r"transform\.eval_center_crop: .*, got 512$"),
    ],
)
def test_transform_options_validation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransformOptions(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, r"^loader\.batch_size: expected a positive int, got 0$"),
        ({"eval_batch_size": -1}, r"^loader\.eval_batch_size: expected a positive int, got -1$"),
        ({"num_workers": -1}, r"^loader\.num_workers: expected an int >= 0, got -1$"),
    ],
)
def test_loader_options_validation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoaderOptions(**options)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SemiView(), r"SemiView needs labeled_list \(a partition file\) or labeled_fraction"),
        (
            lambda: SemiView(labeled_list="l.txt", labeled_fraction=0.5),
            "either labeled_list or labeled_fraction",
        ),
        (lambda: SemiView(unlabeled_list="u.txt", labeled_fraction=0.5), r"SemiView\.unlabeled_list needs"),
        (lambda: SemiView(labeled_fraction=1.5), r"SemiView\.labeled_fraction: expected a value in \(0, 1\)"),
        (lambda: SemiView(labeled_fraction=0.5, unlabeled_batch_size=0), r"SemiView\.unlabeled_batch_size"),
        (
            lambda: ClickView(click_placement="corner"),  # type: ignore[arg-type]
            r"ClickView\.click_placement: expected one of",
        ),
        (
            lambda: ClickView(click_mode="lines"),  # type: ignore[arg-type]
            r"ClickView\.click_mode: expected one of 'mask', 'points'",
        ),
        (lambda: ClickView(background_clicks=-1), r"ClickView\.background_clicks: expected an int >= 0"),
        (lambda: FullView(mask_dir=""), r"FullView\.mask_dir: expected a path or None"),
        (lambda: TagsView(tags_file=""), r"TagsView\.tags_file: expected a path or None"),
        (
            lambda: SemiView(labeled_list="l.txt", unlabeled_list="None"),
            r"SemiView\.unlabeled_list: got the text 'None', not a path; .*YAML",
        ),
        (
            lambda: DomainView(target=DatasetSource(root="/c", name="cityscapes"), unlabeled_batch_size=-2),
            r"DomainView\.unlabeled_batch_size: expected a positive int or None, got -2",
        ),
    ],
)
def test_view_validation(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_view_type_errors() -> None:
    with pytest.raises(TypeError, match=r"DomainView\.target: expected a DatasetSource"):
        DomainView(target="cityscapes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"SemiView\.split_seed: expected an int"):
        SemiView(labeled_fraction=0.5, split_seed=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ClickView\.click_seed: expected an int"):
        ClickView(click_seed="0")  # type: ignore[arg-type]


def test_views_name_the_supervision() -> None:
    target = DatasetSource(root="/c", name="cityscapes")
    views: list[tuple[SupervisionView | None, str]] = [
        (None, "full"),
        (FullView(), "full"),
        (TagsView(), "image"),
        (ClickView(), "click"),
        (SemiView(labeled_fraction=0.5), "semi"),
        (DomainView(target=target), "domain"),
    ]
    for view, name in views:
        source = DatasetSource(root="/g", name="gta5") if name == "domain" else DatasetSource(root="/v")
        assert WSSSDataModule(source, view=view).supervision == name
    with pytest.raises(TypeError):
        SupervisionView()  # type: ignore[abstract]
    assert SemiView(labeled_fraction=0.5) == SemiView(labeled_fraction=0.5) != SemiView(labeled_fraction=0.25)
    assert repr(TagsView()) == "TagsView(tags_file=None, diagnostic_masks=True)"


def test_datamodule_reads_its_groups() -> None:
    dm = WSSSDataModule(
        DatasetSource(root="/v"),
        view=ClickView(click_mode="points"),
        transform=TransformOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        loader=LoaderOptions(batch_size=3),
    )
    assert (dm.batch_size, dm.unlabeled_batch_size) == (3, 3)
    assert dm.mean == [0.5, 0.5, 0.5] and dm.std == [0.25, 0.25, 0.25]
    assert dm.train_tf.click_mode == "points"  # the view's click mode reaches the training transform
    assert dm.source.train_split == "train_aug"  # resolved
    semi = WSSSDataModule(
        DatasetSource(root="/v"), view=SemiView(labeled_fraction=0.5, unlabeled_batch_size=5)
    )
    assert (semi.batch_size, semi.unlabeled_batch_size) == (8, 5)
    with pytest.raises(TypeError, match="source: expected a DatasetSource"):
        WSSSDataModule("/v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="view: expected FullView"):
        WSSSDataModule(DatasetSource(root="/v"), view="semi")  # type: ignore[arg-type]


def test_hyperparameters_are_plain_values(tmp_path: Path) -> None:
    """Groups given from Python are saved as plain values: checkpoints load with ``weights_only=True`` and the
    saved values rebuild the same datamodule (``load_from_checkpoint``)."""
    target = DatasetSource(root="/c", name="cityscapes", val_split="val")
    dm = WSSSDataModule(
        DatasetSource(root="/g", name="gta5"),
        view=DomainView(target=target, keep_target_masks=True),
        loader=LoaderOptions(batch_size=3),
        cache_dir="/cache",
    )
    assert dm.hparams["view"] == {
        "class_path": "wsss_lightning.data.DomainView",
        "init_args": {
            "target": {"root": "/c", "name": "cityscapes", "train_split": None, "val_split": "val",
                       "test_split": None, "predict_split": None, "predict_images": None},
            "unlabeled_batch_size": None,
            "keep_target_masks": True,
            "source_resize": None,
            "target_resize": None,
            "rare_class_sampling": None,
        },
    }  # fmt: skip
    torch.save(dict(dm.hparams), tmp_path / "hparams.pt")
    loaded = torch.load(tmp_path / "hparams.pt", weights_only=True)
    again = WSSSDataModule(**loaded)
    assert (again.source, again.view, again.transform, again.loader, again.cache_dir) == (
        dm.source,
        dm.view,
        dm.transform,
        dm.loader,
        "/cache",
    )


def test_domain_view_evaluates_on_the_target() -> None:
    target = DatasetSource(root="/c", name="cityscapes", train_split="train_extra", val_split="val_small")
    dm = WSSSDataModule(DatasetSource(root="/g", name="gta5"), view=DomainView(target=target))
    assert dm.eval_source.name == "cityscapes" and str(dm.eval_root) == "/c"
    assert (dm.eval_source.val_split, dm.eval_source.test_split) == ("val_small", "val_small")
    assert dm.target is not None and dm.target.train_split == "train_extra"
    assert dm.source.train_split == "all"
    # the source's evaluation splits would be silently unused: they belong to the target
    with pytest.raises(ValueError, match=r"source\.val_split is not used with DomainView.*target\.val_split"):
        WSSSDataModule(DatasetSource(root="/g", name="gta5", val_split="val"), view=DomainView(target=target))


def test_eval_center_crop_batches(tmp_path: Path) -> None:
    """rloss / Seminar evaluation: short side resized, then the centre square, scored on the cropped GT."""
    root = generate("voc", tmp_path / "voc", seed=0, num_train=2, num_val=3, image_size=(48, 80))
    dm = WSSSDataModule(
        DatasetSource(root=str(root)),
        transform=TransformOptions(eval_short_side=64, eval_center_crop=64),
        loader=LoaderOptions(eval_batch_size=3, num_workers=0),
    )
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 64, 64)
    assert batch["size"].tolist() == [[64, 64]] * 3
    source = build_source("voc", root, "val")
    assert batch["name"] == source.ids
    for i, sample_id in enumerate(source.ids):
        image, mask = source.read_sample(sample_id)
        assert mask is not None
        # 48 x 80 -> 64 x 107 (short side 64), then columns round((107 - 64) / 2) = 22 .. 85
        resized_mask = cv2.resize(mask, (107, 64), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(batch["mask"][i].numpy(), resized_mask[:, 22:86])
        resized_image = cv2.resize(image, (107, 64), interpolation=cv2.INTER_LINEAR)[:, 22:86]
        shown = denormalize_to_uint8(batch["image"][i]).permute(1, 2, 0).numpy()
        assert np.abs(shown.astype(np.int16) - resized_image).max() <= 1


def test_eval_center_crop_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    data = parse_data(
        capsys,
        "--data.init_args.transform.eval_short_side",
        "513",
        "--data.init_args.transform.eval_center_crop",
        "513",
    )
    assert data["transform"]["eval_short_side"] == 513 and data["transform"]["eval_center_crop"] == 513
    assert parse_data(capsys)["transform"]["eval_center_crop"] is None


# ---- the CLI parser ---------------------------------------------------------------------------------------
def parse_data(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    """The ``data`` block ``wsss fit --print_config`` prints for the synthetic-VOC config plus ``args``."""
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--config", str(CONFIG), *args, "--print_config"])
    assert exc.value.code == 0
    data: dict[str, Any] = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    return data


def test_views_selected_by_the_cli_parser(capsys: pytest.CaptureFixture[str]) -> None:
    data = parse_data(capsys)
    assert data["view"]["class_path"] == "wsss_lightning.data.FullView"
    assert data["source"]["name"] == "voc" and data["transform"]["crop_size"] == 112

    data = parse_data(
        capsys,
        "--data.source.root=/elsewhere",
        "--data.view=SemiView",
        "--data.view.labeled_fraction=0.125",
        "--data.init_args.view.init_args.keep_target_masks=true",
        "--data.transform.crop_size=64",
        "--data.init_args.loader.batch_size=3",
    )
    assert data["source"]["root"] == "/elsewhere"
    assert data["view"]["class_path"] == "wsss_lightning.data.SemiView"
    assert data["view"]["init_args"]["labeled_fraction"] == 0.125
    assert data["view"]["init_args"]["keep_target_masks"] is True
    assert data["transform"]["crop_size"] == 64 and data["loader"]["batch_size"] == 3

    data = parse_data(
        capsys,
        "--data.source.name=gta5",
        "--data.source.val_split=null",
        "--data.view=wsss_lightning.data.DomainView",
        "--data.view.target.name=cityscapes",
        "--data.view.target.root=/cityscapes",
    )
    assert data["view"]["init_args"]["target"] == {
        "root": "/cityscapes",
        "name": "cityscapes",
        "train_split": None,
        "val_split": None,
        "test_split": None,
        "predict_split": None,
        "predict_images": None,
    }


def test_cli_instantiates_the_groups(tmp_path: Path) -> None:
    config = tmp_path / "tags.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "class_path": "wsss_lightning.data.WSSSDataModule",
                    "init_args": {
                        "source": {"name": "voc", "root": str(tmp_path)},
                        "view": {
                            "class_path": "wsss_lightning.data.TagsView",
                            "init_args": {"tags_file": "t.txt"},
                        },
                        "transform": {"crop_size": 64, "mean": [0.5, 0.5, 0.5]},
                        "loader": {"batch_size": 3, "num_workers": 0},
                    },
                }
            }
        )
    )
    cli = run_cli(["--config", str(CONFIG), "--config", str(config)], run=False)
    dm = cli.datamodule
    assert isinstance(dm, WSSSDataModule)
    assert dm.view == TagsView(tags_file="t.txt") and dm.supervision == "image"
    assert dm.source == DatasetSource(root=str(tmp_path), name="voc", train_split="train_aug", val_split="val",
                                      test_split="val", predict_split="val")  # fmt: skip
    assert dm.transform.crop_size == 64 and dm.batch_size == 3 and dm.loader.num_workers == 0
    assert cli.model.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]  # linked from data.mean


# ---- old flat configs -------------------------------------------------------------------------------------
def test_flat_options_message_names_the_new_spelling() -> None:
    message = flat_options_message(FLAT_SEMI, where="old.yaml: data")
    assert message is not None
    for line in (
        "dataset -> source.name",
        "root -> source.root",
        "supervision: semi -> view: {class_path: wsss_lightning.data.SemiView}",
        "labeled_list -> view.init_args.labeled_list",
        "unlabeled_batch_size -> view.init_args.unlabeled_batch_size",
        "val_split -> source.val_split",
        "crop_size -> transform.crop_size",
        "batch_size -> loader.batch_size",
    ):
        assert f"  {line}\n" in message
    assert "cache_dir ->" not in message  # cache_dir kept its place
    assert flat_options_message({"source": {}, "view": None, "cache_dir": None}) is None
    # the 46 flat arguments but cache_dir, plus the transform / loader fields added since (every field of the
    # groups is listed, so a flat one is pointed to its place): eval_center_crop, global_batch_size
    assert len(OLD_KEYS) == 47 and {"eval_center_crop", "global_batch_size"} <= OLD_KEYS
    assert new_spelling("eval_center_crop") == "transform.eval_center_crop"

    domain = {"dataset": "gta5", "root": "/g", "supervision": "domain", "target_dataset": "cityscapes",
              "target_root": "/c", "target_split": "train", "val_split": "val", "keep_target_masks": True}  # fmt: skip
    message = flat_options_message(domain)
    assert message is not None
    assert "  target_dataset -> view.init_args.target.name\n" in message
    assert "  target_root -> view.init_args.target.root\n" in message
    assert "  target_split -> view.init_args.target.train_split\n" in message
    assert "  val_split -> view.init_args.target.val_split\n" in message
    assert convert_flat_options(domain) == {
        "source": {"name": "gta5", "root": "/g"},
        "view": {
            "class_path": "wsss_lightning.data.DomainView",
            "init_args": {
                "target": {"name": "cityscapes", "root": "/c", "train_split": "train", "val_split": "val"},
                "keep_target_masks": True,
            },
        },
    }


def test_converted_flat_options_build_the_same_datamodule() -> None:
    options = convert_flat_options(FLAT_SEMI)
    view = options["view"]
    assert view["class_path"] == "wsss_lightning.data.SemiView"
    dm = WSSSDataModule(
        DatasetSource(**options["source"]),
        view=SemiView(**view["init_args"]),
        transform=TransformOptions(**options["transform"]),
        loader=LoaderOptions(**options["loader"]),
        cache_dir=options["cache_dir"],
    )
    assert dm.view == SemiView(
        labeled_list="splits/pascal/92/labeled.txt", unlabeled_list="splits/pascal/92/unlabeled.txt",
        unlabeled_batch_size=16,
    )  # fmt: skip
    assert (dm.batch_size, dm.unlabeled_batch_size, dm.transform.crop_size) == (16, 16, 513)


def test_old_flat_config_fails_with_the_new_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(
        yaml.safe_dump({"data": {"class_path": "wsss_lightning.data.WSSSDataModule", "init_args": FLAT_SEMI}})
    )
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--config", str(CONFIG), "--config", str(old), "--data.init_args.num_workers=0"])
    assert exc.value.code not in (None, 0)
    err = capsys.readouterr().err
    assert f"{old}: data: WSSSDataModule groups its options" in err
    assert "  root -> source.root\n" in err
    assert "  supervision: semi -> view: {class_path: wsss_lightning.data.SemiView}\n" in err
    assert "  labeled_list -> view.init_args.labeled_list\n" in err
    assert "  --data.num_workers -> --data.loader.num_workers" in err
    # the converted block printed with the message is a valid config
    converted = err[err.index("that is:") :].split("\n", 1)[1].split("command line:")[0]
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(converted)
    data = yaml.safe_load(fixed.read_text())["data"]["init_args"]
    assert data["view"]["init_args"]["labeled_list"] == "splits/pascal/92/labeled.txt"
    parsed = parse_data(capsys, "--config", str(fixed))
    assert parsed["view"]["class_path"] == "wsss_lightning.data.SemiView"
    assert parsed["loader"]["batch_size"] == 16 and parsed["transform"]["crop_size"] == 513


def test_old_flat_command_line_option_fails_with_the_new_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", "--config", str(CONFIG), "--data.root", "/data/VOC2012", "--data.supervision=image"])
    assert exc.value.code not in (None, 0)
    err = capsys.readouterr().err
    assert "  --data.root -> --data.source.root\n" in err
    assert "  --data.supervision image -> --data.view wsss_lightning.data.TagsView" in err
    assert legacy_data_options_message(["fit", "--config", str(CONFIG), "--data.source.root=/x"]) is None
