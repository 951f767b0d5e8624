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

Each of the ``N`` accumulation passes streams the whole mask stack, its padded copy and a kernel plane
through the caches, so on CPU the cost per image jumps once the stack outgrows the last-level cache: at
224×224 with 4 channels, one pass took ~60 µs per image at batch 1 and 2 but ~150 µs at batch 4 (8 MiB L3),
and the kernel's temporaries cross it at batch 4 too. On CPU the module therefore works in chunks of images
(and of channels, for many channels) that fit :attr:`PAR.cpu_cache_bytes`, and skips channels that are 0
in every image of a chunk, such as the channel padding of a batch whose images have different numbers of
classes (a zero channel stays 0). It reads data on the host to do so, which on CPU costs nothing; on
accelerators the whole batch goes through one launch sequence without host synchronisation. Both give the
same values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.host_reads import host_reads_allowed

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
    autograd (it writes into preallocated buffers). On accelerators all computation is batched over images
    and channels and has no host-device synchronisation. On CPU, images (and, for many channels, channels)
    are processed in chunks whose working set fits :attr:`cpu_cache_bytes`, and channels that are 0 in a
    chunk (channel padding) are skipped; results are the same as batched.
    """

    pos_softmax: Tensor
    #: CPU only: bytes that one chunk of :meth:`kernel` or one refinement pass may touch. Every neighbour's
    #: pass streams the whole stack through the caches; once the stack outgrows the last-level cache (on the
    #: 8 MiB-L3 machine of ``benchmarks/dupl_par.py``: batch 4 at 224×224 with 4 channels) each pass slows
    #: about 2x per image. 4 MiB keeps the chunks well inside a shared L3.
    cpu_cache_bytes: int = 4 * 2**20
    #: ``False`` runs the accelerator strategy (everything batched, no host reads) on CPU too.
    chunk_on_cpu: bool = True

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

    def _chunked(self, x: Tensor) -> bool:
        """Whether ``x`` takes the CPU strategy (cache-sized chunks, host reads allowed)."""
        return self.chunk_on_cpu and host_reads_allowed(x.device)

    def _planes(self, shape: Sequence[int], itemsize: int) -> tuple[int, int]:
        """Bytes of one ``(H, W)`` plane and of its copy padded by :attr:`pad` on every side."""
        h, w, p = shape[-2], shape[-1], self.pad
        return h * w * itemsize, (h + 2 * p) * (w + 2 * p) * itemsize

    def _kernel_chunk(self, shape: Sequence[int], itemsize: int) -> int:
        """Images per CPU :meth:`kernel` chunk: about 12 ``(H, W)`` planes and 3 padded ones per image."""
        plane, padded = self._planes(shape, itemsize)
        return max(1, self.cpu_cache_bytes // (3 * (4 * plane + padded)))

    def _refine_chunk(self, shape: Sequence[int], itemsize: int, channels: int) -> int:
        """Images per CPU refinement group: per image, ``channels`` output planes and padded inputs, 1 weight."""
        plane, padded = self._planes(shape, itemsize)
        return max(1, self.cpu_cache_bytes // (channels * (plane + padded) + plane))

    def _channel_group(self, shape: Sequence[int], itemsize: int) -> int:
        """Channels per CPU refinement pass of one image that fit :attr:`cpu_cache_bytes`."""
        plane, padded = self._planes(shape, itemsize)
        return max(1, (self.cpu_cache_bytes - plane) // (plane + padded))

    def kernel(self, image: Tensor) -> Tensor:
        """Affinity kernel ``κ`` of a batch of images.

        Args:
            image: ``(B, 3, H, W)`` RGB in ``[0, 1]`` (any floating dtype).

        Returns:
            ``(B, N, H, W)`` with ``N = 8 * len(dilations)`` in the order of :func:`neighbour_offsets`;
            every ``κ[b, :, y, x]`` sums to ``1 + w2``. Same dtype as ``image``; half-precision inputs are
            computed in float32 because the ``1e-8`` guard underflows in float16. The result is a permuted
            view of neighbour-major storage (use ``reshape``, not ``view``, to flatten it). On CPU the
            images are processed in chunks that fit :attr:`cpu_cache_bytes` (same values).
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image must be a floating-point tensor in [0, 1], got dtype {image.dtype}")
        x = image.to(torch.promote_types(image.dtype, torch.float32))
        n = image.shape[0]
        if self._chunked(x):
            n = self._kernel_chunk(x.shape, x.element_size())
        if n >= x.shape[0]:
            kappa = self._kernel(x)
        else:  # concatenating the chunks' neighbour-major kernels costs one copy of κ
            kappa = torch.cat([self._kernel(x[i : i + n]) for i in range(0, x.shape[0], n)], 1)
        return kappa.permute(1, 0, 2, 3).to(image.dtype)

    def _kernel(self, x: Tensor) -> Tensor:
        """Neighbour-major ``(N, B, H, W)`` kernel of ``x`` (float32 or wider), without chunking."""
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
        return kappa.add_(self.pos_softmax.to(device=x.device, dtype=x.dtype).view(n, 1, 1, 1), alpha=self.w2)

    def refine(self, masks: Tensor, kernel: Tensor) -> Tensor:
        """Apply ``m_i ← Σ_j κ_ij m_j`` ``num_iter`` times to every channel.

        Args:
            masks: ``(B, K, H, W)`` maps at the kernel's resolution (any K, e.g. background + present classes).
            kernel: ``(B, N, H, W)`` from :meth:`kernel`.

        Returns:
            ``(B, K, H, W)`` refined maps, dtype of ``masks``.

        On accelerators all images and channels are refined together (one launch sequence, no host
        synchronisation). On CPU, where every neighbour's pass streams the whole ``(B, K)`` stack through
        the caches, images and channels are refined in groups that fit :attr:`cpu_cache_bytes`, and channels
        that are exactly 0 in every image of a group (e.g. channel padding) are skipped: they stay 0 (if
        the kernel is finite, checked), so the result is the same.
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
        if not self._chunked(masks) or self.num_iter == 0 or masks.numel() == 0:
            return self._refine(masks, kernel)
        return self._refine_cpu(masks, kernel)

    def _refine(self, masks: Tensor, kernel: Tensor) -> Tensor:
        """:meth:`refine` of all images and channels at once; ``kernel`` already in the dtype of ``masks``."""
        n = self.num_neighbours
        weights = [kernel[:, j : j + 1] for j in range(n)]  # (B, 1, H, W) each, broadcast over channels
        for _ in range(self.num_iter):
            # Accumulating one neighbour at a time never materialises (B, K, N, H, W).
            out = torch.zeros_like(masks)
            for wj, v in zip(weights, self._neighbours(masks), strict=True):
                out = out.addcmul_(v, wj)
            masks = out
        return masks

    def _refine_cpu(self, masks: Tensor, kernel: Tensor) -> Tensor:
        """:meth:`refine` in cache-sized groups of images and channels, all-zero channels skipped (CPU only).

        Reads data on the host (which channels are 0, whether the kernel is finite): never used on
        accelerators.
        """
        b, k = masks.shape[:2]
        itemsize = masks.element_size()
        step = self._refine_chunk(masks.shape, itemsize, k)
        group = k if step > 1 else self._channel_group(masks.shape, itemsize)
        chunks = []
        for i in range(0, b, step):
            m, kap = masks[i : i + step], kernel[i : i + step]
            # Absolute maximum per channel over the group's images: NaN counts as non-zero.
            kept = [c for c, nonzero in enumerate(m.abs().amax((0, 2, 3)).ne(0).tolist()) if nonzero]
            # Σ_j κ_ij · 0 is 0 only for a finite κ; a finite sum (of non-negative terms) implies one.
            if len(kept) < k and not torch.isfinite(kap.sum()):
                kept = list(range(k))
            if len(kept) == k and k <= group:
                chunks.append(self._refine(m, kap))
                continue
            out = torch.zeros_like(m)
            for g in range(0, len(kept), group):
                ids = kept[g : g + group]
                sel: slice | Tensor = (
                    slice(ids[0], ids[-1] + 1) if ids[-1] - ids[0] == len(ids) - 1 else torch.tensor(ids)
                )
                out[:, sel] = self._refine(m[:, sel], kap)
            chunks.append(out)
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

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
        b = image.shape[0]
        if self._chunked(image) and image.ndim == 4 and b > 1:
            # One kernel and refinement per cache-sized chunk of images (see :meth:`refine`).
            float_size = torch.promote_types(image.dtype, torch.float32).itemsize
            step = min(
                self._kernel_chunk(image.shape, float_size),
                self._refine_chunk(image.shape, masks.element_size(), masks.shape[1]),
            )
            if step < b:
                return torch.cat(
                    [self._forward(image[i : i + step], masks[i : i + step]) for i in range(0, b, step)]
                )
        return self._forward(image, masks)

    def _forward(self, image: Tensor, masks: Tensor) -> Tensor:
        """:meth:`forward` of one chunk of images."""
        kappa = self.kernel(image)
        if masks.shape[-2:] != image.shape[-2:]:
            masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return self.refine(masks, kappa)
