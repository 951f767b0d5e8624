"""Class prototypes in representation space: batch centroids, momentum prototypes, prototypical denoising.

U2PL+ (Sec. 3.4, Eq. 15-20): the positive key of class c is its prototype, the mean teacher representation
of the batch's labeled pixels of c and reliable pseudo-c pixels, optionally momentum-averaged over steps
(m = 0.999); prototypical denoising (from ProDA) re-weights the teacher's class probabilities of each pixel
by a softmax over negative distances to the prototypes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

__all__ = ["PrototypeBank", "class_centroids", "prototype_denoise"]


def class_centroids(rep: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean representation of the pixels of each class.

    Computed in float32 with autocast off: the per-class sums over a whole batch overflow float16.

    Args:
        rep: ``(B, D, h, w)`` representations.
        mask: ``(B, C, h, w)`` bool (or 0/1) membership of each pixel in each class; a pixel may belong to
            several classes or none.

    Returns:
        ``(centroids, counts)``: ``(C, D)`` float32 means (zeros for classes without pixels) and ``(C,)``
        int64 pixel counts.
    """
    if rep.ndim != 4 or mask.ndim != 4 or rep.shape[0] != mask.shape[0] or rep.shape[2:] != mask.shape[2:]:
        raise ValueError(
            f"class_centroids: rep (B, D, h, w) and mask (B, C, h, w) must agree in B, h, w; "
            f"got rep {tuple(rep.shape)}, mask {tuple(mask.shape)}"
        )
    with torch.autocast(device_type=rep.device.type, enabled=False):
        weights = mask.float()
        counts = weights.sum(dim=(0, 2, 3))
        # Normalising the weights first keeps the matmul output at the scale of the means.
        weights = weights / counts.clamp_min(1.0)[None, :, None, None]
        b, c = mask.shape[:2]
        # (B, C, P) @ (B, P, D) with the transpose as a BLAS flag: no permuted copy of rep.
        flat_rep = rep.float().reshape(b, rep.shape[1], -1)
        centroids = torch.matmul(weights.reshape(b, c, -1), flat_rep.transpose(1, 2)).sum(0)
    return centroids, counts.long()


class PrototypeBank(nn.Module):
    """Per-class momentum prototypes ``z_c <- m z_c + (1 - m) z̄_c`` (U2PL+ Eq. 18).

    A class's prototype is set to its first observed batch centroid and afterwards moves only on steps
    where the class is present (the released ``anchor_ema`` code instead re-creates the prototypes as zeros
    every call, so absent classes lose theirs - not reproduced). With ``ramp=True`` the momentum of a class's
    k-th update (k = 0, 1, ...) is ``min(1 - 1/(k+1), m)``, the released ``anchor_ema`` ramp counted per class.

    Buffers (checkpointed): ``prototypes`` ``(C, D)`` float32 and ``num_updates`` ``(C,)`` int64.

    Args:
        num_classes: number of classes C.
        dim: representation dimension D.
        momentum: m (U2PL+: 0.999).
        ramp: use the ``min(1 - 1/(k+1), m)`` warm-up instead of a constant m after the first update.
    """

    prototypes: Tensor
    num_updates: Tensor

    def __init__(self, num_classes: int, dim: int = 256, momentum: float = 0.999, ramp: bool = False) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"PrototypeBank: num_classes and dim must be >= 1, got {num_classes}, {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"PrototypeBank: momentum must be in [0, 1), got {momentum}")
        self.num_classes = num_classes
        self.dim = dim
        self.momentum = momentum
        self.ramp = ramp
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("num_updates", torch.zeros(num_classes, dtype=torch.long))

    @override
    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}, ramp={self.ramp}"

    @property
    def initialized(self) -> Tensor:
        """``(C,)`` bool: classes that have a prototype."""
        return self.num_updates > 0

    @torch.no_grad()
    def update(self, centroids: Tensor, counts: Tensor, sync: bool = True) -> Tensor:
        """Move the prototypes of the classes present in the batch towards their batch centroids.

        Args:
            centroids: ``(C, D)`` batch centroids (e.g. from :func:`class_centroids`).
            counts: ``(C,)`` pixels behind each centroid; classes with 0 are left unchanged.
            sync: under DDP, first merge the centroids of all ranks (count-weighted, one all-reduce), so
                the prototypes are those of the global batch and identical on every rank. The released
                code has no momentum prototypes; its batch prototypes are per GPU.

        Returns:
            ``(C, D)`` the updated prototypes (a view of the buffer).
        """
        if centroids.shape != (self.num_classes, self.dim) or counts.shape != (self.num_classes,):
            raise ValueError(
                f"PrototypeBank.update: centroids must be ({self.num_classes}, {self.dim}) and counts "
                f"({self.num_classes},), got {tuple(centroids.shape)} and {tuple(counts.shape)}"
            )
        centroids = centroids.to(self.prototypes)
        counts = counts.to(self.prototypes)
        if sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            packed = torch.cat([centroids * counts[:, None], counts[:, None]], dim=1)
            dist.all_reduce(packed)
            counts = packed[:, -1]
            centroids = packed[:, :-1] / counts.clamp_min(1.0)[:, None]
        present = counts > 0
        k = self.num_updates.to(self.prototypes.dtype)
        if self.ramp:
            m = torch.clamp(1.0 - 1.0 / (k + 1.0), max=self.momentum)
        else:
            m = torch.where(k > 0, self.momentum, 0.0)
        new = m[:, None] * self.prototypes + (1.0 - m[:, None]) * centroids
        self.prototypes.copy_(torch.where(present[:, None], new, self.prototypes))
        self.num_updates.add_(present.long())
        return self.prototypes


def prototype_denoise(
    prob: Tensor,
    rep: Tensor,
    prototypes: Tensor,
    kappa: float = 1.0,
    prototype_valid: Tensor | None = None,
    renormalize: bool = True,
) -> Tensor:
    """Prototypical denoising (U2PL+ Eq. 19-20 as ProDA's ``models/adaptation_modelv2.py`` implements it).

    Per pixel in representation space: ``d_c = ||z - z_c^proto||_2``,
    ``w_c = softmax_c(-kappa * d_c)`` and ``p*_c = w_c * p_c`` (ProDA multiplies the distance by its
    "temperature" kappa = 1). The weights live on the representation grid and are bilinearly upsampled
    (align_corners=True) when ``prob`` is larger. Classes without a prototype get the smallest distance
    of the pixel, i.e. they are never suppressed. With ``renormalize`` (recommended, as ProDA before its
    confidence threshold) ``p*`` is divided by its sum over classes, so it can feed entropy filtering.

    Args:
        prob: ``(B, C, H, W)`` teacher class probabilities.
        rep: ``(B, D, h, w)`` teacher representations.
        prototypes: ``(C, D)`` class prototypes.
        kappa: distance scale.
        prototype_valid: ``(C,)`` bool, classes that have a prototype (default all).
        renormalize: divide ``p*`` by its class sum.

    Returns:
        ``(B, C, H, W)`` denoised probabilities ``p*``; argmax gives the denoised pseudo-labels.
    """
    if prob.ndim != 4 or rep.ndim != 4 or prob.shape[0] != rep.shape[0]:
        raise ValueError(
            f"prototype_denoise: prob must be (B, C, H, W) and rep (B, D, h, w); "
            f"got {tuple(prob.shape)} and {tuple(rep.shape)}"
        )
    if prototypes.shape != (prob.shape[1], rep.shape[1]):
        raise ValueError(
            f"prototype_denoise: prototypes must be (C, D) = ({prob.shape[1]}, {rep.shape[1]}), "
            f"got {tuple(prototypes.shape)}"
        )
    with torch.autocast(device_type=prob.device.type, enabled=False):
        z = rep.float().flatten(2)  # (B, D, hw)
        protos = prototypes.float().to(z.device)
        # ||z - p||^2 = ||z||^2 - 2 z.p + ||p||^2 without materialising (B, C, D, hw).
        sq = (
            (z * z).sum(1, keepdim=True)
            - 2 * torch.einsum("cd,bdp->bcp", protos, z)
            + (protos * protos).sum(1)[None, :, None]
        )
        dist_ = sq.clamp_min(0.0).sqrt()
        if prototype_valid is not None:
            valid = prototype_valid.to(device=z.device, dtype=torch.bool)[None, :, None]
            nearest = dist_.masked_fill(~valid, float("inf")).amin(1, keepdim=True)
            # All-invalid pixels would give inf: fall back to equal weights there.
            nearest = torch.where(torch.isinf(nearest), 0.0, nearest)
            dist_ = torch.where(valid, dist_, nearest)
        weights = torch.softmax(-kappa * dist_, dim=1).reshape(rep.shape[0], -1, *rep.shape[2:])
        if weights.shape[2:] != prob.shape[2:]:
            weights = F.interpolate(weights, size=prob.shape[2:], mode="bilinear", align_corners=True)
        denoised = weights * prob.float()
        if renormalize:
            denoised = denoised / denoised.sum(1, keepdim=True).clamp_min(1e-12)
    return denoised
