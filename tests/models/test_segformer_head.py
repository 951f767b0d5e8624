from __future__ import annotations

import pytest
import torch

from wsss_lightning.models.segformer_head import SegFormerHead

CHANNELS = [16, 32, 64, 128]


def _features(size: tuple[int, int], last: int = 32) -> list[torch.Tensor]:
    reductions = [4, 8, 16, last]
    return [
        torch.randn(2, c, -(-size[0] // r), -(-size[1] // r))
        for c, r in zip(CHANNELS, reductions, strict=True)
    ]


@pytest.mark.parametrize(("size", "last"), [((64, 64), 32), ((64, 96), 16), ((48, 80), 32)])
def test_output_shapes(size, last):
    head = SegFormerHead(CHANNELS, num_classes=5, embed_dim=24)
    logits, fused = head(_features(size, last))
    assert logits.shape == (2, 5, size[0] // 4, size[1] // 4)
    assert fused.shape == (2, 24, size[0] // 4, size[1] // 4)


def test_gradient_reaches_every_parameter_and_stage():
    head = SegFormerHead(CHANNELS, num_classes=3, embed_dim=8, dropout=0.0)
    features = [f.requires_grad_() for f in _features((32, 32))]
    logits, _ = head(features)
    logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(f.grad.abs().sum() > 0 for f in features)


def test_concatenation_is_deepest_first():
    head = SegFormerHead(CHANNELS, num_classes=2, embed_dim=4).eval()
    features = _features((32, 32))
    with torch.no_grad():
        head.fuse[0].weight.zero_()
        head.fuse[0].weight[:, :4] = torch.eye(4)[:, :, None, None]  # pass the first block of 4E through
        _, fused = head(features)
        c4 = head.projections[3](features[3])  # a 1×1 map at 1/32 of a 32×32 image: constant after upsampling
        bn = head.fuse[1]
        expected = torch.relu(
            (c4 - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var + bn.eps)[:, None, None]
        )
    torch.testing.assert_close(fused, expected.expand_as(fused))


def test_bad_arguments():
    with pytest.raises(ValueError, match="in_channels"):
        SegFormerHead([16, 32, 64], num_classes=2)
    with pytest.raises(ValueError, match="dropout"):
        SegFormerHead(CHANNELS, num_classes=2, dropout=1.0)
    with pytest.raises(ValueError, match="4 stage maps"):
        SegFormerHead(CHANNELS, num_classes=2)(_features((32, 32))[:3])
