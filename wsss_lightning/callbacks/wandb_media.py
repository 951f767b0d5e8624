"""W&B dashboards: mask overlays for a fixed set of validation images and a per-class IoU table."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override


class WandbSegmentationMedia(Callback):
    """Log image / ground truth / prediction overlays and a per-class IoU table to W&B.

    The same validation images (the first ``num_images`` of the validation set, in loader order on
    rank 0) are logged every ``every_n_epochs`` validations so the panels stay comparable over training.
    Without a :class:`~lightning.pytorch.loggers.WandbLogger` the callback does nothing.

    Args:
        num_images: how many validation images to show (W&B advises fewer than 50 per step).
        every_n_epochs: log every this many validation runs.
        key: the W&B key of the image panel.
    """

    def __init__(self, num_images: int = 8, every_n_epochs: int = 1, key: str = "val/examples") -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.key = key
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []
        self._validations = 0

    @staticmethod
    def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def _active(self, trainer: L.Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and self._wandb_logger(trainer) is not None
            and self._validations % self.every_n_epochs == 0
        )

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    @override
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        missing = self.num_images - len(self._rows)
        if missing <= 0 or not self._active(trainer):
            return
        images, sizes = batch["image"][:missing], batch["size"][:missing]
        with torch.no_grad():
            preds = pl_module.predict_masks(images, sizes, test_time=False)  # type: ignore[operator]
        rgb = pl_module.to_uint8(images)  # type: ignore[operator]
        for i, (h, w) in enumerate(sizes.tolist()):
            gt = batch["mask"][i, :h, :w].to(torch.uint8).cpu().numpy()
            pred = preds[i].to(torch.uint8).cpu().numpy()
            self._rows.append((rgb[i, :h, :w], gt, pred, str(batch["name"][i])))

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not on_validation_epoch_end: Lightning runs the callbacks' epoch-end hooks before the module's, which
        # computes this validation's IoU
        if self._active(trainer):
            self._log(trainer, pl_module)
        if not trainer.sanity_checking:
            self._validations += 1

    @rank_zero_only
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import wandb

        logger = self._wandb_logger(trainer)
        assert logger is not None
        names = list(getattr(pl_module, "class_names", []))
        labels = {i: n for i, n in enumerate(names)} | {255: "ignore"}
        images = [
            wandb.Image(
                rgb,
                caption=name,
                masks={
                    "ground_truth": {"mask_data": gt, "class_labels": labels},
                    "prediction": {"mask_data": pred, "class_labels": labels},
                },
            )
            for rgb, gt, pred, name in self._rows
        ]
        # the IoU this validation computed, behind its val/miou (a DuPL sub-net's, say), read from the module
        computed = getattr(pl_module, "validation_table_iou", lambda: None)()
        per_class = computed[1] if computed is not None else {}
        table = wandb.Table(columns=["class", "iou"])
        for name in names:
            table.add_data(name, per_class.get(name, float("nan")))
        # the step Lightning's logger connector gives this validation's val/miou (its count of batches that
        # stepped, not global_step), so the table and the scalars line up on the dashboard
        step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)
        media: dict[str, Any] = {
            self.key: images,
            "val/per_class_iou": table,
        }  # W&B objects, as log_image does
        logger.log_metrics(media, step=step)
