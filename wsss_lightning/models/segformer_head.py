"""SegFormer's all-MLP decoder (Xie et al., "SegFormer", NeurIPS 2021, Sec. 3.2, Eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsss_lightning.models.resize import resize


def stage_embeddings(in_channels: Sequence[int], embed_dim: int) -> nn.ModuleList:
    """One linear embedding per stage (a 1×1 convolution with bias, no norm, no activation).

    SegFormer's ``MLP`` (a per-token ``nn.Linear``) and DAFormer's ``mlp`` embedding are this map on token
    sequences; a 1×1 convolution applies it to (B, C, H, W) maps directly.
    """
    return nn.ModuleList(nn.Conv2d(c, embed_dim, kernel_size=1) for c in in_channels)


def embed_at_first_stage(embeddings: nn.ModuleList, features: Sequence[Tensor]) -> list[Tensor]:
    """Embed each stage map and resize it (bilinear, ``align_corners=False``) to the first stage's size.

    Args:
        embeddings: one module per stage (:func:`stage_embeddings`).
        features: the stage maps (B, C_i, H_i, W_i), shallowest first, as many as ``embeddings``.

    Returns:
        The embedded maps (B, E, H_1, W_1), shallowest first.

    Raises:
        ValueError: the number of maps differs from the number of embeddings.
    """
    if len(features) != len(embeddings):
        raise ValueError(f"features: expected {len(embeddings)} stage maps, got {len(features)}")
    size = features[0].shape[-2:]
    return [resize(embed(f), size) for embed, f in zip(embeddings, features, strict=True)]


class SegFormerHead(nn.Module):
    """All-MLP decoder over the 4 stage maps of a hierarchical encoder (MiT).

    Eq. 1 of the paper: each stage map F_i is projected to ``embed_dim`` channels by a per-token linear
    layer (here a 1×1 convolution, the same map on (B, C, H, W) tensors), upsampled bilinearly to the first
    stage's size (H/4 × W/4), the four are concatenated (deepest first: c4, c3, c2, c1, as SegFormer orders
    them, so released decoder weights keep their meaning), fused by a 1×1 convolution (4E -> E, no bias) with
    BatchNorm and ReLU, and classified by a 1×1 convolution after channel dropout (``Dropout2d``, as
    SegFormer's decode heads).

    Args:
        in_channels: channels of the 4 stage maps, shallowest first (an encoder's ``out_channels``).
        num_classes: output classes.
        embed_dim: the decoder width E (SegFormer: 256 for B0/B1, 768 for B2-B5; AFA: 256).
        dropout: channel dropout rate before the classifier.

    Raises:
        ValueError: ``in_channels`` does not have 4 entries, or a size / rate is out of range.
    """

    def __init__(
        self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256, dropout: float = 0.1
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels: expected the widths of 4 stages, got {list(in_channels)}")
        if num_classes < 1 or embed_dim < 1:
            raise ValueError(f"num_classes and embed_dim must be positive, got {num_classes} and {embed_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout}")
        self.projections = stage_embeddings(in_channels, embed_dim)
        self.fuse = nn.Sequential(
            nn.Conv2d(4 * embed_dim, embed_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Decode stage maps.

        Args:
            features: the 4 stage maps (B, C_i, H_i, W_i), shallowest first.

        Returns:
            ``(logits, fused)``: class logits (B, num_classes, H_1, W_1) and the fused features
            (B, embed_dim, H_1, W_1) before dropout (e.g. the input of a representation head).
        """
        projected = embed_at_first_stage(self.projections, features)
        fused = self.fuse(torch.cat(projected[::-1], dim=1))
        return self.classifier(self.dropout(fused)), fused
