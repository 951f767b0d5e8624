"""The float32 parts of the losses give their float32 result under bfloat16 autocast."""

from __future__ import annotations

import torch

from wsss_lightning.losses.affinity import affinity_loss
from wsss_lightning.losses.dense_crf import dense_crf_loss
from wsss_lightning.methods.dupl.noise_filter import adaptive_noise_filter
from wsss_lightning.methods.dupl.options import NoiseFilterConfig


def test_dense_crf_loss_is_float32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=gen) * 255
    probs = torch.rand(2, 4, 16, 16, generator=gen).softmax(1).requires_grad_()
    reference = dense_crf_loss(images, probs, kernel="exact")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = dense_crf_loss(images, probs.to(torch.bfloat16), kernel="exact")
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-2, atol=0)  # the input's bf16 rounding only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same_input = dense_crf_loss(images, probs, kernel="exact")
    torch.testing.assert_close(same_input, reference, rtol=0, atol=0)


def test_noise_filter_is_float32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 24, 24), generator=gen)
    maps = torch.cat(
        [torch.rand(2, 24, 12, generator=gen) * 0.2, 2 + torch.rand(2, 24, 12, generator=gen)], -1
    )
    options = NoiseFilterConfig(min_pixels=10, min_gap=0.0)
    reference = adaptive_noise_filter(maps, labels, options)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = adaptive_noise_filter(maps, labels, options)
    assert reference[1].any()
    torch.testing.assert_close(mixed[0], reference[0], rtol=0, atol=0)
    torch.testing.assert_close(mixed[1], reference[1], rtol=0, atol=0)


def test_affinity_loss_is_float32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 36, 36, generator=gen) * 3).requires_grad_()
    labels = torch.randint(0, 2, (2, 36, 36), generator=gen)
    labels[torch.rand(2, 36, 36, generator=gen) < 0.3] = 255
    reference = affinity_loss(logits, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = affinity_loss(logits.to(torch.bfloat16), labels)
        same_input = affinity_loss(logits, labels)
    assert mixed.dtype == same_input.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-2, atol=0)  # the input's bf16 rounding only
    torch.testing.assert_close(same_input, reference, rtol=0, atol=0)
