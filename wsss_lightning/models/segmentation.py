"""Fully supervised segmentation networks: smp architectures over smp or timm encoders."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import segmentation_models_pytorch as smp
from torch import Tensor, nn

from wsss_lightning.models.deeplabv2 import DeepLabV2
from wsss_lightning.models.resize import padded_forward
from wsss_lightning.models.weights import load_weights_file

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "deeplabv2": DeepLabV2,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "deeplabv3": smp.DeepLabV3,
    "unet": smp.Unet,
    "fpn": smp.FPN,
}


class SegmentationNetwork(nn.Module):
    """Encoder + decoder + head; ``forward`` returns logits at the input resolution.

    Exposes ``encoder`` and ``head_parameters()`` so methods can give the pretrained encoder a smaller
    learning rate than the freshly initialised parts.

    Args:
        net: an smp segmentation model (``encoder`` attribute, logits at the input resolution).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    @property
    def encoder(self) -> nn.Module:
        """The (pretrained) encoder of ``net``."""
        return cast(nn.Module, self.net.encoder)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters outside the encoder: the freshly initialised decoder and head."""
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return [p for p in self.parameters() if id(p) not in encoder_ids]

    def forward(self, images: Tensor) -> Tensor:
        """Return logits (B, C, H, W) for images (B, 3, H, W) of any size.

        smp needs sides divisible by the encoder's output stride; other sizes (e.g. the 769-pixel crops of
        the Cityscapes protocol) are zero-padded at the bottom / right and the logits cropped back.
        """
        stride = int(getattr(self.net.encoder, "output_stride", 32))
        return cast(Tensor, padded_forward(self.net, images, stride))


def build_segmentation_network(
    arch: str,
    encoder: str,
    num_classes: int,
    encoder_weights: str | None = None,
    output_stride: int | None = None,
) -> SegmentationNetwork:
    """Build an smp architecture by name.

    Args:
        arch: one of ``ARCHITECTURES`` (``deeplabv2``, ``deeplabv3plus``, ``deeplabv3``, ``unet``, ``fpn``).
        encoder: an smp encoder name (``resnet101``, ``resnet18``, ...) or any timm model as ``tu-<name>``.
        num_classes: output channels.
        encoder_weights: optional local weights file for the encoder (ImageNet weights); ``None`` starts
            from scratch. Hub downloads are never attempted.
        output_stride: encoder output stride for the DeepLab family (8 or 16); ``None`` keeps smp's default.

    Raises:
        KeyError: unknown architecture, listing the valid names.
        ValueError: unknown encoder, naming it.
    """
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {arch!r}; valid names: {', '.join(sorted(ARCHITECTURES))}")
    kwargs: dict[str, object] = {"encoder_name": encoder, "encoder_weights": None, "classes": num_classes}
    if output_stride is not None and arch.startswith("deeplab"):
        kwargs["encoder_output_stride"] = output_stride
    try:
        net = ARCHITECTURES[arch](**kwargs)
    except (KeyError, RuntimeError) as err:  # smp raises KeyError, timm RuntimeError for unknown names
        raise ValueError(
            f"unknown encoder {encoder!r} for {arch}: use an smp encoder name "
            f"(e.g. resnet101) or 'tu-<timm model name>' ({err})"
        ) from err
    model = SegmentationNetwork(net)
    if encoder_weights is not None:
        load_weights_file(model.encoder, encoder_weights)
    return model
