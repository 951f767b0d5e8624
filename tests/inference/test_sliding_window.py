from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from wsss_lightning.inference import sliding_window_logits, window_starts


@pytest.fixture
def conv1x1() -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(3, 5, kernel_size=1).eval()


def test_window_starts_cover_border() -> None:
    # U2PL's Cityscapes protocol: 1024 x 2048, window 769, stride 513 -> 2 x 4 windows, last flush.
    assert window_starts(1024, 769, 513) == [0, 255]
    assert window_starts(2048, 769, 513) == [0, 513, 1026, 1279]
    assert window_starts(10, 10, 3) == [0]
    assert window_starts(12, 4, 4) == [0, 4, 8]


@torch.no_grad()
@pytest.mark.parametrize(
    ("size", "window", "stride"),
    [((20, 28), 8, 6), ((17, 23), (8, 10), (5, 7)), ((5, 6), 8, 4), ((5, 30), 8, 6)],
    ids=["divisible-overlap", "non-divisible", "smaller-than-window", "smaller-in-one-axis"],
)
def test_equals_full_image_forward(conv1x1: nn.Conv2d, size, window, stride) -> None:
    images = torch.randn(2, 3, *size)
    out = sliding_window_logits(conv1x1, images, num_classes=5, window=window, stride=stride)
    assert out.shape == (2, 5, *size)
    torch.testing.assert_close(out, conv1x1(images))


@torch.no_grad()
def test_max_batch_and_low_resolution_logits() -> None:
    def stride2(x: Tensor) -> Tensor:
        # A constant output per window, at half resolution: resizing keeps it exact.
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 2, x.shape[2] // 2, x.shape[3] // 2)

    images = torch.randn(3, 3, 16, 16)
    a = sliding_window_logits(stride2, images, num_classes=2, window=8, stride=8)
    b = sliding_window_logits(stride2, images, num_classes=2, window=8, stride=8, max_batch=5)
    torch.testing.assert_close(a, b)
    # Non-overlapping windows: every 8x8 block holds that block's mean.
    torch.testing.assert_close(a[1, 0, 8:, :8], images[1, :, 8:, :8].mean().expand(8, 8))


def test_rejects_wrong_channel_count(conv1x1: nn.Conv2d) -> None:
    with pytest.raises(ValueError, match="C=3"):
        sliding_window_logits(conv1x1, torch.randn(1, 3, 8, 8), num_classes=3, window=4, stride=4)
