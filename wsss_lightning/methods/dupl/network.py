"""One DuPL sub-net ("student"): ViT backbone, two max-pooled CAM classifiers and a LargeFOV segmentation head.

DuPL trains two of these with independent weights. Per sub-net (the head and classifier names follow the
reference network: ``classifier``, ``aux_classifier``, and ``conv6``-``conv8`` in its ``decoder``):

* ``backbone``: :class:`~wsss_lightning.models.vit.ViTBackbone`, final token map F and the map F_aux of an
  intermediate block;
* ``classifier`` / ``aux_classifier``: 1×1 convolutions without bias (D → C foreground classes) on the
  global-max-pooled F / F_aux (the reference pools by maximum, not by average as the paper text says). The
  same weights applied at every token give the class activation maps, ``CAM_c = w_c · F``;
* ``seg_head``: the DeepLab-LargeFOV head on F, C + 1 outputs (index 0 = background), at the token grid.

All convolutions keep PyTorch's default initialisation, as in the reference (its head's own init is never
called).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch.nn.functional as F
from timm.layers.drop import DropPath
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from wsss_lightning.models.vit import ViTBackbone


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV segmentation head: two dilated 3×3 convolutions with ReLU, then a 1×1 classifier.

    No convolution has a bias.

    Args:
        in_channels: input channels (the ViT embedding dimension).
        num_classes: outputs K (C + 1 for DuPL: background plus the foreground classes).
        channels: width of the two hidden convolutions.
        dilation: dilation (and padding, so the size is kept) of the two 3×3 convolutions.

    Raises:
        ValueError: a non-positive size or dilation.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 512, dilation: int = 5) -> None:
        super().__init__()
        for field, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("channels", channels),
            ("dilation", dilation),
        ):
            if value < 1:
                raise ValueError(f"{field}: expected a positive integer, got {value}")
        self.conv6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv7 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv8 = nn.Conv2d(channels, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Map (B, in_channels, h, w) features to (B, num_classes, h, w) logits."""
        x = F.relu(self.conv6(x), inplace=True)
        x = F.relu(self.conv7(x), inplace=True)
        return cast(Tensor, self.conv8(x))


class SubNetOutput(NamedTuple):
    """Outputs of :meth:`DuPLSubNet.forward` for a (B, 3, H, W) batch, token grid h = H/p, w = W/p.

    Attributes:
        cls_logits: (B, C) classification logits from the max-pooled final tokens.
        aux_cls_logits: (B, C) classification logits from the max-pooled auxiliary tokens.
        seg_logits: (B, C + 1, h, w) segmentation logits at the token grid (not upsampled).
        features: (B, D, h, w) final token map F.
        aux_features: (B, D, h, w) auxiliary token map F_aux.
    """

    cls_logits: Tensor
    aux_cls_logits: Tensor
    seg_logits: Tensor
    features: Tensor
    aux_features: Tensor


_POOLS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "gmp": F.adaptive_max_pool2d,
    "gap": F.adaptive_avg_pool2d,
}


class DuPLSubNet(nn.Module):
    """One DuPL student: ViT backbone + CAM classifiers + LargeFOV segmentation head.

    Args:
        backbone: timm name of a plain ViT (``deit_base_patch16_224`` gave the published results).
        num_classes: number C of foreground classes (20 VOC, 80 COCO); the segmentation head has C + 1
            outputs.
        weights: local pretrained weights file for the backbone; ``None`` starts from random weights.
        aux_layer: Python index of the block giving the auxiliary tokens (-3 = 10th of 12).
        model_kwargs: extra ``timm.create_model`` arguments for the backbone (e.g. a smaller depth).
        head_channels: hidden width of the segmentation head.
        head_dilation: dilation of the segmentation head's 3×3 convolutions.
        pooling: pooling of the token map before the classifiers: ``gmp`` (global max, the released code)
            or ``gap`` (global average, the paper's text).
        train_pos_embed: train the backbone's position embedding (frozen in the released code).

    Raises:
        ValueError: bad backbone arguments (see :class:`ViTBackbone`) or a non-positive ``num_classes``.
        FileNotFoundError: ``weights`` does not exist.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        weights: str | None = None,
        aux_layer: int = -3,
        model_kwargs: dict[str, Any] | None = None,
        head_channels: int = 512,
        head_dilation: int = 5,
        pooling: str = "gmp",
        train_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in _POOLS:
            raise ValueError(f"pooling: expected one of {sorted(_POOLS)}, got {pooling!r}")
        self.pool = _POOLS[pooling]
        if num_classes < 1:
            raise ValueError(
                f"num_classes: expected the number of foreground classes (>= 1), got {num_classes}"
            )
        self.num_classes = num_classes
        self.backbone = ViTBackbone(
            backbone,
            weights=weights,
            aux_layer=aux_layer,
            model_kwargs=model_kwargs,
            train_pos_embed=train_pos_embed,
        )
        dim = self.backbone.embed_dim
        self.classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes, 1, bias=False)
        self.seg_head = LargeFOVHead(dim, num_classes + 1, channels=head_channels, dilation=head_dilation)

    @property
    def patch_size(self) -> int:
        """Token stride of the backbone in pixels (inputs must be multiples of it)."""
        return self.backbone.patch_size

    def forward(self, x: Tensor) -> SubNetOutput:
        """Classification and segmentation outputs of a batch.

        Args:
            x: (B, 3, H, W) normalized images, H and W multiples of ``patch_size``.

        Returns:
            :class:`SubNetOutput` (classification logits: global pooling, then the 1×1 classifier).
        """
        features, aux_features = self.backbone(x)
        cls_logits = self.classifier(self.pool(features, 1)).flatten(1)
        aux_cls_logits = self.aux_classifier(self.pool(aux_features, 1)).flatten(1)
        return SubNetOutput(cls_logits, aux_cls_logits, self.seg_head(features), features, aux_features)

    def cams(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw class activation maps (no ReLU, no normalization) at the token grid.

        Gradients flow through; pseudo-label code calls this under ``torch.no_grad()``.

        Args:
            x: (B, 3, H, W) normalized images, H and W multiples of ``patch_size``.

        Returns:
            ``(cam, aux_cam)``, each (B, C, H/p, W/p): the classifier weights applied at every token of F, and
            the auxiliary classifier weights at every token of F_aux.
        """
        return self.cams_of(*self.backbone(x))

    def cams_of(self, features: Tensor, aux_features: Tensor) -> tuple[Tensor, Tensor]:
        """Raw ``(cam, aux_cam)`` of token maps already computed (e.g. a training forward's, detached)."""
        return self.classifier(features), self.aux_classifier(aux_features)

    @property
    def stochastic(self) -> bool:
        """Whether the backbone has dropout or stochastic depth, so two training-mode passes differ."""
        return any(
            (isinstance(m, _DropoutNd) and m.p > 0) or (isinstance(m, DropPath) and m.drop_prob > 0)
            for m in self.backbone.modules()
        )

    def segment(self, x: Tensor) -> Tensor:
        """Segmentation logits only (backbone + segmentation head).

        Args:
            x: (B, 3, H, W) normalized images, H and W multiples of ``patch_size``.

        Returns:
            (B, C + 1, H/p, W/p) logits at the token grid.
        """
        features, _ = self.backbone(x)
        return cast(Tensor, self.seg_head(features))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split by learning-rate group.

        Returns:
            ``backbone`` (pretrained ViT, a frozen position embedding left out), ``classifier`` (the main and
            auxiliary classifier weights) and ``seg_head``; DuPL trains the first with a 10× smaller
            learning rate (6e-5 vs 6e-4). Every trainable parameter appears exactly once.
        """
        return {
            "backbone": [p for p in self.backbone.parameters() if p.requires_grad],
            "classifier": [p for m in (self.classifier, self.aux_classifier) for p in m.parameters()],
            "seg_head": [p for p in self.seg_head.parameters() if p.requires_grad],
        }
