"""The DAFormer network (MiT encoder + DAFormer head) with U2PL's representation head, for domain adaptation.

Hoyer et al., "DAFormer", CVPR 2022 (released code ``lhoyer/DAFormer``); U2PL+'s domain-adaptive setting keeps
this network and puts U2PL's representation head on the head's fused 1/4 features (the natural reading of
"same representation head"; the 256-d fused features are what DAFormer's classifier sees).

Also here: :func:`regularisation_off`, which switches dropout and drop-path off while a network stays in
training mode, as DAFormer's EMA teacher does for its pseudo-labelling forward (``mmseg/models/uda/dacs.py``:
every ``_DropoutNd`` and ``DropPath`` of the EMA model gets ``training = False``; its BatchNorm keeps using the
batch statistics).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from timm.layers.drop import DropPath
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from wsss_lightning.models.daformer_head import DAFORMER_DILATIONS, DAFormerHead
from wsss_lightning.models.deeplab import representation_head
from wsss_lightning.models.mit import MiTEncoder


def stochastic_modules(module: nn.Module) -> list[nn.Module]:
    """Every dropout (``nn.Dropout``, ``Dropout2d`` …) and drop-path module inside ``module``.

    smp's MiT blocks hold timm's ``DropPath`` module (``nn.Identity`` where the block's rate is 0), which drops
    paths only in training mode, so setting its ``training`` flag switches it off.
    """
    return [m for m in module.modules() if isinstance(m, _DropoutNd | DropPath)]


@contextmanager
def regularisation_off(module: nn.Module) -> Iterator[nn.Module]:
    """Switch dropout and drop-path off inside ``module`` for the duration of the block.

    Everything else keeps its mode (BatchNorm in training mode keeps normalising with, and updating, the batch
    statistics). The modules' previous ``training`` flags are restored on exit, also when the block raises.

    Args:
        module: any network (e.g. a teacher's copy of :class:`DAFormerNetwork`).

    Yields:
        ``module``.
    """
    switched = stochastic_modules(module)
    previous = [m.training for m in switched]
    try:
        for m in switched:
            m.training = False
        yield module
    finally:
        for m, flag in zip(switched, previous, strict=True):
            m.training = flag


class DAFormerNetwork(nn.Module):
    """MiT encoder + DAFormer head + optional U2PL representation head.

    Args:
        num_classes: classifier outputs (19 for GTA5 / SYNTHIA → Cityscapes).
        encoder: MiT variant, ``mit_b0`` … ``mit_b5`` (DAFormer: ``mit_b5``), with SegFormer's strides (stages at
            1/4, 1/8, 1/16, 1/32).
        encoder_weights: local ImageNet weights file of the encoder (NVIDIA's ``mit_b5.pth``; see
            :class:`MiTEncoder`), or None for random initialisation. Nothing is downloaded.
        encoder_kwargs: architecture overrides (e.g. a tiny MiT for CPU runs).
        drop_path_rate: stochastic depth of the encoder (DAFormer: 0.1).
        embed_dim: width of the head (DAFormer: 256).
        representation_channels: output width of the representation head on the fused features (U2PL: 256);
            None builds no representation head.
        dropout: channel dropout before the classifier (DAFormer: 0.1).

    Attributes:
        encoder: the :class:`MiTEncoder`.
        head: the :class:`DAFormerHead`.
        rep_head: the representation head, or None.

    Raises:
        ValueError: bad encoder arguments or head sizes, or ``representation_channels`` not positive.
        FileNotFoundError: ``encoder_weights`` does not exist.
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "mit_b5",
        encoder_weights: str | Path | None = None,
        encoder_kwargs: Mapping[str, Any] | None = None,
        drop_path_rate: float = 0.1,
        embed_dim: int = 256,
        representation_channels: int | None = 256,
        dropout: float = 0.1,
        dilations: Sequence[int] = DAFORMER_DILATIONS,
    ) -> None:
        super().__init__()
        if representation_channels is not None and representation_channels < 1:
            raise ValueError(
                f"representation_channels: expected a positive width or None (no representation head), "
                f"got {representation_channels}"
            )
        self.num_classes = num_classes
        self.encoder = MiTEncoder(
            encoder,
            weights=encoder_weights,
            drop_path_rate=drop_path_rate,
            model_kwargs=dict(encoder_kwargs or {}),
        )
        self.head = DAFormerHead(
            self.encoder.out_channels, num_classes, embed_dim=embed_dim, dilations=dilations, dropout=dropout
        )
        self.rep_head: nn.Module | None = None
        if representation_channels is not None:
            self.rep_head = representation_head(embed_dim, representation_channels, channels=embed_dim)

    @property
    def bottleneck_channels(self) -> int:
        """Channels of the last encoder stage (``bottleneck`` / :meth:`encoder_features`)."""
        return int(self.encoder.out_channels[-1])

    def forward(self, images: Tensor, with_rep: bool = True) -> dict[str, Tensor]:
        """Segment a batch of images of any size.

        Args:
            images: (B, 3, H, W) normalised images. Training mode needs B ≥ 2 or maps larger than 1×1 (BatchNorm).
            with_rep: also compute ``rep`` (a pseudo-labelling teacher can skip it).

        Returns:
            ``pred``: (B, num_classes, ⌈H/4⌉, ⌈W/4⌉) logits (the keys mean what they mean for
            :class:`DeepLabV3PlusRep`);
            ``rep``: (B, representation_channels, ⌈H/4⌉, ⌈W/4⌉) features, not normalised (only with ``with_rep``
            and a representation head);
            ``bottleneck``: (B, C_4, ⌈H/32⌉, ⌈W/32⌉) last encoder stage, the features DAFormer's ImageNet feature
            distance compares.
        """
        features = self.encoder(images).features
        logits, fused = self.head(features)
        out = {"pred": logits, "bottleneck": features[-1]}
        if with_rep and self.rep_head is not None:
            out["rep"] = self.rep_head(fused)
        return out

    def encoder_features(self, images: Tensor) -> Tensor:
        """Last encoder stage (B, C_4, ⌈H/32⌉, ⌈W/32⌉) only: what a frozen ImageNet copy of the encoder gives."""
        features: Tensor = self.encoder(images).features[-1]
        return features

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Split parameters for per-group learning rates (DAFormer: encoder 1×, decoder 10×).

        DAFormer's experiment config (``configs/daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py``)
        sets ``paramwise_cfg.custom_keys = {head: lr_mult 10, pos_block: decay_mult 0, norm: decay_mult 0}``:
        every ``decode_head.*`` parameter trains at 10× the rate, and the norm layers' *learning rate* is not
        special-cased. They do get weight decay 0: ``norm`` matches the encoder's LayerNorms (the head's
        BatchNorms are named ``bn`` in mmcv and keep the decay; MiT has no ``pos_block``). A caller that wants
        that decay split takes ``self.encoder.norm_parameters()`` out of the ``encoder`` group.

        Returns:
            ``encoder``: the MiT; ``decoder``: the DAFormer head and the representation head. Every parameter
            appears exactly once.
        """
        encoder_ids = {id(p) for p in self.encoder.parameters()}
        return {
            "encoder": list(self.encoder.parameters()),
            "decoder": [p for p in self.parameters() if id(p) not in encoder_ids],
        }

    @contextmanager
    def regularisation_off(self) -> Iterator[DAFormerNetwork]:
        """:func:`regularisation_off` on this network (dropout and drop-path off, the rest in its mode)."""
        with regularisation_off(self):
            yield self
