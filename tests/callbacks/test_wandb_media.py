"""W&B in offline mode: the run files, mask overlays and the per-class table are written."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
from lightning.pytorch.loggers import WandbLogger

from wsss_lightning.callbacks import WandbSegmentationMedia
from wsss_lightning.data import DatasetSource, LoaderOptions, TransformOptions, WSSSDataModule
from wsss_lightning.methods import SupervisedModule


def small_datamodule(root: Path) -> WSSSDataModule:
    loader = LoaderOptions(
        batch_size=2, eval_batch_size=2, num_workers=0, persistent_workers=False, pin_memory=False
    )
    return WSSSDataModule(
        DatasetSource(root=str(root), name="voc"), transform=TransformOptions(crop_size=64), loader=loader
    )


def _offline_run(
    synthetic: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[WSSSDataModule, SupervisedModule, WandbLogger]:
    """A small datamodule, a ResNet-18 supervised model and an offline W&B logger writing under ``tmp_path``."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    dm = small_datamodule(synthetic("voc"))
    model = SupervisedModule(encoder="resnet18", num_classes=dm.num_classes, class_names=dm.class_names)
    return dm, model, WandbLogger(project="wsss-test", save_dir=str(tmp_path), offline=True)


def test_offline_run_writes_files_and_media(
    synthetic: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm, model, logger = _offline_run(synthetic, tmp_path, monkeypatch)
    trainer = L.Trainer(
        max_steps=2, val_check_interval=2, limit_val_batches=2, accelerator="cpu", logger=logger,
        callbacks=[WandbSegmentationMedia(num_images=3)], enable_checkpointing=False, enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    run_dir = logger.experiment.dir
    logger.experiment.finish()
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, "no offline run directory"
    assert list(runs[0].glob("run-*.wandb")), "no run log file"
    media = list(tmp_path.rglob("media/images/**/*.png"))
    assert len(media) >= 3, f"expected image + mask files under {run_dir}"
    tables = list(tmp_path.rglob("media/table/**/*.json"))
    assert tables, "per-class IoU table missing"


def test_media_callback_is_inert_without_wandb(synthetic: Callable[[str], Path]) -> None:
    dm = small_datamodule(synthetic("voc"))
    model = SupervisedModule(encoder="resnet18", num_classes=dm.num_classes, class_names=dm.class_names)
    cb = WandbSegmentationMedia(num_images=2)
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, accelerator="cpu", logger=False, callbacks=[cb],
                        enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert cb._rows == []


def test_media_callback_validates_arguments() -> None:
    with pytest.raises(ValueError, match="num_images"):
        WandbSegmentationMedia(num_images=0)


def test_iou_table_matches_the_same_validation(
    synthetic: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm, model, logger = _offline_run(synthetic, tmp_path, monkeypatch)
    logged: list[dict[str, Any]] = []
    run = logger.experiment
    log = run.log
    monkeypatch.setattr(run, "log", lambda data, *a, **k: (logged.append(dict(data)), log(data, *a, **k))[1])
    trainer = L.Trainer(
        max_steps=4, val_check_interval=2, limit_val_batches=2, num_sanity_val_steps=0, accelerator="cpu",
        logger=logger, callbacks=[WandbSegmentationMedia(num_images=1)], enable_checkpointing=False,
        enable_progress_bar=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    run.finish()
    tables = [d for d in logged if "val/per_class_iou" in d]
    scalars = {d["trainer/global_step"]: d for d in logged if "val/miou" in d}
    assert len(tables) == 2 and all(d["trainer/global_step"] in scalars for d in tables), (
        tables,
        list(scalars),
    )
    for entry in tables:
        rows = dict(entry["val/per_class_iou"].data)
        same_step = scalars[entry["trainer/global_step"]]
        assert not all(math.isnan(v) for v in rows.values()), "the table is all NaN"
        for name, value in rows.items():
            expected = same_step[f"val/iou/{name}"]
            assert value == pytest.approx(expected, nan_ok=True), name
        assert np.nanmean(list(rows.values())) == pytest.approx(same_step["val/miou"])
