"""Pixel-adaptive refinement (PAR) of AFA, used unchanged by ToCo and DuPL to refine CAMs with image colour.

PAR propagates class maps between pixels of similar colour. Every pixel ``i`` has ``8 * len(dilations)``
neighbours: for each dilation ``d`` the 8 off-centre cells of a 3×3 kernel dilated by ``d``, with the image
border replicated. The affinity kernel is

* appearance: ``a_ij = -mean_rgb[((I_j - I_i) / (σ_i + 1e-8) / w1)^2]`` where ``σ_i`` is the per-channel
  (unbiased) standard deviation of the intensities of the neighbours of ``i``; softmax over ``j``;
* position: ``p_j = -(dist_j / (std_j(dist) + 1e-8) / w1)^2`` with ``dist_j = d`` for axial and ``√2·d`` for
  diagonal neighbours; softmax over ``j``. It does not depend on the pixel, so it is computed once;
* ``κ_ij = softmax_j(a_ij) + w2 · softmax_j(p_j)``, so every row sums to ``1 + w2``.

Refinement applies ``m_i ← Σ_j κ_ij m_j`` ``num_iter`` times to every channel. Since rows sum to ``1 + w2``
a constant map grows by that factor per iteration; argmax and ratios between channels are unaffected.

The reference gathers all neighbours into a ``(B, C, N, H, W)`` tensor (``N = 48`` neighbours by default).
Here neighbours are read as strided views of one replicate-padded copy and accumulated one at a time,
which keeps memory at a few ``(B, C, H, W)`` buffers (plus the ``(B, N, H, W)`` kernel) and was 5-9x faster
on CPU at DuPL's shapes (``benchmarks/dupl_par.py``); the results are the same up to floating-point
summation order. The kernel depends on the image only, so :meth:`PAR.kernel` can be computed once and
reused for several mask stacks of the same images (DuPL refines four per image and step).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

__all__ = ["PAR", "neighbour_offsets"]

# Off-centre cells of a 3×3 kernel in row-major order (the reference's neighbour order).
_UNIT_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Return the ``(dy, dx)`` offsets of the PAR neighbourhood, 8 per dilation, dilation-major.

    Args:
        dilations: positive dilations.

    Returns:
        ``8 * len(dilations)`` offsets; entry ``8 * k + u`` is ``_UNIT_OFFSETS[u]`` scaled by ``dilations[k]``.
    """
    return [(dy * d, dx * d) for d in dilations for dy, dx in _UNIT_OFFSETS]


def _position_softmax(dilations: Sequence[int], w1: float) -> Tensor:
    """Softmax over neighbours of the position term ``-(dist / std(dist) / w1)^2``, shape ``(N,)``, float64."""
    dist = torch.tensor(
        [math.hypot(dy, dx) for dy, dx in neighbour_offsets(dilations)], dtype=torch.float64
    )  # d for axial, √2·d for diagonal neighbours
    logits = -((dist / (dist.std() + 1e-8) / w1) ** 2)
    return torch.softmax(logits, 0)


class PAR(nn.Module):
    """Pixel-adaptive refinement: propagate class maps along an image-colour affinity kernel.

    Args:
        dilations: dilations of the 3×3 neighbourhoods (8 neighbours each). DuPL/ToCo use
            ``(1, 2, 4, 8, 12, 24)``.
        num_iter: refinement iterations (DuPL/ToCo: 10).
        w1: temperature of the appearance and position terms (reference: 0.3).
        w2: weight of the position term added to the appearance softmax (reference: 0.01).

    The module is meant for pseudo-label generation on detached inputs: :meth:`kernel` does not support
    autograd (it writes into preallocated buffers). All computation is batched over images and channels and
    has no host-device synchronisation.
    """

    pos_softmax: Tensor

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iter: int = 10,
        w1: float = 0.3,
        w2: float = 0.01,
    ) -> None:
        super().__init__()
        dilations = tuple(dilations)
        if not dilations or any(not isinstance(d, int) or d < 1 for d in dilations):
            raise ValueError(f"dilations must be a non-empty sequence of positive ints, got {dilations}")
        if num_iter < 0:
            raise ValueError(f"num_iter must be >= 0, got {num_iter}")
        if w1 <= 0:
            raise ValueError(f"w1 must be > 0, got {w1}")
        if w2 < 0:
            raise ValueError(f"w2 must be >= 0, got {w2}")
        self.dilations = dilations
        self.num_iter = num_iter
        self.w1 = w1
        self.w2 = w2
        self.offsets = neighbour_offsets(dilations)
        self.pad = max(dilations)
        # Pixel-independent, so computed once; float64 and cast at use so every input dtype gets it exactly.
        # Not persistent: derived from the arguments, so checkpoints stay free of it.
        self.register_buffer("pos_softmax", _position_softmax(dilations, w1), persistent=False)

    @property
    def num_neighbours(self) -> int:
        """Neighbours per pixel, ``8 * len(dilations)``."""
        return len(self.offsets)

    @override
    def extra_repr(self) -> str:
        return f"dilations={self.dilations}, num_iter={self.num_iter}, w1={self.w1}, w2={self.w2}"

    def _neighbours(self, x: Tensor) -> list[Tensor]:
        """Views ``(B, C, H, W)`` of ``x`` shifted to each neighbour offset, border replicated.

        One replicate pad by the largest dilation serves every offset: replicate padding clamps coordinates,
        so a slice of the big pad equals the reference's per-dilation pad.
        """
        h, w, p = x.shape[-2], x.shape[-1], self.pad
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        return [padded[..., p + dy : p + dy + h, p + dx : p + dx + w] for dy, dx in self.offsets]

    def kernel(self, image: Tensor) -> Tensor:
        """Affinity kernel ``κ`` of a batch of images.

        Args:
            image: ``(B, 3, H, W)`` RGB in ``[0, 1]`` (any floating dtype).

        Returns:
            ``(B, N, H, W)`` with ``N = 8 * len(dilations)`` in the order of :func:`neighbour_offsets`;
            every ``κ[b, :, y, x]`` sums to ``1 + w2``. Same dtype as ``image``; half-precision inputs are
            computed in float32 because the ``1e-8`` guard underflows in float16. The result is a permuted
            view of neighbour-major storage (use ``reshape``, not ``view``, to flatten it).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image must be a floating-point tensor in [0, 1], got dtype {image.dtype}")
        x = image.to(torch.promote_types(image.dtype, torch.float32))
        views = self._neighbours(x)
        n = len(views)
        # Two-pass unbiased std over the neighbours (as torch.std), accumulated view by view. In-place ops
        # act on fresh temporaries only (about 2x faster on CPU than the out-of-place expressions). Not
        # differentiable (``out=``): PAR only ever sees detached inputs.
        mean = torch.zeros_like(x)
        for v in views:
            mean.add_(v)
        mean.div_(n)
        var = torch.zeros_like(x)
        for v in views:
            dev = v - mean
            var.addcmul_(dev, dev)
        # 1 / ((σ + 1e-8) · w1 · √3): the √3 turns the sum over RGB below into the reference's mean.
        inv_scale = ((var.div_(n - 1).sqrt_() + 1e-8).mul_(self.w1 * math.sqrt(3.0))).reciprocal_()
        # Neighbour-major (N, B, H, W) storage: each neighbour's plane is contiguous, which makes the writes
        # below and the softmax over neighbours cache-friendly (~1.4x faster on CPU than (B, N, H, W)).
        b, _, h, w = x.shape
        logits = x.new_empty(n, b, h, w)
        for j, v in enumerate(views):
            torch.sum((v - x).mul_(inv_scale).square_(), 1, out=logits[j])
        kappa = torch.softmax(logits.neg_(), 0)
        kappa.add_(self.pos_softmax.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1), alpha=self.w2)
        kappa = kappa.permute(1, 0, 2, 3)
        return kappa.to(image.dtype)

    def refine(self, masks: Tensor, kernel: Tensor) -> Tensor:
        """Apply ``m_i ← Σ_j κ_ij m_j`` ``num_iter`` times to every channel.

        Args:
            masks: ``(B, K, H, W)`` maps at the kernel's resolution (any K, e.g. background + present classes).
            kernel: ``(B, N, H, W)`` from :meth:`kernel`.

        Returns:
            ``(B, K, H, W)`` refined maps, dtype of ``masks``.
        """
        if masks.ndim != 4:
            raise ValueError(f"masks must have shape (B, K, H, W), got {tuple(masks.shape)}")
        if not masks.is_floating_point():
            raise ValueError(f"masks must be a floating-point tensor, got dtype {masks.dtype}")
        n = self.num_neighbours
        if kernel.ndim != 4 or kernel.shape[1] != n:
            raise ValueError(f"kernel must have shape (B, {n}, H, W), got {tuple(kernel.shape)}")
        if masks.shape[0] != kernel.shape[0] or masks.shape[-2:] != kernel.shape[-2:]:
            raise ValueError(
                f"masks {tuple(masks.shape)} must match the kernel {tuple(kernel.shape)} in batch size and "
                "spatial size (H, W)"
            )
        kernel = kernel.to(masks.dtype)
        weights = [kernel[:, j : j + 1] for j in range(n)]  # (B, 1, H, W) each, broadcast over channels
        for _ in range(self.num_iter):
            # Accumulating one neighbour at a time never materialises (B, K, N, H, W).
            out = torch.zeros_like(masks)
            for wj, v in zip(weights, self._neighbours(masks), strict=True):
                out = out.addcmul_(v, wj)
            masks = out
        return masks

    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        """Refine ``masks`` with the affinity of ``image``.

        Args:
            image: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
            masks: ``(B, K, h, w)`` maps; resized bilinearly (``align_corners=True``) to ``(H, W)`` first.

        Returns:
            ``(B, K, H, W)`` refined maps, dtype of ``masks``.
        """
        if masks.ndim != 4 or masks.shape[0] != image.shape[0]:
            raise ValueError(
                f"masks must have shape (B, K, h, w) with the batch size of image {tuple(image.shape)}, "
                f"got {tuple(masks.shape)}"
            )
        kappa = self.kernel(image)
        if masks.shape[-2:] != image.shape[-2:]:
            masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return self.refine(masks, kappa)
