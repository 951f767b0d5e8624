"""DeepLabV3+ with a representation head: the U2PL segmentation network over a dilated timm encoder.

Layout (U2PL's ``dec_deeplabv3_plus`` on a dilated ResNet):

* encoder: any timm CNN built with ``features_only=True`` at output stride 8 (or 16). The reference uses a
  ResNet-101 with a *deep stem* (three 3×3 convs 3→64 (stride 2)→64→128, each with BN, then max-pool) and
  plain 1×1 stride-2 projection shortcuts. In timm that network is ``resnet101s`` (``stem_width=64``,
  ``stem_type="deep"``, no avg-down); its parameter names and shapes equal the reference's, so the authors'
  ImageNet ``resnet101.pth`` loads into it unchanged. Not the same network: ``resnet101c`` (deep stem only
  32/32/64 wide), ``resnet101d`` (that 32-wide stem plus avg-down shortcuts: 2×2 average pooling followed by
  a stride-1 1×1 conv) and ``resnet101`` (torchvision's single 7×7 stem conv). The one remaining difference
  from the reference, its max-pool's ``ceil_mode=True``, has no effect here because ``forward`` pads inputs
  to ``k·output_stride + 1`` pixels, which makes the pooled map odd-sized, where both rounding modes agree.
* multi-grid: the last stage's 3×3 convs get their dilation multiplied by ``(2, 2, 4)``, which turns layer4's
  (2, 4, 4) into the reference's (4, 8, 16) at output stride 8; layer3 keeps (1, 2, 2, ...).
* ASPP (image pooling, 1×1, three 3×3 atrous branches, 256 channels each) → 3×3 conv to 256; layer1
  features reduced to 256 channels by a 1×1 conv (not DeepLab's 48); both concatenated at 1/4 resolution
  (512 channels) and fed to the classifier and to the representation head (two 3×3 conv blocks each).
* optional auxiliary head on the penultimate feature level (layer3), used with weight 0.4 on Cityscapes.

Submodule names mirror the reference (``encoder``, ``decoder.aspp.conv1`` ..., ``decoder.low_conv``,
``decoder.head``, ``decoder.classifier``, ``decoder.representation``, ``auxor.aux``) so that its released
checkpoints load once the ``module.`` prefix is stripped. BatchNorm is plain ``nn.BatchNorm2d``; Lightning's
``sync_batchnorm=True`` converts it to SyncBatchNorm as the reference's training used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import timm
import torch
import torch.nn.functional as F
from timm.models import FeatureInfo
from torch import Tensor, nn

from wsss_lightning.models.layers import conv_bn_relu
from wsss_lightning.models.weights import load_encoder_weights

#: timm name of the deep-stem ResNet-101 the reference was trained with (see the module docstring).
REFERENCE_ENCODER = "resnet101s"

_INNER = 256  # channel width of every decoder branch, as in the reference


def representation_head(in_channels: int, out_channels: int, channels: int = _INNER) -> nn.Sequential:
    """U2PL's representation head: two 3x3 conv-BN-ReLU-Dropout2d(0.1) blocks, then a 1x1 projection.

    ``u2pl/models/decoder.py`` (``dec_deeplabv3_plus.representation``); the weakly supervised setting of
    U2PL+ puts the same head on AFA's fused decoder features.
    """
    return nn.Sequential(
        *conv_bn_relu(in_channels, channels, 3, bias=True, dropout=True),
        *conv_bn_relu(channels, channels, 3, bias=True, dropout=True),
        nn.Conv2d(channels, out_channels, 1),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: image pooling, 1×1 and three dilated 3×3 branches, concatenated.

    Args:
        in_channels: channels of the deepest encoder features.
        dilations: rates of the three 3×3 branches ((12, 24, 36) at output stride 8).
        channels: output channels of each branch.
    """

    def __init__(self, in_channels: int, dilations: Sequence[int], channels: int = _INNER) -> None:
        super().__init__()
        d1, d2, d3 = dilations

        def branch(kernel_size: int, dilation: int = 1) -> nn.Sequential:
            # no bias: every branch is followed by BN
            layers = conv_bn_relu(
                in_channels, channels, kernel_size, dilation=dilation, bias=False, dropout=False
            )
            return nn.Sequential(*layers)

        self.conv1 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *branch(1))
        self.conv2 = branch(1)
        self.conv3 = branch(3, d1)
        self.conv4 = branch(3, d2)
        self.conv5 = branch(3, d3)
        self.out_channels = 5 * channels

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, C_in, h, w) features to (B, 5·channels, h, w)."""
        h, w = x.shape[-2:]
        # bilinear upsampling of a 1×1 map is a broadcast; expand avoids the interpolation kernel
        pooled = self.conv1(x).expand(-1, -1, h, w)
        return torch.cat((pooled, self.conv2(x), self.conv3(x), self.conv4(x), self.conv5(x)), dim=1)


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP + low-level fusion, then a classifier and a representation head at the low-level resolution.

    Args:
        low_channels: channels of the stride-4 encoder features (256 for ResNet-50/101 layer1).
        deep_channels: channels of the deepest encoder features (2048 for ResNet-50/101 layer4).
        num_classes: classifier outputs.
        dilations: ASPP rates.
        rep_channels: output channels of the representation head.
    """

    def __init__(
        self,
        low_channels: int,
        deep_channels: int,
        num_classes: int,
        dilations: Sequence[int],
        rep_channels: int = 256,
    ) -> None:
        super().__init__()
        self.low_conv = nn.Sequential(*conv_bn_relu(low_channels, _INNER, 1, bias=True, dropout=False))
        self.aspp = ASPP(deep_channels, dilations)
        self.head = nn.Sequential(*conv_bn_relu(self.aspp.out_channels, _INNER, 3, bias=False, dropout=True))
        fused = 2 * _INNER
        self.classifier = nn.Sequential(
            *conv_bn_relu(fused, _INNER, 3, bias=True, dropout=True),
            *conv_bn_relu(_INNER, _INNER, 3, bias=True, dropout=True),
            nn.Conv2d(_INNER, num_classes, 1),
        )
        self.representation = representation_head(fused, rep_channels)

    def forward(self, low: Tensor, deep: Tensor, with_rep: bool = True) -> dict[str, Tensor]:
        """Decode encoder features.

        Args:
            low: (B, C_low, h4, w4) stride-4 features.
            deep: (B, C_deep, h8, w8) deepest features.
            with_rep: also run the representation head.

        Returns:
            ``pred`` (B, num_classes, h4, w4) logits and, if ``with_rep``, ``rep`` (B, rep_channels, h4, w4)
            (not L2-normalised).
        """
        context = self.head(self.aspp(deep))
        low = self.low_conv(low)
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=True)
        fused = torch.cat((low, context), dim=1)  # low-level first, as the reference's checkpoints expect
        out = {"pred": self.classifier(fused)}
        if with_rep:
            out["rep"] = self.representation(fused)
        return out


class AuxHead(nn.Module):
    """3×3 conv (256) + BN + ReLU + dropout + 1×1 classifier on intermediate features.

    Args:
        in_channels: channels of the features (1024 for ResNet-50/101 layer3).
        num_classes: outputs.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.aux = nn.Sequential(
            *conv_bn_relu(in_channels, _INNER, 3, bias=True, dropout=True),
            nn.Conv2d(_INNER, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, C_in, h, w) features to (B, num_classes, h, w) logits."""
        return cast(Tensor, self.aux(x))


def multi_grid_dilations(stage: nn.Sequential, grid: Sequence[int]) -> list[int]:
    """Multiply the dilation of every k×k (k > 1) conv in block ``i`` of ``stage`` by ``grid[i]``, in place.

    Args:
        stage: the last encoder stage as a sequence of residual blocks (timm ResNet ``layer4``).
        grid: one multiplier per block.

    Returns:
        The resulting dilation of each block's first k×k conv (e.g. [4, 8, 16] for ResNet-101 at stride 8).

    Raises:
        ValueError: ``grid`` does not have one entry per block.
    """
    if len(grid) != len(stage):
        raise ValueError(
            f"multi_grid: expected one multiplier per block of the last encoder stage ({len(stage)} blocks), "
            f"got {tuple(grid)}; pass multi_grid=None to keep the encoder's dilations"
        )
    rates: list[int] = []
    for block, factor in zip(stage, grid, strict=True):
        first: int | None = None
        for name, conv in block.named_modules():
            if not isinstance(conv, nn.Conv2d) or name.startswith("downsample") or conv.kernel_size == (1, 1):
                continue
            dh, dw = conv.dilation
            conv.dilation = (dh * factor, dw * factor)
            # keep the "same" padding of a stride-1 dilated conv
            kh, kw = conv.kernel_size
            conv.padding = (conv.dilation[0] * (kh - 1) // 2, conv.dilation[1] * (kw - 1) // 2)
            first = conv.dilation[0] if first is None else first
        if first is None:
            raise ValueError(f"multi_grid: block {type(block).__name__} of the last stage has no k×k conv")
        rates.append(first)
    return rates


def feature_info(encoder: nn.Module) -> FeatureInfo:
    """The timm ``FeatureInfo`` (channels, strides, module names of each level) of a feature extractor."""
    info = encoder.feature_info
    if not isinstance(info, FeatureInfo):
        raise TypeError(f"encoder: expected a timm features_only model, got {type(encoder).__name__}")
    return info


def build_dilated_encoder(name: str, output_stride: int, multi_grid: Sequence[int] | None) -> nn.Module:
    """Create a timm feature extractor with dilated late stages (no hub download).

    Args:
        name: timm model name (``resnet101s`` for the reference network).
        output_stride: 8 or 16.
        multi_grid: per-block dilation multipliers for the last stage, or ``None``.

    Raises:
        ValueError: unknown name, a model that cannot run dilated, no stride-4 level, or a bad multi_grid.
    """
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride: expected 8 or 16, got {output_stride}")
    if not timm.is_model(name):
        raise ValueError(
            f"encoder: unknown timm model {name!r}; list valid names with timm.list_models() "
            f"(e.g. timm.list_models('resnet*')); the reference network is {REFERENCE_ENCODER!r}"
        )
    try:
        encoder = timm.create_model(name, features_only=True, output_stride=output_stride, pretrained=False)
    except (TypeError, RuntimeError, AssertionError, ValueError) as err:
        raise ValueError(
            f"encoder: timm model {name!r} cannot be built as a dilated feature extractor with "
            f"output_stride={output_stride} ({err}); use a CNN such as {REFERENCE_ENCODER!r}"
        ) from err
    reductions = list(feature_info(encoder).reduction())
    if reductions[-1] != output_stride or 4 not in reductions:
        raise ValueError(
            f"encoder: timm model {name!r} gives feature strides {reductions}; expected a stride-4 level and "
            f"a last level at output_stride={output_stride}"
        )
    if multi_grid is not None:
        stage = encoder.get_submodule(feature_info(encoder).module_name()[-1])
        if not isinstance(stage, nn.Sequential):
            raise ValueError(
                f"multi_grid: the last stage of {name!r} is not a sequence of residual blocks; "
                "pass multi_grid=None for this encoder"
            )
        multi_grid_dilations(stage, multi_grid)
    return encoder


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class DeepLabV3PlusRep(nn.Module):
    """DeepLabV3+ with a representation head (the U2PL network).

    Args:
        num_classes: classifier outputs (21 VOC, 19 Cityscapes).
        encoder: timm model name. The default ``resnet101s`` is the reference's deep-stem ResNet-101 (see the
            module docstring); ``resnet101`` is torchvision's layout (for torchvision / timm ImageNet weights).
        encoder_weights: local ImageNet weights file for the encoder (``.pth``/``.safetensors``; wrapper
            prefixes such as ``module.`` are stripped); ``None`` starts from random weights. Nothing is
            downloaded.
        output_stride: 8 (the reference) or 16.
        multi_grid: dilation multipliers for the blocks of the last stage; ``(2, 2, 4)`` as in the reference.
            Needs one entry per block (ResNet-50/101: 3); ``None`` keeps timm's dilations.
        aspp_dilations: rates of the three atrous ASPP branches ((12, 24, 36) at stride 8; (6, 12, 18) is
            the usual choice at stride 16).
        aux: add the auxiliary head on the penultimate feature level (the reference uses it on Cityscapes).
        rep_channels: output channels of the representation head.

    Raises:
        ValueError: unknown encoder, unsupported output stride, bad multi_grid / dilations / num_classes.
        FileNotFoundError: ``encoder_weights`` does not exist.
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = REFERENCE_ENCODER,
        encoder_weights: str | None = None,
        output_stride: int = 8,
        multi_grid: tuple[int, ...] | None = (2, 2, 4),
        aspp_dilations: tuple[int, int, int] = (12, 24, 36),
        aux: bool = False,
        rep_channels: int = 256,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive number, got {num_classes}")
        if len(aspp_dilations) != 3 or min(aspp_dilations) < 1:
            raise ValueError(f"aspp_dilations: expected three positive rates, got {tuple(aspp_dilations)}")
        if rep_channels < 1:
            raise ValueError(f"rep_channels: expected a positive number, got {rep_channels}")
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.rep_channels = rep_channels
        self.encoder = build_dilated_encoder(encoder, output_stride, multi_grid)
        info = feature_info(self.encoder)
        channels, reductions = list(info.channels()), list(info.reduction())
        self._low_index = reductions.index(4)
        self._aux_stride = reductions[-2]
        self.decoder = DeepLabV3PlusDecoder(
            channels[self._low_index], channels[-1], num_classes, aspp_dilations, rep_channels
        )
        # attribute name as in the reference so its checkpoints keep their keys
        self.auxor = AuxHead(channels[-2], num_classes) if aux else None
        if encoder_weights is not None:
            load_encoder_weights(self.encoder, encoder_weights)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Split parameters for per-group learning rates (the reference trains ``decoder`` at 10× on VOC).

        Returns:
            ``encoder``: the pretrained backbone; ``decoder``: everything else (ASPP, fusion, classifier,
            representation head and auxiliary head). Every parameter appears exactly once.
        """
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return {
            "encoder": list(self.encoder.parameters()),
            "decoder": [p for p in self.parameters() if id(p) not in encoder_ids],
        }

    def forward(self, images: Tensor, with_rep: bool = True) -> dict[str, Tensor]:
        """Segment a batch of images of any size.

        Inputs are zero-padded at the bottom / right to ``k·output_stride + 1`` pixels (a no-op for the
        513 and 769 crops of the U2PL protocols) so that every feature level is sampled at the same grid
        points and the ``align_corners=True`` upsampling inside the decoder is exact; outputs are cropped
        back. Output pixel ``(i, j)`` of ``pred`` / ``rep`` sits on input pixel ``(4i, 4j)``: to upsample
        exactly, interpolate with ``align_corners=True`` to ``4·(h4 − 1) + 1`` and crop to ``H`` (equal to
        ``H`` when ``H ≡ 1 mod 4``, which is what the reference does).

        Args:
            images: (B, 3, H, W) normalised images. Training mode needs B ≥ 2 (BatchNorm after the ASPP
                image pooling sees one value per channel and image).
            with_rep: also compute ``rep`` (a pseudo-labelling teacher can skip it).

        Returns:
            ``pred``: (B, num_classes, ⌈H/4⌉, ⌈W/4⌉) logits;
            ``rep``: (B, rep_channels, ⌈H/4⌉, ⌈W/4⌉) features, not normalised (only if ``with_rep``);
            ``aux``: (B, num_classes, ⌈H/s⌉, ⌈W/s⌉) logits of the auxiliary head, s = the penultimate
            level's stride (8 for a ResNet at output stride 8; only if built with ``aux=True``).
        """
        h, w = images.shape[-2:]
        stride = self.output_stride
        pad_h, pad_w = (1 - h) % stride, (1 - w) % stride
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        features = self.encoder(images)
        out = self.decoder(features[self._low_index], features[-1], with_rep)
        h4, w4 = _ceil_div(h, 4), _ceil_div(w, 4)
        out = {k: v[..., :h4, :w4] for k, v in out.items()}
        if self.auxor is not None:
            ha, wa = _ceil_div(h, self._aux_stride), _ceil_div(w, self._aux_stride)
            out["aux"] = self.auxor(features[-2])[..., :ha, :wa]
        return out
