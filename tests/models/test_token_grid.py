"""Token positions on the input image, and resampling between token maps and pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsss_lightning.methods.asdt.network import ASDTNetwork
from wsss_lightning.models.afa import AFANetwork
from wsss_lightning.models.resize import resize
from wsss_lightning.models.token_grid import TokenGrid, pixels_to_tokens, tokens_to_pixels
from wsss_lightning.pseudo_labels.cam import multiscale_cams

TINY_MIT = {"embed_dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}


@pytest.mark.parametrize("stride", [16, 8])
@pytest.mark.parametrize("size", [(128, 96), (64, 48), (200, 150), (100, 75)])
def test_cell_centres_are_the_plain_bilinear_resize(stride: int, size: tuple[int, int]) -> None:
    tokens = torch.randn(2, 3, 8, 6)
    grid = TokenGrid.cell_centres(stride)
    input_size = (8 * stride, 6 * stride)
    torch.testing.assert_close(tokens_to_pixels(tokens, size, input_size, grid), resize(tokens, size))
    pixels = torch.randn(2, 3, *input_size)
    torch.testing.assert_close(pixels_to_tokens(pixels, (8, 6), input_size, grid), resize(pixels, (8, 6)))
    # None is that resize too
    torch.testing.assert_close(tokens_to_pixels(tokens, size, input_size, None), resize(tokens, size))


def test_padded_convolution_tokens_sit_on_stride_multiples() -> None:
    grid = TokenGrid(16.0)
    delta = torch.zeros(1, 1, 8, 8)
    delta[0, 0, 3, 5] = 1.0
    up = tokens_to_pixels(delta, (128, 128), (128, 128), grid)
    assert divmod(int(up.argmax()), 128) == (48, 80)
    assert float(up[0, 0, 48, 80]) == pytest.approx(1.0)
    # sampling the pixels back at the tokens is exact on the stride multiples
    image = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(pixels_to_tokens(image, (8, 8), (128, 128), grid), image[..., ::16, ::16])
    # a network run on the image resized to 192 px: a token map that reads the resized image at 16 c comes back
    # onto the 128-px image where that image's content is
    ramp = torch.arange(128.0).expand(1, 1, 128, 128)
    seen = F.interpolate(ramp, size=(192, 192), mode="bilinear")[..., ::16, ::16]
    back = tokens_to_pixels(seen, (128, 128), (192, 192), grid)
    torch.testing.assert_close(back[0, 0, 5, 16:100], ramp[0, 0, 5, 16:100], atol=1e-4, rtol=0)


def test_a_bf16_map_is_sampled_at_float32_positions() -> None:
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32)
    for maps in (ramp, ramp.transpose(-1, -2)):
        low = tokens_to_pixels(maps.bfloat16(), (512, 512), (768, 768), TokenGrid(24.0))
        high = tokens_to_pixels(maps.bfloat16().float(), (512, 512), (768, 768), TokenGrid(24.0))
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low, high.bfloat16(), atol=0, rtol=0)


def test_mit_tokens_are_centred_where_the_network_says() -> None:
    """The gradient of an interior last-stage token reaches the input around ``16 c``, not ``16 c + 7.5``."""
    torch.manual_seed(0)
    net = AFANetwork(
        21, encoder="mit_b0", encoder_kwargs=TINY_MIT, attention_blocks=1, embed_dim=32, drop_path_rate=0.0
    ).eval()
    grid = net.token_grid
    assert grid == TokenGrid(16.0, 0.0)
    image = torch.randn(1, 3, 128, 128, requires_grad=True)
    coords = torch.arange(128.0)
    for r, c in [(3, 3), (4, 4), (3, 4)]:
        (grad,) = torch.autograd.grad(net.encoder(image).features[-1][0, :, r, c].pow(2).sum(), image)
        weight = grad.abs().sum((0, 1))
        row = float((weight.sum(1) * coords).sum() / weight.sum())
        col = float((weight.sum(0) * coords).sum() / weight.sum())
        assert abs(row - (grid.origin + grid.stride * r)) < 2.0, (r, c, row)
        assert abs(col - (grid.origin + grid.stride * c)) < 2.0, (r, c, col)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet38"])
def test_asdt_backbones_tokens_are_centred_where_the_network_says(encoder: str) -> None:
    """ASDT's stride-8 CNNs: an interior token's gradient reaches the input around ``8 c``, not ``8 c + 3.5``."""
    torch.manual_seed(0)
    net = ASDTNetwork(21, encoder=encoder, seg_width=8).eval()
    grid = net.token_grid
    assert grid == TokenGrid(8.0, 0.0)
    image = torch.randn(1, 3, 96, 96, requires_grad=True)
    coords = torch.arange(96.0)
    for r, c in [(5, 5), (6, 5)]:
        (grad,) = torch.autograd.grad(net.features(image)[0, :, r, c].pow(2).sum(), image)
        weight = grad.abs().sum((0, 1))
        row = float((weight.sum(1) * coords).sum() / weight.sum())
        col = float((weight.sum(0) * coords).sum() / weight.sum())
        assert abs(row - grid.stride * r) < 1.0, (encoder, r, row)
        assert abs(col - grid.stride * c) < 1.0, (encoder, c, col)


def _sampler(x: torch.Tensor) -> tuple[torch.Tensor]:
    """A 'network' whose token c reads its input at pixel 16 c (a padded-convolution grid), channel 0."""
    return (x[:, :1, ::16, ::16],)


def test_multiscale_cams_follow_the_token_positions_through_scales_and_flips() -> None:
    image = torch.zeros(1, 3, 128, 128)
    image[:, :, 40:88, 24:72] = 1.0  # a 48-px square, off centre horizontally
    truth = image[0, 0] > 0.5
    inter_union = {}
    for name, tokens in (("positions", TokenGrid(16.0)), ("cell centres", None)):
        (cams,) = multiscale_cams(_sampler, image, (1.0, 0.5, 1.5), tokens=tokens)
        region = cams[0, 0] > 0.5
        inter_union[name] = float((region & truth).sum() / (region | truth).sum())
        ys, xs = region.nonzero().float().unbind(1)
        if tokens is not None:  # symmetric around the square's centre (63.5, 47.5)
            assert abs(float(ys.mean()) - 63.5) < 1.5 and abs(float(xs.mean()) - 47.5) < 1.5
    assert inter_union["positions"] > 0.85
    # the cell-centre resize shifts the map 7.5 px down / right and the flipped view's 7.5 px left
    assert inter_union["cell centres"] < inter_union["positions"] - 0.1


def test_token_grid_rejects_a_non_positive_stride() -> None:
    with pytest.raises(ValueError, match="TokenGrid: stride must be > 0"):
        TokenGrid(0.0)
    with pytest.raises(ValueError, match="tokens_to_pixels: expected two positive sides"):
        tokens_to_pixels(torch.zeros(1, 1, 2, 2), (0, 4), (32, 32), TokenGrid(16.0))
