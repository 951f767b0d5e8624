"""DeepLab-v2: four parallel 3×3 atrous convolutions from the last encoder feature to the classes, summed.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully
Connected CRFs" (TPAMI 2018), Sec. 3.1, "ASPP-L": rates 6 / 12 / 18 / 24, the branches' logits summed.

The second stage of the tag-supervised methods (ASDT, RRM) retrains this network on the pseudo masks (the layout of
github.com/kazuto1011/deeplab-pytorch, ``libs/models/deeplabv2.py``: ResNet-101 at output stride 8). Built on an smp
encoder, so ``SupervisedModule(arch="deeplabv2")`` takes any encoder the other architectures take.
"""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeepLabV2"]


class DeepLabV2(nn.Module):
    """Encoder + the ASPP-L sum head; logits at the input size (bilinear).

    Args:
        encoder_name: an smp encoder name (``resnet101``) or ``tu-<timm name>``.
        encoder_weights: passed to smp (``None``: random; local files are loaded by the caller).
        classes: output channels.
        encoder_output_stride: 8 (DeepLab-v2) or 16.
        rates: the atrous rates of the four branches.
    """

    def __init__(
        self,
        encoder_name: str = "resnet101",
        encoder_weights: str | None = None,
        classes: int = 21,
        encoder_output_stride: int = 8,
        rates: Sequence[int] = (6, 12, 18, 24),
    ) -> None:
        super().__init__()
        self.encoder = smp.encoders.get_encoder(
            encoder_name, weights=encoder_weights, output_stride=encoder_output_stride
        )
        channels = self.encoder.out_channels[-1]
        convs = [nn.Conv2d(channels, classes, 3, padding=rate, dilation=rate) for rate in rates]
        for conv in convs:  # DeepLab-v2: N(0, 0.01) weights, zero biases
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        self.branches = nn.ModuleList(convs)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, classes, H, W): the sum of the four branches, upsampled to the input size."""
        features = self.encoder(images)[-1]
        logits: Tensor = sum(branch(features) for branch in self.branches)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
