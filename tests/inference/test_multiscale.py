from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from wsss_lightning.inference import multiscale_flip_logits, sliding_window_forward


@pytest.fixture
def conv1x1() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, kernel_size=1).eval()


def constant_images() -> Tensor:
    # Per-channel constant images: resizing changes nothing, so a 1x1 conv is exactly scale-equivariant.
    return torch.randn(2, 3, 1, 1).expand(2, 3, 12, 16).contiguous()


@torch.no_grad()
def test_single_scale_is_plain_forward(conv1x1: nn.Conv2d) -> None:
    images = torch.randn(2, 3, 12, 16)
    torch.testing.assert_close(multiscale_flip_logits(conv1x1, images), conv1x1(images))


@torch.no_grad()
@pytest.mark.parametrize("flip", [False, True])
def test_sum_and_max_over_scales(conv1x1: nn.Conv2d, flip: bool) -> None:
    images = constant_images()
    single = conv1x1(images)
    scales = (1.0, 0.5, 1.5)
    passes = len(scales) * (2 if flip else 1)
    summed = multiscale_flip_logits(conv1x1, images, scales=scales, flip=flip, merge="sum")
    maxed = multiscale_flip_logits(conv1x1, images, scales=scales, flip=flip, merge="max")
    assert summed.shape == single.shape
    torch.testing.assert_close(summed, single * passes)
    torch.testing.assert_close(maxed, single)


@torch.no_grad()
def test_dupl_voc_protocol_flip_sum_scale_max(conv1x1: nn.Conv2d) -> None:
    images = constant_images()
    out = multiscale_flip_logits(
        conv1x1, images, scales=(1.0, 1.25, 1.5), flip=True, merge="max", flip_merge="sum"
    )
    torch.testing.assert_close(out, 2 * conv1x1(images))


def column_ramp_forward(images: Tensor) -> Tensor:
    """Asymmetric forward: channel 0 = mean colour, channel 1 = column index (not flip-equivariant)."""
    columns = torch.arange(images.shape[-1], dtype=images.dtype).expand_as(images[:, 0])
    return torch.stack([images.mean(1), columns], dim=1)


def test_flip_is_undone() -> None:
    images = torch.randn(1, 3, 5, 7)
    out = multiscale_flip_logits(column_ramp_forward, images, flip=True, merge="sum")
    # The flipped pass sees the mirrored image; un-flipping restores its colour layout, so channel 0 is
    # the same map twice, and its column ramp comes back reversed.
    torch.testing.assert_close(out[:, 0], 2 * images.mean(1))
    cols = torch.arange(7, dtype=torch.float32)
    torch.testing.assert_close(out[0, 1, 0], cols + cols.flip(0))


def test_output_size_and_bad_inputs(conv1x1: nn.Conv2d) -> None:
    images = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out = multiscale_flip_logits(conv1x1, images, scales=(1.0, 2.0), output_size=(4, 4))
    assert out.shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="merge"):
        multiscale_flip_logits(conv1x1, images, merge="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="images"):
        multiscale_flip_logits(conv1x1, images[0])


@torch.no_grad()
def test_sliding_window_inside_multiscale(conv1x1: nn.Conv2d) -> None:
    images = torch.randn(2, 3, 20, 28)
    forward = sliding_window_forward(conv1x1, num_classes=4, window=8, stride=6)
    torch.testing.assert_close(
        multiscale_flip_logits(forward, images, flip=True, merge="sum"),
        multiscale_flip_logits(conv1x1, images, flip=True, merge="sum"),
    )
