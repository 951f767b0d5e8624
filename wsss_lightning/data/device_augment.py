"""Batched colour RandAugment on the images' device (DuPL's strong view).

The reference builds the strong view per image on the CPU: tensor -> PIL -> ``RandAugment(n=5, m=10)`` over the
seven colour operations {AutoContrast, Equalize, Posterize, Color, Contrast, Brightness, Sharpness} -> tensor.
Here the same operations run batched on ``uint8`` tensors, on whatever device the images live on, and only when
the caller needs the strong view.

Magnitudes follow the reference: ``value = (m / 30) * (max - min) + min`` with the ranges Posterize (0, 6) bits
(``int`` of it, at least 1) and (0.1, 1.9) for the four enhancement factors; at ``m = 10`` that is Posterize to
2 bits and factor 0.7. The horizontal flip and the x0.75 resize of DuPL's strong view are not part of this
function.

Agreement with PIL (``ImageOps`` / ``ImageEnhance``, which the reference applies to uint8 images): Equalize,
Posterize and Brightness are ``torchvision.transforms.v2.functional``'s, whose uint8 arithmetic is PIL's.
AutoContrast, Color, Contrast and Sharpness are written here with PIL's arithmetic (integer ITU-R 601 grey level
with rounding, grey mean rounded to an integer, float32 blend with truncation, float64 AutoContrast table,
integer smoothing filter). torchvision's versions of those floor the grey level, keep the mean fractional,
scale in float32 and blend as ``x + (1 - f)(d - x)``: that moves 15-20 % of the pixels by one level, and a
one-level difference ahead of Posterize (64-level steps at 2 bits) or Equalize grows to differences of up to
~160 levels over a 5-operation chain. The tests compare single operations and whole chains with PIL, pixel for
pixel.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = [
    "COLOR_OPS",
    "apply_color_ops",
    "color_op_values",
    "color_randaugment",
    "draw_color_ops",
    "sample_color_ops",
]

#: The operations, in the order of the reference's op list; ``sample_color_ops`` draws indices into it.
COLOR_OPS: tuple[str, ...] = (
    "autocontrast",
    "equalize",
    "posterize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
)


def color_op_values(magnitude: float) -> tuple[int, float]:
    """Posterize bits and enhancement factor for a RandAugment magnitude in [0, 30].

    Args:
        magnitude: the reference's ``m`` (DuPL: 10).

    Returns:
        ``(bits, factor)``: ``max(1, int(m / 30 * 6))`` and ``m / 30 * 1.8 + 0.1``.
    """
    if not 0 <= magnitude <= 30:
        raise ValueError(f"magnitude must be in [0, 30] (the reference's scale), got {magnitude}")
    level = float(magnitude) / 30.0
    bits = max(1, int(level * 6.0))
    factor = level * 1.8 + 0.1
    return bits, factor


def _pil_grey(images: Tensor) -> Tensor:
    """PIL's RGB -> L conversion: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``; ``(B, 1, H, W)`` int32."""
    r, g, b = images.to(torch.int32).unbind(dim=1)
    grey = r.mul(19595).add_(g, alpha=38470).add_(b, alpha=7471).add_(32768)
    return grey.bitwise_right_shift_(16).unsqueeze(1)


def _pil_blend(degenerate: Tensor, images: Tensor, factor: float) -> Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)`` on uint8 data.

    Float32 ``d + factor * (x - d)``, clipped to [0, 255] and truncated (``ImageEnhance`` is this blend with
    an op-specific degenerate image).
    """
    d = degenerate.to(torch.float32)
    # (x - d) * f + d: the same float32 operations as PIL's d + f * (x - d), done in place.
    out = images.to(torch.float32).sub_(d).mul_(torch.tensor(factor, dtype=torch.float32)).add_(d)
    return out.clamp_(0, 255).to(torch.uint8)


def _autocontrast(images: Tensor) -> Tensor:
    """PIL's ``ImageOps.autocontrast`` (no cutoff).

    Per channel, ``int(x * scale + offset)`` in float64 with ``scale = 255 / (hi - lo)``,
    ``offset = -lo * scale``; identity for constant channels.
    """
    b, c = images.shape[:2]
    flat = images.reshape(b, c, -1).to(torch.long)
    lo = flat.amin(dim=-1, keepdim=True).to(torch.float64)
    hi = flat.amax(dim=-1, keepdim=True).to(torch.float64)
    constant = hi <= lo
    # A true division (``255.0 / tensor`` is computed as ``reciprocal * 255``, which rounds differently).
    scale = torch.full_like(hi, 255.0).div_(torch.where(constant, 1.0, hi - lo))
    offset = -lo * scale
    levels = torch.arange(256, device=images.device, dtype=torch.float64)
    lut = (levels * scale + offset).clamp_(0, 255).trunc_()  # (B, C, 256)
    lut = torch.where(constant, levels, lut).to(torch.uint8)
    return lut.gather(-1, flat).view_as(images)


def _color(images: Tensor, factor: float) -> Tensor:
    """PIL's ``ImageEnhance.Color``: blend with the image's grey version."""
    return _pil_blend(_pil_grey(images).expand_as(images), images, factor)


def _contrast(images: Tensor, factor: float) -> Tensor:
    """PIL's ``ImageEnhance.Contrast``: blend with a flat image at the integer-rounded mean grey level."""
    grey = _pil_grey(images)
    count = grey.shape[-2] * grey.shape[-1]
    mean = grey.sum(dim=(-3, -2, -1), keepdim=True, dtype=torch.int64).to(torch.float64) / count
    return _pil_blend((mean + 0.5).floor_().expand_as(images), images, factor)


def _sharpness(images: Tensor, factor: float) -> Tensor:
    """PIL's ``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image.

    The SMOOTH filter is a 3x3 kernel of ones with 5 in the centre, divided by 13 and rounded; border pixels
    are unchanged.
    The filter runs in integer arithmetic: ``S / 13`` is never within 1/26 of a half-integer, so
    ``floor(S / 13 + 1/2)`` equals PIL's float32 result, and unlike a float convolution (TF32 on recent GPUs)
    it is the same on every device.
    """
    h, w = images.shape[-2:]
    if h < 3 or w < 3:
        return images
    # 3x3 box sum as a vertical then a horizontal sum of three; int16 holds 2 * 13 * 255 + 13
    x = images.to(torch.int16)
    rows = x[..., :-2, :] + x[..., 1:-1, :] + x[..., 2:, :]
    total = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]).add_(x[..., 1:-1, 1:-1], alpha=4)
    degenerate = images.clone()
    degenerate[..., 1:-1, 1:-1] = total.mul_(2).add_(13).div_(26, rounding_mode="floor").to(torch.uint8)
    return _pil_blend(degenerate, images, factor)


def _op_functions(magnitude: float) -> list[Callable[[Tensor], Tensor]]:
    bits, factor = color_op_values(magnitude)
    return [
        _autocontrast,
        TF.equalize,
        lambda x: TF.posterize(x, bits),
        lambda x: _color(x, factor),
        lambda x: _contrast(x, factor),
        lambda x: TF.adjust_brightness(x, factor),
        lambda x: _sharpness(x, factor),
    ]


def sample_color_ops(
    batch_size: int,
    num_ops: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw ``num_ops`` operation indices per image, with replacement and independently per image.

    Args:
        batch_size: number of images B.
        num_ops: operations per image (DuPL: 5).
        generator: random generator; the draw happens on its device (then moves to ``device``).
        device: where the result goes (default: the generator's device, else the default device).

    Returns:
        ``(B, num_ops)`` int64 indices into :data:`COLOR_OPS`; row ``b`` is applied left to right.
    """
    if batch_size < 0 or num_ops < 0:
        raise ValueError(f"batch_size and num_ops must be >= 0, got {batch_size} and {num_ops}")
    draw_device = generator.device if generator is not None else device
    ops = torch.randint(
        0, len(COLOR_OPS), (batch_size, num_ops), generator=generator, device=draw_device, dtype=torch.long
    )
    return ops if device is None else ops.to(device, non_blocking=True)


def draw_color_ops(batch_size: int, num_ops: int, rng: random.Random | None = None) -> list[list[int]]:
    """Draw ``num_ops`` operation indices per image on the host, as the reference does.

    The reference's ``RandAugment`` picks each image's operations with Python's ``random.choices``; here too,
    so the draw needs no tensor and the op of every image is known on the host without reading a device
    value.

    Args:
        batch_size: number of images B.
        num_ops: operations per image (DuPL: 5).
        rng: random generator (default: the ``random`` module's, which the per-step seeding re-seeds).

    Returns:
        ``B`` lists of ``num_ops`` indices into :data:`COLOR_OPS`; list ``b`` is applied left to right.
    """
    if batch_size < 0 or num_ops < 0:
        raise ValueError(f"batch_size and num_ops must be >= 0, got {batch_size} and {num_ops}")
    choose = (rng or random).choices
    indices = range(len(COLOR_OPS))
    return [choose(indices, k=num_ops) for _ in range(batch_size)]


def apply_color_ops(images: Tensor, ops: Tensor | Sequence[Sequence[int]], magnitude: float = 10) -> Tensor:
    """Apply per-image sequences of colour operations to a batch of ``uint8`` images.

    With ``ops`` as host lists and the images on the CPU, each round applies every drawn operation once, to
    the images that drew it. Otherwise every operation of a round is evaluated on the whole batch and kept
    where the image drew it (``torch.where``): 7x the arithmetic, but no data-dependent shapes and hence no
    host synchronisation on an accelerator, where the operations are cheap next to a ViT forward. Both give
    the same images: every operation works on each image alone.

    Args:
        images: ``(B, 3, H, W)`` uint8 RGB images.
        ops: ``(B, n)`` integer indices into :data:`COLOR_OPS`, as a tensor (e.g. from
            :func:`sample_color_ops`) or as host lists (:func:`draw_color_ops`).
        magnitude: RandAugment magnitude in [0, 30].

    Returns:
        ``(B, 3, H, W)`` uint8 images.
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if not isinstance(ops, Tensor):
        rounds = {len(row) for row in ops}
        if len(ops) != images.shape[0] or len(rounds) > 1:
            raise ValueError(
                f"ops must be B = {images.shape[0]} lists of the same length, got lengths {[len(r) for r in ops]}"
            )
        if any(not 0 <= k < len(COLOR_OPS) for row in ops for k in row):
            raise ValueError(f"ops must be indices into COLOR_OPS (0..{len(COLOR_OPS) - 1}), got {list(ops)}")
        if images.device.type == "cpu":
            return _apply_grouped(images, ops, _op_functions(magnitude))
        ops = (
            torch.tensor(ops, dtype=torch.long).view(images.shape[0], -1).to(images.device, non_blocking=True)
        )
    if ops.ndim != 2 or ops.shape[0] != images.shape[0]:
        raise ValueError(f"ops must be (B, num_ops) with B = {images.shape[0]}, got {tuple(ops.shape)}")
    functions = _op_functions(magnitude)
    ops = ops.to(images.device)
    out = images
    for r in range(ops.shape[1]):
        chosen = ops[:, r].view(-1, 1, 1, 1)
        current = out
        for k, fn in enumerate(functions):
            out = torch.where(chosen == k, fn(current), out)
    return out


def _apply_grouped(
    images: Tensor, ops: Sequence[Sequence[int]], functions: list[Callable[[Tensor], Tensor]]
) -> Tensor:
    """:func:`apply_color_ops` with host-known ops: per round, each drawn operation on its images only."""
    out = images
    for r in range(len(ops[0]) if ops else 0):
        groups: dict[int, list[int]] = {}
        for b, row in enumerate(ops):
            groups.setdefault(row[r], []).append(b)
        if len(groups) == 1:
            out = functions[next(iter(groups))](out)
            continue
        current, out = out, torch.empty_like(out)
        for k, rows in groups.items():
            index = torch.tensor(rows)
            out.index_copy_(0, index, functions[k](current.index_select(0, index)))
    return out


def color_randaugment(
    images: Tensor,
    num_ops: int = 5,
    magnitude: int = 10,
    generator: torch.Generator | random.Random | None = None,
) -> Tensor:
    """DuPL's strong colour perturbation: RandAugment(n, m) over the seven colour operations, batched.

    The images are quantised to uint8 first (the reference goes through PIL; here with rounding, so images
    that are already ``k / 255`` are reproduced exactly), each image gets its own ``num_ops`` operations drawn
    with replacement, and the result is returned as ``k / 255`` in the input's dtype.

    Args:
        images: ``(B, 3, H, W)`` float RGB images in [0, 1] (before mean/std normalisation).
        num_ops: operations per image (DuPL: 5).
        magnitude: RandAugment magnitude in [0, 30] (DuPL: 10 -> Posterize 2 bits, factors 0.7).
        generator: random generator of the op draw: a ``torch.Generator`` (CPU or on the images' device:
            :func:`sample_color_ops`), or a ``random.Random`` or ``None`` for the host draw of
            :func:`draw_color_ops` (``None``: the ``random`` module's generator).

    Returns:
        ``(B, 3, H, W)`` images in [0, 1], same dtype and device as ``images``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [0, 1], got {images.dtype}")
    ops: Tensor | list[list[int]]
    if isinstance(generator, torch.Generator):
        ops = sample_color_ops(images.shape[0], num_ops, generator=generator, device=images.device)
    else:
        ops = draw_color_ops(images.shape[0], num_ops, generator)
    quantised = images.detach().float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    out = apply_color_ops(quantised, ops, magnitude)
    return out.to(images.dtype).div_(255.0)
