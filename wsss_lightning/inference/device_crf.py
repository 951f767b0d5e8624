"""Dense CRF inference on the training device: mean-field over permutohedral-lattice filters, batched.

The fully connected CRF of Krähenbühl and Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge
Potentials" (NeurIPS 2011), Algorithm 1, with the choices of their released code (``densecrf/src/densecrf.cpp``,
``pairwise.cpp``) that pydensecrf2 wraps and :func:`wsss_lightning.inference.crf.dense_crf` calls:

* unary ``ψ_u = -log(max(p, clip))``; ``Q_0 = softmax(-ψ_u)``;
* two pairwise terms, a smoothness kernel on ``(x/σ_g, y/σ_g)`` and an appearance kernel on
  ``(x/σ_xy, y/σ_xy, RGB/σ_rgb)``, each filtered with the permutohedral lattice and normalised
  symmetrically, ``K̂ Q = n ⊙ K(n ⊙ Q)`` with ``n = (K 1)^{-1/2}``, the message to a pixel including its own;
* Potts compatibility: ``Q_{t+1} = softmax(-ψ_u + w_g K̂_g Q_t + w_b K̂_b Q_t)`` for ``iterations`` steps.

The lattice is :class:`~wsss_lightning.losses.bilateral.PermutohedralLattice`, which follows that code's scheme, so
the same approximation of the Gaussian sums enters both implementations; what differs is float summation order
and the lattice's hashing. On a padded batch each image's padding is a separate image of the lattice (it never
exchanges messages with the image), so nothing is read on the host and the batch needs no per-image loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsss_lightning.inference.crf import CRFParams
from wsss_lightning.losses.bilateral import PermutohedralLattice, bilateral_features

__all__ = ["mean_field_crf", "mean_field_labels"]


def _region_index(sizes: Tensor | None, b: int, h: int, w: int, device: torch.device) -> Tensor:
    """Lattice image index of each pixel, (B·H·W,): b inside image b's (h_b, w_b), B + b in its padding."""
    index = torch.arange(b, device=device)[:, None, None].expand(b, h, w)
    if sizes is None:
        return index.reshape(-1)
    sizes = sizes.to(device)
    rows = torch.arange(h, device=device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(w, device=device)[None, None, :] < sizes[:, 1, None, None]
    return torch.where(rows & cols, index, index + b).reshape(-1)


def _normalised_filter(lattice: PermutohedralLattice, num_points: int, device: torch.device) -> Tensor:
    """``n = (K 1)^{-1/2}`` of a lattice, (P, 1): the symmetric normalisation of the dense-CRF code."""
    ones = torch.ones(num_points, 1, device=device)
    return lattice.filter(ones).add_(1e-20).rsqrt_()


def mean_field_crf(
    images: Tensor, probs: Tensor, params: CRFParams | None = None, sizes: Tensor | None = None
) -> Tensor:
    """Posterior marginals of the dense CRF for a batch, on the inputs' device.

    Args:
        images: ``(B, 3, H, W)`` RGB in 0..255 (uint8 or float; the un-normalised pixels).
        probs: ``(B, C, H, W)`` class probabilities (e.g. a softmax).
        params: kernels, compatibilities and iterations; ``None`` = :class:`CRFParams` defaults.
        sizes: ``(B, 2)`` valid (height, width) of each image in a padded batch (top-left aligned); ``None`` =
            every pixel is valid. Padding never exchanges messages with the image.

    Returns:
        ``(B, C, H, W)`` float32 marginals (values in the padding are those of the padding's own CRF).
    """
    params = params or CRFParams()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"mean_field_crf: images must be (B, 3, H, W); got {tuple(images.shape)}")
    if probs.ndim != 4 or probs.shape[0] != images.shape[0] or probs.shape[2:] != images.shape[2:]:
        raise ValueError(
            f"mean_field_crf: probs must be (B, C, H, W) matching images {tuple(images.shape)}; "
            f"got {tuple(probs.shape)}"
        )
    if sizes is not None and tuple(sizes.shape) != (images.shape[0], 2):
        raise ValueError(f"mean_field_crf: sizes must be (B, 2); got {tuple(sizes.shape)}")
    if torch.is_autocast_enabled(probs.device.type):
        # the Gaussian sums lose too many digits in bfloat16 / float16: float32 with autocast off
        with torch.autocast(probs.device.type, enabled=False):
            return mean_field_crf(images.float(), probs.float(), params, sizes)
    b, c, h, w = probs.shape
    n = b * h * w
    device = probs.device
    index = _region_index(sizes, b, h, w, device)
    appearance = bilateral_features(images.float(), params.bilateral_sxy, params.bilateral_srgb)
    smoothness = appearance[..., :2] * (params.bilateral_sxy / params.gaussian_sxy)
    kernels = []
    for features, compat in ((smoothness, params.gaussian_compat), (appearance, params.bilateral_compat)):
        lattice = PermutohedralLattice(features.reshape(n, -1), index, num_images=2 * b)
        kernels.append((lattice, _normalised_filter(lattice, n, device), compat))
    # pixel-major (P, C) layout for the lattice; float32 as the reference
    unary = probs.float().clamp_min(params.prob_clip).log().permute(0, 2, 3, 1).reshape(n, c)
    q = unary.softmax(1)
    for _ in range(params.iterations):
        logits = unary.clone()
        for lattice, norm, compat in kernels:
            logits.add_(lattice.filter(q * norm).mul_(norm), alpha=compat)
        q = logits.softmax(1)
    return q.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()


def mean_field_labels(
    images: Tensor, probs: Tensor, params: CRFParams | None = None, sizes: Tensor | None = None
) -> Tensor:
    """``(B, H, W)`` int64 argmax of :func:`mean_field_crf`."""
    return mean_field_crf(images, probs, params, sizes).argmax(1)
