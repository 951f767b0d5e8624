from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from wsss_lightning.callbacks.prediction_writer import PredictionWriter, full_palette
from wsss_lightning.data.classes import CITYSCAPES_TRAINID_TO_ID, voc_colormap


def masks(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [rng.integers(0, 21, (5, 7), dtype=np.uint8), rng.integers(0, 21, (6, 4), dtype=np.uint8)]
    out[0][0, 0] = 255
    return out


def write(writer: PredictionWriter, prediction: dict[str, Any], datamodule: Any = None) -> None:
    trainer = SimpleNamespace(datamodule=datamodule)
    module = pl.LightningModule()
    writer.setup(trainer, module, "predict")  # type: ignore[arg-type]
    writer.write_on_batch_end(trainer, module, prediction, None, None, 0, 0)  # type: ignore[arg-type]


def test_palette_pngs_read_back_as_indices(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path)
    m = masks()
    write(writer, {"name": ["2007_000033", "frankfurt/frankfurt_000000_000294"], "masks": m})
    first = Image.open(tmp_path / "2007_000033.png")
    assert first.mode == "P"
    np.testing.assert_array_equal(np.asarray(first), m[0])
    assert first.getpalette() == voc_colormap(256).reshape(-1).tolist()  # the VOC server palette
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "frankfurt/frankfurt_000000_000294.png")), m[1]
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["2007_000033.png", "frankfurt", "frankfurt_000000_000294.png"]
    )  # no temporary files left


def test_palette_from_datamodule_and_trainid_format(tmp_path: Path) -> None:
    datamodule = SimpleNamespace(palette=[[1, 2, 3], [4, 5, 6]])
    write(
        PredictionWriter(tmp_path / "p"),
        {"name": ["a"], "masks": torch.ones(1, 3, 3, dtype=torch.uint8)},
        datamodule,
    )
    assert (Image.open(tmp_path / "p/a.png").getpalette() or [])[:6] == [1, 2, 3, 4, 5, 6]
    write(PredictionWriter(tmp_path / "t", format="trainid"), {"name": ["a"], "masks": masks()[:1]})
    image = Image.open(tmp_path / "t/a.png")
    assert image.mode == "L"
    np.testing.assert_array_equal(np.asarray(image), masks()[0])


def test_refuses_overwrite_unless_asked(tmp_path: Path) -> None:
    write(PredictionWriter(tmp_path), {"name": ["x"], "masks": masks(0)[:1]})
    with pytest.raises(FileExistsError, match=r"x\.png"):
        write(PredictionWriter(tmp_path), {"name": ["x"], "masks": masks(1)[:1]})
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), masks(0)[0])
    write(PredictionWriter(tmp_path, overwrite=True), {"name": ["x"], "masks": masks(1)[:1]})
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), masks(1)[0])
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(self: Image.Image, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write(PredictionWriter(tmp_path), {"name": ["y"], "masks": masks()[:1]})
    assert list(tmp_path.iterdir()) == []


def test_bad_predictions_are_rejected(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path)
    with pytest.raises(ValueError, match='"name"'):
        write(writer, {"masks": masks()})
    with pytest.raises(ValueError, match="2 names but 1 masks"):
        write(writer, {"name": ["a", "b"], "masks": masks()[:1]})
    with pytest.raises(ValueError, match=r"\.\."):
        write(writer, {"name": ["../escape"], "masks": masks()[:1]})
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        write(writer, {"name": ["a"], "masks": [np.full((2, 2), 300)]})
    with pytest.raises(ValueError, match="RGB triplets"):
        full_palette([[1, 2]])


class TinyPredictor(pl.LightningModule):
    def predict_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict[str, Any]:
        (masks,) = batch
        return {"name": [f"img_{batch_idx}_{i}" for i in range(len(masks))], "masks": masks.to(torch.uint8)}


@pytest.mark.parametrize("interval", ["batch", "epoch"])
def test_with_trainer_predict(tmp_path: Path, interval: str) -> None:
    data = torch.randint(0, 21, (4, 6, 5))
    trainer = pl.Trainer(
        accelerator="cpu",
        callbacks=[PredictionWriter(tmp_path, write_interval=interval)],  # type: ignore[arg-type]
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.predict(TinyPredictor(), DataLoader(TensorDataset(data), batch_size=2), return_predictions=False)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "img_1_0.png")), data[2].numpy())
    assert len(list(tmp_path.iterdir())) == 4


class CountingPredictor(TinyPredictor):
    calls = 0

    def predict_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict[str, Any]:
        CountingPredictor.calls += 1
        return super().predict_step(batch, batch_idx)


def test_existing_pngs_stop_predict_before_the_model_runs(tmp_path: Path) -> None:
    data = DataLoader(TensorDataset(torch.randint(0, 21, (4, 6, 5))), batch_size=2)

    def predict(**kwargs: Any) -> None:
        trainer = pl.Trainer(
            accelerator="cpu", callbacks=[PredictionWriter(tmp_path, **kwargs)], logger=False,
            enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        trainer.predict(CountingPredictor(), data, return_predictions=False)

    predict()
    CountingPredictor.calls = 0
    with pytest.raises(FileExistsError, match=r"holds 4 PNG files .*--trainer\.callbacks\.overwrite=true"):
        predict()
    assert CountingPredictor.calls == 0
    predict(overwrite=True)
    assert CountingPredictor.calls == 2


def test_cityscapes_label_ids_by_default_train_ids_or_palette_on_request(tmp_path: Path) -> None:
    cityscapes = SimpleNamespace(label_ids=CITYSCAPES_TRAINID_TO_ID, palette=[[128, 64, 128]] * 19)
    train_ids = np.array([[0, 10, 13], [18, 255, 1]], dtype=np.uint8)
    write(PredictionWriter(tmp_path / "auto"), {"name": ["c/f"], "masks": [train_ids]}, cityscapes)
    written = Image.open(tmp_path / "auto/c/f.png")
    assert written.mode == "L"  # what the benchmark server reads: label ids, ignore as 0 "unlabeled"
    np.testing.assert_array_equal(np.asarray(written), [[7, 23, 26], [33, 0, 8]])
    write(
        PredictionWriter(tmp_path / "t", format="trainid"), {"name": ["f"], "masks": [train_ids]}, cityscapes
    )
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t/f.png")), train_ids)
    write(
        PredictionWriter(tmp_path / "p", format="palette"), {"name": ["f"], "masks": [train_ids]}, cityscapes
    )
    assert Image.open(tmp_path / "p/f.png").mode == "P"
    voc = SimpleNamespace(label_ids=None, palette=None)  # train ids are VOC's label ids
    write(PredictionWriter(tmp_path / "v", format="labelid"), {"name": ["f"], "masks": masks()[:1]}, voc)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "v/f.png")), masks()[0])
    with pytest.raises(ValueError, match=r"format='labelid'\) needs trainer\.datamodule\.label_ids"):
        write(PredictionWriter(tmp_path / "x", format="labelid"), {"name": ["f"], "masks": masks()[:1]})
    with pytest.raises(ValueError, match="format must be 'auto', 'palette', 'trainid' or 'labelid'"):
        PredictionWriter(tmp_path, format="ids")  # type: ignore[arg-type]


def test_maps_written_at_the_image_size(tmp_path: Path) -> None:
    small = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    prediction = {"name": ["a", "b"], "masks": [small, small], "image_size": [[4, 6], [2, 2]]}
    write(PredictionWriter(tmp_path, format="trainid"), prediction)
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "a.png")), np.repeat(np.repeat(small, 2, 0), 3, 1)
    )
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), small)
    with pytest.raises(ValueError, match="one \\(height, width\\) per mask"):
        write(
            PredictionWriter(tmp_path / "y"),
            {"name": ["a"], "masks": [small], "image_size": [[4, 6], [2, 2]]},
        )
