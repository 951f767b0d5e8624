"""Wide ResNet-38 at output stride 8, the backbone of PSA, RRM and ASDT, with frozen BatchNorm.

The network is model A1 of Wu, Shen and van den Hengel, "Wider or Deeper: Revisiting the ResNet Model for
Visual Recognition" (Pattern Recognition 2019), in the layout of PSA's ``network/resnet38d.py`` (Ahn and Kwak,
CVPR 2018), which RRM and ASDT build on: a 3x3 stem ``conv1a`` (64 channels, stride 1), pre-activation blocks
``b2``…``b4_5`` that halve the resolution at ``b2``, ``b3`` and ``b4``, dilated blocks ``b5``…``b5_2``
(dilation 2) and bottleneck blocks ``b6`` / ``b7`` (dilation 4, Dropout2d with p 0.3 / 0.5 before their 3x3
and last 1x1 convolutions), and ``conv6 = ReLU(BN7(b7))`` with 4096 channels at 1/8 of the input (41x41 for a
321x321 crop). Every BatchNorm is frozen: kept in eval mode by :meth:`ResNet38.train` and its parameters have
``requires_grad=False``, so they are in no optimizer group; the stem ``conv1a`` is trained, as in RRM (PSA
froze it). The backbone holds 105,070,912 parameters (~105 M; 47,744 of them BatchNorm affine, frozen),
plus 47,781 BN buffers; 228 state-dict tensors.

Parameter names are PSA's (``conv1a.weight``, ``b2.bn_branch2a.weight``, ``b2.conv_branch2a.weight``,
``b2.conv_branch1.weight``, …, ``b7.conv_branch2b2.weight``, ``bn7.running_var``), so PSA's PyTorch weight
files load as they are with :func:`load_resnet38_weights`:

* ``res38_cls.pth`` — PSA's ResNet-38 trained for VOC 2012 image classification (the "ResNet-38 [Weights]"
  link of PSA's README, github.com/jiwoon-ahn/psa, also on RRM's BaiduYun); RRM's ``train_from_cls_weight.py``
  and ASDT start from it. Besides the backbone it holds the 20-class classifier ``fc8.weight``, which
  :func:`load_resnet38_weights` returns to the caller instead of loading.
* ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` — the ImageNet weights of the original MXNet release
  (github.com/itijyou/ademxapp). It is an MXNet file: convert it once, where MXNet is installed, with PSA's
  ``network.resnet38d.convert_mxnet_to_torch(path)`` (it renames the MXNet arrays to the names above and drops
  the ImageNet classifier) and save the result with ``torch.save(state_dict, "ilsvrc-cls_rna-a1.pth")``; the
  ``.pth`` file is what this package loads.

Inputs are RGB scaled to [0, 1] and normalised with the ImageNet mean / std, as in PSA and RRM.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.models.weights import _read_state_dict, _strip

#: Tensors a weights file may lack: PSA's files predate BatchNorm's batch counter, which eval-mode BN ignores.
_OPTIONAL_SUFFIX = "num_batches_tracked"


class ResNet38Features(NamedTuple):
    """What :class:`ResNet38` returns (B = batch; sides are ``ceil(H / stride)``).

    Attributes:
        conv3: (B, 256, H/4, W/4) — BN + ReLU of ``b3_2``'s output (the pre-activation entering ``b4``).
        conv4: (B, 512, H/8, W/8) — BN + ReLU of ``b4_5``'s output (entering ``b5``); PSA's ``conv4``.
        conv5: (B, 1024, H/8, W/8) — BN + ReLU of ``b5_2``'s output (entering ``b6``); PSA's ``conv5``.
        conv6: (B, 4096, H/8, W/8) — ``ReLU(BN7(b7))``, the feature the CAM and segmentation heads read.
    """

    conv3: Tensor
    conv4: Tensor
    conv5: Tensor
    conv6: Tensor


class _WideBlock(nn.Module):
    """Pre-activation block with two 3x3 convolutions (PSA's ``ResBlock``).

    The shortcut is the identity when the shape is kept, else a 1x1 convolution of the pre-activation.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        first = dilation if first_dilation is None else first_dilation
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels, mid_channels, 3, stride, padding=first, dilation=first, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(
            mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the block output and its input's BN + ReLU pre-activation."""
        pre = F.relu(self.bn_branch2a(x), inplace=True)
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y), inplace=True))
        return shortcut + y, pre


class _BottleneckBlock(nn.Module):
    """Pre-activation 1x1-3x3-1x1 bottleneck with Dropout2d before the last two convolutions (``ResBlock_bot``)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        quarter, half = out_channels // 4, out_channels // 2
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, quarter, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(quarter)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(quarter, half, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(half)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(half, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the block output and its input's BN + ReLU pre-activation."""
        pre = F.relu(self.bn_branch2a(x), inplace=True)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y), inplace=True)))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y), inplace=True)))
        return self.conv_branch1(pre) + y, pre


class ResNet38(nn.Module):
    """Wide ResNet-38 (PSA's ``resnet38d``) at output stride 8, BatchNorm frozen.

    ``train(mode)`` keeps every BatchNorm in eval mode (running statistics are used and never updated, as
    with the small batches of PSA / RRM / ASDT) while Dropout2d follows ``mode``.

    Args:
        dropout: Dropout2d probabilities of ``b6`` and ``b7`` (PSA / RRM: 0.3 and 0.5).

    Raises:
        ValueError: a dropout probability outside [0, 1).
    """

    out_channels = (256, 512, 1024, 4096)
    reductions = (4, 8, 8, 8)
    output_stride = 8

    def __init__(self, dropout: tuple[float, float] = (0.3, 0.5)) -> None:
        super().__init__()
        if len(dropout) != 2 or not all(0.0 <= p < 1.0 for p in dropout):
            raise ValueError(f"dropout: expected two probabilities in [0, 1) for b6 and b7, got {dropout}")
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = _WideBlock(64, 128, 128, stride=2)
        self.b2_1 = _WideBlock(128, 128, 128)
        self.b2_2 = _WideBlock(128, 128, 128)
        self.b3 = _WideBlock(128, 256, 256, stride=2)
        self.b3_1 = _WideBlock(256, 256, 256)
        self.b3_2 = _WideBlock(256, 256, 256)
        self.b4 = _WideBlock(256, 512, 512, stride=2)
        self.b4_1 = _WideBlock(512, 512, 512)
        self.b4_2 = _WideBlock(512, 512, 512)
        self.b4_3 = _WideBlock(512, 512, 512)
        self.b4_4 = _WideBlock(512, 512, 512)
        self.b4_5 = _WideBlock(512, 512, 512)
        # Stride 8 from here on: dilation replaces the last two down-samplings of the classification net.
        self.b5 = _WideBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = _WideBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = _WideBlock(1024, 512, 1024, dilation=2)
        self.b6 = _BottleneckBlock(1024, 2048, dilation=4, dropout=dropout[0])
        self.b7 = _BottleneckBlock(2048, 4096, dilation=4, dropout=dropout[1])
        self.bn7 = nn.BatchNorm2d(4096)
        self._freeze_batchnorm()

    def _batchnorms(self) -> Iterator[nn.BatchNorm2d]:
        return (m for m in self.modules() if isinstance(m, nn.BatchNorm2d))

    def _freeze_batchnorm(self) -> None:
        for bn in self._batchnorms():
            bn.eval()
            bn.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet38:
        """Set Dropout2d (and any other layer) to ``mode``, then put every BatchNorm back in eval mode.

        BN parameters are re-frozen too, so a later ``requires_grad_(True)`` on a parent module does not
        leave them trainable once training starts.
        """
        super().train(mode)
        self._freeze_batchnorm()
        return self

    def param_groups(self) -> tuple[list[Tensor], list[Tensor]]:
        """RRM's split of the backbone's trainable parameters: (conv weights, conv biases).

        RRM trains the weights at the base learning rate with weight decay and the biases at twice the rate
        without; the backbone's convolutions have no bias, so the second list is empty (kept so the groups
        line up with RRM's). Frozen BatchNorm parameters are in neither.
        """
        weights: list[Tensor] = []
        biases: list[Tensor] = []
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                weights += [m.weight] if m.weight.requires_grad else []
                biases += [m.bias] if m.bias is not None and m.bias.requires_grad else []
        return weights, biases

    def forward(self, images: Tensor) -> ResNet38Features:
        """Features of normalised images (B, 3, H, W); see :class:`ResNet38Features` for shapes."""
        x = self.conv1a(images)
        for block in (self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1, self.b3_2):
            x, _ = block(x)
        x, conv3 = self.b4(x)
        for block in (self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5):
            x, _ = block(x)
        x, conv4 = self.b5(x)
        x, _ = self.b5_1(x)
        x, _ = self.b5_2(x)
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        return ResNet38Features(conv3, conv4, conv5, F.relu(self.bn7(x), inplace=True))


def load_resnet38_weights(model: ResNet38, path: str | Path) -> dict[str, Tensor]:
    """Load a PSA-layout ResNet-38 weights file into ``model``, requiring every backbone tensor.

    Accepts a state dict or a checkpoint holding one (``state_dict`` / ``model`` key), with wrapper prefixes
    such as ``module.`` stripped. Tensors that are not the backbone's (e.g. the classifier ``fc8.weight`` of
    ``res38_cls.pth``) are not loaded but returned, so a method can initialise its own head from them.
    BatchNorm's ``num_batches_tracked`` counters may be absent (PSA's files do not have them).

    Args:
        model: the backbone to load into.
        path: a ``.pth`` / ``.pt`` / ``.safetensors`` file (see the module docstring for the published ones).

    Returns:
        The file's tensors that are not backbone tensors, by name with prefixes stripped.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: an MXNet ``.params`` file (convert it first), or backbone tensors missing from the file
            or with another shape; the message names the file and the first offending tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ResNet-38 weights file not found: {path}")
    if path.suffix == ".params":
        raise ValueError(
            f"{path}: an MXNet file; convert it to a PyTorch state dict first "
            "(see wsss_lightning.models.resnet38's docstring)"
        )
    loaded = {_strip(k): v for k, v in _read_state_dict(path).items()}
    own = model.state_dict()
    missing = [k for k in own if k not in loaded and not k.endswith(_OPTIONAL_SUFFIX)]
    wrong = [
        f"{k} {tuple(loaded[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in loaded and loaded[k].shape != v.shape
    ]
    if missing or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} backbone tensors missing (e.g. {', '.join(missing[:3])})")
        if wrong:
            problems.append(f"{len(wrong)} with another shape (e.g. {', '.join(wrong[:3])})")
        raise ValueError(
            f"{path}: not a ResNet-38 weights file in PSA's layout: {'; '.join(problems)}; "
            f"expected names like {', '.join(list(own)[:3])}"
        )
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in loaded.items() if k in own}, strict=False)
    return {k: v for k, v in loaded.items() if k not in own}
