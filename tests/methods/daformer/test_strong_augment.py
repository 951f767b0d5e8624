"""DACS colour jitter and Gaussian blur against loop-based NumPy references."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch

from wsss_lightning.methods.daformer.strong_augment import (
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    strong_augment,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _images(seed: int, b: int = 6, h: int = 5, w: int = 7) -> torch.Tensor:
    pixels = torch.rand((b, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (pixels - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float64
    ).view(1, 3, 1, 1)


def _jitter_numpy(images: np.ndarray, u: np.ndarray, s: float, p: float) -> np.ndarray:
    """kornia 0.5 ColorJitter in the fixed order, pixel by pixel with ``colorsys``."""
    mean, std = np.array(MEAN), np.array(STD)
    out = images.copy()
    low = max(0.0, 1.0 - s)
    for i in range(images.shape[0]):
        if not u[i, 0] < p:
            continue
        bright, contrast, sat = (low + u[i, k] * (1.0 + s - low) for k in (1, 2, 3))
        hue_shift = (u[i, 4] * 2.0 - 1.0) * s
        for y in range(images.shape[2]):
            for x in range(images.shape[3]):
                rgb = images[i, :, y, x] * std + mean
                rgb = np.clip(rgb + (bright - 1.0), 0.0, 1.0)
                rgb = np.clip(rgb * contrast, 0.0, 1.0)
                hh, ss, vv = colorsys.rgb_to_hsv(*rgb)
                ss = min(max(ss * sat, 0.0), 1.0)
                hh = (hh + hue_shift) % 1.0
                rgb = np.clip(np.array(colorsys.hsv_to_rgb(hh, ss, vv)), 0.0, 1.0)
                out[i, :, y, x] = (rgb - mean) / std
    return out


@pytest.mark.parametrize("strength", [0.2, 0.5])
def test_color_jitter_matches_numpy(strength: float) -> None:
    images = _images(0)
    u = torch.rand((6, 5), generator=torch.Generator().manual_seed(3), dtype=torch.float32).double().numpy()
    out = color_jitter(images, MEAN, STD, strength, p=0.6, generator=torch.Generator().manual_seed(3))
    expected = _jitter_numpy(images.numpy(), u, strength, 0.6)
    assert out.dtype == torch.float64 and out.shape == images.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    # some images jittered, some left bit for bit
    untouched = [torch.equal(out[i], images[i]) for i in range(6)]
    assert any(untouched) and not all(untouched)


def test_color_jitter_extreme_pixels() -> None:
    """Black, white and grey pixels (zero saturation / value) go through the HSV round trip unharmed."""
    pixels = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0]]).T
    images = (pixels.view(1, 3, 1, 4) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    out = color_jitter(images, MEAN, STD, p=1.0, generator=torch.Generator().manual_seed(0))
    u = torch.rand((1, 5), generator=torch.Generator().manual_seed(0)).double().numpy()
    expected = _jitter_numpy(images.double().numpy(), u, 0.2, 1.0)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-5)


def _blur_numpy(images: np.ndarray, u: np.ndarray, p: float, low: float, high: float) -> np.ndarray:
    b, c, h, w = images.shape
    ky, kx = blur_kernel_size(h), blur_kernel_size(w)
    out = images.copy()
    for i in range(b):
        if not u[i, 0] < p:
            continue
        sigma = low + u[i, 1] * (high - low)
        gy = np.exp(-((np.arange(ky) - ky // 2) ** 2) / (2 * sigma**2))
        gx = np.exp(-((np.arange(kx) - kx // 2) ** 2) / (2 * sigma**2))
        kernel = np.outer(gy / gy.sum(), gx / gx.sum())
        for ch in range(c):
            padded = np.pad(images[i, ch], ((ky // 2, ky // 2), (kx // 2, kx // 2)), mode="reflect")
            for y in range(h):
                for x in range(w):
                    out[i, ch, y, x] = (padded[y : y + ky, x : x + kx] * kernel).sum()
    return out


def test_gaussian_blur_matches_numpy() -> None:
    images = _images(1, b=5, h=33, w=47)  # kernels 3 x 5
    u = torch.rand((5, 2), generator=torch.Generator().manual_seed(4)).double().numpy()
    out = gaussian_blur(images, p=0.5, generator=torch.Generator().manual_seed(4))
    expected = _blur_numpy(images.numpy(), u, 0.5, 0.15, 1.15)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)
    untouched = [torch.equal(out[i], images[i]) for i in range(5)]
    assert any(untouched) and not all(untouched)


def test_blur_kernel_size_follows_the_reference_formula() -> None:
    for side in [1, 5, 9, 10, 11, 20, 21, 30, 64, 100, 512, 720, 1024, 1280]:
        n = np.ceil(0.1 * side)
        reference = int(np.floor(n - 0.5 + n % 2))
        assert blur_kernel_size(side) == max(1, reference)
        assert blur_kernel_size(side) % 2 == 1
    assert (blur_kernel_size(512), blur_kernel_size(1024)) == (51, 103)


def test_small_images_are_unchanged_by_blur() -> None:
    images = _images(2, h=9, w=10)  # 1 x 1 kernel
    assert torch.equal(gaussian_blur(images, p=1.0), images)


def test_probability_zero_and_one() -> None:
    images = _images(3, h=24, w=24).float()
    assert torch.equal(color_jitter(images, MEAN, STD, p=0.0), images)
    assert torch.equal(gaussian_blur(images, p=0.0), images)
    jittered = color_jitter(images, MEAN, STD, p=1.0, generator=torch.Generator().manual_seed(0))
    assert all(not torch.equal(jittered[i], images[i]) for i in range(images.shape[0]))


def test_batch_wide_decision() -> None:
    images = _images(4, h=24, w=24).float()
    for seed in range(6):
        out = gaussian_blur(images, p=0.5, generator=torch.Generator().manual_seed(seed), per_image=False)
        changed = {not torch.equal(out[i], images[i]) for i in range(images.shape[0])}
        assert len(changed) == 1


def test_strong_augment_deterministic_and_dtype_preserving() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        images = _images(5, h=32, w=32).to(dtype)
        kwargs = {"jitter_strength": 0.2, "jitter_p": 0.8, "blur_p": 0.5}
        a = strong_augment(images, MEAN, STD, generator=torch.Generator().manual_seed(9), **kwargs)
        b = strong_augment(images, MEAN, STD, generator=torch.Generator().manual_seed(9), **kwargs)
        assert a.dtype == dtype and a.shape == images.shape
        assert torch.equal(a, b)
        assert torch.isfinite(a.float()).all()


def test_strong_augment_is_jitter_then_blur() -> None:
    images = _images(6, h=32, w=32)
    g = torch.Generator().manual_seed(2)
    expected = gaussian_blur(color_jitter(images, MEAN, STD, generator=g), generator=g)
    out = strong_augment(images, MEAN, STD, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, expected)


def test_bad_arguments() -> None:
    images = _images(0)
    with pytest.raises(ValueError, match="p must be in"):
        color_jitter(images, MEAN, STD, p=1.5)
    with pytest.raises(ValueError, match="strength"):
        color_jitter(images, MEAN, STD, strength=0.7)
    with pytest.raises(ValueError, match="mean must hold 3"):
        color_jitter(images, (0.5, 0.5), STD)
    with pytest.raises(ValueError, match="images must be float"):
        color_jitter(images[:, :2], MEAN, STD)
    with pytest.raises(ValueError, match="sigma_range"):
        gaussian_blur(images, sigma_range=(0.0, 1.0))
    assert math.isfinite(float(gaussian_blur(images).sum()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host syncs")
def test_cuda_matches_cpu_without_host_sync() -> None:
    images = _images(7, h=40, w=56)  # float64: no TF32 in the CUDA convolution
    expected = strong_augment(images, MEAN, STD, generator=torch.Generator().manual_seed(5))
    cuda_images = images.cuda()
    mean, std = torch.tensor(MEAN).cuda(), torch.tensor(STD).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = strong_augment(cuda_images, MEAN, STD, generator=torch.Generator().manual_seed(5))
        strong_augment(cuda_images.half(), mean, std, generator=torch.Generator("cuda").manual_seed(5))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    np.testing.assert_allclose(out.cpu().numpy(), expected.numpy(), atol=1e-9)
