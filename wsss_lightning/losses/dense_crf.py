"""Dense-CRF loss: the relaxed dense-CRF energy of a soft segmentation, as a regularizing loss.

Tang, Perazzi, Djelouah, Ben Ayed, Schroers, Boykov, "On Regularized Losses for Weakly-supervised CNN
Segmentation" (ECCV 2018); reference code github.com/meng-tang/rloss, ``pytorch/pytorch-deeplab_v3_plus/
DenseCRFLoss.py`` with its C++ filter ``pytorch/wrapper/bilateralfilter/``. Seminar Learning (ICCV 2021, Eq. 4)
uses it as is; ASDT's structure loss passes a gate (RRM's ``DenseEnergyLoss.py``).

Shapes: B batch, K classes, H × W input resolution, h × w = floor(H·scale) × floor(W·scale) the grid the
energy is computed on, N = h·w.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from wsss_lightning.losses.bilateral import PermutohedralLattice, bilateral_features, exact_gaussian_filter

__all__ = ["EXACT_CALIBRATION", "DenseCRFLoss", "Kernel", "dense_crf_loss"]

Kernel = Literal["lattice", "exact"]

# Lattice / exact ratio of the energy Σ_k S_kᵀ W S_k on natural-like images at the VOC setting (256² grid,
# σ_xy' = 50, σ_rgb = 15; benchmarks/dense_crf_loss.py: 0.572, range 0.561-0.581 over images; 0.54-0.56 on
# 32²-128² grids): the exact kernel's default calibration, so that both kernels give the loss on the scale of
# the reference's lattice filter, for which the published loss weights were tuned.
EXACT_CALIBRATION = 0.57


def _check_params(
    weight: float,
    sigma_rgb: float,
    sigma_xy: float,
    scale: float,
    kernel: str,
    calibration: float | None,
    chunk_rows: int,
) -> None:
    """Raise a ValueError naming the first invalid hyper-parameter."""
    if not math.isfinite(weight):
        raise ValueError(f"dense_crf_loss: weight must be finite; got {weight}")
    if not sigma_rgb > 0:
        raise ValueError(f"dense_crf_loss: sigma_rgb must be > 0; got {sigma_rgb}")
    if not sigma_xy > 0:
        raise ValueError(f"dense_crf_loss: sigma_xy must be > 0; got {sigma_xy}")
    if not 0 < scale <= 1:
        raise ValueError(f"dense_crf_loss: scale must be in (0, 1]; got {scale}")
    if kernel not in ("lattice", "exact"):
        raise ValueError(f"dense_crf_loss: kernel must be 'lattice' or 'exact'; got {kernel!r}")
    if calibration is not None and not (calibration > 0 and math.isfinite(calibration)):
        raise ValueError(f"dense_crf_loss: calibration must be a positive number; got {calibration}")
    if chunk_rows < 1:
        raise ValueError(f"dense_crf_loss: chunk_rows must be >= 1; got {chunk_rows}")


def _check_map(name: str, value: Tensor | None, b: int, h: int, w: int) -> None:
    if value is not None and tuple(value.shape) != (b, h, w):
        raise ValueError(f"dense_crf_loss: {name} must be (B, H, W) = {(b, h, w)}; got {tuple(value.shape)}")


def _downscale_map(value: Tensor | None, scale: float, dtype: torch.dtype) -> Tensor | None:
    """``(B, H, W)`` → ``(B, h, w)`` with nearest sampling, as the reference does for the ROI."""
    if value is None:
        return None
    value = value.to(dtype)
    if scale == 1.0:
        return value
    return F.interpolate(value[:, None], scale_factor=scale, mode="nearest")[:, 0]


def _filter(features: Tensor, values: Tensor, roi: Tensor | None, kernel: Kernel, chunk_rows: int) -> Tensor:
    """``W v`` per image: features ``(B, N, 5)``, values ``(B, N, K)`` (zero outside the ROI) → ``(B, N, K)``."""
    if kernel == "exact":
        return exact_gaussian_filter(features, values, chunk_rows)
    if roi is None:
        return PermutohedralLattice(features).filter(values)
    b, n, k = values.shape
    if not PermutohedralLattice.default_padded(features.device):
        # CPU: only ROI pixels enter the lattice (reading their count is no synchronisation there).
        inside = roi.reshape(-1).nonzero().squeeze(1)
        lattice = PermutohedralLattice(
            features.reshape(b * n, -1).index_select(0, inside),
            torch.div(inside, n, rounding_mode="floor"),
            b,
        )
        out = torch.zeros(b * n, k, dtype=features.dtype, device=features.device)
        out.index_copy_(0, inside, lattice.filter(values.reshape(b * n, k).index_select(0, inside)))
        return out.reshape(b, n, k)
    # Accelerators, sync-free: the pixels outside the ROI get a key space of their own (image index B + b),
    # so they never share a vertex with ROI pixels; their values are 0, so are their outputs. Either way
    # padding never changes the ROI pixels' values.
    outside = (roi.reshape(b, n) == 0).to(torch.int64).mul_(b)
    images = torch.arange(b, device=features.device)[:, None] + outside
    lattice = PermutohedralLattice(features.reshape(b * n, -1), images.reshape(-1), 2 * b)
    return lattice.filter(values.reshape(b * n, k)).reshape(b, n, k)


class _DenseCRFEnergy(torch.autograd.Function):
    """``-(1/B) Σ_b Σ_k S̃_bkᵀ (G_b ⊙ W_b S̃_bk)`` with rloss's gradient ``-(2/B) G ⊙ (W S̃) ⊙ ROI``.

    The gradient is the reference's (``DenseCRFLossFunction.backward``), not the derivative of the forward
    value: with a gate, or with the lattice's slightly asymmetric ``W``, the two differ. Image, ROI and gate
    are constants.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        seg: Tensor,
        roi: Tensor | None,
        gate: Tensor | None,
        features: Tensor,
        kernel: Kernel,
        chunk_rows: int,
    ) -> Tensor:
        b, k, h, w = seg.shape
        n = h * w
        # Pixel-major (B, N, K) for the filters: always a fresh copy (masked in place below), then views only.
        values = torch.empty((b, h, w, k), dtype=features.dtype, device=seg.device)
        values.copy_(seg.detach().permute(0, 2, 3, 1))
        values = values.view(b, n, k)
        if roi is not None:
            values.mul_(roi.reshape(b, n, 1))
        field = _filter(features, values, roi, kernel, chunk_rows)  # W S̃
        if gate is not None:
            field.mul_(gate.reshape(b, n, 1))
        energy = torch.dot(values.reshape(-1), field.reshape(-1)).neg_().div_(b)
        if roi is not None:
            field.mul_(roi.reshape(b, n, 1))
        ctx.save_for_backward(field)
        ctx.seg_shape = (b, k, h, w)  # type: ignore[attr-defined]
        ctx.seg_dtype = seg.dtype  # type: ignore[attr-defined]
        return energy.to(seg.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_energy: Tensor) -> tuple[Tensor | None, ...]:
        (field,) = ctx.saved_tensors
        b, k, h, w = ctx.seg_shape
        # Written straight into the (B, K, h, w) layout: one new tensor, no further copy downstream.
        grad = torch.empty((b, k, h, w), dtype=ctx.seg_dtype, device=field.device)
        torch.mul(field.view(b, h, w, k).permute(0, 3, 1, 2), grad_energy * (-2.0 / b), out=grad)
        return grad, None, None, None, None, None


def dense_crf_loss(
    images: Tensor,
    probs: Tensor,
    roi: Tensor | None = None,
    *,
    weight: float = 2e-9,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale: float = 0.5,
    kernel: Kernel = "lattice",
    calibration: float | None = None,
    gate: Tensor | None = None,
    chunk_rows: int = 4096,
) -> Tensor:
    """Dense-CRF loss ``-(w·c/B) Σ_b Σ_k S̃_bkᵀ (G_b ⊙ W_b S̃_bk)`` of rloss (Tang et al., ECCV 2018).

    The images (nearest), probabilities (bilinear, ``align_corners=False``), ROI and gate (nearest) are
    down-scaled by ``scale`` to ``floor(H·scale) × floor(W·scale)``, as ``F.interpolate(scale_factor=scale)``
    does in rloss's ``DenseCRFLoss``, and ``σ_xy`` with them. ``S̃_k = S_k ⊙ ROI``; ``W_ij = exp(−‖p_i − p_j‖² /
    (2σ_xy²) − ‖I_i − I_j‖² / (2σ_rgb²))`` over all pixel pairs of one image, ``i = j`` included, not
    normalised (features ``(x, y)/σ_xy, (R, G, B)/σ_rgb``; x the column, y the row of the down-scaled grid).

    The relaxed energy of the paper (Eq. 4 of Seminar Learning) is ``Σ_k S_kᵀ W (1 − S_k) = 1ᵀW1 −
    Σ_k S_kᵀ W S_k`` when ``Σ_k S_k = 1``; the constant ``1ᵀW1`` is dropped, as in the reference, so the loss
    is negative and decreases as the segmentation follows the image's edges.

    Gradient (a custom autograd function, as the reference): ``∂L/∂S̃ = −(2w·c/B) G ⊙ (W S̃) ⊙ ROI`` on the
    down-scaled grid, then through the bilinear down-sampling into ``probs`` by autograd. Without a gate and
    with the exact (symmetric) kernel this is the true gradient of the value; with a gate it is the
    reference's gate-as-constant rule (ASDT / RRM), not the derivative of the gated value. Nothing flows to
    the images, ROI or gate.

    Kernels and their scale: ``"lattice"`` (default) is the permutohedral-lattice filter of the reference's
    C++ code (:class:`~wsss_lightning.losses.bilateral.PermutohedralLattice`), O(N); its ``W v`` is about
    0.57 × the exact Gaussian sum on natural-like images at the VOC setting (0.54 on 32² grids; self-weight
    ≈ 0.5), which the published loss weights (``w = 2e-9``) absorb. ROI pixels never share a lattice vertex
    with the others (the reference splats the padding too, with zero values, which can shift the blur
    slightly): padding never matters. Sync-free on accelerators (no host read in forward or backward: the
    lattice's padded layout, see :class:`~wsss_lightning.losses.bilateral.PermutohedralLattice`).
    ``"exact"`` sums the dense Gaussian exactly, ``chunk_rows`` query rows at a time (O(N²): small images,
    tests, GPUs). ``calibration`` ``c`` multiplies the weight; its default is 1 for the lattice and
    :data:`EXACT_CALIBRATION` (0.57, the measured lattice / exact energy ratio) for the exact kernel, so that
    both give the loss on the reference's scale: ``L_exact(c=0.57) ≈ L_lattice(c=1)`` (within a few %, the
    ratio depending on image content and size).

    Args:
        images: ``(B, 3, H, W)`` RGB images in 0..255 (not normalised), any real dtype.
        probs: ``(B, K, H, W)`` class probabilities (softmax output), floating point, with grad.
        roi: ``(B, H, W)`` region of interest (bool or 0/1; False = padding); default everywhere.
        weight: loss weight ``w`` (rloss's ``densecrfloss`` option; 2e-9 for VOC at scale 0.5).
        sigma_rgb: colour standard deviation (> 0).
        sigma_xy: spatial standard deviation in pixels of the full-resolution input (> 0).
        scale: down-scaling factor in (0, 1].
        kernel: ``"lattice"`` or ``"exact"``.
        calibration: multiplier ``c`` of ``weight`` (> 0); default by kernel, see above.
        gate: ``(B, H, W)`` non-negative per-pixel weights ``G`` of ``W S̃`` (ASDT), default 1.
        chunk_rows: query rows per chunk of the exact kernel (memory ``≈ 4 · chunk_rows · N`` bytes).

    Returns:
        The scalar loss, in the dtype of ``probs`` (float32 for half precision).
    """
    _check_params(weight, sigma_rgb, sigma_xy, scale, kernel, calibration, chunk_rows)
    if torch.is_autocast_enabled(probs.device.type):
        # Under mixed precision the Gaussian sums (1e4..1e6 terms per pixel) lose too many digits in
        # bfloat16 / float16: the energy is computed in float32 with autocast off.
        with torch.autocast(probs.device.type, enabled=False):
            return dense_crf_loss(
                images, probs.float(), roi, weight=weight, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, scale=scale,
                kernel=kernel, calibration=calibration, gate=None if gate is None else gate.float(),
                chunk_rows=chunk_rows,
            )  # fmt: skip
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"dense_crf_loss: images must be (B, 3, H, W) RGB; got {tuple(images.shape)}")
    if probs.ndim != 4 or probs.shape[0] != images.shape[0] or probs.shape[2:] != images.shape[2:]:
        raise ValueError(
            "dense_crf_loss: probs must be (B, K, H, W) with the images' B, H, W "
            f"{(images.shape[0], images.shape[2], images.shape[3])}; got {tuple(probs.shape)}"
        )
    if not probs.is_floating_point():
        raise ValueError(f"dense_crf_loss: probs must be floating point; got {probs.dtype}")
    b, _, height, width = probs.shape
    _check_map("roi", roi, b, height, width)
    _check_map("gate", gate, b, height, width)
    h, w = math.floor(height * scale), math.floor(width * scale)
    if h < 1 or w < 1:
        raise ValueError(f"dense_crf_loss: scale {scale} leaves no pixel of a {height}×{width} input")

    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    seg = probs.to(dtype)
    image = images.to(dtype)
    if scale != 1.0:
        image = F.interpolate(image, scale_factor=scale, mode="nearest")
        seg = F.interpolate(seg, scale_factor=scale, mode="bilinear", align_corners=False)
    features = bilateral_features(image, sigma_xy * scale, sigma_rgb)
    roi_s = _downscale_map(roi, scale, dtype)
    gate_s = _downscale_map(gate, scale, dtype)
    energy = _DenseCRFEnergy.apply(seg, roi_s, gate_s, features, kernel, chunk_rows)
    if calibration is None:
        calibration = EXACT_CALIBRATION if kernel == "exact" else 1.0
    loss: Tensor = energy * (weight * calibration)
    return loss


class DenseCRFLoss(nn.Module):
    """Module form of :func:`dense_crf_loss`, holding its hyper-parameters.

    Args:
        weight: loss weight ``w``.
        sigma_rgb: colour standard deviation.
        sigma_xy: spatial standard deviation in full-resolution pixels.
        scale: down-scaling factor in (0, 1].
        kernel: ``"lattice"`` or ``"exact"``.
        calibration: multiplier of ``weight``; default by kernel (see :func:`dense_crf_loss`).
        chunk_rows: query rows per chunk of the exact kernel.
    """

    def __init__(
        self,
        weight: float = 2e-9,
        sigma_rgb: float = 15.0,
        sigma_xy: float = 100.0,
        scale: float = 0.5,
        kernel: Kernel = "lattice",
        calibration: float | None = None,
        chunk_rows: int = 4096,
    ) -> None:
        super().__init__()
        _check_params(weight, sigma_rgb, sigma_xy, scale, kernel, calibration, chunk_rows)
        self.weight = weight
        self.sigma_rgb = sigma_rgb
        self.sigma_xy = sigma_xy
        self.scale = scale
        self.kernel: Kernel = kernel
        self.calibration = calibration
        self.chunk_rows = chunk_rows

    def forward(
        self, images: Tensor, probs: Tensor, roi: Tensor | None = None, gate: Tensor | None = None
    ) -> Tensor:
        """Loss of ``probs`` ``(B, K, H, W)`` on ``images`` ``(B, 3, H, W)``; see :func:`dense_crf_loss`."""
        return dense_crf_loss(
            images,
            probs,
            roi,
            weight=self.weight,
            sigma_rgb=self.sigma_rgb,
            sigma_xy=self.sigma_xy,
            scale=self.scale,
            kernel=self.kernel,
            calibration=self.calibration,
            gate=gate,
            chunk_rows=self.chunk_rows,
        )

    def extra_repr(self) -> str:
        """Hyper-parameters, for ``print(module)``."""
        return (
            f"weight={self.weight}, sigma_rgb={self.sigma_rgb}, sigma_xy={self.sigma_xy}, scale={self.scale}, "
            f"kernel={self.kernel!r}, calibration={self.calibration}"
        )
