"""Write predicted label maps as PNG files (e.g. for the PASCAL VOC or Cityscapes evaluation servers)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from typing_extensions import override

from wsss_lightning.data.classes import voc_colormap

__all__ = ["PredictionWriter", "full_palette"]


def full_palette(palette: Sequence[Sequence[int]] | None) -> list[int]:
    """A 768-long flat palette for ``PIL.Image.putpalette``.

    Entries after the given colours are taken from the VOC colormap, so with the VOC class colours the
    result is exactly the palette of the official VOC PNGs (index 255 = (224, 224, 192)).

    Args:
        palette: one RGB triplet (0-255) per class, at most 256; ``None`` = the VOC colormap.

    Returns:
        Flat list of 768 ints.
    """
    table = voc_colormap(256).astype(np.int64)
    if palette is not None:
        colours = np.asarray(palette, dtype=np.int64)
        if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) > 256:
            raise ValueError(f"palette must be a list of at most 256 RGB triplets, got shape {colours.shape}")
        if colours.min(initial=0) < 0 or colours.max(initial=0) > 255:
            raise ValueError("palette values must lie in [0, 255]")
        table[: len(colours)] = colours
    return table.reshape(-1).tolist()


def _safe_relative_path(name: str) -> PurePosixPath:
    """``name`` as a relative path inside the output dir ("/" separates sub-dirs, as in Cityscapes ids)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"prediction name {name!r} must be a non-empty relative path without '..'")
    return path


Format = Literal["auto", "palette", "trainid", "labelid"]


class PredictionWriter(BasePredictionWriter):
    """Save each predicted label map as ``<output_dir>/<name>.png``.

    ``predict_step`` must return ``{"name": list[str], "masks": ...}`` where ``masks`` is a list of (h, w)
    uint8 arrays (one per name, sizes may differ) or a (B, H, W) integer tensor, and optionally
    ``"image_size"``: one (height, width) per name, the size to write each map at (a map of another size,
    e.g. predicted on an image resized by ``transform.eval_short_side``, is resized with nearest neighbour).
    Names may contain "/", which creates sub-directories. Files are written atomically (a temporary file in
    the same directory, then ``os.replace``), so an interrupted run never leaves a truncated PNG.

    Args:
        output_dir: root directory of the PNGs (created if missing).
        write_interval: ``"batch"`` (write as predictions arrive) or ``"epoch"`` (write all at the end,
            which keeps every prediction in memory).
        format: ``"palette"``: mode-"P" PNG whose pixel values are class ids and whose palette shows the
            classes in colour (the VOC server format); ``"trainid"``: plain grey-scale (mode "L") class ids;
            ``"labelid"``: grey-scale dataset label ids, i.e. for Cityscapes / GTA5 the Cityscapes label ids
            (0..33) the Cityscapes benchmark server reads, with ignore (255) written as 0 "unlabeled"
            (``trainer.datamodule.label_ids`` maps them; datasets without one store their train ids);
            ``"auto"``: ``"labelid"`` when the datamodule has a label-id table (Cityscapes, GTA5), else
            ``"palette"`` (VOC, COCO).
        palette: RGB triplet per class for ``"palette"``; ``None`` = ``trainer.datamodule.palette`` if the
            datamodule has one, else the VOC colormap.
        overwrite: replace existing files; otherwise an existing file raises ``FileExistsError``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        write_interval: Literal["batch", "epoch"] = "batch",
        format: Format = "auto",
        palette: list[list[int]] | None = None,
        overwrite: bool = False,
    ) -> None:
        # "batch_and_epoch" would write every file twice.
        if write_interval not in ("batch", "epoch"):
            raise ValueError(f"write_interval must be 'batch' or 'epoch', got {write_interval!r}")
        if format not in ("auto", "palette", "trainid", "labelid"):
            raise ValueError(f"format must be 'auto', 'palette', 'trainid' or 'labelid', got {format!r}")
        super().__init__(write_interval)
        self.output_dir = Path(output_dir)
        self.format = format
        self.palette = palette
        self.overwrite = overwrite
        self._flat_palette = full_palette(palette) if palette is not None else None
        self._label_ids: np.ndarray | None = None
        self._format: Literal["palette", "trainid", "labelid"] = "palette" if format == "auto" else format

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        datamodule = getattr(trainer, "datamodule", None)
        self._label_ids = getattr(datamodule, "label_ids", None)
        if self.format == "auto":
            self._format = "labelid" if self._label_ids is not None else "palette"
        elif self.format == "labelid" and not hasattr(datamodule, "label_ids"):
            raise ValueError(
                "PredictionWriter(format='labelid') needs trainer.datamodule.label_ids (the train id -> label "
                f"id table, or None where train ids are the label ids); {type(datamodule).__name__} has none"
            )
        if self._format == "palette" and self.palette is None:
            self._flat_palette = full_palette(getattr(datamodule, "palette", None))

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Refuse before the model runs, not at the first file half-way through the predictions.
        if self.overwrite or not self.output_dir.is_dir():
            return
        existing = sorted(self.output_dir.rglob("*.png"))
        if existing:
            shown = ", ".join(str(p.relative_to(self.output_dir)) for p in existing[:3])
            raise FileExistsError(
                f"PredictionWriter: {self.output_dir} already holds {len(existing)} PNG files ({shown}"
                f"{', ...' if len(existing) > 3 else ''}); choose another output_dir or replace them with "
                "--trainer.callbacks.overwrite=true (overwrite: true in a config)"
            )

    @override
    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.write_prediction(prediction)

    @override
    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        for prediction in _iter_predictions(predictions):
            self.write_prediction(prediction)

    def write_prediction(self, prediction: Mapping[str, Any]) -> list[Path]:
        """Write one ``predict_step`` output; returns the paths written."""
        if not isinstance(prediction, Mapping) or "name" not in prediction or "masks" not in prediction:
            raise ValueError(
                'predict_step must return a dict with keys "name" (list[str]) and "masks" '
                f"(list of (h, w) uint8 arrays or a (B, H, W) tensor), got {type(prediction).__name__}"
                + (f" with keys {sorted(prediction)}" if isinstance(prediction, Mapping) else "")
            )
        names = list(prediction["name"])
        masks = _to_numpy_masks(prediction["masks"])
        if len(names) != len(masks):
            raise ValueError(f"prediction has {len(names)} names but {len(masks)} masks")
        sizes = prediction.get("image_size")
        if sizes is not None:
            sizes = [tuple(int(v) for v in size) for size in sizes]
            if len(sizes) != len(masks) or any(len(size) != 2 for size in sizes):
                raise ValueError(f'"image_size" must hold one (height, width) per mask, got {sizes}')
            masks = [_resize_labels(mask, size) for mask, size in zip(masks, sizes, strict=True)]
        if self._format == "labelid" and self._label_ids is not None:
            masks = [self._label_ids[mask] for mask in masks]
        return [self._write_png(name, mask) for name, mask in zip(names, masks, strict=True)]

    def _write_png(self, name: str, mask: np.ndarray) -> Path:
        target = self.output_dir / f"{_safe_relative_path(name)}.png"
        if target.exists() and not self.overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace prediction files")
        image = Image.fromarray(mask)  # uint8 (h, w) -> mode "L"
        if self._format == "palette":
            # putpalette turns an "L" image into "P" with the same pixel values (convert("P") would quantize).
            image.putpalette(self._flat_palette or full_palette(None))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format="PNG")
            if self.overwrite:
                os.replace(tmp_name, target)
            else:
                # A hard link fails if the target appeared meanwhile (another rank, a duplicate name),
                # which a check followed by os.replace would not notice.
                try:
                    os.link(tmp_name, target)
                except FileExistsError:
                    raise FileExistsError(
                        f"{target} exists; pass overwrite=True to replace prediction files"
                    ) from None
                except OSError:  # file systems without hard links
                    if target.exists():
                        raise FileExistsError(
                            f"{target} exists; pass overwrite=True to replace prediction files"
                        ) from None
                    os.replace(tmp_name, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return target


def _resize_labels(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """An (h, w) uint8 label map at ``size`` = (height, width), nearest neighbour (labels must not blend)."""
    height, width = size
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


def _iter_predictions(predictions: Any) -> Iterator[Mapping[str, Any]]:
    """Batch outputs of one or several predict dataloaders (nested lists) in order."""
    if isinstance(predictions, Mapping):
        yield predictions
    elif isinstance(predictions, (list, tuple)):
        for item in predictions:
            yield from _iter_predictions(item)
    else:
        raise TypeError(f"expected predict_step outputs (dicts), got {type(predictions).__name__}")


def _to_numpy_masks(masks: Any) -> list[np.ndarray]:
    """(h, w) uint8 arrays from a list of arrays/tensors or a (B, H, W) tensor/array."""
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        if masks.ndim != 3:
            raise ValueError(f'"masks" must be (B, H, W), got shape {tuple(masks.shape)}')
        masks = list(masks)
    out = []
    for mask in masks:
        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if array.ndim != 2:
            raise ValueError(f'each mask in "masks" must be (h, w), got shape {array.shape}')
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.integer) or (
                array.size and (array.min() < 0 or array.max() > 255)
            ):
                raise ValueError(f'"masks" must hold integer class ids in [0, 255], got dtype {array.dtype}')
            array = array.astype(np.uint8)
        out.append(np.ascontiguousarray(array))
    return out
