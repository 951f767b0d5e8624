"""Plain ViT backbone for dense prediction: patch-token maps at any input size, plus one intermediate layer.

The network is a timm ``VisionTransformer`` (DeiT-B/16 by default) used without its classification head.
Two things differ from timm's own forward:

* the absolute position embedding is frozen and, at every forward, its patch part is resized to the current
  token grid with plain bicubic interpolation (``align_corners=False``, no antialiasing) while its prefix
  (class / distillation / register token) part is kept. This is the resampling the DuPL and ToCo backbones
  use; timm's ``dynamic_img_size`` path resamples with antialiased bicubic, which uses a different cubic
  kernel and changes the embedding even when upsampling;
* besides the final tokens (after the final norm) it returns the raw output of one intermediate block, both
  without prefix tokens and reshaped to (B, D, h, w) maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import timm
import torch
import torch.nn.functional as F
from timm.models import load_state_dict
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

#: Backbone of the published DuPL / ToCo results (DeiT-B/16, ImageNet-1k).
DEFAULT_BACKBONE = "deit_base_patch16_224"

# Arguments that ViTBackbone passes to timm itself; setting them again in model_kwargs is a mistake.
_RESERVED_KWARGS = frozenset({"pretrained", "pretrained_cfg_overlay", "num_classes", "dynamic_img_size"})


def resize_pos_embed(pos_embed: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """Resize a patch position embedding from one token grid to another (bicubic, no antialiasing).

    Args:
        pos_embed: (1, gh·gw, D) embedding of a gh×gw grid, row-major.
        grid: (gh, gw), the grid ``pos_embed`` was stored for.
        size: (h, w), the target grid.

    Returns:
        (1, h·w, D) embedding, in ``pos_embed``'s dtype. Equal to ``pos_embed`` when ``size == grid``
        (bicubic sampling at the original pixel centres reproduces the input).
    """
    if tuple(size) == tuple(grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    as_map = pos_embed.reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)
    # half precision is interpolated in float32: bicubic is not implemented for it on every device
    work = as_map.float() if as_map.dtype in (torch.float16, torch.bfloat16) else as_map
    resized = F.interpolate(work, size=size, mode="bicubic", align_corners=False)
    return resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, size[0] * size[1], dim)


def _unknown_backbone(name: str) -> ValueError:
    return ValueError(
        f"backbone: unknown timm model {name!r}; expected a plain ViT name such as {DEFAULT_BACKBONE!r} or "
        "'vit_base_patch16_224' (list candidates with timm.list_models('*vit*') or timm.list_models('deit*'))"
    )


def _validate_architecture(name: str, model_kwargs: dict[str, Any]) -> VisionTransformer:
    """Build ``name`` on the meta device (no memory, no weights) and check it is a usable ViT.

    Doing this before the real build blames errors on the right argument (name or ``model_kwargs``) and
    rejects a wrong name or depth before a large network is allocated.
    """
    reserved = sorted(_RESERVED_KWARGS & set(model_kwargs))
    if reserved:
        raise ValueError(
            f"model_kwargs: {reserved} are set by the backbone itself (use the `weights` argument for "
            "pretrained weights); remove them from model_kwargs"
        )
    try:
        with torch.device("meta"):
            model = timm.create_model(
                name, pretrained=False, num_classes=0, dynamic_img_size=True, **model_kwargs
            )
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise _unknown_backbone(name) from err
        raise ValueError(f"model_kwargs: timm could not build {name!r} with {model_kwargs} ({err})") from err
    except (TypeError, AssertionError, ValueError, KeyError, AttributeError) as err:
        # Either the architecture does not take ViT arguments (not a ViT) or model_kwargs is wrong.
        try:
            with torch.device("meta"):
                plain = timm.create_model(name, pretrained=False)
        except (RuntimeError, TypeError, ValueError, AssertionError, AttributeError, KeyError):
            plain = None
        if plain is not None and not isinstance(plain, VisionTransformer):
            raise _not_a_vit(name, plain) from err
        raise ValueError(f"model_kwargs: timm could not build {name!r} with {model_kwargs} ({err})") from err
    if not isinstance(model, VisionTransformer):
        raise _not_a_vit(name, model)
    if model.pos_embed is None:
        raise ValueError(
            f"backbone: timm model {name!r} has no absolute position embedding (pos_embed); "
            f"expected a ViT with a learned position embedding such as {DEFAULT_BACKBONE!r}"
        )
    return model


def _not_a_vit(name: str, model: nn.Module) -> ValueError:
    return ValueError(
        f"backbone: timm model {name!r} builds a {type(model).__name__}, not a plain ViT (a timm "
        "VisionTransformer with patch_embed, blocks and pos_embed); pick one from timm.list_models('*vit*') "
        f"or timm.list_models('deit*'), e.g. {DEFAULT_BACKBONE!r}"
    )


def _patch_size(model: VisionTransformer, name: str) -> int:
    # feat_ratio() is the token stride, also right for hybrid (CNN stem) embeddings
    ratio = model.patch_embed.feat_ratio() if hasattr(model.patch_embed, "feat_ratio") else None
    if ratio is None:
        ratio = model.patch_embed.patch_size
    pair = (ratio, ratio) if isinstance(ratio, int) else tuple(ratio)
    if pair[0] != pair[1]:
        raise ValueError(f"backbone: timm model {name!r} has non-square patches {pair}; expected square ones")
    return int(pair[0])


def load_vit_weights(vit: VisionTransformer, path: str | Path) -> None:
    """Load a local checkpoint into a timm ViT, strictly (apart from the classifier head).

    The file is read and converted by timm (wrappers such as ``model``/``state_dict``/``module.`` removed;
    DeiT, timm, DINOv2, OpenCLIP layouts mapped; the position embedding resampled if the file stores another
    grid than the model's ``img_size``). ``.npz`` files (JAX / big_vision) go through timm's npz reader.

    Unlike timm's ``pretrained_cfg_overlay=dict(file=...)`` route, which loads non-strictly whenever the
    number of classes differs from the pretrained one (always the case for a headless backbone), a file that
    misses any backbone tensor or holds tensors the network does not have is an error: a checkpoint of
    another depth or architecture would otherwise leave part of the network silently random.

    Args:
        vit: the network, built with ``num_classes=0``.
        path: the weights file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read, or its tensors do not match the network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights: file not found: {path}")
    try:
        if path.suffix == ".npz":
            vit.load_pretrained(str(path))
            return
        state = checkpoint_filter_fn(load_state_dict(str(path)), vit, adapt_layer_scale=True)
    except Exception as err:
        raise ValueError(f"weights: could not read {path} as a ViT checkpoint ({err})") from err
    cfg: dict[str, Any] = dict(getattr(vit, "pretrained_cfg", None) or {})
    heads = cfg.get("classifier") or "head"  # e.g. ("head", "head_dist") for distilled DeiT
    prefixes = (f"{heads}.",) if isinstance(heads, str) else tuple(f"{h}." for h in heads)
    state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    try:
        missing, unexpected = vit.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        raise ValueError(f"weights: {path} does not fit the network ({err})") from err
    if missing or unexpected:
        raise ValueError(
            f"weights: {path} does not match the network: {len(missing)} tensors missing from the file "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); is it a checkpoint "
            "of this architecture and depth?"
        )


class ViTBackbone(nn.Module):
    """A timm ViT returning final and intermediate patch-token maps, for inputs of any size.

    Args:
        name: timm model name of a plain ViT (a ``VisionTransformer``; DeiT and ViT variants, optionally with
            register or distillation tokens). Default: DeiT-B/16, the backbone of the published DuPL results.
        weights: local weights file (``.pth``/``.safetensors``, a state dict or a checkpoint holding one
            under ``model``/``state_dict``), loaded through timm's checkpoint conversion for ``name`` (so
            original DeiT and timm checkpoints work; a classifier head in the file is dropped). ``None``
            starts from random weights. Nothing is downloaded.
        aux_layer: Python index of the block whose raw output is the auxiliary feature map (-3 = the 10th
            of 12 blocks, the DuPL setting; 9 is the same block for depth 12).
        model_kwargs: extra arguments for ``timm.create_model`` (e.g. ``{"depth": 4, "img_size": 64}`` for a
            small test model; ``drop_path_rate``). ``img_size`` only sets the grid the position embedding is
            stored for; inputs may have any size that is a multiple of the patch size. Keep it at the
            checkpoint's resolution (224 for DeiT) so the stored embedding is used as trained: for another
            value timm resamples it once at load time (antialiased bicubic), as the reference never did.
        train_pos_embed: train the position embedding. Off: it is frozen, as in DuPL's released ViT
            (``Wu0409/DuPL``, ``model/backbone/vit.py``: ``pos_embed.requires_grad = False``), which loads a
            pretrained one; a network trained from scratch would keep its random initial embedding (std 0.02)
            for the whole run. A trained embedding joins the backbone's optimizer group and its weight decay.

    Attributes:
        vit: the timm model (its ``head`` is an identity; ``pos_embed`` is frozen unless ``train_pos_embed``).
        patch_size: token stride in pixels.
        embed_dim: token channels D.
        aux_layer: the non-negative index of the auxiliary block.

    Raises:
        ValueError: unknown or non-ViT ``name``, bad ``model_kwargs``, ``aux_layer`` outside the depth, or a
            weights file that does not fit the network.
        FileNotFoundError: ``weights`` does not exist.
    """

    def __init__(
        self,
        name: str = DEFAULT_BACKBONE,
        weights: str | None = None,
        aux_layer: int = -3,
        model_kwargs: dict[str, Any] | None = None,
        train_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        model_kwargs = dict(model_kwargs or {})
        if not timm.is_model(name):
            raise _unknown_backbone(name)
        probe = _validate_architecture(name, model_kwargs)
        depth = len(probe.blocks)
        if not -depth <= aux_layer < depth:
            raise ValueError(
                f"aux_layer: expected a block index in [{-depth}, {depth - 1}] for {name!r} with {depth} "
                f"blocks, got {aux_layer}"
            )
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"weights: file not found: {weights}")
        vit = cast(
            VisionTransformer,
            timm.create_model(
                name,
                pretrained=False,
                num_classes=0,  # no classifier: all parameters get gradients, so DDP needs no unused search
                dynamic_img_size=True,  # patch embedding accepts any size and returns (B, h, w, D)
                **model_kwargs,
            ),
        )
        if weights is not None:
            load_vit_weights(vit, weights)
        # attention-pool heads (global_pool='map') are part of the classifier and would never get a gradient
        if getattr(vit, "attn_pool", None) is not None:
            vit.attn_pool = None  # type: ignore[assignment]
        assert vit.pos_embed is not None  # checked by _validate_architecture
        vit.pos_embed.requires_grad_(train_pos_embed)  # frozen as in the reference unless asked
        self.vit: VisionTransformer = vit
        self.patch_size = _patch_size(vit, name)
        self.embed_dim = int(vit.embed_dim)
        self.aux_layer = aux_layer % depth
        self._num_prefix = int(vit.num_prefix_tokens)
        self._embed_prefix = not vit.no_embed_class
        grid = vit.patch_embed.grid_size
        self._grid = (int(grid[0]), int(grid[1]))

    def _prefix_tokens(self, batch: int) -> list[Tensor]:
        # order as in timm: class, distillation, registers
        names = ("cls_token", "dist_token", "reg_token")
        tokens = [getattr(self.vit, n) for n in names if getattr(self.vit, n, None) is not None]
        return [t.expand(batch, -1, -1) for t in tokens]

    def _embed(self, x: Tensor) -> Tensor:
        """Patch-embed (B, 3, H, W) and add position embeddings: (B, prefix + h·w, D) tokens."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.vit.patch_embed(x)
        tokens = tokens.reshape(tokens.shape[0], h * w, tokens.shape[-1])  # (B, h, w, D) -> (B, h·w, D)
        stored = self.vit.pos_embed
        assert stored is not None  # checked at construction
        n = self._num_prefix if self._embed_prefix else 0
        pos = torch.cat((stored[:, :n], resize_pos_embed(stored[:, n:], self._grid, (h, w))), dim=1)
        prefix = self._prefix_tokens(tokens.shape[0])
        if self._embed_prefix:
            tokens = torch.cat([*prefix, tokens], dim=1) + pos
        else:
            tokens = torch.cat([*prefix, tokens + pos], dim=1)
        return cast(Tensor, self.vit.pos_drop(tokens))

    def _to_map(self, tokens: Tensor, h: int, w: int) -> Tensor:
        patches = tokens[:, self._num_prefix :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Token maps of a batch of images.

        Args:
            x: (B, 3, H, W) normalized images; H and W must be multiples of ``patch_size``.

        Returns:
            ``(features, aux_features)``, each (B, D, H/p, W/p): the final tokens after the final norm and the
            raw output of block ``aux_layer`` (no norm), prefix tokens dropped.

        Raises:
            ValueError: H or W is not a multiple of the patch size.
        """
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"x: expected height and width that are multiples of the patch size {self.patch_size}, got "
                f"{height}×{width}; pad the input first"
            )
        h, w = height // self.patch_size, width // self.patch_size
        tokens = self.vit.norm_pre(self._embed(x))
        # patch dropout is not applied: dense prediction needs every token
        aux = tokens
        for index, block in enumerate(self.vit.blocks):
            tokens = block(tokens)
            if index == self.aux_layer:
                aux = tokens
        # fc_norm is an identity for DeiT/ViT; models that pool with a final fc_norm (and no norm) use it here
        tokens = self.vit.fc_norm(self.vit.norm(tokens))
        return self._to_map(tokens, h, w), self._to_map(aux, h, w)
