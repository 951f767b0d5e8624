from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import NoSyncMode, forbid_host_reads
from wsss_lightning.models.par import PAR, neighbour_offsets


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _offsets(dilations):
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _reference_kernel(image: np.ndarray, dilations, w1: float, w2: float) -> np.ndarray:
    """Per-pixel loops; the replicate border is an index clamp. image (B, 3, H, W) -> (B, N, H, W)."""
    b_, _, h, w = image.shape
    offsets = _offsets(dilations)
    dist = np.array([np.hypot(dy, dx) for dy, dx in offsets])
    pos = _softmax(-((dist / (dist.std(ddof=1) + 1e-8) / w1) ** 2), 0)
    kappa = np.zeros((b_, len(offsets), h, w))
    for b in range(b_):
        for y in range(h):
            for x in range(w):
                centre = image[b, :, y, x]
                nb = np.stack(
                    [
                        image[b, :, min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)]
                        for dy, dx in offsets
                    ]
                )  # (N, 3)
                sigma = nb.std(axis=0, ddof=1)  # per channel, over the neighbours
                a = -(((np.abs(nb - centre) / (sigma + 1e-8)) / w1) ** 2).mean(axis=1)
                kappa[b, :, y, x] = _softmax(a, 0) + w2 * pos
    return kappa


def _reference_refine(masks: np.ndarray, kappa: np.ndarray, dilations, num_iter: int) -> np.ndarray:
    """Neighbours gathered per dilation from an edge-mode np.pad, as the original implementation does."""
    h, w = masks.shape[-2:]
    for _ in range(num_iter):
        gathered = []
        for d in dilations:
            padded = np.pad(masks, ((0, 0), (0, 0), (d, d), (d, d)), mode="edge")
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if dy or dx:
                        gathered.append(
                            padded[:, :, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]
                        )
        masks = np.einsum("bknhw,bnhw->bkhw", np.stack(gathered, 2), kappa)
    return masks


def _resize_align_corners(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with align_corners=True, (B, K, h, w) -> (B, K, H, W)."""
    h, w = x.shape[-2:]
    out_h, out_w = size
    ys = np.arange(out_h) * (h - 1) / (out_h - 1)
    xs = np.arange(out_w) * (w - 1) / (out_w - 1)
    y0 = np.minimum(np.floor(ys).astype(int), h - 2)
    x0 = np.minimum(np.floor(xs).astype(int), w - 2)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    top = x[..., y0, :][..., x0] * (1 - fx) + x[..., y0, :][..., x0 + 1] * fx
    bottom = x[..., y0 + 1, :][..., x0] * (1 - fx) + x[..., y0 + 1, :][..., x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("dilations", [(1, 2, 4), (1, 3, 16)])  # 16 exceeds the 12x14 image
def test_matches_numpy_reference(dilations):
    rng = np.random.default_rng(0)
    image = rng.random((2, 3, 12, 14))
    image[0, :, :6] = 0.5  # a flat region: σ = 0 there, only the 1e-8 guard keeps it finite
    masks = rng.random((2, 3, 7, 8))
    par = PAR(dilations=dilations, num_iter=3, w1=0.3, w2=0.01)

    kappa = _reference_kernel(image, dilations, 0.3, 0.01)
    expected = _reference_refine(_resize_align_corners(masks, (12, 14)), kappa, dilations, 3)

    with torch.no_grad():
        got_kernel = par.kernel(torch.from_numpy(image))
        got = par(torch.from_numpy(image), torch.from_numpy(masks))
    assert got_kernel.dtype == got.dtype == torch.float64
    np.testing.assert_allclose(got_kernel.numpy(), kappa, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)


def test_neighbour_layout_follows_offsets():
    # Kernel entry j belongs to neighbour_offsets[j]: a lone bright pixel is the dissimilar neighbour
    # exactly at the offset pointing at it.
    par = PAR(dilations=(1, 3), num_iter=1)
    image = torch.zeros(1, 3, 9, 9, dtype=torch.float64)
    image[0, :, 4 + 3, 4 - 3] = 1.0  # at offset (3, -3) from the centre pixel (4, 4)
    kappa = par.kernel(image)[0, :, 4, 4]
    assert neighbour_offsets((1, 3))[int(kappa.argmin())] == (3, -3)


def test_batched_equals_per_image_loop():
    torch.manual_seed(0)
    par = PAR()  # default dilations, largest (24) beyond the 16x18 image
    images = torch.rand(3, 3, 16, 18)
    masks = torch.rand(3, 4, 8, 9)
    with torch.no_grad():
        batched = par(images, masks)
        looped = torch.cat([par(images[i : i + 1], masks[i : i + 1]) for i in range(3)])
    assert batched.shape == (3, 4, 16, 18)
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-6)


@pytest.mark.parametrize("w2", [0.01, 0.5])
def test_kernel_rows_sum_to_one_plus_w2(w2):
    torch.manual_seed(1)
    kappa = PAR(w2=w2).kernel(torch.rand(2, 3, 10, 11, dtype=torch.float64))
    assert kappa.shape == (2, 48, 10, 11)
    assert (kappa > 0).all()
    torch.testing.assert_close(kappa.sum(1), torch.full((2, 10, 11), 1 + w2, dtype=torch.float64))


def test_flat_image_gives_uniform_appearance_plus_position_term():
    par = PAR(dilations=(1, 2), w2=0.1)
    kappa = par.kernel(torch.full((1, 3, 5, 6), 0.3, dtype=torch.float64))
    dist = torch.tensor([1.0, 2.0], dtype=torch.float64).repeat_interleave(8)
    dist[[0, 2, 5, 7, 8, 10, 13, 15]] *= 2**0.5  # diagonal neighbours
    pos = torch.softmax(-((dist / (dist.std() + 1e-8) / 0.3) ** 2), 0)
    expected = 1 / 16 + 0.1 * pos
    torch.testing.assert_close(kappa, expected.view(1, 16, 1, 1).expand(1, 16, 5, 6))
    assert pos[1] > pos[0] > pos[9] > pos[8]  # nearer neighbours weigh more


def test_constant_masks_grow_by_one_plus_w2_per_iteration():
    # Rows of κ sum to 1 + w2 and the replicate border keeps a constant map constant, so each iteration
    # multiplies it by exactly 1 + w2 whatever the image.
    torch.manual_seed(2)
    par = PAR(num_iter=4, w2=0.01)
    image = torch.rand(2, 3, 13, 15, dtype=torch.float64)
    levels = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    masks = levels.expand(2, 3, 13, 15)
    refined = par.refine(masks, par.kernel(image))
    torch.testing.assert_close(refined, masks * 1.01**4)


def test_refinement_snaps_a_misaligned_mask_to_colour_regions():
    # Two flat colour regions split along a staircase boundary; the mask is a blurred, shifted copy at half
    # resolution. PAR should move the mask's boundary onto the colour edge.
    g = torch.Generator().manual_seed(3)
    h = w = 48
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    truth = (xx >= 20 + (yy // 8) * 2).long()  # 1 = right region
    colours = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.3, 0.9]])
    image = colours[truth].permute(2, 0, 1)[None] + 0.02 * torch.randn(1, 3, h, w, generator=g)
    image = image.clamp(0, 1)
    shifted = (xx >= 26 + (yy // 8) * 2).float()  # boundary 6 px to the right of the truth
    fg = torch.nn.functional.avg_pool2d(shifted[None, None], 7, stride=1, padding=3, count_include_pad=False)
    masks = torch.cat([1 - fg, fg], 1)[:, :, ::2, ::2]  # (1, 2, 24, 24), probability-like
    par = PAR()
    before = torch.nn.functional.interpolate(masks, size=(h, w), mode="bilinear", align_corners=True)
    with torch.no_grad():
        after = par(image, masks)
    acc_before = (before.argmax(1)[0] == truth).float().mean()
    acc_after = (after.argmax(1)[0] == truth).float().mean()
    assert acc_before < 0.9
    assert acc_after > 0.99


def test_dtypes_follow_the_input_and_half_precision_stays_finite():
    par = PAR(dilations=(1, 2), num_iter=2)
    image = torch.full((1, 3, 6, 7), 0.5, dtype=torch.float16)  # σ = 0 everywhere: 1e-8 underflows in fp16
    kappa = par.kernel(image)
    assert kappa.dtype == torch.float16
    assert torch.isfinite(kappa).all()
    out = par(image.float(), torch.rand(1, 2, 3, 4))
    assert out.dtype == torch.float32


def test_position_term_is_not_checkpointed():
    assert "pos_softmax" not in PAR().state_dict()


def test_zero_iterations_only_resizes():
    masks = torch.rand(1, 2, 4, 5)
    out = PAR(num_iter=0)(torch.rand(1, 3, 7, 9), masks)
    expected = torch.nn.functional.interpolate(masks, size=(7, 9), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p: p.kernel(torch.rand(1, 4, 8, 8)), "image must have shape"),
        (lambda p: p.kernel(torch.rand(3, 8, 8)), "image must have shape"),
        (lambda p: p.kernel(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)), "floating-point"),
        (lambda p: p.refine(torch.rand(1, 2, 8, 9), torch.rand(1, 16, 8, 8)), "spatial size"),
        (lambda p: p.refine(torch.rand(2, 2, 8, 8), torch.rand(1, 16, 8, 8)), "batch size"),
        (
            lambda p: p.refine(torch.rand(1, 2, 8, 8), torch.rand(1, 48, 8, 8)),
            r"kernel must have shape \(B, 16",
        ),
        (lambda p: p.refine(torch.rand(2, 8, 8), torch.rand(1, 16, 8, 8)), "masks must have shape"),
        (lambda p: p.refine(torch.ones(1, 2, 8, 8, dtype=torch.long), torch.rand(1, 16, 8, 8)), "floating"),
        (lambda p: p(torch.rand(2, 3, 8, 8), torch.rand(1, 2, 4, 4)), "masks must have shape"),
        (lambda p: p(torch.rand(1, 1, 8, 8), torch.rand(1, 2, 4, 4)), "image must have shape"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(PAR(dilations=(1, 2)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dilations": ()}, "dilations"),
        ({"dilations": (1, 0)}, "dilations"),
        ({"num_iter": -1}, "num_iter"),
        ({"w1": 0.0}, "w1"),
        ({"w2": -0.1}, "w2"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PAR(**kwargs)


def _padded_stacks(generator: torch.Generator) -> torch.Tensor:
    """(3, 9, 16, 18) softmax stacks like ``par_pseudo_labels``'s: three stacks of 3 channels, per image
    zero channels where it has fewer classes (image 0: none, 1: the last of each stack, 2: two of each)."""
    logits = torch.rand(3, 9, 16, 18, generator=generator)
    absent = torch.zeros(3, 9, dtype=torch.bool)
    absent[1, 2::3] = True
    absent[2, 1::3] = absent[2, 2::3] = True
    logits = logits.masked_fill(absent[:, :, None, None], -torch.inf)
    return torch.cat([s.softmax(1) for s in logits.split(3, 1)], 1)


@pytest.mark.parametrize(
    "cache_bytes", [0, 40_000, PAR.cpu_cache_bytes]
)  # 1 image, 1 channel per pass .. all
def test_cpu_chunks_equal_the_batched_strategy(monkeypatch, cache_bytes):
    # The CPU strategy (image chunks, channel groups, zero channels skipped) against the accelerator one
    # (everything in one pass) run on the CPU, through forward, kernel and refine.
    g = torch.Generator().manual_seed(4)
    images = torch.rand(3, 3, 16, 18, generator=g)
    masks = _padded_stacks(g)
    par = PAR()
    monkeypatch.setattr(par, "cpu_cache_bytes", cache_bytes)
    with torch.no_grad():
        kernel, refined, out = par.kernel(images), par.refine(masks, par.kernel(images)), par(images, masks)
        monkeypatch.setattr(par, "chunk_on_cpu", False)
        expected_kernel = par.kernel(images)
        expected = par.refine(masks, expected_kernel)
        looped = torch.cat([par(images[i : i + 1], masks[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(kernel, expected_kernel, rtol=0, atol=1e-7)
    torch.testing.assert_close(refined, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, looped, rtol=0, atol=1e-6)
    assert (out[1, 2::3] == 0).all() and (out[2, 1::3] == 0).all()


def test_cpu_chunk_sizes_follow_the_cache_budget(monkeypatch):
    par = PAR()  # 224x224 float32: a kernel chunk ~3.3 MB per image, a refined channel ~0.5 MB
    shape = (4, 4, 224, 224)
    assert par._kernel_chunk(shape, 4) == 1
    assert par._refine_chunk(shape, 4, 4) == 1
    assert par._channel_group(shape, 4) == 8
    assert par._refine_chunk((16, 4, 16, 18), 4, 4) >= 16  # small images: one chunk
    monkeypatch.setattr(par, "cpu_cache_bytes", 0)
    assert par._kernel_chunk(shape, 4) == par._refine_chunk(shape, 4, 4) == par._channel_group(shape, 4) == 1


def test_zero_channels_are_not_skipped_when_the_kernel_is_not_finite():
    # Σ_j κ_ij · 0 is NaN where κ is: skipping a zero channel must not turn that NaN into 0.
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 16, 18, generator=g)
    images[1, :, 3, 4] = torch.nan
    masks = _padded_stacks(g)[:2]
    par = PAR(num_iter=2)
    par.cpu_cache_bytes = 0  # image by image, so image 1's zero channels would be skipped
    with torch.no_grad():
        out = par(images, masks)
        par.chunk_on_cpu = False
        expected = par(images, masks)
    assert out[1].isnan().any()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6, equal_nan=True)


def test_accelerator_strategy_reads_nothing_on_the_host(monkeypatch):
    # No accelerator here: the accelerator strategy is forced on the CPU, and every host read or
    # data-dependent size raises. The check is checked: the CPU strategy, which reads which channels are 0,
    # trips it.
    g = torch.Generator().manual_seed(6)
    images = torch.rand(3, 3, 16, 18, generator=g)
    masks = _padded_stacks(g)
    par = PAR(num_iter=2)
    for chunked in (False, True):
        par.chunk_on_cpu = chunked
        try:
            with torch.no_grad(), monkeypatch.context() as patch, NoSyncMode():  # type: ignore[no-untyped-call]
                forbid_host_reads(patch)
                par(images, masks)
        except AssertionError as err:
            assert chunked, str(err)
            continue
        assert not chunked, "the sync check did not detect the CPU strategy's host reads"
