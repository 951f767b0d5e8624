"""AFANetwork's affinity head: its input (AFA's unscaled attention logits) and its initialisation."""

from __future__ import annotations

import pytest
import torch

from wsss_lightning.models.afa import AFANetwork

#: 8 heads in the last stage and 2 captured blocks: the 16 channels of mit_b1's affinity head
ENCODER = {"embed_dims": [8, 16, 16, 64], "depths": [1, 1, 1, 2], "num_heads": [1, 1, 2, 8]}


def _net(seed: int = 0, **kwargs) -> AFANetwork:
    torch.manual_seed(seed)
    return AFANetwork(
        21, encoder="mit_b0", encoder_kwargs=ENCODER, embed_dim=16, drop_path_rate=0.0, **kwargs
    )


def test_released_init_draws_the_affinity_weights_with_std_sqrt_one_third():
    """``kaiming_normal_(a=√5, mode="fan_out")`` on a 1-output 1x1 conv: N(0, 1/3); PyTorch's default: U(±1/4)."""
    with torch.no_grad():
        released = torch.cat([_net(s).affinity_head.weight.flatten() for s in range(20)])
        default = torch.cat(
            [_net(s, affinity_init="pytorch").affinity_head.weight.flatten() for s in range(20)]
        )
    assert released.numel() == default.numel() == 20 * 16
    assert abs(float(released.std()) - 3**-0.5) < 0.06
    assert float(default.abs().max()) <= 0.25 and abs(float(default.std()) - 0.25 / 3**0.5) < 0.02


def test_affinity_head_reads_unscaled_attention_logits_unless_asked():
    x = torch.randn(2, 3, 64, 64)
    unscaled, scaled = _net(scaled_attention=False).eval(), _net(scaled_attention=True).eval()
    scaled.load_state_dict(unscaled.state_dict())
    with torch.no_grad():
        a, b = unscaled.encoder(x).attentions, scaled.encoder(x).attentions
        # the last stage's heads are 64 / 8 = 8 wide: the softmax's scale is 8 ** -0.5
        for raw, soft in zip(a, b, strict=True):
            torch.testing.assert_close(soft, raw * 8**-0.5)
        stacked = torch.cat(a, 1)
        expected = unscaled.affinity_head(stacked + stacked.transpose(-1, -2))[:, 0]
        torch.testing.assert_close(unscaled(x).affinity_logits, expected)


def test_unknown_affinity_init_is_refused():
    with pytest.raises(ValueError, match="affinity_init = 'xavier'"):
        _net(affinity_init="xavier")
