"""DAFormer's decoder with context-aware feature fusion (Hoyer et al., "DAFormer", CVPR 2022, Sec. 3.2, Fig. 3).

Layout of the released model (``lhoyer/DAFormer``, ``mmseg/models/decode_heads/daformer_head.py`` with the
``decoder_params`` of ``configs/_base_/models/daformer_sepaspp_mitb5.py``):

* every stage map is embedded to E = 256 channels by a linear layer (1×1, no norm, no activation: the ``mlp``
  embedding, the same map as SegFormer's) and resized bilinearly (``align_corners=False``) to the 1/4 stage;
  the four are concatenated shallowest first (4E channels; SegFormer's head orders them deepest first);
* context-aware fusion: an ASPP without image pooling over the concatenation. The dilation-1 branch is a 1×1
  conv + BN + ReLU; every other dilation is a depthwise-separable 3×3 conv (depthwise dilated 3×3 + BN + ReLU,
  then pointwise 1×1 + BN + ReLU), all to E channels. The branches' concatenation goes through a 3×3 conv + BN
  + ReLU to E (the ``bottleneck``);
* channel dropout (``Dropout2d``, 0.1) and a 1×1 classifier.

Convolutions followed by BN have no bias (mmcv's ``ConvModule`` with ``bias="auto"``). Initialisation follows
mmseg's ``init_weights``: Kaiming-normal (fan-out, ReLU) for the fusion convolutions, BN weights 1 and biases 0,
the classifier drawn from N(0, 0.01²) with zero bias; the embeddings keep PyTorch's default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsss_lightning.models.layers import conv_bn_relu
from wsss_lightning.models.segformer_head import embed_at_first_stage, stage_embeddings

#: DAFormer's ASPP rates (``dilations=(1, 6, 12, 18)``, ``pool=False``).
DAFORMER_DILATIONS = (1, 6, 12, 18)


def aspp_branch(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    """One branch of DAFormer's separable ASPP.

    Args:
        in_channels: channels of the fused embeddings (4E).
        out_channels: branch width (E).
        dilation: 1 gives a 1×1 conv + BN + ReLU; d > 1 a depthwise 3×3 conv of dilation d + BN + ReLU followed
            by a pointwise 1×1 conv + BN + ReLU (mmcv's ``DepthwiseSeparableConvModule``).

    Returns:
        The branch; it keeps the spatial size.
    """
    if dilation == 1:
        return nn.Sequential(*conv_bn_relu(in_channels, out_channels, 1))
    return nn.Sequential(
        *conv_bn_relu(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
        *conv_bn_relu(in_channels, out_channels, 1),
    )


class DAFormerHead(nn.Module):
    """DAFormer decoder over the 4 stage maps of a hierarchical encoder (MiT).

    Args:
        in_channels: channels of the 4 stage maps, shallowest first (an encoder's ``out_channels``).
        num_classes: output classes.
        embed_dim: E, the width of the embeddings, of every ASPP branch and of the fused features (DAFormer: 256).
        dilations: ASPP rates, one branch each (DAFormer: 1, 6, 12, 18).
        dropout: channel dropout rate before the classifier (DAFormer: 0.1).

    Attributes:
        projections: the per-stage linear embeddings (:func:`stage_embeddings`).
        aspp: one :func:`aspp_branch` per dilation.
        bottleneck: 3×3 conv + BN + ReLU from ``len(dilations)·E`` to E channels.
        dropout: ``Dropout2d`` before the classifier.
        classifier: 1×1 conv from E to ``num_classes``.

    Raises:
        ValueError: ``in_channels`` does not have 4 entries, or a size, rate or dilation is out of range.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        embed_dim: int = 256,
        dilations: Sequence[int] = DAFORMER_DILATIONS,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels: expected the widths of 4 stages, got {list(in_channels)}")
        if num_classes < 1 or embed_dim < 1:
            raise ValueError(f"num_classes and embed_dim must be positive, got {num_classes} and {embed_dim}")
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations: expected one or more positive rates, got {list(dilations)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout}")
        self.dilations = tuple(int(d) for d in dilations)
        self.projections = stage_embeddings(in_channels, embed_dim)
        fused_channels = len(in_channels) * embed_dim
        self.aspp = nn.ModuleList(aspp_branch(fused_channels, embed_dim, d) for d in self.dilations)
        self.bottleneck = nn.Sequential(*conv_bn_relu(len(self.dilations) * embed_dim, embed_dim, 3))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in (*self.aspp, self.bottleneck):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(layer, nn.BatchNorm2d):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)
        nn.init.normal_(self.classifier.weight, std=0.01)
        if self.classifier.bias is not None:  # always built with a bias; the check is for the type
            nn.init.zeros_(self.classifier.bias)

    def fuse(self, features: Sequence[Tensor]) -> Tensor:
        """Fused features (B, E, H_1, W_1) of the 4 stage maps (embedding, concatenation, ASPP, bottleneck)."""
        embedded = torch.cat(embed_at_first_stage(self.projections, features), dim=1)
        fused: Tensor = self.bottleneck(torch.cat([branch(embedded) for branch in self.aspp], dim=1))
        return fused

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Decode stage maps.

        Args:
            features: the 4 stage maps (B, C_i, H_i, W_i), shallowest first.

        Returns:
            ``(logits, fused)``: class logits (B, num_classes, H_1, W_1) and the fused features
            (B, embed_dim, H_1, W_1) before dropout (e.g. the input of a representation head).

        Raises:
            ValueError: not 4 stage maps.
        """
        fused = self.fuse(features)
        return self.classifier(self.dropout(fused)), fused
