"""Learned token affinities to labels: radius windows, random-walk matrices, propagated CAMs (AFA).

AFA ("Learning Affinity from Attention", Ru et al., CVPR 2022) predicts, from a transformer's attention
maps, an affinity ``A`` between every pair of the ``N = h' * w'`` tokens of an image and uses it twice:

* as a random walk that propagates class probabilities between similar tokens (``walk_matrix`` builds
  the walk from ``sigmoid(A)``, ``random_walk`` applies it); the propagated CAMs refine the segmentation
  pseudo-labels (``propagate_stack``, the ``propagate`` option of ``par_pseudo_labels``) and are validated
  as "affinity CAMs" (``propagated_cam_labels``);
* as the target of its affinity loss (``wsss_lightning.losses.affinity``), whose labels come from
  ``affinity_labels(..., radius=8, diagonal="positive")`` on the pseudo-label downsampled to the token grid.

Tokens are flattened row-major (``n = y * w' + x``). Everything is batched over images (one ``bmm``, no loop
per image) and free of host synchronisation. The walk's maths runs with autocast off: it only makes labels,
and its column sums over hundreds of tokens want float32.

Class conventions follow ``wsss_lightning.pseudo_labels.cam``: maps ``(B, K, H, W)`` hold each image's
present classes ``classes`` (``(B, K)``, -1 for padding), 0 = background, ``1..C`` foreground ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.models.token_grid import TokenGrid, pixels_to_tokens, tokens_to_pixels
from wsss_lightning.ops import channel_argmax

__all__ = [
    "WalkGrid",
    "labels_at_tokens",
    "propagate_stack",
    "propagated_cam_labels",
    "radius_mask",
    "random_walk",
    "walk_matrix",
]


def radius_mask(h: int, w: int, radius: int, device: torch.device | str | None = None) -> Tensor:
    """Which token pairs of an ``h x w`` grid lie within a square window (AFA ``get_mask_by_radius``).

    Args:
        h: grid rows.
        w: grid columns.
        radius: pairs with ``|dy| <= radius`` and ``|dx| <= radius`` are kept (AFA: 8, a 17 x 17 window:
            ``get_mask_by_radius`` spans ``_h - radius`` to ``_h + radius``).
        device: device of the result.

    Returns:
        ``(N, N)`` bool with ``N = h*w``, symmetric, True on the diagonal.
    """
    if h < 1 or w < 1:
        raise ValueError(f"radius_mask: the grid must have h, w >= 1, got {h}x{w}")
    if radius < 1:
        raise ValueError(f"radius_mask: radius must be >= 1, got {radius}")
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= radius
    near_cols = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_rows & near_cols


def labels_at_tokens(labels: Tensor, grid: tuple[int, int], placement: TokenGrid | None = None) -> Tensor:
    """The label under each token of an ``h' x w'`` grid: the affinity loss's token labels.

    Args:
        labels: ``(B, H, W)`` integer labels at the resolution of the network's input.
        grid: ``(h', w')`` the token grid.
        placement: None reads pixel ``floor(c * H / h')`` (``F.interpolate(..., mode="nearest")``, AFA's
            ``cams_to_affinity_label``: with a stride of 16, token ``c`` reads pixel ``16 c``, the first of
            its cell); a :class:`~wsss_lightning.models.token_grid.TokenGrid` reads the pixel nearest to where
            it puts token ``c`` (the cell centre ``16 c + 8`` for ``TokenGrid.cell_centres(16)``).

    Returns:
        ``(B, h', w')`` labels (same dtype as ``labels``).
    """
    if labels.ndim != 3:
        raise ValueError(f"labels_at_tokens: labels must be (B, H, W), got {tuple(labels.shape)}")
    (big_h, big_w), (h, w) = labels.shape[-2:], grid
    if h < 1 or w < 1:
        raise ValueError(f"labels_at_tokens: the grid must have h, w >= 1, got {grid}")
    if placement is None:
        return F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].to(labels.dtype)
    rows = placement.pixel_positions(h, big_h, big_h, labels.device).add(0.5).floor().clamp(0, big_h - 1)
    cols = placement.pixel_positions(w, big_w, big_w, labels.device).add(0.5).floor().clamp(0, big_w - 1)
    return labels[:, rows.long()[:, None], cols.long()[None, :]]


def _check_walk(name: str, walk: Tensor, batch: int | None = None) -> None:
    if walk.ndim != 3 or walk.shape[1] != walk.shape[2] or (batch is not None and walk.shape[0] != batch):
        expected = f"({'B' if batch is None else batch}, N, N)"
        raise ValueError(f"{name}: walk must be {expected}, got shape {tuple(walk.shape)}")


def _check_grid(name: str, grid: tuple[int, int], n: int) -> tuple[int, int]:
    if len(grid) != 2 or grid[0] < 1 or grid[1] < 1 or grid[0] * grid[1] != n:
        raise ValueError(f"{name}: grid must be (h', w') with h' * w' = N = {n} tokens of walk, got {grid}")
    return int(grid[0]), int(grid[1])


def _float_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half inputs are promoted)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def walk_matrix(
    affinity: Tensor,
    mask: Tensor | None = None,
    power: float = 2,
    eps: float = 0.1,
    log_iterations: int = 0,
) -> Tensor:
    """Random-walk transition matrices from affinity probabilities (AFA ``propagte_aff_cam_with_bkg``).

    Takes probabilities, not logits: AFA passes ``sigmoid(A)`` of its predicted affinity logits ``A``.
    ``P = affinity`` (detached: the walk only makes labels), 0 outside ``mask``, raised to ``power``; each
    column is normalised, ``P_ij / (sum_i P_ij + eps)`` (``eps`` keeps a column without neighbours finite);
    then ``P`` is squared ``log_iterations`` times (``P^(2^t)``: a longer walk).

    Args:
        affinity: ``(B, N, N)`` pairwise affinities in ``[0, 1]``.
        mask: ``(N, N)`` or ``(B, N, N)`` bool, the pairs that may exchange probability (``radius_mask``), or
            None for all pairs.
        power: exponent that sharpens the affinities (AFA: 2).
        eps: added to every column sum (AFA: 0.1).
        log_iterations: number of squarings of the normalised matrix (AFA: 0).

    Returns:
        ``(B, N, N)`` walk matrices, float32 (float64 for float64 input), no gradient; use with
        ``random_walk``.
    """
    _check_walk("walk_matrix", affinity)
    b, n, _ = affinity.shape
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) not in ((n, n), (b, n, n))):
        raise ValueError(
            f"walk_matrix: mask must be a bool (N, N) = ({n}, {n}) or (B, N, N) tensor, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    if log_iterations < 0:
        raise ValueError(f"walk_matrix: log_iterations must be >= 0, got {log_iterations}")
    with torch.no_grad(), torch.autocast(affinity.device.type, enabled=False):
        walk = affinity.detach().to(_float_dtype(affinity))
        if mask is not None:
            walk = walk.masked_fill(~mask, 0.0)
        walk = walk.pow(power)
        walk = walk / (walk.sum(dim=1, keepdim=True) + eps)
        for _ in range(log_iterations):
            walk = torch.bmm(walk, walk)
    return walk


def random_walk(probs: Tensor, walk: Tensor) -> Tensor:
    """Propagate per-token class probabilities one step: ``out[b, k] = probs[b, k] @ walk[b]``.

    Args:
        probs: ``(B, K, h, w)`` maps on the token grid, ``h * w = N``.
        walk: ``(B, N, N)`` walk matrices (``walk_matrix``).

    Returns:
        ``(B, K, h, w)`` propagated maps, float32 (float64 if either input is float64).
    """
    if probs.ndim != 4:
        raise ValueError(f"random_walk: probs must be (B, K, h, w), got shape {tuple(probs.shape)}")
    b, k, h, w = probs.shape
    _check_walk("random_walk", walk, b)
    if walk.shape[1] != h * w:
        raise ValueError(
            f"random_walk: probs' grid {h}x{w} has {h * w} tokens but walk is over N = {walk.shape[1]}"
        )
    dtype = _float_dtype(probs, walk)
    with torch.autocast(probs.device.type, enabled=False):
        out = torch.bmm(probs.reshape(b, k, h * w).to(dtype), walk.to(dtype))
    return out.view(b, k, h, w)


@dataclass(frozen=True)
class WalkGrid:
    """The token grid of a walk's affinities on the images it walks.

    Attributes:
        size: ``(h', w')`` tokens, ``h' * w' = N``.
        input_size: ``(H', W')`` the images' size in the forward pass that gave the affinities (None: the
            cell-centre resize, which needs no positions).
        tokens: where those tokens sit on that input (None: cell centres, the reference code's resize).
    """

    size: tuple[int, int]
    input_size: tuple[int, int] | None = None
    tokens: TokenGrid | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None and self.input_size is None:
            raise ValueError("WalkGrid: token positions need the input_size of the forward pass")

    def down(self, maps: Tensor) -> Tensor:
        """Pixel maps of the walked images at the tokens."""
        return pixels_to_tokens(maps, self.size, self.input_size or self.size, self.tokens)

    def up(self, maps: Tensor, size: Sequence[int]) -> Tensor:
        """Token maps at ``size`` pixels of the walked images."""
        return tokens_to_pixels(maps, size, self.input_size or self.size, self.tokens)


def _walk_grid(name: str, grid: tuple[int, int] | WalkGrid, n: int) -> WalkGrid:
    if isinstance(grid, WalkGrid):
        _check_grid(name, grid.size, n)
        return grid
    return WalkGrid(_check_grid(name, grid, n))


def _walk_logits(logits: Tensor, walk: Tensor, grid: WalkGrid) -> Tensor:
    """Softmax over channels of ``(B, M, H, W)`` logits sampled at the ``grid`` (``-inf`` kept), walked once."""
    negative_inf = torch.isneginf(logits)
    # bilinear weights of 0 would turn -inf into NaN: resample finite values and the -inf pattern apart
    small = grid.down(logits.masked_fill(negative_inf, 0.0))
    small_negative_inf = grid.down(negative_inf.to(small.dtype)) > 0
    probs = small.masked_fill(small_negative_inf, -math.inf).softmax(dim=1)
    return random_walk(probs, walk)


def propagate_stack(walk: Tensor, grid: tuple[int, int] | WalkGrid) -> Callable[[Tensor], Tensor]:
    """The ``propagate`` option of ``par_pseudo_labels`` that walks each stack on learned affinities.

    The returned function takes a stack's logits ``(B, M, H, W)`` (``-inf`` channels = padding), samples
    them bilinearly at the affinity grid's tokens, takes the softmax over channels (``-inf`` -> 0), applies
    ``random_walk`` and samples the result bilinearly back to ``(H, W)``, in the stack's dtype.

    Args:
        walk: ``(B, N, N)`` walk matrices of the same images (``walk_matrix``).
        grid: ``(h', w')`` token grid of the affinities, ``h' * w' = N`` (resized as cell centres), or a
            :class:`WalkGrid` with the tokens' positions.

    Returns:
        ``stack_logits (B, M, H, W) -> probabilities (B, M, H, W)``.
    """
    _check_walk("propagate_stack", walk)
    size = _walk_grid("propagate_stack", grid, walk.shape[1])

    def propagate(stack_logits: Tensor) -> Tensor:
        if stack_logits.ndim != 4 or stack_logits.shape[0] != walk.shape[0]:
            raise ValueError(
                f"propagate_stack: stack_logits must be (B, M, H, W) with B = {walk.shape[0]} as walk, "
                f"got shape {tuple(stack_logits.shape)}"
            )
        walked = _walk_logits(stack_logits, walk, size)
        return size.up(walked, stack_logits.shape[-2:]).to(stack_logits.dtype)

    return propagate


def propagated_cam_labels(
    cams: Tensor, classes: Tensor, walk: Tensor, grid: tuple[int, int] | WalkGrid, background: float
) -> Tensor:
    """Labels from CAMs propagated by a random walk (AFA's "affinity CAM" validation labels).

    The CAMs are stacked behind a constant ``background`` plane and sampled bilinearly at the affinity
    grid's tokens; a softmax over the background and each image's present classes (padding excluded) gives
    per-token probabilities, which ``random_walk`` propagates; the result is sampled bilinearly back to
    ``(H, W)`` and arg-maxed.

    Args:
        cams: ``(B, K, H, W)`` normalised CAMs of ``classes``.
        classes: ``(B, K)`` class indices into the C foreground classes, -1 for padding
            (``present_classes``).
        walk: ``(B, N, N)`` walk matrices (``walk_matrix``).
        grid: ``(h', w')`` token grid of the affinities, ``h' * w' = N`` (resized as cell centres), or a
            :class:`WalkGrid` with the tokens' positions.
        background: score of the background plane.

    Returns:
        ``(B, H, W)`` int64 labels in ``{0, 1..C}``.
    """
    if cams.ndim != 4:
        raise ValueError(f"propagated_cam_labels: cams must be (B, K, H, W), got shape {tuple(cams.shape)}")
    b, k, h, w = cams.shape
    if classes.ndim != 2 or tuple(classes.shape) != (b, k):
        raise ValueError(
            f"propagated_cam_labels: classes must be (B, K) = ({b}, {k}) to match cams, "
            f"got shape {tuple(classes.shape)}"
        )
    _check_walk("propagated_cam_labels", walk, b)
    size = _walk_grid("propagated_cam_labels", grid, walk.shape[1])
    with torch.no_grad():
        padding = torch.cat([classes.new_zeros((b, 1), dtype=torch.bool), classes < 0], dim=1)
        stack = torch.cat([torch.full_like(cams[:, :1], background), cams.detach()], dim=1)
        stack = stack.masked_fill(padding[:, :, None, None], -math.inf)
        walked = size.up(_walk_logits(stack, walk, size), (h, w))
        # padding channels are 0 after the walk; -inf keeps them from winning a tie at 0
        walked = walked.masked_fill(padding[:, :, None, None], -math.inf)
        label_ids = torch.cat([classes.new_zeros((b, 1)), classes.clamp(min=0) + 1], dim=1)
        return torch.gather(label_ids, 1, channel_argmax(walked).flatten(1)).view(b, h, w).long()
