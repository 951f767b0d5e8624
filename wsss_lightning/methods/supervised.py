"""Fully supervised segmentation: the upper bound, and the second stage of two-stage methods.

Trained on the ``mask`` of the ``full`` supervision view; for a second stage, point the datamodule's
``mask_dir`` at a folder of pseudo-mask PNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.methods.base import IMAGENET_MEAN, IMAGENET_STD, SegmentationMethod
from wsss_lightning.methods.config import InferenceConfig, OptimizerConfig
from wsss_lightning.models import build_segmentation_network


class SupervisedModule(SegmentationMethod):
    """Supervised segmentation with an smp architecture over an smp or timm encoder.

    Args:
        arch: ``deeplabv3plus`` (default), ``deeplabv3``, ``unet`` or ``fpn``.
        encoder: smp encoder name (``resnet101`` default) or ``tu-<timm model>``.
        encoder_weights: local ImageNet weights file for the encoder; ``None`` trains from scratch.
        output_stride: encoder output stride of the DeepLab family (16 as in DeepLabV3+).
        num_classes: see :class:`SegmentationMethod`.
        ignore_index: see :class:`SegmentationMethod`.
        class_names: see :class:`SegmentationMethod`.
        image_mean: see :class:`SegmentationMethod`.
        image_std: see :class:`SegmentationMethod`.
        optim: see :class:`SegmentationMethod`; parameter groups ``encoder`` (x1) and ``head`` (x10, the
            usual DeepLab setting for a pretrained encoder).
        inference: see :class:`SegmentationMethod`.
    """

    def __init__(
        self,
        arch: str = "deeplabv3plus",
        encoder: str = "resnet101",
        encoder_weights: str | None = None,
        output_stride: int | None = 16,
        num_classes: int = 21,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        optim: OptimizerConfig | None = None,
        inference: InferenceConfig | None = None,
    ) -> None:
        self.arch, self.encoder_name = arch, encoder
        self.encoder_weights, self.output_stride = encoder_weights, output_stride
        super().__init__(num_classes, ignore_index, class_names, image_mean, image_std, optim, inference)
        self.save_hyperparameters()

    @override
    def configure_models(self) -> None:
        self.network = build_segmentation_network(
            self.arch, self.encoder_name, self.num_classes, self.encoder_weights, self.output_stride
        )

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        return {
            "encoder": (list(self.network.encoder.parameters()), 1.0),
            "head": (self.network.head_parameters(), 10.0),
        }

    @override
    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        if logits.shape[-2:] != batch["mask"].shape[-2:]:
            logits = F.interpolate(
                logits, size=batch["mask"].shape[-2:], mode="bilinear", align_corners=False
            )
        loss = F.cross_entropy(logits, batch["mask"], ignore_index=self.ignore_index)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss
