from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_lightning.methods.dupl.network import DuPLSubNet, LargeFOVHead, SubNetOutput

C = 5  # foreground classes
SMALL = {"depth": 3, "img_size": 64, "embed_dim": 64, "num_heads": 2}


def _net(**overrides) -> DuPLSubNet:
    kwargs = {"model_kwargs": SMALL, "head_channels": 16, **overrides}
    return DuPLSubNet("vit_tiny_patch16_224", C, **kwargs)


@pytest.fixture(scope="module")
def net() -> DuPLSubNet:
    torch.manual_seed(0)
    return _net().eval()


@pytest.mark.parametrize("size", [(64, 64), (32, 48)])
def test_output_shapes(net, size):
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    h, w = size[0] // 16, size[1] // 16
    assert isinstance(out, SubNetOutput)
    assert out.cls_logits.shape == (2, C) and out.aux_cls_logits.shape == (2, C)
    assert out.seg_logits.shape == (2, C + 1, h, w)
    assert out.features.shape == (2, 64, h, w)


def test_logits_are_max_pooled_features_times_classifier_weights(net):
    x = torch.randn(3, 3, 48, 64)
    with torch.no_grad():
        out = net(x)
        features, aux = (t.numpy() for t in net.backbone(x))
    w = net.classifier.weight[:, :, 0, 0].detach().numpy()  # (C, D)
    w_aux = net.aux_classifier.weight[:, :, 0, 0].detach().numpy()
    np.testing.assert_allclose(out.features.numpy(), features, atol=1e-6)
    np.testing.assert_allclose(out.cls_logits.numpy(), features.max(axis=(2, 3)) @ w.T, atol=1e-5)
    np.testing.assert_allclose(out.aux_cls_logits.numpy(), aux.max(axis=(2, 3)) @ w_aux.T, atol=1e-5)


def test_gap_pooling_option_averages_the_token_map():
    torch.manual_seed(0)
    net = _net(pooling="gap").eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        out = net(x)
        features = net.backbone(x)[0].numpy()
    w = net.classifier.weight[:, :, 0, 0].detach().numpy()
    np.testing.assert_allclose(out.cls_logits.numpy(), features.mean(axis=(2, 3)) @ w.T, atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        _net(pooling="median")


def test_cams_are_classifier_weights_dotted_with_each_token(net):
    x = torch.randn(2, 3, 32, 80)
    with torch.no_grad():
        cam, aux_cam = net.cams(x)
        features, aux = (t.numpy() for t in net.backbone(x))
    assert cam.shape == aux_cam.shape == (2, C, 2, 5)
    w = net.classifier.weight[:, :, 0, 0].detach().numpy()
    w_aux = net.aux_classifier.weight[:, :, 0, 0].detach().numpy()
    np.testing.assert_allclose(cam.numpy(), np.einsum("cd,bdhw->bchw", w, features), atol=1e-5)
    np.testing.assert_allclose(aux_cam.numpy(), np.einsum("cd,bdhw->bchw", w_aux, aux), atol=1e-5)
    assert (cam < 0).any()  # raw: no ReLU applied


def test_segment_equals_the_seg_logits_of_forward(net):
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(net.segment(x), net(x).seg_logits, atol=1e-6)


def test_large_fov_head_layout_and_receptive_field():
    torch.manual_seed(0)
    head = LargeFOVHead(8, 4, channels=6, dilation=5).double()
    assert [m.bias for m in (head.conv6, head.conv7, head.conv8)] == [None, None, None]
    assert head.conv6.dilation == head.conv7.dilation == (5, 5)
    x = torch.randn(1, 8, 25, 25, dtype=torch.float64)
    base = head(x)
    assert base.shape == (1, 4, 25, 25)

    def changed(dy: int, dx: int) -> bool:
        moved = x.clone()
        moved[0, :, 12 + dy, 12 + dx] += 1.0
        return not torch.allclose(head(moved)[0, :, 12, 12], base[0, :, 12, 12])

    # two 3×3 convs dilated by 5 see the centre ±10 on the dilated lattice, nothing else
    assert changed(10, 0) and changed(-5, 10) and changed(0, 0)
    assert not changed(11, 0) and not changed(3, 0) and not changed(0, -7)


def test_param_groups_cover_every_trainable_parameter_once(net):
    groups = net.param_groups()
    assert set(groups) == {"backbone", "classifier", "seg_head"}
    ids = [id(p) for params in groups.values() for p in params]
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    assert [id(p) for p in groups["classifier"]] == [id(net.classifier.weight), id(net.aux_classifier.weight)]
    assert id(net.backbone.vit.pos_embed) not in ids
    lrs = {"backbone": 6e-5, "classifier": 6e-4, "seg_head": 6e-4}
    torch.optim.AdamW([{"params": p, "lr": lrs[k]} for k, p in groups.items()], weight_decay=0.01)


def test_trained_position_embedding_joins_the_backbone_group():
    trained = _net(train_pos_embed=True)
    groups = trained.param_groups()
    assert trained.backbone.vit.pos_embed.requires_grad
    assert id(trained.backbone.vit.pos_embed) in {id(p) for p in groups["backbone"]}
    assert len(groups["backbone"]) == len(_net().param_groups()["backbone"]) + 1


def test_every_trainable_parameter_gets_a_gradient():
    # what DDP without find_unused_parameters relies on
    net = _net(model_kwargs={**SMALL, "depth": 2}, aux_layer=0)
    out = net(torch.randn(2, 3, 32, 32))
    (out.cls_logits.sum() + out.aux_cls_logits.sum() + out.seg_logits.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        DuPLSubNet("vit_tiny_patch16_224", 0, model_kwargs=SMALL)
    with pytest.raises(ValueError, match="backbone"):
        DuPLSubNet("resnet18", C)
    with pytest.raises(ValueError, match="aux_layer"):
        _net(aux_layer=3)
    with pytest.raises(ValueError, match="dilation"):
        LargeFOVHead(8, 3, dilation=0)
