"""DACS strong augmentation (colour jitter and Gaussian blur) as DAFormer applies it, batched on the device.

Reference: lhoyer/DAFormer ``mmseg/models/utils/dacs_transforms.py`` (``color_jitter``, ``gaussian_blur``,
``strong_transform``), which wraps kornia 0.5.8's ``ColorJitter`` and ``GaussianBlur2d`` and is called per image
from ``mmseg/models/uda/dacs.py``. Here every image of the batch is processed by one set of tensor operations
with per-image parameter tensors.

Differences from the reference, by design:

* The reference draws the two "apply?" decisions once per training step (``random.uniform`` in
  ``dacs.py``) and shares them by every image of the batch; the jitter factors and the blur sigma are drawn
  per image. Here the decisions are per image by default; ``per_image=False`` shares one decision by the
  batch, as the reference.
* kornia's ``ColorJitter`` applies its four operations in a random order drawn per call; here the order is
  fixed: brightness, contrast, saturation, hue (kornia's operation list order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blur_kernel_size", "color_jitter", "gaussian_blur", "strong_augment"]


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``U[0, 1)`` float32 draws made on the generator's device, then moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device, non_blocking=True)


def _check_images(name: str, images: Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"{name}: images must be float (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )


def _check_probability(name: str, option: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: {option} must be in [0, 1], got {p}")


def _working(images: Tensor) -> Tensor:
    """Half-precision images are processed in float32 (the HSV round trip needs the precision)."""
    return images.float() if images.dtype in (torch.float16, torch.bfloat16) else images


def _rgb_to_hsv(rgb: Tensor) -> Tensor:
    """RGB in [0, 1] -> HSV with hue in turns [0, 1), saturation and value in [0, 1]; ``(B, 3, H, W)``."""
    value, argmax = rgb.max(dim=1)
    delta = value - rgb.min(dim=1).values
    saturation = torch.where(value > 0, delta / torch.where(value > 0, value, 1.0), 0.0)
    safe_delta = torch.where(delta > 0, delta, 1.0)
    r, g, b = rgb.unbind(dim=1)
    # hue sextant offsets: red max -> (g - b), green max -> 2 + (b - r), blue max -> 4 + (r - g)
    candidates = torch.stack(((g - b) / safe_delta, 2.0 + (b - r) / safe_delta, 4.0 + (r - g) / safe_delta))
    hue = candidates.gather(0, argmax.unsqueeze(0)).squeeze(0)
    hue = torch.where(delta > 0, torch.remainder(hue / 6.0, 1.0), 0.0)
    return torch.stack((hue, saturation, value), dim=1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`_rgb_to_hsv` (hue taken modulo one turn)."""
    hue, saturation, value = hsv.unbind(dim=1)
    # the usual piecewise-linear form: channel n is v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6
    # offsets 5, 3, 1 for R, G, B, made on the device (a host tensor copy would synchronise)
    offsets = (5.0 - 2.0 * torch.arange(3, dtype=hsv.dtype, device=hsv.device)).view(1, 3, 1, 1)
    k = torch.remainder(offsets + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * ramp)


def _as_channels(values: Sequence[float] | Tensor, like: Tensor, name: str) -> Tensor:
    # host values travel with a non-blocking copy: no synchronisation on accelerators
    out = torch.as_tensor(values, dtype=like.dtype).to(like.device, non_blocking=True)
    if out.numel() != 3:
        raise ValueError(f"color_jitter: {name} must hold 3 values (one per channel), got {out.numel()}")
    return out.view(1, 3, 1, 1)


def color_jitter(
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    strength: float = 0.2,
    p: float = 0.8,
    generator: torch.Generator | None = None,
    per_image: bool = True,
) -> Tensor:
    """DACS colour jitter with kornia 0.5's ``ColorJitter(s, s, s, s)`` semantics, batched.

    DACS (Tranheden et al., WACV 2021, implementation details: colour jittering and Gaussian blurring of the mixed images);
    DAFormer (Hoyer et al., CVPR 2022, Sec. 4.1: strength 0.2). Reference: lhoyer/DAFormer
    ``mmseg/models/utils/dacs_transforms.py`` (``color_jitter``); its config's ``color_jitter_probability: 0.2``
    is a threshold (``u > 0.2`` applies the jitter), i.e. the jitter is applied with probability 0.8 = ``p``.

    Per applied image, on the de-normalised image ``x = images * std + mean`` in [0, 1], in this order (each
    step clamps to [0, 1]):

    1. brightness, additive: ``x + (b - 1)``, ``b ~ U[max(0, 1 - s), 1 + s]``;
    2. contrast, multiplicative without a grey mean: ``x * c``, ``c ~ U[max(0, 1 - s), 1 + s]``;
    3. saturation: HSV saturation times ``f ~ U[max(0, 1 - s), 1 + s]``;
    4. hue: HSV hue shifted by ``h ~ U[-s, s]`` of a turn (kornia: ``h * 2 pi`` radians), modulo one turn;

    then re-normalised. Images not drawn are returned unchanged (bit for bit).

    Args:
        images: ``(B, 3, H, W)`` float images normalised with ``mean`` / ``std``.
        mean: per-channel normalisation mean, for pixels scaled to [0, 1] (3 values or a tensor of 3).
        std: per-channel normalisation std, for pixels scaled to [0, 1].
        strength: jitter strength ``s`` (brightness, contrast, saturation and hue alike); hue needs ``s <= 0.5``.
        p: probability that an image is jittered.
        generator: random generator (draws on its device, then moved to the images' device).
        per_image: draw the apply decision per image (``False``: once for the batch, as the reference).

    Returns:
        ``(B, 3, H, W)`` normalised images, dtype and device of ``images``.
    """
    _check_images("color_jitter", images)
    _check_probability("color_jitter", "p", p)
    if not 0.0 <= strength <= 0.5:
        raise ValueError(f"color_jitter: strength must be in [0, 0.5] (the hue range), got {strength}")
    x = _working(images)
    m, s = _as_channels(mean, x, "mean"), _as_channels(std, x, "std")
    b = x.shape[0]
    u = _uniform((b, 5), generator, x.device).to(x.dtype)
    apply = u[:, 0] < p if per_image else (u[:1, 0] < p).expand(b)
    low = max(0.0, 1.0 - strength)
    factors = low + u[:, 1:4] * (1.0 + strength - low)
    hue_shift = (u[:, 4] * 2.0 - 1.0) * strength
    brightness, contrast, saturation = (f.view(b, 1, 1, 1) for f in factors.unbind(dim=1))

    # no clamp before the first operation: kornia's brightness step is the first clamp
    rgb = (x * s + m + (brightness - 1.0)).clamp(0.0, 1.0)
    rgb = (rgb * contrast).clamp(0.0, 1.0)
    hsv = _rgb_to_hsv(rgb)
    hue, sat, value = hsv.unbind(dim=1)
    sat = (sat * saturation.view(b, 1, 1)).clamp(0.0, 1.0)
    hue = torch.remainder(hue + hue_shift.view(b, 1, 1), 1.0)
    rgb = _hsv_to_rgb(torch.stack((hue, sat, value), dim=1)).clamp(0.0, 1.0)
    jittered = ((rgb - m) / s).to(images.dtype)
    return torch.where(apply.view(b, 1, 1, 1), jittered, images)


def blur_kernel_size(side: int, kernel_ratio: float = 0.1) -> int:
    """The reference's kernel size along one axis: ``n = ceil(kernel_ratio * side)``, then ``n - 1`` if even.

    ``floor(ceil(0.1 * side) - 0.5 + ceil(0.1 * side) % 2)`` in ``dacs_transforms.py`` is ``n`` for odd ``n``
    and ``n - 1`` for even ``n``: the odd number nearest ``n`` from below (512 -> 51, 1024 -> 103).
    """
    n = math.ceil(kernel_ratio * side)
    return max(1, n if n % 2 == 1 else n - 1)


def _gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """``(B, size)`` normalised 1-D Gaussian kernels, centred on tap ``size // 2``."""
    taps = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - size // 2
    weights = torch.exp(-(taps**2) / (2.0 * sigma.view(-1, 1) ** 2))
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(
    images: Tensor,
    p: float = 0.5,
    sigma_range: tuple[float, float] = (0.15, 1.15),
    kernel_ratio: float = 0.1,
    generator: torch.Generator | None = None,
    per_image: bool = True,
) -> Tensor:
    """DACS Gaussian blur with a random sigma per image, as one grouped separable convolution.

    DACS (Tranheden et al., WACV 2021, implementation details); reference: lhoyer/DAFormer
    ``mmseg/models/utils/dacs_transforms.py`` (``gaussian_blur``: applied when ``u > 0.5``, i.e. ``p = 0.5``,
    ``sigma ~ U(0.15, 1.15)``, kornia ``GaussianBlur2d`` with reflect borders). The kernel is ``ky x kx`` with
    ``ky = blur_kernel_size(H)`` and ``kx = blur_kernel_size(W)`` as in the reference (both axes use the same
    sigma); taps ``exp(-d^2 / (2 sigma^2))`` normalised to sum 1. Images not drawn are returned unchanged.

    Args:
        images: ``(B, C, H, W)`` float images (normalised or not: the blur is linear and sums to one).
        p: probability that an image is blurred.
        sigma_range: ``(low, high)`` of the uniform sigma draw, ``0 < low <= high``.
        kernel_ratio: kernel side as a fraction of the image side (before rounding to odd).
        generator: random generator (draws on its device, then moved to the images' device).
        per_image: draw the apply decision per image (``False``: once for the batch, as the reference).

    Returns:
        ``(B, C, H, W)`` images, dtype and device of ``images``.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"gaussian_blur: images must be float (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    _check_probability("gaussian_blur", "p", p)
    low, high = sigma_range
    if not 0.0 < low <= high:
        raise ValueError(
            f"gaussian_blur: sigma_range must be (low, high) with 0 < low <= high, got {sigma_range}"
        )
    if kernel_ratio <= 0:
        raise ValueError(f"gaussian_blur: kernel_ratio must be > 0, got {kernel_ratio}")
    b, c, h, w = images.shape
    u = _uniform((b, 2), generator, images.device)
    apply = u[:, 0] < p if per_image else (u[:1, 0] < p).expand(b)
    ky, kx = blur_kernel_size(h, kernel_ratio), blur_kernel_size(w, kernel_ratio)
    if ky == 1 and kx == 1:
        return images  # a one-tap normalised kernel is the identity
    x = _working(images)
    sigma = (low + u[:, 1] * (high - low)).to(x.dtype)
    # one group per (image, channel): the image's kernel repeated over its channels
    flat = x.reshape(1, b * c, h, w)
    if ky > 1:
        weight = _gaussian_kernels(sigma, ky).repeat_interleave(c, dim=0).view(b * c, 1, ky, 1)
        flat = F.conv2d(F.pad(flat, (0, 0, ky // 2, ky // 2), mode="reflect"), weight, groups=b * c)
    if kx > 1:
        weight = _gaussian_kernels(sigma, kx).repeat_interleave(c, dim=0).view(b * c, 1, 1, kx)
        flat = F.conv2d(F.pad(flat, (kx // 2, kx // 2, 0, 0), mode="reflect"), weight, groups=b * c)
    blurred = flat.view(b, c, h, w).to(images.dtype)
    return torch.where(apply.view(b, 1, 1, 1), blurred, images)


def strong_augment(
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    *,
    jitter_strength: float = 0.2,
    jitter_p: float = 0.8,
    blur_p: float = 0.5,
    generator: torch.Generator | None = None,
    per_image: bool = True,
) -> Tensor:
    """DACS strong augmentation of the mixed images: :func:`color_jitter`, then :func:`gaussian_blur`.

    The order of ``strong_transform`` in lhoyer/DAFormer ``mmseg/models/utils/dacs_transforms.py`` (after the
    ClassMix of :mod:`wsss_lightning.methods.daformer.classmix`); labels and weights are not augmented.

    Args:
        images: ``(B, 3, H, W)`` float images normalised with ``mean`` / ``std``.
        mean: per-channel normalisation mean for [0, 1] pixels.
        std: per-channel normalisation std for [0, 1] pixels.
        jitter_strength: colour jitter strength ``s`` (DAFormer: 0.2).
        jitter_p: probability of the colour jitter (DAFormer: 0.8).
        blur_p: probability of the blur (DAFormer: 0.5).
        generator: random generator of both draws.
        per_image: apply decisions per image (``False``: once per batch, as the reference).

    Returns:
        ``(B, 3, H, W)`` normalised images, dtype and device of ``images``.
    """
    out = color_jitter(images, mean, std, jitter_strength, jitter_p, generator=generator, per_image=per_image)
    return gaussian_blur(out, blur_p, generator=generator, per_image=per_image)
