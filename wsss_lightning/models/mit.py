"""Mix Transformer (MiT, the SegFormer encoder) with optional capture of last-stage attention logits.

The network is segmentation_models_pytorch's ``MixVisionTransformer`` (Xie et al., "SegFormer", NeurIPS 2021),
used as is apart from two things the affinity-from-attention method (AFA, Ru et al., CVPR 2022) needs:

* the stride of the last patch embedding can be set to 1, so the last stage stays at 1/16 of the input;
* the pre-softmax attention logits of the last blocks of the last stage are returned with the stage outputs:
  ``q·kᵀ`` as AFA's released encoder returns them (``rulixiang/afa``, ``wetr/mix_transformer.py``: the
  scale is applied only inside the softmax), or ``q·kᵀ·scale``, the softmax's own input (``scaled_attention``).
  They are recomputed from the outputs of each captured block's ``attn.q`` / ``attn.kv`` projections (read
  by forward hooks), so smp's attention code runs unchanged and the logits stay in the autograd graph: a loss
  on them trains the q / k projections.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from segmentation_models_pytorch.encoders.mix_transformer import (
    MixVisionTransformer,
    mix_transformer_encoders,
)
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from wsss_lightning.models.weights import load_weights_file

#: MixVisionTransformer's constructor arguments (smp's table also holds encoder-wrapper keys it does not take).
_ACCEPTED = frozenset(inspect.signature(MixVisionTransformer.__init__).parameters) - {"self"}
# Arguments MiTEncoder sets itself; setting them in model_kwargs as well would be ambiguous.
_RESERVED = frozenset({"drop_path_rate", "num_classes"})
_PER_STAGE = ("embed_dims", "num_heads", "mlp_ratios", "depths", "sr_ratios")


class MiTOutput(NamedTuple):
    """What :class:`MiTEncoder` returns.

    Attributes:
        features: the 4 stage outputs, each (B, C_i, H_i, W_i), after each stage's final norm.
        attentions: pre-softmax attention logits of the captured blocks, each (B, heads, N, N_kv) with N the
            last stage's tokens (row-major) and N_kv the keys (N unless the last stage reduces its keys),
            oldest block first; empty when no block is captured.
    """

    features: list[Tensor]
    attentions: list[Tensor]


def mit_architecture(name: str, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """MixVisionTransformer arguments of a named MiT variant, with overrides.

    Args:
        name: ``mit_b0`` … ``mit_b5``; the values are smp's (``mix_transformer_encoders[name]["params"]``),
            which are those of the SegFormer release.
        model_kwargs: overrides of the architecture (e.g. ``embed_dims``, ``depths``, ``num_heads``).

    Returns:
        Keyword arguments for ``MixVisionTransformer`` (lists copied, so they can be changed safely).

    Raises:
        ValueError: unknown ``name``, unknown or reserved keys in ``model_kwargs``, per-stage lists that do
            not have 4 entries, or stage widths not divisible by their number of heads.
    """
    if name not in mix_transformer_encoders:
        raise ValueError(
            f"name: unknown MiT variant {name!r}; expected one of {sorted(mix_transformer_encoders)}"
        )
    overrides = dict(model_kwargs or {})
    reserved = sorted(_RESERVED & set(overrides))
    if reserved:
        raise ValueError(f"model_kwargs: {reserved} are set by MiTEncoder's own arguments; remove them")
    unknown = sorted(set(overrides) - _ACCEPTED)
    if unknown:
        raise ValueError(
            f"model_kwargs: {unknown} are not MixVisionTransformer arguments; expected some of {sorted(_ACCEPTED)}"
        )
    params = {k: v for k, v in mix_transformer_encoders[name]["params"].items() if k in _ACCEPTED}
    params.update(overrides)
    for key in _PER_STAGE:
        params[key] = list(params[key])
        if len(params[key]) != 4:
            raise ValueError(f"model_kwargs: {key} needs one value per stage (4), got {params[key]}")
    for dim, heads in zip(params["embed_dims"], params["num_heads"], strict=True):
        if dim % heads:
            raise ValueError(
                f"model_kwargs: embed_dims {params['embed_dims']} must be divisible by num_heads "
                f"{params['num_heads']} stage by stage"
            )
    return params


def _keep(store: dict[str, Tensor], key: str) -> Callable[[nn.Module, Any, Tensor], None]:
    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        store[key] = output

    return hook


def attention_logits(q: Tensor, kv: Tensor, num_heads: int, scale: float) -> Tensor:
    """Per-head attention logits from the outputs of a MiT attention's ``q`` and ``kv`` projections.

    Args:
        q: (B, N, C) queries, the output of ``attn.q``.
        kv: (B, M, 2C) keys and values, the output of ``attn.kv`` (keys first, heads inner, as smp splits them).
        num_heads: the attention's heads h (C divisible by h).
        scale: factor on ``q·kᵀ``: the attention's ``scale`` (head width ** -0.5 unless set otherwise) for the
            softmax's input, 1 for AFA's unscaled logits.

    Returns:
        (B, h, N, M) logits ``q_h · k_hᵀ · scale``, before the softmax.
    """
    batch, tokens, channels = q.shape
    width = channels // num_heads
    q_heads = q.reshape(batch, tokens, num_heads, width).transpose(1, 2)
    k_heads = kv.reshape(batch, kv.shape[1], 2, num_heads, width)[:, :, 0].transpose(1, 2)
    return (q_heads @ k_heads.transpose(-2, -1)) * scale


class MiTEncoder(nn.Module):
    """SegFormer's Mix Transformer returning its 4 stage maps and, optionally, last-stage attention logits.

    Args:
        name: MiT variant, ``mit_b0`` … ``mit_b5`` (architecture from smp's table, as in the SegFormer
            release). Default ``mit_b1``, the AFA backbone.
        weights: local weights file (``.pth``/``.safetensors``; a state dict or a checkpoint holding one).
            The NVIDIA SegFormer ImageNet files (``mit_b1.pth`` …) use the same parameter names as smp's
            implementation (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``,
            ``block1.0.attn.kv.weight``, ``norm1.weight`` …; the release stores blocks in a ``ModuleList``,
            smp in an ``nn.Sequential``, which name their children alike), so they load directly; their
            classifier ``head.*`` is ignored, as is a wrapper prefix such as ``backbone.`` (so a saved
            ``MiTEncoder`` state dict loads too). ``None``: random initialisation. Nothing is downloaded.
        strides: stride of each stage's patch embedding: ``(4, 2, 2, 2)`` (SegFormer, last stage at 1/32) or
            ``(4, 2, 2, 1)`` (AFA: the last stage stays at 1/16). The first is 4, the others 1 or 2; the weights
            are the same, only the convolutions' strides change (a small network on small images may keep a
            finer grid, e.g. ``(4, 2, 1, 1)``: the last stage at 1/8).
        attention_blocks: number of blocks, counted from the end of the last stage, whose attention logits
            are returned (AFA: 2, i.e. all blocks of mit_b1's last stage). 0 returns none.
        scaled_attention: return ``q·kᵀ·scale`` (the softmax's input) instead of AFA's ``q·kᵀ``. With
            mit_b1's 64-wide heads the scale is 1/8, so the two differ by a factor of 8.
        drop_path_rate: stochastic depth rate, increasing linearly over the blocks (SegFormer / AFA: 0.1).
        model_kwargs: overrides of the architecture, e.g. ``{"embed_dims": [16, 32, 64, 128], "depths":
            [1, 1, 1, 2], "num_heads": [1, 1, 2, 4]}`` for a tiny network trained from scratch.

    Attributes:
        backbone: the smp ``MixVisionTransformer``.

    Raises:
        ValueError: unknown ``name``, bad ``model_kwargs``, ``strides`` not as above, ``attention_blocks``
            outside 0 … depth of the last stage, or a weights file of another architecture.
        FileNotFoundError: ``weights`` does not exist.
    """

    def __init__(
        self,
        name: str = "mit_b1",
        weights: str | Path | None = None,
        strides: Sequence[int] = (4, 2, 2, 2),
        attention_blocks: int = 0,
        drop_path_rate: float = 0.1,
        model_kwargs: dict[str, Any] | None = None,
        scaled_attention: bool = False,
    ) -> None:
        super().__init__()
        strides = tuple(int(x) for x in strides)
        if len(strides) != 4 or strides[0] != 4 or any(x not in (1, 2) for x in strides[1:]):
            raise ValueError(f"strides: expected (4, s2, s3, s4) with each s 1 or 2, got {strides}")
        params = mit_architecture(name, model_kwargs)
        last_depth = params["depths"][3]
        if not 0 <= attention_blocks <= last_depth:
            raise ValueError(
                f"attention_blocks: expected 0 … {last_depth} (the depth of {name}'s last stage, depths "
                f"{params['depths']}), got {attention_blocks}"
            )
        params["drop_path_rate"] = drop_path_rate
        self.backbone = MixVisionTransformer(**params)
        embeds = (self.backbone.patch_embed2, self.backbone.patch_embed3, self.backbone.patch_embed4)
        for embed, stride in zip(embeds, strides[1:], strict=True):
            embed.proj.stride = (stride, stride)
        self.strides = strides
        self.attention_blocks = attention_blocks
        self.scaled_attention = scaled_attention
        self._embed_dims: list[int] = [int(c) for c in params["embed_dims"]]
        self._num_heads: list[int] = [int(h) for h in params["num_heads"]]
        if weights is not None:
            self._load(Path(weights))

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"weights: MiT weights file not found: {path}")
        missing = load_weights_file(self.backbone, path)
        if missing:
            warnings.warn(
                f"weights {path}: {len(missing)} MiT tensors are not in the file and keep their initial "
                f"values: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                stacklevel=3,
            )

    @property
    def out_channels(self) -> list[int]:
        """Channels of the 4 stage outputs."""
        return list(self._embed_dims)

    @property
    def reductions(self) -> list[int]:
        """Input-to-feature size ratio of each stage: 4, 8, 16, 32 with SegFormer's strides (AFA's: 4, 8, 16, 16)."""
        return [math.prod(self.strides[: i + 1]) for i in range(4)]

    @property
    def num_heads(self) -> list[int]:
        """Attention heads of each stage."""
        return list(self._num_heads)

    @property
    def attention_channels(self) -> int:
        """Channels of the captured attention logits stacked along heads (last-stage heads × blocks)."""
        return self._num_heads[3] * self.attention_blocks

    def norm_parameters(self) -> list[nn.Parameter]:
        """Weights and biases of every LayerNorm (patch-embedding, block, attention key-reduction, stage norms).

        AFA trains these with learning rate 0 while the rest of the encoder gets the backbone rate; the
        caller builds its optimizer groups from this list and :meth:`non_norm_parameters`. It is the same set
        as the parameters whose names contain ``norm``, the selection AFA's code makes.
        """
        return [p for m in self.backbone.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]

    def non_norm_parameters(self) -> list[nn.Parameter]:
        """All other parameters of the encoder (complement of :meth:`norm_parameters`)."""
        norms = {id(p) for p in self.norm_parameters()}
        return [p for p in self.parameters() if id(p) not in norms]

    def forward(self, x: Tensor) -> MiTOutput:
        """Encode images.

        Args:
            x: (B, 3, H, W) images (any size; each stage rounds its size up).

        Returns:
            :class:`MiTOutput`; stage i has size ceil(H / reductions[i]) × ceil(W / reductions[i]).
        """
        if self.attention_blocks == 0:
            return MiTOutput(list(self.backbone(x)), [])
        blocks = list(self.backbone.block4)[-self.attention_blocks :]
        # Hooks live only for this call: the storage is new at every forward, and a deepcopy of the encoder
        # (an EMA teacher) never shares hooks or storage with the original.
        store: dict[str, Tensor] = {}
        handles: list[RemovableHandle] = []
        try:
            for i, block in enumerate(blocks):
                handles.append(block.attn.q.register_forward_hook(_keep(store, f"{i}.q")))
                handles.append(block.attn.kv.register_forward_hook(_keep(store, f"{i}.kv")))
            features = list(self.backbone(x))
        finally:
            for handle in handles:
                handle.remove()
        attentions = [
            attention_logits(
                store[f"{i}.q"],
                store[f"{i}.kv"],
                block.attn.num_heads,
                block.attn.scale if self.scaled_attention else 1.0,
            )
            for i, block in enumerate(blocks)
        ]
        return MiTOutput(features, attentions)
