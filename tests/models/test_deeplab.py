from __future__ import annotations

from typing import Any

import pytest
import torch

from wsss_lightning.models.deeplab import DeepLabV3PlusRep

# resnet18's layer4 has two blocks, so the reference's three-entry multi-grid does not apply
SMALL: dict[str, Any] = {"encoder": "resnet18", "multi_grid": (1, 2)}


@pytest.fixture(scope="module")
def net_aux() -> DeepLabV3PlusRep:
    torch.manual_seed(0)
    return DeepLabV3PlusRep(num_classes=5, aux=True, **SMALL)


@pytest.fixture(scope="module")
def net_plain() -> DeepLabV3PlusRep:
    torch.manual_seed(0)
    return DeepLabV3PlusRep(num_classes=4, aux=False, **SMALL)


def test_output_shapes_train_mode(net_plain):
    out = net_plain.train()(torch.randn(2, 3, 64, 64))
    assert set(out) == {"pred", "rep"}  # no auxiliary head unless asked for
    assert out["pred"].shape == (2, 4, 16, 16)
    assert out["rep"].shape == (2, 256, 16, 16)
    assert net_plain.auxor is None
    with torch.no_grad():
        assert set(net_plain.eval()(torch.randn(1, 3, 64, 64), with_rep=False)) == {"pred"}


def test_odd_input_size_is_cropped_to_quarter_resolution(net_aux):
    with torch.no_grad():
        out = net_aux.eval()(torch.randn(1, 3, 65, 47))
    assert out["pred"].shape == (1, 5, 17, 12)
    assert out["rep"].shape == (1, 256, 17, 12)
    assert out["aux"].shape == (1, 5, 9, 6)


def test_sizes_of_the_reference_crops_are_not_padded(net_aux):
    # 8k+1 inputs (513, 769 in the protocols) run unpadded: layer4 at (H-1)/8+1, pred at (H-1)/4+1
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        features = net_aux.encoder(x)
        out = net_aux.eval()(x)
    assert features[-1].shape[-2:] == (5, 6)
    assert out["pred"].shape[-2:] == (9, 11)


@pytest.mark.parametrize(("output_stride", "deep_side"), [(8, 9), (16, 5)])
def test_output_stride_is_in_effect(output_stride, deep_side, net_plain):
    if output_stride == 8:
        net = net_plain
    else:
        net = DeepLabV3PlusRep(num_classes=4, output_stride=16, **SMALL)
    assert net.encoder.feature_info.reduction()[-1] == output_stride
    with torch.no_grad():
        features = net.encoder(torch.randn(1, 3, 65, 65))
        pred = net.eval()(torch.randn(1, 3, 64, 64))["pred"]
    assert features[-1].shape[-2:] == (deep_side, deep_side)  # 65 px -> 9 at stride 8, 5 at stride 16
    assert pred.shape == (1, 4, 16, 16)


def test_dilations_match_the_reference_resnet():
    # resnet50s has the reference's deep stem and block layout; 3 blocks in layer4 like ResNet-101
    net = DeepLabV3PlusRep(num_classes=3, encoder="resnet50s")
    enc: Any = net.encoder  # timm modules are typed loosely
    layer3 = [b.conv2.dilation[0] for b in enc.layer3]
    layer4 = [b.conv2.dilation[0] for b in enc.layer4]
    assert layer3 == [1, 2, 2, 2, 2, 2]
    assert layer4 == [4, 8, 16]
    assert all(b.conv2.padding == b.conv2.dilation for b in enc.layer4)
    stem = enc.conv1
    assert [stem[i].out_channels for i in (0, 3, 6)] == [64, 64, 128]
    assert enc.layer2[0].downsample[0].stride == (2, 2)  # 1×1 stride-2 shortcut, no avg-down
    assert net.decoder.aspp.conv3[0].dilation == (12, 12)
    assert net.decoder.aspp.conv5[0].dilation == (36, 36)
    assert net.decoder.low_conv[0].out_channels == 256


def test_param_groups_cover_every_parameter_once(net_aux):
    groups = net_aux.param_groups()
    assert set(groups) == {"encoder", "decoder"}
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net_aux.parameters()}
    decoder_ids = {id(p) for p in groups["decoder"]}
    assert {id(p) for p in net_aux.auxor.parameters()} <= decoder_ids
    assert {id(p) for p in net_aux.decoder.representation.parameters()} <= decoder_ids


def test_every_parameter_gets_a_gradient(net_aux):
    net_aux.train().zero_grad()
    out = net_aux(torch.randn(2, 3, 17, 17))
    (out["pred"].mean() + out["rep"].mean() + out["aux"].mean()).backward()
    assert all(p.grad is not None for p in net_aux.parameters())


def test_encoder_weights_file_round_trip(tmp_path, net_plain):
    src = net_plain
    path = tmp_path / "encoder.pth"
    torch.save({f"module.{k}": v for k, v in src.encoder.state_dict().items()}, path)
    torch.manual_seed(2)
    dst = DeepLabV3PlusRep(num_classes=3, encoder_weights=str(path), **SMALL)
    for (name, a), b in zip(src.encoder.state_dict().items(), dst.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_partial_weights_file_warns(tmp_path, net_plain):
    state = {k: v for k, v in net_plain.encoder.state_dict().items() if not k.startswith("conv1.")}
    path = tmp_path / "no_stem.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning, match=r"conv1\.weight"):
        DeepLabV3PlusRep(num_classes=3, encoder_weights=str(path), **SMALL)


def test_unknown_encoder_names_the_field():
    with pytest.raises(ValueError, match=r"encoder: unknown timm model 'not_a_net'.*timm\.list_models"):
        DeepLabV3PlusRep(num_classes=3, encoder="not_a_net")


@pytest.mark.parametrize("output_stride", [4, 32])
def test_unsupported_output_stride(output_stride):
    with pytest.raises(ValueError, match="output_stride: expected 8 or 16"):
        DeepLabV3PlusRep(num_classes=3, output_stride=output_stride, **SMALL)


def test_multi_grid_needs_one_entry_per_block():
    with pytest.raises(ValueError, match=r"multi_grid: .*2 blocks"):
        DeepLabV3PlusRep(num_classes=3, encoder="resnet18", multi_grid=(2, 2, 4))


def test_parameter_names_follow_the_reference_layout(net_aux):
    # released U2PL checkpoints use these names (after stripping "module.")
    names = set(net_aux.state_dict())
    expected = {
        "encoder.bn1.running_mean",  # the deep stem names of resnet101s are checked above
        "encoder.layer4.1.conv2.weight",
        "decoder.low_conv.0.bias",
        "decoder.aspp.conv1.1.weight",
        "decoder.aspp.conv5.1.running_var",
        "decoder.head.0.weight",
        "decoder.classifier.8.bias",
        "decoder.representation.8.weight",
        "auxor.aux.4.weight",
    }
    assert expected <= names
