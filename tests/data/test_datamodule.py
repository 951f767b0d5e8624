"""WSSSDataModule: every supervision view on every layout, partitions, caches, collation, reproducibility."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from PIL import Image

import wsss_lightning.data.datamodule as dm_module
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
from wsss_lightning.data.datasets.base import DataError
from wsss_lightning.data.supervision import build_tags, save_tags, write_id_list
from wsss_lightning.data.synthetic import generate
from wsss_lightning.data.torch_datasets import image_tags, oversample_indices, pad_collate

CROP = 32
NUM_CLASSES = {"voc": 21, "coco": 81, "coco_stuff": 21, "cityscapes": 19, "gta5": 19}
TRAIN_KEYS = {
    "full": {"image", "valid_box", "name", "mask", "tags"},
    "image": {"image", "valid_box", "name", "mask", "tags"},
    "click": {"image", "valid_box", "name", "mask", "tags", "clicks"},
}
UNLABELED_KEYS = {"image", "valid_box", "name"}


SINGLE_VIEWS: dict[str, type[SupervisionView]] = {"full": FullView, "image": TagsView, "click": ClickView}


def make_dm(
    root: Path,
    view: SupervisionView | None = None,
    *,
    name: str = "voc",
    cache_dir: str | None = None,
    source: dict[str, Any] | None = None,
    transform: dict[str, Any] | None = None,
    loader: dict[str, Any] | None = None,
) -> WSSSDataModule:
    """A datamodule with small crops and batches, no workers; the dicts override single group fields."""
    return WSSSDataModule(
        DatasetSource(root=str(root), name=name, **(source or {})),  # type: ignore[arg-type]
        view=view,
        transform=TransformOptions(**{"crop_size": CROP, **(transform or {})}),
        loader=LoaderOptions(**{"batch_size": 2, "num_workers": 0, **(loader or {})}),
        cache_dir=cache_dir,
    )


def first_batch(loader: Any) -> Any:
    if isinstance(loader, dict):
        return {k: next(iter(v)) for k, v in loader.items()}
    return next(iter(loader))


def check_train_batch(batch: dict[str, Any], keys: set[str], num_classes: int, batch_size: int = 2) -> None:
    assert set(batch) == keys
    assert batch["image"].shape == (batch_size, 3, CROP, CROP) and batch["image"].dtype == torch.float32
    assert batch["valid_box"].shape == (batch_size, 4) and batch["valid_box"].dtype == torch.int64
    assert isinstance(batch["name"], list) and all(isinstance(n, str) for n in batch["name"])
    for key in ("mask", "clicks"):
        if key in batch:
            assert batch[key].shape == (batch_size, CROP, CROP) and batch[key].dtype == torch.int64
            values = batch[key].unique()
            assert ((values >= 0) & (values < num_classes) | (values == 255)).all()
    if "tags" in batch:
        assert batch["tags"].shape == (batch_size, num_classes) and batch["tags"].dtype == torch.float32
        assert set(batch["tags"].unique().tolist()) <= {0.0, 1.0}


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    """A private VOC tree (tests that write caches or touch files must not share one)."""
    return generate("voc", tmp_path / "voc", seed=0, num_train=12, num_val=3, image_size=(40, 48))


@pytest.mark.parametrize("layout", ["voc", "coco", "coco_stuff", "cityscapes", "gta5"])
@pytest.mark.parametrize("view", ["full", "image", "click"])
def test_single_source_views(
    synthetic: Callable[[str], Path], tmp_path: Path, layout: str, view: str
) -> None:
    dm = make_dm(synthetic(layout), SINGLE_VIEWS[view](), name=layout, cache_dir=str(tmp_path / "cache"))
    assert dm.num_classes == NUM_CLASSES[layout]
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, torch.utils.data.DataLoader)
    batch = first_batch(loader)
    check_train_batch(batch, TRAIN_KEYS[view], dm.num_classes)
    if dm.info.has_background:
        assert (batch["tags"][:, 0] == 1).all()
    val = first_batch(dm.val_dataloader())
    assert set(val) == {"image", "mask", "size", "name", "tags"}
    assert val["image"].dtype == torch.float32 and val["mask"].dtype == torch.int64
    assert val["size"].tolist() == [list(val["image"].shape[-2:])]


@pytest.mark.parametrize("layout", ["voc", "coco", "coco_stuff", "cityscapes", "gta5"])
def test_semi_view_every_layout(synthetic: Callable[[str], Path], tmp_path: Path, layout: str) -> None:
    dm = make_dm(
        synthetic(layout), SemiView(labeled_fraction=0.25), name=layout, cache_dir=str(tmp_path / "cache")
    )
    dm.prepare_data()
    dm.setup("fit")
    loaders: Any = dm.train_dataloader()
    assert set(loaders) == {"labeled", "unlabeled"}
    assert dm.supervision == "semi"
    assert dm.source.train_split is not None
    n_train = len(build_source(layout, synthetic(layout), dm.source.train_split).ids)
    n_labeled = -(-n_train // 4)
    assert len(loaders["labeled"].dataset) == len(loaders["unlabeled"].dataset) == n_train - n_labeled
    assert len(loaders["labeled"]) == len(loaders["unlabeled"])
    batch = first_batch(loaders)
    check_train_batch(batch["labeled"], TRAIN_KEYS["full"], dm.num_classes)
    check_train_batch(batch["unlabeled"], UNLABELED_KEYS, dm.num_classes)
    # the generated partition is written for reproducibility and is disjoint
    folder = dm.partition_dir()
    labeled = (folder / "labeled.txt").read_text().split()
    unlabeled = (folder / "unlabeled.txt").read_text().split()
    assert len(labeled) == n_labeled and not set(labeled) & set(unlabeled)


def test_semi_list_files_oversampling_and_keep_masks(voc: Path) -> None:
    ids = build_source("voc", voc, "train_aug").ids
    write_id_list(voc / "lab.txt", ids[:5])
    dm = make_dm(voc, SemiView(labeled_list="lab.txt", keep_target_masks=True), loader={"batch_size": 1})
    dm.setup("fit")
    loaders: Any = dm.train_dataloader()
    lab, unl = loaders["labeled"].dataset, loaders["unlabeled"].dataset
    assert len(unl) == 7 and len(lab) == 7
    counts = np.bincount(lab.indices, minlength=12)
    assert sorted(counts[:5].tolist()) == [1, 1, 1, 2, 2] and counts[5:].sum() == 0
    assert "mask" in first_batch(loaders)["unlabeled"]
    combined = CombinedLoader(loaders, "max_size_cycle")
    steps = sum(1 for _ in combined)
    assert steps == 7


def test_labeled_only_view_may_label_every_id(voc: Path) -> None:
    ids = build_source("voc", voc, "train_aug").ids
    write_id_list(voc / "all.txt", ids)
    dm = make_dm(voc, SemiView(labeled_list="all.txt", labeled_only=True), loader={"batch_size": 1})
    dm.setup("fit")
    loader: Any = dm.train_dataloader()
    assert sorted(loader.dataset.indices) == list(range(len(ids)))
    # U2PL itself needs unlabeled images
    with pytest.raises(ValueError, match=r"0 unlabeled ids.*labeled_only"):
        make_dm(voc, SemiView(labeled_list="all.txt")).setup("fit")


def test_click_files_match_simulated_clicks(synthetic: Callable[[str], Path]) -> None:
    root = synthetic("voc")  # its SegmentationClicks/ were simulated with seed 0, like click_seed=0 here
    geometry: dict[str, Any] = {"crop_size": 64, "scale_range": (1.0, 1.0), "hflip_p": 0.0}
    from_files = first_batch(
        make_dm(
            root, ClickView(clicks_dir="SegmentationClicks", click_mode="points"), transform=geometry
        ).train_dataloader()
    )
    L.seed_everything(0, verbose=False)
    simulated = make_dm(root, ClickView(click_mode="points"), transform=geometry)
    simulated.setup("fit")
    by_name: dict[str, torch.Tensor] = {}
    loader: Any = simulated.train_dataloader()
    for batch in loader:
        by_name.update(zip(batch["name"], batch["clicks"], strict=True))
    assert (from_files["clicks"] != 255).any()
    for name, clicks in zip(from_files["name"], from_files["clicks"], strict=True):
        assert torch.equal(by_name[name], clicks)


def test_image_tags_background_convention() -> None:
    from wsss_lightning.data.classes import get_dataset_info

    full_object = np.full((4, 4), 12, dtype=np.uint8)
    assert image_tags(full_object, get_dataset_info("voc")).nonzero()[0].tolist() == [0, 12]
    assert image_tags(full_object, get_dataset_info("cityscapes")).nonzero()[0].tolist() == [12]


def test_oversample_indices_balanced() -> None:
    out = oversample_indices(3, 10, seed=0)
    assert len(out) == 10 and sorted(np.bincount(out).tolist()) == [3, 3, 4]
    assert oversample_indices(5, 3, seed=0) == [0, 1, 2, 3, 4]
    assert oversample_indices(3, 10, seed=1) == oversample_indices(3, 10, seed=1)


def test_semi_cityscapes_u2pl_style_paths(synthetic: Callable[[str], Path], tmp_path: Path) -> None:
    root = synthetic("cityscapes")
    ids = build_source("cityscapes", root, "train").ids
    lines = [f"leftImg8bit/train/{i}_leftImg8bit.png" for i in ids[:3]]
    (tmp_path / "labeled.txt").write_text("\n".join(lines) + "\n")
    dm = make_dm(root, SemiView(labeled_list=str(tmp_path / "labeled.txt")), name="cityscapes")
    dm.setup("fit")
    loaders: Any = dm.train_dataloader()
    assert set(loaders["labeled"].dataset.indices) == {0, 1, 2}


def test_bad_semi_partitions_raise(voc: Path) -> None:
    (voc / "bad.txt").write_text("2007_000000\nnot_an_id_1\nnot_an_id_2\n")
    dm = make_dm(voc, SemiView(labeled_list="bad.txt"))
    with pytest.raises(ValueError, match=r"bad\.txt.*not_an_id_1"):
        dm.setup("fit")
    ids = build_source("voc", voc, "train_aug").ids
    write_id_list(voc / "l.txt", ids[:4])
    write_id_list(voc / "u.txt", ids[3:])
    dm = make_dm(voc, SemiView(labeled_list="l.txt", unlabeled_list="u.txt"))
    with pytest.raises(ValueError, match=ids[3]):
        dm.setup("fit")
    with pytest.raises(ValueError, match="labeled_list"):
        SemiView()
    with pytest.raises(ValueError, match="labeled_fraction"):
        SemiView(labeled_list="l.txt", labeled_fraction=0.5)


def test_domain_gta5_to_cityscapes(synthetic: Callable[[str], Path]) -> None:
    dm = make_dm(
        synthetic("gta5"),
        DomainView(target=DatasetSource(root=str(synthetic("cityscapes")), name="cityscapes")),
        name="gta5",
    )
    assert dm.supervision == "domain"
    assert dm.num_classes == 19 and dm.class_names[0] == "road" and len(dm.palette) == 19
    dm.prepare_data()
    dm.setup("fit")
    loaders: Any = dm.train_dataloader()
    assert set(loaders) == {"source", "target"}
    assert len(loaders["source"].dataset) == 20  # gta5 "all" = train + val images
    assert len(loaders["target"].dataset) == 16
    batch = first_batch(loaders)
    check_train_batch(batch["source"], TRAIN_KEYS["full"], 19)
    check_train_batch(batch["target"], UNLABELED_KEYS, 19)
    assert all("/" in n for n in batch["target"]["name"])  # cityscapes ids
    assert dm._eval_sets["val"].source.info.name == "cityscapes"
    assert sum(1 for _ in CombinedLoader(loaders, "max_size_cycle")) == 10


def test_domain_class_mismatch_and_missing_target() -> None:
    with pytest.raises(ValueError, match=r"voc.*cityscapes"):
        WSSSDataModule(
            DatasetSource(root="/nowhere", name="voc"),
            view=DomainView(target=DatasetSource(root="/nowhere", name="cityscapes")),
        )
    with pytest.raises(TypeError, match="target"):
        DomainView()  # type: ignore[call-arg]  # a target domain is required


def test_properties_without_data_and_prepare_checks_root(tmp_path: Path) -> None:
    dm = WSSSDataModule(DatasetSource(root=str(tmp_path / "missing")))
    assert (dm.num_classes, dm.ignore_index, dm.class_names[15]) == (21, 255, "person")
    assert dm.palette[1] == [128, 0, 0]
    with pytest.raises(FileNotFoundError, match="missing"):
        dm.prepare_data()


def test_tags_cache_reuse_and_stale_rebuild(voc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = make_dm(voc, TagsView())
    dm.prepare_data()
    cached = list((voc / ".wsss_cache").glob("tags_voc_train_aug_*.npz"))
    assert len(cached) == 1
    source = build_source("voc", voc, "train_aug")
    first = dm._cached_tags(source)

    calls = []

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return build_tags(*args, **kwargs)

    monkeypatch.setattr(dm_module, "build_tags", counting_build)
    np.testing.assert_array_equal(dm._cached_tags(source), first)
    assert calls == []  # reused

    # Edit one mask (newer mtime): the cache is stale and rebuilt with the new labels.
    sample = source.ids[0]
    mask = np.full_like(source.read_mask(sample), 7)
    from wsss_lightning.data.datasets.base import write_index_png

    mask_path = source.mask_path(sample)
    assert mask_path is not None
    write_index_png(mask_path, mask, dm.info.palette_bytes())
    later = cached[0].stat().st_mtime + 10
    os.utime(mask_path, (later, later))
    rebuilt = dm._cached_tags(source)
    assert calls == [1]
    assert rebuilt[0].tolist() == [1.0 if c in (0, 7) else 0.0 for c in range(21)]  # background always 1
    np.testing.assert_array_equal(rebuilt[1:], first[1:])


def test_tags_file_is_used(voc: Path) -> None:
    ids = build_source("voc", voc, "train_aug").ids
    save_tags(voc / "tags.txt", {i: np.eye(21, dtype=np.float32)[3] for i in ids})
    dm = make_dm(voc, TagsView(tags_file="tags.txt", diagnostic_masks=False))
    dm.setup("fit")
    batch = first_batch(dm.train_dataloader())
    assert set(batch) == {"image", "valid_box", "name", "tags"}
    expected = torch.zeros(21)
    expected[[0, 3]] = 1.0  # the file's class 3 plus background
    assert (batch["tags"] == expected).all()
    assert not (voc / ".wsss_cache").exists()


def test_predict_batches_carry_the_tags_views_tags(voc: Path) -> None:
    """With the TagsView a predict split of the dataset carries its tags (the tag file, else its masks), for the
    pseudo masks methods make at prediction time; a tag file without the predict split's ids gives none."""
    ids = build_source("voc", voc, "train_aug").ids
    save_tags(voc / "tags.txt", {i: np.eye(21, dtype=np.float32)[3] for i in ids})
    dm = make_dm(voc, TagsView(tags_file="tags.txt"), source={"predict_split": "train_aug"})
    dm.setup("predict")
    pred = first_batch(dm.predict_dataloader())
    expected = torch.zeros(21)
    expected[[0, 3]] = 1.0
    assert "mask" not in pred and (pred["tags"] == expected).all()
    from_masks = make_dm(voc, TagsView(), source={"predict_split": "train_aug"})
    from_masks.setup("predict")
    batch = first_batch(from_masks.predict_dataloader())
    assert batch["tags"].shape == (1, 21) and batch["tags"][:, 0].eq(1).all()
    other = make_dm(voc, TagsView(tags_file="tags.txt"), source={"predict_split": "val"})
    other.setup("predict")
    assert "tags" not in first_batch(other.predict_dataloader())
    full = make_dm(voc, FullView(), source={"predict_split": "train_aug"})
    full.setup("predict")
    assert "tags" not in first_batch(full.predict_dataloader())


def test_eval_collate_pads_to_batch_max() -> None:
    samples = [
        {
            "image": torch.ones(3, 4, 6),
            "mask": torch.zeros(4, 6, dtype=torch.int64),
            "size": torch.tensor([4, 6]),
            "name": "a",
            "tags": torch.ones(5),
        },
        {
            "image": torch.ones(3, 7, 3),
            "mask": torch.ones(7, 3, dtype=torch.int64),
            "size": torch.tensor([7, 3]),
            "name": "b",
            "tags": torch.zeros(5),
        },
    ]
    batch = pad_collate(samples)
    assert batch["image"].shape == (2, 3, 7, 6) and batch["mask"].shape == (2, 7, 6)
    assert batch["size"].tolist() == [[4, 6], [7, 3]] and batch["name"] == ["a", "b"]
    assert (batch["image"][0, :, 4:] == 0).all() and (batch["image"][1, :, :, 3:] == 0).all()
    assert (batch["mask"][0, 4:] == 255).all() and (batch["mask"][1, :, 3:] == 255).all()
    assert (batch["mask"][1, :7, :3] == 1).all()
    no_mask = pad_collate([{k: v for k, v in s.items() if k not in ("mask", "tags")} for s in samples])
    assert set(no_mask) == {"image", "size", "name"}


def test_eval_short_side_and_predict_without_masks(voc: Path) -> None:
    dm = make_dm(
        voc,
        transform={"eval_short_side": 20},
        loader={"eval_batch_size": 2},
        source={"predict_split": "test"},
    )
    dm.setup("validate")
    val = first_batch(dm.val_dataloader())
    assert val["image"].shape == (2, 3, 20, 24) and val["mask"].shape == (2, 20, 24)
    dm.setup("predict")
    pred = first_batch(dm.predict_dataloader())
    assert set(pred) == {"image", "size", "image_size", "name"}
    assert pred["size"].tolist() == [[20, 24]] * 2 and pred["image_size"].tolist() == [[40, 48]] * 2
    with pytest.raises(ValueError, match="no masks"):
        make_dm(voc, source={"test_split": "test"}).setup("test")


def test_predict_reads_no_masks_of_a_list_file_split(voc: Path, tmp_path: Path) -> None:
    """A list file of ids to predict on needs only the images (their masks may not exist)."""
    ids = build_source("voc", voc, "val").ids
    for sample_id in ids:
        (voc / "SegmentationClassAug" / f"{sample_id}.png").unlink()
    listing = tmp_path / "mine.txt"
    listing.write_text("".join(f"{i}\n" for i in ids))
    dm = make_dm(
        voc, source={"predict_split": str(listing)}, transform={"eval_center_crop": 16, "eval_short_side": 20}
    )
    dm.setup("predict")
    pred = first_batch(dm.predict_dataloader())
    assert pred["name"] == ids[:1] and "mask" not in pred
    assert pred["size"].tolist() == [[20, 24]]  # no centre crop: a prediction covers the whole image


def test_predict_images_from_a_folder_without_a_dataset_root(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for name, (h, w) in {"b": (9, 13), "a/x": (7, 5)}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(folder / f"{name}.jpg")
    dm = make_dm(tmp_path / "no_root", source={"predict_images": str(folder)}, name="cityscapes")
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [b["name"] for b in batches] == [["a/x"], ["b"]]  # sorted paths without extension
    assert [b["image_size"].tolist() for b in batches] == [[[7, 5]], [[9, 13]]]
    assert dm.label_ids is not None and int(dm.label_ids[0]) == 7  # Cityscapes road: label id 7


def test_workers_reproducible_with_seed_everything(voc: Path) -> None:
    def run() -> list[torch.Tensor]:
        L.seed_everything(3, verbose=False)
        dm = make_dm(
            voc,
            ClickView(),
            loader={"num_workers": 2, "persistent_workers": False},
            transform={"color_jitter": 0.3, "blur_p": 0.5},
        )
        dm.setup("fit")
        loader: Any = dm.train_dataloader()
        return [torch.cat([b["image"].flatten(), b["clicks"].flatten().float()]) for b in loader]

    a, b = run(), run()
    assert len(a) == 6
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])


def test_mask_dir_replaces_training_masks_but_not_validation(tmp_path: Path) -> None:
    from wsss_lightning.data.datasets.base import write_index_png

    root = generate("voc", tmp_path / "voc", seed=0, num_train=8, num_val=2, image_size=(48, 48))
    source = build_source("voc", root, "train_aug")
    pseudo = tmp_path / "pseudo"
    for sample_id in source.ids:  # a first stage that predicts class 7 everywhere
        write_index_png(
            pseudo / f"{sample_id}.png", np.full(source.read_image(sample_id).shape[:2], 7, np.uint8)
        )
    dm = WSSSDataModule(
        DatasetSource(root=str(root)),
        view=FullView(mask_dir=str(pseudo)),
        transform=TransformOptions(crop_size=32, scale_range=(1.0, 1.0)),
        loader=LoaderOptions(batch_size=2, num_workers=0),
    )
    dm.setup("fit")
    batch = first_batch(dm.train_dataloader())
    assert set(batch["mask"].unique().tolist()) <= {7, 255}
    val = next(iter(dm.val_dataloader()))
    assert set(val["mask"].unique().tolist()) - {7, 255}, "validation must keep the ground truth"


def test_mask_dir_with_missing_masks_names_them(tmp_path: Path) -> None:
    root = generate("voc", tmp_path / "voc", seed=0, num_train=4, num_val=2, image_size=(32, 32))
    (tmp_path / "pseudo").mkdir()
    dm = WSSSDataModule(
        DatasetSource(root=str(root)),
        view=FullView(mask_dir=str(tmp_path / "pseudo")),
        transform=TransformOptions(crop_size=32),
        loader=LoaderOptions(batch_size=2, num_workers=0),
    )
    with pytest.raises(FileNotFoundError, match="lacks masks for 4 of 4"):
        dm.setup("fit")


def test_missing_files_are_reported_together_before_the_first_step(voc: Path) -> None:
    """Every file a split lists is stat-ed at set-up; all missing ones are named in one error."""
    train = build_source("voc", voc, "train_aug")
    gone = [voc / "JPEGImages" / f"{train.ids[0]}.jpg", voc / "SegmentationClassAug" / f"{train.ids[3]}.png"]
    for path in gone:
        path.unlink()
    with pytest.raises(DataError, match=r"(?s)2 files listed by voc split 'train_aug'.*") as info:
        make_dm(voc, FullView()).setup("fit")
    assert all(str(path) in str(info.value) for path in gone)
    # a view that trains without the masks needs the images only
    with pytest.raises(DataError, match=r"1 file listed") as info:
        make_dm(voc, TagsView()).setup("fit")
    assert str(gone[0]) in str(info.value) and str(gone[1]) not in str(info.value)
    # evaluation splits need their masks
    val = build_source("voc", voc, "val")
    (voc / "SegmentationClassAug" / f"{val.ids[1]}.png").unlink()
    with pytest.raises(DataError, match=rf"(?s)1 file listed by voc split 'val'.*{val.ids[1]}\.png"):
        make_dm(voc, FullView()).setup("validate")
