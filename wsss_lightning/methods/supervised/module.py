"""Fully supervised segmentation: the upper bound, and the second stage of two-stage methods.

Trained on the ``mask`` of the ``full`` supervision view; for a second stage, point the view's ``mask_dir``
(``view: {class_path: wsss_lightning.data.FullView, init_args: {mask_dir: ...}}``) at a folder of
pseudo-mask PNGs.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.models.resize import resize
from wsss_lightning.models.segmentation import build_segmentation_network


class SupervisedModule(SegmentationMethod):
    """Supervised segmentation with an smp architecture over an smp or timm encoder.

    Args:
        arch: ``deeplabv3plus`` (default), ``deeplabv3``, ``unet`` or ``fpn``.
        encoder: smp encoder name (``resnet101`` default) or ``tu-<timm model>``.
        encoder_weights: local ImageNet weights file for the encoder; ``None`` trains from scratch.
        output_stride: encoder output stride of the DeepLab family (16 as in DeepLabV3+).
        **kwargs: the arguments of :class:`SegmentationMethod` (``optim`` groups ``encoder`` (x1) and ``head``
            (x10, the usual DeepLab setting for a pretrained encoder)).
    """

    def __init__(
        self,
        arch: str = "deeplabv3plus",
        encoder: str = "resnet101",
        encoder_weights: str | None = None,
        output_stride: int | None = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    @override
    def configure_models(self) -> None:
        hp = self.options
        self.network = build_segmentation_network(
            hp.arch, hp.encoder, self.num_classes, hp.encoder_weights, hp.output_stride
        )

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        return {
            "encoder": (list(self.network.encoder.parameters()), 1.0),
            "head": (self.network.head_parameters(), 10.0),
        }

    @override
    def forward(self, images: Tensor) -> Tensor:
        logits: Tensor = self.network(images)
        return logits

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = resize(self(batch["image"]), batch["mask"].shape[-2:])
        loss = F.cross_entropy(logits, batch["mask"], ignore_index=self.ignore_index)
        self.log("train/loss", loss, batch_size=batch["image"].shape[0])
        self.log_progress_loss(loss, batch["image"].shape[0])
        return loss
