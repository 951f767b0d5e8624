"""ASDT's network: one shared backbone (output stride 8, BatchNorm frozen) and three heads.

Zhang et al., "Weakly Supervised Semantic Segmentation via Alternate Self-Dual Teaching" (IEEE TIP), Sec. 3.1 and
Fig. 2, on RRM's network (github.com/zbf1991/RRM, ``network/RRM.py``):

* class-teacher f_ct: Dropout2d → global average pooling → 1×1 convolution without bias to the C−1 foreground
  classes; its weights applied to the features (no dropout) give the CAMs;
* seg-teacher f_st and student f_s, the same architecture with separate weights: 3×3 convolution (dilation 12) →
  ReLU → 3×3 convolution (dilation 12) to the C classes (Sec. 3.1: "two 3×3 dilated convolutional layers with
  dilation 12").

The backbone is RRM's wide ResNet-38 (:mod:`wsss_lightning.models.resnet38`, ``encoder="resnet38"``) or any timm
CNN at output stride 8 (``resnet101`` for the R101 row). Every BatchNorm stays in eval mode with its parameters
frozen (RRM ``network/resnet38d.py``: the overridden ``train()``), so none of them is in an optimizer group.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from wsss_lightning.models.deeplab import build_dilated_encoder, feature_info
from wsss_lightning.models.resnet38 import ResNet38, load_resnet38_weights
from wsss_lightning.models.token_grid import TokenGrid
from wsss_lightning.models.weights import load_encoder_weights

__all__ = ["ASDTNetwork", "ASDTOutput", "freeze_batchnorm"]


class ASDTOutput(NamedTuple):
    """One training forward: image logits (B, C−1), CAMs (B, C−1, h, w), seg-teacher and student logits (B, C, h, w)."""

    class_logits: Tensor
    cams: Tensor
    seg_teacher: Tensor
    student: Tensor


def freeze_batchnorm(module: nn.Module) -> None:
    """Freeze every BatchNorm of ``module``: no gradient to its affine parameters, eval mode (see ``train``)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def _seg_head(channels: int, num_classes: int, width: int, dilation: int) -> nn.Sequential:
    head = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, num_classes, 3, padding=dilation, dilation=dilation),
    )
    for m in head:
        if isinstance(m, nn.Conv2d):  # RRM: xavier-uniform weights, PyTorch's default biases
            nn.init.xavier_uniform_(m.weight)
    return head


class ASDTNetwork(nn.Module):
    """Backbone + class-teacher + seg-teacher + student.

    Args:
        num_classes: C, with background.
        encoder: ``resnet38`` (RRM's wide ResNet-38) or a timm CNN name (``resnet101``) run at output stride 8.
        encoder_weights: local weights file of the backbone (PSA's ``res38_cls.pth`` layout for ResNet-38; torchvision
            or timm ImageNet weights otherwise); ``None``: random weights.
        seg_width: width of the first seg-head convolution (512 in RRM).
        dilation: dilation of both seg-head convolutions (12).
        dropout: Dropout2d before the class-teacher's pooling (0.5).
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet101",
        encoder_weights: str | None = None,
        seg_width: int = 512,
        dilation: int = 12,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes: expected background and at least one class, got {num_classes}")
        self.encoder_name = encoder
        extra: dict[str, Tensor] = {}
        if encoder == "resnet38":
            resnet38 = ResNet38()
            if encoder_weights is not None:
                extra = load_resnet38_weights(resnet38, encoder_weights)
            self.backbone: nn.Module = resnet38
            channels = 4096
        else:
            self.backbone = build_dilated_encoder(encoder, 8, None)
            if encoder_weights is not None:
                load_encoder_weights(self.backbone, encoder_weights)
            channels = int(feature_info(self.backbone).channels()[-1])
        freeze_batchnorm(self.backbone)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes - 1, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        if "fc8.weight" in extra:
            # PSA's VOC-classification file names its classifier fc8 (4096 -> 20, no bias), as RRM's class-teacher:
            # RRM loads both, so the CAMs are meaningful from the first step
            fc8 = extra["fc8.weight"]
            if tuple(fc8.shape) != tuple(self.classifier.weight.shape):
                raise ValueError(
                    f"{encoder_weights}: fc8.weight is {tuple(fc8.shape)}, the class-teacher needs "
                    f"{tuple(self.classifier.weight.shape)} ({num_classes - 1} foreground classes)"
                )
            with torch.no_grad():
                self.classifier.weight.copy_(fc8)
        self.seg_teacher = _seg_head(channels, num_classes, seg_width, dilation)
        self.student = _seg_head(channels, num_classes, seg_width, dilation)

    def train(self, mode: bool = True) -> ASDTNetwork:
        """Train mode everywhere but the frozen BatchNorm layers."""
        super().train(mode)
        freeze_batchnorm(self.backbone)
        return self

    @property
    def token_grid(self) -> TokenGrid:
        """Where the stride-8 features' tokens sit: on input pixel ``8 c`` for token ``c``.

        Both backbones reach stride 8 by padded strided convolutions (and a padded max-pool in timm's ResNets),
        each centring its output ``c`` on input position ``2 c``.
        """
        return TokenGrid(8.0, 0.0)

    def features(self, images: Tensor) -> Tensor:
        """Stride-8 backbone features (B, D, h, w)."""
        if self.encoder_name == "resnet38":
            features: Tensor = self.backbone(images).conv6
            return features
        return self.backbone(images)[-1]  # type: ignore[no-any-return]

    def cams(self, images: Tensor) -> Tensor:
        """ReLU CAMs (B, C−1, h, w): the class-teacher's weights on the features, no dropout."""
        cams: Tensor = self.classifier(self.features(images)).relu()
        return cams

    def forward(self, images: Tensor) -> ASDTOutput:
        """Class logits (image-level, dropout before the pooling), CAMs and both seg heads' logits at stride 8."""
        features = self.features(images)
        class_logits = self.classifier(self.dropout(features)).mean((2, 3))
        cams = self.classifier(features).relu()
        return ASDTOutput(class_logits, cams, self.seg_teacher(features), self.student(features))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """RRM's four groups (``network/RRM.py``): backbone weights / biases, new-layer weights / biases."""
        new = [self.classifier, self.seg_teacher, self.student]
        new_ids = {id(p) for m in new for p in m.parameters()}
        groups: dict[str, list[nn.Parameter]] = {
            "backbone": [],
            "backbone_bias": [],
            "head": [],
            "head_bias": [],
        }
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            bias = name.endswith("bias")
            if id(p) in new_ids:
                groups["head_bias" if bias else "head"].append(p)
            else:
                groups["backbone_bias" if bias else "backbone"].append(p)
        return groups


def head_reach_warning(dilation: int, crop: tuple[int, int]) -> str | None:
    """Why the seg heads' 3×3 convolutions cannot learn their off-centre taps on ``crop``-sized crops (None: they can).

    A tap at offset ``d`` reads a feature of an ``n``-token map only where ``n > d``: below, it reads padding at
    every position, gets no gradient and keeps its initial weights, which then act on the larger maps of whole
    images at test time.
    """
    h, w = crop
    tokens = (-(-h // 8), -(-w // 8))  # the stride-8 map of a padded-convolution backbone
    if dilation < min(tokens):
        return None
    return (
        f"model.init_args.dilation {dilation} does not fit the {tokens[0]}×{tokens[1]} stride-8 feature map of the "
        f"{h}×{w} training crops: the seg heads' off-centre taps read only padding in training and keep their "
        f"initial weights, which act on whole images at test time (a dilation below {min(tokens)}, or crops of "
        f"at least {8 * dilation + 1} px, trains them; RRM's 12 is for 321-px crops, a 41×41 map)"
    )
