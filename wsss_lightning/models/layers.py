"""Small building blocks shared by the segmentation heads."""

from __future__ import annotations

from torch import nn


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = False,
    dropout: bool = False,
) -> list[nn.Module]:
    """Conv (same padding) + BatchNorm + ReLU, and ``Dropout2d(0.1)`` when ``dropout``; the layers as a list.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size.
        dilation: dilation of the convolution (the padding keeps the spatial size).
        groups: convolution groups (``in_channels`` for a depthwise convolution).
        bias: convolution bias (U2PL's heads keep it although BN follows).
        dropout: append ``Dropout2d(0.1)`` (U2PL's decoder).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=dilation * (kernel_size // 2),
            dilation=dilation,
            groups=groups,
            bias=bias,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if dropout:
        layers.append(nn.Dropout2d(0.1))
    return layers
