"""The channel arg-maximum equals torch's, ties and NaN included."""

from __future__ import annotations

import pytest
import torch

from wsss_lightning.ops import channel_argmax, channel_max


@pytest.mark.parametrize("shape", [(2, 21, 17, 13), (3, 4, 32, 32), (2, 2, 5), (1, 300, 4, 4), (2, 1, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
def test_channel_argmax_equals_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randint(-3, 4, shape, generator=g).to(dtype)  # few values: many ties
    expected = x.argmax(dim=1)
    assert torch.equal(channel_argmax(x), expected)
    values, indices = channel_max(x)
    torch_values, torch_indices = x.max(dim=1)
    assert torch.equal(indices, torch_indices) and torch.equal(values, torch_values)
    assert indices.dtype == torch.int64


def test_nan_channels_win_as_in_torch() -> None:
    x = torch.randn(2, 5, 4, 4)
    x[0, 3, 1, 1] = float("nan")
    x[0, 1, 1, 1] = float("nan")  # the first NaN channel is the answer
    x[1, 4, 2, 2] = float("nan")
    x[1, :, 3, 3] = float("-inf")
    assert torch.equal(channel_argmax(x), x.argmax(dim=1))
    assert channel_argmax(x)[0, 1, 1] == 1 and channel_argmax(x)[1, 2, 2] == 4
    values, _ = channel_max(x)
    torch.testing.assert_close(values, x.max(dim=1).values, equal_nan=True)


def test_random_maps_and_non_contiguous_input() -> None:
    x = torch.randn(3, 21, 40, 50).transpose(2, 3)
    assert torch.equal(channel_argmax(x), x.argmax(dim=1))
