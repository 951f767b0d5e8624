from __future__ import annotations

import pytest
import torch
from torch import nn

from wsss_lightning.models.resnet38 import ResNet38, ResNet38Features, load_resnet38_weights
from wsss_lightning.models.weights import load_weights_file

# Measured once from the layout (PSA's resnet38d); a change means the architecture changed.
NUM_PARAMETERS = 105_070_912


@pytest.fixture(scope="module")
def built() -> ResNet38:
    # ~105 M parameters and ~2 s to build: one network for the whole file.
    torch.manual_seed(0)
    return ResNet38()


@pytest.fixture
def model(built: ResNet38):
    built.eval()
    yield built
    built.eval()
    built.zero_grad(set_to_none=True)


def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize(("size", "side4", "side8"), [(64, 16, 8), (321, 81, 41)])
def test_shapes_and_strides(model, size, side4, side8):
    # 321 -> 41x41 at stride 8, the feature size RRM / ASDT work at.
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert isinstance(out, ResNet38Features)
    assert [tuple(f.shape) for f in out] == [
        (1, 256, side4, side4),
        (1, 512, side8, side8),
        (1, 1024, side8, side8),
        (1, 4096, side8, side8),
    ]
    assert model.out_channels == (256, 512, 1024, 4096) and model.reductions == (4, 8, 8, 8)
    assert bool((out.conv6 >= 0).all())  # ReLU(BN7(b7))


def test_parameter_count_and_psa_names(model):
    assert sum(p.numel() for p in model.parameters()) == NUM_PARAMETERS
    names = set(model.state_dict())
    assert len(names) == 228
    for name in (
        "conv1a.weight",
        "b2.bn_branch2a.running_mean",
        "b2.conv_branch1.weight",
        "b2_1.conv_branch2b1.weight",
        "b5.conv_branch2a.weight",
        "b6.bn_branch2b2.weight",
        "b7.conv_branch2b2.weight",
        "bn7.running_var",
    ):
        assert name in names
    assert "b2_1.conv_branch1.weight" not in names  # identity shortcut when the shape is kept
    assert model.b5.conv_branch2a.dilation == (1, 1) and model.b5_1.conv_branch2a.dilation == (2, 2)
    assert model.b6.conv_branch2b1.dilation == (4, 4) and model.b7.conv_branch2b1.dilation == (4, 4)
    assert (model.b6.dropout_2b1.p, model.b7.dropout_2b2.p) == (0.3, 0.5)


def test_batchnorm_frozen_in_train_mode(model):
    model.requires_grad_(True)  # a parent unfreezing everything must not unfreeze BN once training starts
    model.train()
    assert model.training and model.b7.dropout_2b1.training
    assert all(not bn.training for bn in _batchnorms(model))
    assert all(not p.requires_grad for bn in _batchnorms(model) for p in bn.parameters())
    assert model.conv1a.weight.requires_grad  # RRM trains the stem (PSA froze it)
    stats = model.bn7.running_mean.clone(), model.b2.bn_branch2a.running_var.clone()
    model(torch.randn(2, 3, 24, 24)).conv6.mean().backward()
    assert torch.equal(model.bn7.running_mean, stats[0])
    assert torch.equal(model.b2.bn_branch2a.running_var, stats[1])
    assert all(p.grad is None for bn in _batchnorms(model) for p in bn.parameters())
    assert model.conv1a.weight.grad is not None and model.b7.conv_branch2b2.weight.grad is not None


def test_batchnorm_frozen_from_construction():
    # Optimizers are often built before the first train() call.
    fresh = ResNet38()
    assert not any(p.requires_grad for bn in _batchnorms(fresh) for p in bn.parameters())
    assert all(not bn.training for bn in _batchnorms(fresh))
    weights, _ = fresh.param_groups()
    assert sum(p.numel() for p in weights) == NUM_PARAMETERS - 47_744  # every BN weight / bias left out


def test_dropout_on_in_train_off_in_eval(model):
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        model.train()
        first, second = model(x).conv6, model(x).conv6
        assert not torch.equal(first, second)
        model.eval()
        assert torch.equal(model(x).conv6, model(x).conv6)
        evaluated = model(x).conv6
        # Without dropout, train mode computes what eval mode does: BN uses its running statistics.
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
        probabilities = [m.p for m in drops]
        try:
            for m in drops:
                m.p = 0.0
            model.train()
            torch.testing.assert_close(model(x).conv6, evaluated)
        finally:
            for m, p in zip(drops, probabilities, strict=True):
                m.p = p


def test_param_groups_split_like_rrm(model):
    weights, biases = model.param_groups()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [id(p) for p in weights] == [id(m.weight) for m in convs]
    assert biases == []  # the backbone's convolutions have no bias
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in weights} == trainable
    assert any(p is model.conv1a.weight for p in weights)


def test_weights_round_trip(model, tmp_path):
    path = tmp_path / "res38_cls.pth"
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    classifier = torch.randn(20, 4096, 1, 1)
    torch.save({"state_dict": {**state, "module.fc8.weight": classifier}}, path)
    del state
    with torch.no_grad():
        for p in (model.conv1a.weight, model.b7.conv_branch2b2.weight, model.b4_3.bn_branch2b1.bias):
            p.zero_()
        model.bn7.running_var.fill_(3.0)
    extras = load_resnet38_weights(model, path)
    assert list(extras) == ["fc8.weight"] and torch.equal(extras["fc8.weight"], classifier)
    saved = torch.load(path, mmap=True, weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(tensor, saved[f"module.{name}"]), name
    # The package's generic loader reads the same file with nothing missing but BN's batch counters.
    missing = load_weights_file(model, path)
    assert missing and all(n.endswith("num_batches_tracked") for n in missing)


def test_wrong_names_fail_naming_the_file(model, tmp_path):
    path = tmp_path / "other_net.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, path)
    before = model.conv1a.weight.clone()
    with pytest.raises(ValueError, match=r"other_net\.pth.*191 backbone tensors missing.*conv1a\.weight"):
        load_resnet38_weights(model, path)
    assert torch.equal(model.conv1a.weight, before)  # nothing loaded


def test_wrong_shape_fails(model, tmp_path):
    path = tmp_path / "stem.pth"
    torch.save({"conv1a.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match=r"stem\.pth.*1 with another shape.*conv1a\.weight \(64, 3, 7, 7\)"):
        load_resnet38_weights(model, path)


def test_mxnet_file_and_missing_file(model, tmp_path):
    params = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    params.write_bytes(b"\x12\x01")
    with pytest.raises(ValueError, match=r"ilsvrc-cls_rna-a1_cls1000_ep-0001\.params: an MXNet file"):
        load_resnet38_weights(model, params)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        load_resnet38_weights(model, tmp_path / "absent.pth")


@pytest.mark.parametrize("dropout", [(0.3,), (0.3, 1.0), (-0.1, 0.5)])
def test_bad_dropout(dropout):
    with pytest.raises(ValueError, match="dropout"):
        ResNet38(dropout=dropout)
