from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from wsss_lightning.models.daformer import DAFormerNetwork, regularisation_off, stochastic_modules
from wsss_lightning.models.daformer_head import DAFormerHead

CHANNELS = [8, 16, 16, 32]
# the tiny MiT of the AFA CLI tests: one block per stage but two in the last, built and run in milliseconds
TINY = {"embed_dims": CHANNELS, "depths": [1, 1, 1, 2], "num_heads": [1, 1, 2, 2]}


def _features(size: tuple[int, int], batch: int = 2) -> list[torch.Tensor]:
    return [
        torch.randn(batch, c, -(-size[0] // r), -(-size[1] // r))
        for c, r in zip(CHANNELS, (4, 8, 16, 32), strict=True)
    ]


def _network(**kwargs) -> DAFormerNetwork:
    torch.manual_seed(0)
    kwargs.setdefault("encoder_kwargs", TINY)
    kwargs.setdefault("embed_dim", 16)
    kwargs.setdefault("representation_channels", 8)
    return DAFormerNetwork(num_classes=5, **kwargs)


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (50, 70), (33, 47)])
def test_network_shapes(size):
    net = _network()
    out = net(torch.randn(2, 3, *size))
    quarter = (-(-size[0] // 4), -(-size[1] // 4))
    assert set(out) == {"pred", "rep", "bottleneck"}
    assert out["pred"].shape == (2, 5, *quarter)
    assert out["rep"].shape == (2, 8, *quarter)
    assert out["bottleneck"].shape == (2, 32, -(-size[0] // 32), -(-size[1] // 32))
    assert net.encoder_features(torch.zeros(1, 3, *size)).shape[1:] == out["bottleneck"].shape[1:]


def test_rep_only_when_asked_and_built():
    x = torch.randn(2, 3, 64, 64)
    assert set(_network()(x, with_rep=False)) == {"pred", "bottleneck"}
    assert set(_network(representation_channels=None)(x)) == {"pred", "bottleneck"}


def test_encoder_features_are_the_bottleneck():
    net = _network().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(net.encoder_features(x), net(x)["bottleneck"])


def test_head_shapes_and_fused_features():
    head = DAFormerHead(CHANNELS, num_classes=3, embed_dim=12)
    logits, fused = head(_features((36, 52)))
    assert logits.shape == (2, 3, 9, 13) and fused.shape == (2, 12, 9, 13)
    assert (fused >= 0).all()  # the bottleneck ends in a ReLU


def _parameter_count(in_channels, embed_dim, dilations, num_classes):
    e, c = embed_dim, 4 * embed_dim
    bn = 2  # BatchNorm weight and bias per channel
    embeddings = sum(ci * e + e for ci in in_channels)
    branches = sum(c * e + bn * e if d == 1 else 9 * c + bn * c + c * e + bn * e for d in dilations)
    bottleneck = 9 * len(dilations) * e * e + bn * e
    return embeddings + branches + bottleneck + e * num_classes + num_classes


@pytest.mark.parametrize(("embed_dim", "dilations"), [(16, (1, 6, 12, 18)), (8, (1, 2)), (4, (3,))])
def test_head_parameter_count_formula(embed_dim, dilations):
    head = DAFormerHead(CHANNELS, num_classes=7, embed_dim=embed_dim, dilations=dilations)
    assert sum(p.numel() for p in head.parameters()) == _parameter_count(CHANNELS, embed_dim, dilations, 7)
    assert _parameter_count([64, 128, 320, 512], 256, (1, 6, 12, 18), 19) == sum(
        p.numel() for p in DAFormerHead([64, 128, 320, 512], 19).parameters()
    )


def test_head_branch_structure():
    head = DAFormerHead(CHANNELS, num_classes=2, embed_dim=16)
    assert head.dilations == (1, 6, 12, 18)
    first = head.aspp[0]
    assert [type(m) for m in first] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert first[0].kernel_size == (1, 1) and first[0].bias is None
    for branch, d in zip(head.aspp[1:], (6, 12, 18), strict=True):
        depthwise, pointwise = branch[0], branch[3]
        assert [type(m) for m in branch] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
        assert depthwise.groups == 64 and depthwise.kernel_size == (3, 3) and depthwise.dilation == (d, d)
        assert pointwise.kernel_size == (1, 1) and (pointwise.in_channels, pointwise.out_channels) == (64, 16)
    assert head.bottleneck[0].kernel_size == (3, 3) and head.bottleneck[0].in_channels == 64
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1


def _reference_head(head: DAFormerHead, features: list[torch.Tensor]) -> torch.Tensor:
    """The head's eval-mode logits written out with functional ops from its parameters."""

    def bn_relu(x, bn):
        return F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps))

    size = features[0].shape[-2:]
    embedded = []
    for proj, f in zip(head.projections, features, strict=True):
        e = F.conv2d(f, proj.weight, proj.bias)
        embedded.append(F.interpolate(e, size=size, mode="bilinear", align_corners=False))
    x = torch.cat(embedded, dim=1)  # shallowest first, as DAFormer concatenates
    outs = []
    for branch, d in zip(head.aspp, head.dilations, strict=True):
        if d == 1:
            outs.append(bn_relu(F.conv2d(x, branch[0].weight), branch[1]))
        else:
            y = bn_relu(F.conv2d(x, branch[0].weight, padding=d, dilation=d, groups=x.shape[1]), branch[1])
            outs.append(bn_relu(F.conv2d(y, branch[3].weight), branch[4]))
    fused = bn_relu(
        F.conv2d(torch.cat(outs, dim=1), head.bottleneck[0].weight, padding=1), head.bottleneck[1]
    )
    return F.conv2d(fused, head.classifier.weight, head.classifier.bias)


def test_head_matches_functional_reference():
    torch.manual_seed(0)
    head = DAFormerHead(CHANNELS, num_classes=4, embed_dim=8, dilations=(1, 2, 3)).eval()
    with torch.no_grad():
        for m in head.modules():  # non-trivial statistics, so a wrong BN wiring shows
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        features = _features((40, 56))
        logits, _ = head(features)
        torch.testing.assert_close(logits, _reference_head(head, features))


def test_head_initialisation_follows_mmseg():
    torch.manual_seed(0)
    head = DAFormerHead([64, 128, 320, 512], num_classes=19)
    assert head.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert head.classifier.bias.abs().sum() == 0
    pointwise = head.aspp[1][3].weight  # fan_out = 256: std sqrt(2 / 256)
    assert pointwise.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.1)


def test_head_bad_arguments():
    with pytest.raises(ValueError, match="in_channels"):
        DAFormerHead([16, 32, 64], num_classes=2)
    with pytest.raises(ValueError, match="dilations"):
        DAFormerHead(CHANNELS, num_classes=2, dilations=(1, 0))
    with pytest.raises(ValueError, match="dropout"):
        DAFormerHead(CHANNELS, num_classes=2, dropout=1.0)
    with pytest.raises(ValueError, match="4 stage maps"):
        DAFormerHead(CHANNELS, num_classes=2)(_features((32, 32))[:3])


def test_network_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="representation_channels"):
        _network(representation_channels=0)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        _network(encoder_weights=tmp_path / "nowhere.pth")


def test_param_groups_cover_every_parameter_once():
    net = _network()
    groups = net.param_groups()
    assert set(groups) == {"encoder", "decoder"}
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert {id(p) for p in groups["encoder"]} == {id(p) for p in net.encoder.parameters()}
    head_and_rep = [*net.head.parameters(), *net.rep_head.parameters()]
    assert {id(p) for p in groups["decoder"]} == {id(p) for p in head_and_rep}


def test_encoder_weights_file_loads(tmp_path):
    source = _network()
    path = tmp_path / "mit_tiny.pth"
    torch.save({"state_dict": dict(source.encoder.backbone.state_dict())}, path)  # the release's bare names
    torch.manual_seed(1)
    loaded = DAFormerNetwork(num_classes=5, encoder_weights=path, encoder_kwargs=TINY, embed_dim=16)
    torch.testing.assert_close(loaded.encoder.state_dict(), source.encoder.state_dict())
    assert loaded.head.classifier.weight.shape == (5, 16, 1, 1)


def test_regularisation_off_makes_train_mode_forwards_deterministic():
    net = _network(drop_path_rate=0.5, dropout=0.5).train()
    assert any(isinstance(m, DropPath) for m in stochastic_modules(net))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with net.regularisation_off():
            first, second = net(x), net(x)
        assert net.training and all(m.training for m in net.modules())  # modes restored on exit
        third, fourth = net(x), net(x)
    for key in ("pred", "rep", "bottleneck"):
        torch.testing.assert_close(first[key], second[key])
        assert not torch.allclose(third[key], fourth[key])
    # BatchNorm still normalises with the batch statistics: not the eval-mode output
    with torch.no_grad():
        evaluated = net.eval()(x)
    assert not torch.allclose(first["pred"], evaluated["pred"])


def test_regularisation_off_restores_flags_after_an_error():
    net = _network(drop_path_rate=0.5).train()
    net.head.dropout.eval()  # a flag that was already off stays off
    with pytest.raises(RuntimeError), regularisation_off(net):
        assert not any(m.training for m in stochastic_modules(net))
        raise RuntimeError
    assert net.head.dropout.training is False
    assert all(m.training for m in stochastic_modules(net) if m is not net.head.dropout)
