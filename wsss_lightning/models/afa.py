"""AFA's network: a MiT encoder at stride 16, a CAM classifier, a SegFormer head, an attention affinity head.

Ru et al., "Learning Affinity from Attention" (CVPR 2022), Sec. 3.1-3.2 and Fig. 2; released code
``rulixiang/afa`` (``wetr/model_attn_aff.py``). The pre-softmax self-attention logits of the last blocks of the
last stage are stacked over heads and blocks (``H·L`` channels of ``N × N`` maps), symmetrised (``A + Aᵀ``, the
affinity is symmetric) and projected by a 1×1 convolution to one affinity logit per token pair (Eq. 2-3). The
affinity loss trains the attention itself: nothing is detached. U2PL+'s weakly supervised setting adds a
representation head on the SegFormer head's fused features (``rep_channels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.models.deeplab import representation_head
from wsss_lightning.models.mit import MiTEncoder
from wsss_lightning.models.segformer_head import SegFormerHead
from wsss_lightning.models.token_grid import TokenGrid


class AFAOutput(NamedTuple):
    """One forward pass of :class:`AFANetwork`.

    Attributes:
        cls_logits: ``(B, C - 1)`` foreground class scores.
        seg_logits: ``(B, C, H/4, W/4)`` segmentation logits.
        affinity_logits: ``(B, N, N)`` affinity logits between the ``N = h·w`` tokens of the last stage.
        features: ``(B, D, h, w)`` last-stage features (the CAM's input).
        rep: ``(B, R, H/4, W/4)`` representations, or None without a representation head.
    """

    cls_logits: Tensor
    seg_logits: Tensor
    affinity_logits: Tensor
    features: Tensor
    rep: Tensor | None


class AFANetwork(nn.Module):
    """MiT encoder (last stage at 1/16) + classifier + SegFormer head + affinity head.

    Args:
        num_classes: C, with background (21 for VOC); the classifier has C - 1 outputs.
        encoder: MiT name (``mit_b0`` .. ``mit_b5``; AFA uses ``mit_b1``).
        weights: local weights file of the encoder (ImageNet ``mit_b1.pth``), or None.
        encoder_kwargs: architecture overrides (e.g. a tiny MiT for CPU runs).
        strides: the encoder's patch-embedding strides (AFA: ``(4, 2, 2, 1)``, the last stage at 1/16).
        attention_blocks: last-stage blocks whose attention feeds the affinity head (2: both blocks of
            ``mit_b1``'s last stage, as ``_attns[-2:]`` in the released model).
        embed_dim: SegFormer head width (256).
        pooling: classification pooling: ``gmp`` (released code) or ``gap``.
        drop_path_rate: stochastic depth of the encoder (0.1).
        rep_channels: width of a representation head on the fused head features; 0 = none.
        scaled_attention: feed the affinity head ``q·kᵀ·scale`` (the softmax's input) instead of the released
            encoder's unscaled ``q·kᵀ`` (``rulixiang/afa``, ``wetr/mix_transformer.py``).
        affinity_init: ``released``: the affinity head's weight drawn as in ``wetr/model_attn_aff.py``
            (``kaiming_normal_`` with ``a = √5``, fan-out mode: std ``√(1/3)`` for its one output channel);
            ``pytorch``: PyTorch's default convolution init (uniform, bound ``1/√(H·L)``). Both keep
            PyTorch's default bias.
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "mit_b1",
        weights: str | None = None,
        encoder_kwargs: Mapping[str, Any] | None = None,
        strides: Sequence[int] = (4, 2, 2, 1),
        attention_blocks: int = 2,
        embed_dim: int = 256,
        pooling: Literal["gmp", "gap"] = "gmp",
        drop_path_rate: float = 0.1,
        rep_channels: int = 0,
        scaled_attention: bool = False,
        affinity_init: Literal["released", "pytorch"] = "released",
    ) -> None:
        super().__init__()
        if affinity_init not in ("released", "pytorch"):
            raise ValueError(
                f"AFANetwork: affinity_init = {affinity_init!r}; expected 'released' or 'pytorch'"
            )
        if attention_blocks < 1:
            raise ValueError(
                f"AFANetwork: attention_blocks = {attention_blocks}; the affinity head needs the attention of "
                "at least one block of the encoder's last stage"
            )
        sr_ratios = dict(encoder_kwargs or {}).get("sr_ratios")
        if sr_ratios is not None and int(sr_ratios[-1]) != 1:
            raise ValueError(
                f"AFANetwork: encoder_kwargs sr_ratios {list(sr_ratios)} reduce the last stage's keys; the "
                "affinity head needs its full token-to-token attention: the last sr_ratio must be 1"
            )
        self.encoder = MiTEncoder(
            encoder,
            weights=weights,
            strides=strides,
            attention_blocks=attention_blocks,
            drop_path_rate=drop_path_rate,
            model_kwargs=dict(encoder_kwargs or {}),
            scaled_attention=scaled_attention,
        )
        channels = list(self.encoder.out_channels)
        self.pooling = pooling
        self.classifier = nn.Conv2d(channels[-1], num_classes - 1, 1, bias=False)
        self.seg_head = SegFormerHead(channels, num_classes, embed_dim=embed_dim)
        self.affinity_head = nn.Conv2d(self.encoder.attention_channels, 1, 1, bias=True)
        if affinity_init == "released":
            nn.init.kaiming_normal_(self.affinity_head.weight, a=5**0.5, mode="fan_out")
        self.rep_head: nn.Module | None = None
        if rep_channels > 0:
            self.rep_head = representation_head(embed_dim, rep_channels, channels=embed_dim)

    @property
    def stride(self) -> int:
        """Output stride of the last stage (16 with AFA's strides)."""
        return int(self.encoder.reductions[-1])

    @property
    def token_grid(self) -> TokenGrid:
        """Where the last stage's tokens sit: on input pixel ``stride * c`` for token ``c``.

        MiT's patch embeddings are padded convolutions (kernel ``k``, padding ``k // 2``).
        """
        return TokenGrid(float(self.stride), 0.0)

    def affinity(self, attentions: list[Tensor]) -> Tensor:
        """``(B, N, N)`` affinity logits from the captured attention logits (each ``(B, heads, N, N)``)."""
        stacked = torch.cat(attentions, dim=1)
        stacked = stacked + stacked.transpose(-1, -2)
        logits: Tensor = self.affinity_head(stacked)
        return logits[:, 0]

    def cam(self, features: Tensor) -> Tensor:
        """Raw class activation maps ``(B, C - 1, h, w)``: the classifier applied at every position."""
        return F.conv2d(features, self.classifier.weight)

    def forward(self, x: Tensor, with_rep: bool = True) -> AFAOutput:
        """Every output of one training pass (``with_rep``: also the representation head, when there is one)."""
        out = self.encoder(x)
        features = out.features[-1]
        if self.pooling == "gmp":
            pooled = F.adaptive_max_pool2d(features, 1)
        else:
            pooled = F.adaptive_avg_pool2d(features, 1)
        cls_logits = self.classifier(pooled).flatten(1)
        seg_logits, fused = self.seg_head(out.features)
        rep = self.rep_head(fused) if (with_rep and self.rep_head is not None) else None
        return AFAOutput(cls_logits, seg_logits, self.affinity(out.attentions), features, rep)

    def cams_and_affinity(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw CAMs ``(B, C - 1, h, w)`` and affinity logits ``(B, N, N)`` (encoder and two 1x1 heads only)."""
        out = self.encoder(x)
        return self.cam(out.features[-1]), self.affinity(out.attentions)

    def segment(self, x: Tensor) -> Tensor:
        """Segmentation logits ``(B, C, H/4, W/4)``."""
        logits: Tensor = self.seg_head(self.encoder(x).features)[0]
        return logits

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``backbone`` (encoder without its norm layers), ``backbone_norm``, ``head`` (everything new)."""
        norm_ids = {id(p) for p in self.encoder.norm_parameters()}
        backbone = [p for p in self.encoder.parameters() if id(p) not in norm_ids]
        norms = [p for p in self.encoder.parameters() if id(p) in norm_ids]
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        head = [p for p in self.parameters() if id(p) not in encoder_ids]
        return {"backbone": backbone, "backbone_norm": norms, "head": head}
