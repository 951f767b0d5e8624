from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from wsss_lightning.data.device_augment import (
    COLOR_OPS,
    apply_color_ops,
    color_op_values,
    color_randaugment,
    draw_color_ops,
    sample_color_ops,
)


def pil_ops(magnitude: float) -> dict[str, Callable[[Image.Image], Image.Image]]:
    """The reference RandAugment's operations, PIL side."""
    bits, factor = color_op_values(magnitude)
    return {
        "autocontrast": ImageOps.autocontrast,
        "equalize": ImageOps.equalize,
        "posterize": lambda im: ImageOps.posterize(im, bits),
        "color": lambda im: ImageEnhance.Color(im).enhance(factor),
        "contrast": lambda im: ImageEnhance.Contrast(im).enhance(factor),
        "brightness": lambda im: ImageEnhance.Brightness(im).enhance(factor),
        "sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(factor),
    }


def photo_like(seed: int, n: int = 5, h: int = 24, w: int = 30) -> np.ndarray:
    """(n, h, w, 3) uint8 images: smooth colour gradients plus noise, with a limited dynamic range (so that
    AutoContrast / Equalize have something to do), and one image of full-range noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    images = []
    for i in range(n):
        base = rng.uniform(40, 200, size=3)
        slope = rng.uniform(-80, 80, size=(2, 3))
        img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1] + rng.normal(0, 12, size=(h, w, 3))
        if i == n - 1:
            img = rng.uniform(0, 256, size=(h, w, 3))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(images)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def to_numpy(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def pil_apply(image: np.ndarray, ops: list[int], magnitude: float = 10) -> np.ndarray:
    table = pil_ops(magnitude)
    im = Image.fromarray(image)
    for k in ops:
        im = table[COLOR_OPS[k]](im)
    return np.asarray(im)


def test_color_op_values() -> None:
    bits, factor = color_op_values(10)
    assert bits == 2 and factor == pytest.approx(0.7)
    assert color_op_values(30) == (6, pytest.approx(1.9))
    assert color_op_values(0) == (1, pytest.approx(0.1))  # posterize keeps at least one bit
    assert color_op_values(20)[0] == 4
    with pytest.raises(ValueError, match="magnitude"):
        color_op_values(31)


# The operations use PIL's arithmetic, so they agree pixel for pixel (a factor above 1 at magnitude 20 exercises
# the extrapolating blend). torchvision's own AutoContrast / Color / Contrast differ from PIL by one level on
# 1 % / 15 % / 21 % of the pixels of these images.
@pytest.mark.parametrize("magnitude", [10, 20])
@pytest.mark.parametrize("name", COLOR_OPS)
def test_each_op_matches_pil(name: str, magnitude: int) -> None:
    images = photo_like(0)
    k = COLOR_OPS.index(name)
    ours = to_numpy(apply_color_ops(to_tensor(images), torch.full((len(images), 1), k), magnitude))
    ref = np.stack([pil_apply(im, [k], magnitude) for im in images])
    np.testing.assert_array_equal(ours, ref)
    # The op really changed the images (so the comparison is not vacuous).
    assert np.abs(ref.astype(int) - images.astype(int)).mean() > 0.5


@pytest.mark.parametrize("magnitude", [3, 10, 30])
def test_randaugment_matches_pil_pipeline(magnitude: int) -> None:
    # Whole 5-op chains: Posterize / Equalize would turn any one-level slip into large differences.
    images = photo_like(1, n=8)
    x = to_tensor(images).float() / 255
    out = color_randaugment(x, num_ops=5, magnitude=magnitude, generator=torch.Generator().manual_seed(3))
    ops = sample_color_ops(len(images), 5, generator=torch.Generator().manual_seed(3))
    ref = np.stack([pil_apply(im, ops[i].tolist(), magnitude) for i, im in enumerate(images)])
    np.testing.assert_array_equal(np.rint(to_numpy(out) * 255).astype(np.uint8), ref)


def test_batched_equals_per_image() -> None:
    images = to_tensor(photo_like(2, n=6))
    ops = sample_color_ops(6, 5, generator=torch.Generator().manual_seed(0))
    batched = apply_color_ops(images, ops)
    single = torch.cat([apply_color_ops(images[i : i + 1], ops[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, single, rtol=0, atol=0)
    # Each image follows its own sequence: a different op sequence gives a different image.
    assert not torch.equal(batched, apply_color_ops(images, ops.roll(1, dims=0)))


def test_sampling_is_per_image_with_replacement() -> None:
    ops = sample_color_ops(200, 5, generator=torch.Generator().manual_seed(0))
    assert ops.shape == (200, 5) and ops.dtype == torch.long
    assert set(ops.unique().tolist()) == set(range(len(COLOR_OPS)))
    assert len({tuple(r) for r in ops.tolist()}) > 150  # independent rows
    assert any(len(set(r)) < 5 for r in ops.tolist())  # repeats within a row are allowed


def test_determinism_and_output_format() -> None:
    x = to_tensor(photo_like(4)).double() / 255
    a = color_randaugment(x, generator=torch.Generator().manual_seed(7))
    b = color_randaugment(x, generator=torch.Generator().manual_seed(7))
    c = color_randaugment(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float64 and a.device == x.device
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # Values stay on the uint8 grid.
    torch.testing.assert_close(a * 255, (a * 255).round(), rtol=0, atol=1e-9)


def test_no_ops_only_quantises() -> None:
    x = to_tensor(photo_like(5, n=2)).float() / 255
    torch.testing.assert_close(color_randaugment(x, num_ops=0), x, rtol=0, atol=1e-7)
    y = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(color_randaugment(y, num_ops=0), (y * 255).round() / 255, rtol=0, atol=1e-7)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="images"):
        color_randaugment(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="images"):
        color_randaugment(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="ops"):
        apply_color_ops(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    images = to_tensor(photo_like(6, n=4))
    ops = sample_color_ops(4, 5, generator=torch.Generator().manual_seed(1))
    cpu = apply_color_ops(images, ops)
    gpu = apply_color_ops(images.cuda(), ops.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
    # A CPU generator drives the draw for CUDA images too.
    out = color_randaugment(images.cuda().float() / 255, generator=torch.Generator().manual_seed(1))
    assert out.device.type == "cuda"


def test_host_ops_on_cpu_equal_the_batched_selection() -> None:
    """Host-known ops apply each drawn op to its images only; the images equal the ``where`` selection's."""
    images = to_tensor(photo_like(4, n=6))
    ops = draw_color_ops(6, 5, random.Random(0))
    grouped = apply_color_ops(images, ops)
    selected = apply_color_ops(images, torch.tensor(ops))
    torch.testing.assert_close(grouped, selected, rtol=0, atol=0)
    # one op for the whole batch, and single-image batches, take the same path
    same = [[3, 0, 6]] * 6
    torch.testing.assert_close(apply_color_ops(images, same), apply_color_ops(images, torch.tensor(same)))
    single = torch.cat([apply_color_ops(images[i : i + 1], ops[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(grouped, single, rtol=0, atol=0)


def test_host_draw_is_per_image_and_reproducible() -> None:
    ops = draw_color_ops(200, 5, random.Random(1))
    assert len(ops) == 200 and all(len(row) == 5 for row in ops)
    assert {k for row in ops for k in row} == set(range(len(COLOR_OPS)))
    assert len({tuple(row) for row in ops}) > 150
    assert draw_color_ops(200, 5, random.Random(1)) == ops
    random.seed(5)
    a = color_randaugment(to_tensor(photo_like(5, n=3)).float() / 255)
    random.seed(5)
    b = color_randaugment(to_tensor(photo_like(5, n=3)).float() / 255)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_host_ops_are_checked() -> None:
    images = to_tensor(photo_like(6, n=2))
    with pytest.raises(ValueError, match="lists of the same length"):
        apply_color_ops(images, [[1, 2], [3]])
    with pytest.raises(ValueError, match="indices into COLOR_OPS"):
        apply_color_ops(images, [[1, 7], [0, 0]])
