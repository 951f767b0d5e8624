"""DeepLabV3+ in the layout of the rloss / Seminar code (the "pytorch-deeplab-xception" lineage).

Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation" (ECCV 2018);
layout of ``meng-tang/rloss`` ``pytorch/pytorch-deeplab_v3_plus/modeling/{aspp,decoder,deeplab}.py``, which
Seminar Learning (Chen et al., ICCV 2021, §4.2) trains unchanged:

* encoder: a dilated ResNet in torchvision's layout (one 7×7 stem conv; timm ``resnet101``) at output stride
  16 (layer4 stride 1, dilation 2, multi-grid (1, 2, 4) → 2 / 4 / 8), so torchvision ImageNet weights load;
* ASPP: image pooling, 1×1 and three 3×3 atrous branches (rates 6 / 12 / 18 at stride 16), 256 channels each,
  concatenated (1280) → 1×1 conv 256 + BN + ReLU + dropout 0.5;
* decoder: layer1 features → 1×1 conv 48 + BN + ReLU; the ASPP output upsampled (bilinear, align_corners) to
  stride 4 and concatenated before them (304 channels) → 3×3 conv 256 + BN + ReLU + dropout 0.5 → 3×3 conv
  256 + BN + ReLU + dropout 0.1 → 1×1 conv to the classes;
* logits upsampled bilinearly (align_corners) to the input size.

It differs from :class:`~wsss_lightning.models.deeplab.DeepLabV3PlusRep` (U2PL) in the stem, the 48-channel
low-level projection, the dropouts and the missing representation head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.models.deeplab import ASPP, build_dilated_encoder, feature_info, multi_grid_dilations
from wsss_lightning.models.layers import conv_bn_relu
from wsss_lightning.models.weights import load_encoder_weights

_WIDTH = 256  # ASPP branch and decoder width
_LOW = 48  # low-level projection width


def _first_dilations(stage: nn.Sequential) -> list[int]:
    """Dilation of the first k×k conv of each block of ``stage``."""
    rates = []
    for block in stage:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
        rates.append(int(convs[0].dilation[0]) if convs else 1)
    return rates


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ returning logits at the input size (the rloss / Seminar network).

    Args:
        num_classes: classifier outputs (21 for VOC).
        encoder: timm model name; ``resnet101`` (torchvision layout) as the reference, ``resnet18`` / ``resnet50``
            for small runs.
        encoder_weights: local ImageNet weights file for the encoder (torchvision's ``resnet101-5d3b4d8f.pth``
            or timm's; wrapper prefixes are stripped); ``None`` starts from random weights. Nothing is downloaded.
        output_stride: 16 (reference) or 8.
        multi_grid: DeepLab multi-grid of the last stage: block ``i`` gets dilation ``(32 / output_stride) ·
            multi_grid[i]``, so (1, 2, 4) at stride 16 gives the reference's 2 / 4 / 8; ``None`` keeps timm's
            dilations (1 / 2 / 2 at stride 16).
        aspp_dilations: ASPP rates, (6, 12, 18) at stride 16 (double them at stride 8).
        channels: width of the ASPP branches and the decoder (256 in the reference; smaller for CPU-sized runs,
            where the two 3×3 decoder convs at stride 4 dominate the cost).

    Raises:
        ValueError: unknown encoder, unsupported stride, bad multi_grid / dilations / num_classes.
        FileNotFoundError: ``encoder_weights`` does not exist.
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet101",
        encoder_weights: str | None = None,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        aspp_dilations: Sequence[int] = (6, 12, 18),
        channels: int = _WIDTH,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels: expected a positive width, got {channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive number, got {num_classes}")
        if len(aspp_dilations) != 3 or min(aspp_dilations) < 1:
            raise ValueError(f"aspp_dilations: expected three positive rates, got {tuple(aspp_dilations)}")
        self.encoder = build_dilated_encoder(encoder, output_stride, None)
        info = feature_info(self.encoder)
        if multi_grid is not None:
            stage = self.encoder.get_submodule(info.module_name()[-1])
            if not isinstance(stage, nn.Sequential):
                raise ValueError(
                    f"multi_grid: the last stage of {encoder!r} is not a sequence of residual blocks"
                )
            # DeepLab's unit rate of the last stage is 32 / output_stride (2 at stride 16); timm's first block
            # keeps the previous dilation, so express the targets as multipliers of timm's dilations
            rate = 32 // output_stride
            current = _first_dilations(stage)
            if len(multi_grid) != len(current):
                raise ValueError(
                    f"multi_grid: expected one rate per block of the last stage ({len(current)}), got "
                    f"{tuple(multi_grid)}"
                )
            multi_grid_dilations(stage, [rate * g // c for g, c in zip(multi_grid, current, strict=True)])
        encoder_channels, reductions = list(info.channels()), list(info.reduction())
        self._low_index = reductions.index(4)
        width = channels
        self.aspp = ASPP(encoder_channels[-1], tuple(aspp_dilations), width)
        self.aspp_project = nn.Sequential(*conv_bn_relu(self.aspp.out_channels, width, 1), nn.Dropout(0.5))
        self.low_project = nn.Sequential(*conv_bn_relu(encoder_channels[self._low_index], _LOW, 1))
        self.classifier = nn.Sequential(
            *conv_bn_relu(width + _LOW, width, 3),
            nn.Dropout(0.5),
            *conv_bn_relu(width, width, 3),
            nn.Dropout(0.1),
            nn.Conv2d(width, num_classes, 1),
        )
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone`` (the encoder; base learning rate) and ``head`` (ASPP + decoder; 10× in the reference)."""
        backbone = {id(p) for p in self.encoder.parameters()}
        return {
            "backbone": list(self.encoder.parameters()),
            "head": [p for p in self.parameters() if id(p) not in backbone],
        }

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, num_classes, H, W) of normalised images (B, 3, H, W).

        Training mode needs B ≥ 2 (the BatchNorm after the ASPP image pooling sees one value per image).
        """
        features = self.encoder(images)
        context = self.aspp_project(self.aspp(features[-1]))
        low = self.low_project(features[self._low_index])
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=True)
        logits = self.classifier(torch.cat((context, low), dim=1))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
