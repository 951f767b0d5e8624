from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss_lightning.models.deeplabv3plus import DeepLabV3Plus


def _dilations(net: DeepLabV3Plus) -> list[int]:
    """Dilation of the first 3x3 conv of each layer4 block."""
    return [
        next(m.dilation[0] for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
        for block in net.encoder.layer4
    ]


def test_resnet101_layout_parameter_counts_and_multi_grid():
    net = DeepLabV3Plus(21)  # rloss / Seminar: torchvision ResNet-101, output stride 16, multi-grid (1, 2, 4)
    groups = net.param_groups()
    backbone = sum(p.numel() for p in groups["backbone"])
    head = sum(p.numel() for p in groups["head"])
    assert backbone + head == sum(p.numel() for p in net.parameters())
    assert round(backbone / 1e6, 1) == 42.5 and round(head / 1e6, 1) == 16.8
    assert _dilations(net) == [2, 4, 8]
    assert "conv1.weight" in net.encoder.state_dict()  # one 7x7 stem conv: torchvision weights load
    assert net.encoder.state_dict()["conv1.weight"].shape == (64, 3, 7, 7)


def test_output_stride_8_doubles_the_grid_and_resnet18_takes_two_rates():
    assert _dilations(DeepLabV3Plus(21, output_stride=8)) == [4, 8, 16]
    assert _dilations(DeepLabV3Plus(21, encoder="resnet18", multi_grid=(1, 2))) == [2, 4]
    with pytest.raises(ValueError, match="one rate per block"):
        DeepLabV3Plus(21, encoder="resnet18", multi_grid=(1, 2, 4))


@pytest.mark.parametrize("size", [(64, 64), (65, 50)])
def test_logits_at_input_size_and_dropouts_off_in_eval(size):
    torch.manual_seed(0)
    net = DeepLabV3Plus(5, encoder="resnet18", multi_grid=(1, 2)).eval()
    x = torch.randn(2, 3, *size)
    out = net(x)
    assert out.shape == (2, 5, *size)
    torch.testing.assert_close(net(x), out)  # eval: deterministic
    assert sum(isinstance(m, nn.Dropout) for m in net.modules()) == 3  # 0.5 after ASPP, 0.5 / 0.1 in decoder


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="aspp_dilations"):
        DeepLabV3Plus(21, encoder="resnet18", multi_grid=None, aspp_dilations=(6, 12))
    with pytest.raises(ValueError, match="num_classes"):
        DeepLabV3Plus(0, encoder="resnet18", multi_grid=None)
