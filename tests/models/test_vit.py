from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from wsss_lightning.models.vit import ViTBackbone, resize_pos_embed

TINY = "vit_tiny_patch16_224"
# 4 blocks of width 64, position embedding stored for a 4×4 grid: built in a fraction of a second
TINY_KWARGS = {"depth": 4, "img_size": 64, "embed_dim": 64, "num_heads": 2}


@pytest.fixture(scope="module")
def backbone() -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone(TINY, model_kwargs=TINY_KWARGS).eval()


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution kernel (the one PyTorch's non-antialiased bicubic uses)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D bicubic resampling, half-pixel centres, border samples replicated."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = int(np.floor(src))
        for k in range(base - 1, base + 3):
            m[i, min(max(k, 0), n_in - 1)] += _cubic(np.array(src - k))
    return m


def _numpy_resize(pos: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(gh·gw, D) -> (h·w, D) separable bicubic resampling."""
    dim = pos.shape[-1]
    as_grid = pos.reshape(grid[0], grid[1], dim)
    rows, cols = _bicubic_matrix(grid[0], size[0]), _bicubic_matrix(grid[1], size[1])
    return np.einsum("ia,jb,abd->ijd", rows, cols, as_grid).reshape(size[0] * size[1], dim)


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (32, 48)])
def test_token_maps_follow_input_size(backbone, size):
    with torch.no_grad():
        features, aux = backbone(torch.randn(2, 3, *size))
    expected = (2, backbone.embed_dim, size[0] // 16, size[1] // 16)
    assert features.shape == expected and aux.shape == expected
    assert backbone.patch_size == 16 and backbone.embed_dim == 64


def test_matches_timm_at_the_stored_grid(backbone):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, _ = backbone(x)
        reference = backbone.vit.forward_features(x)[:, 1:]  # timm's own path, cls token dropped
    assert torch.allclose(features.flatten(2).transpose(1, 2), reference, atol=1e-5)


@pytest.mark.parametrize("size", [(7, 3), (2, 6), (4, 4)])
def test_resize_pos_embed_is_plain_bicubic(size):
    pos = torch.randn(1, 16, 5, dtype=torch.float64)
    got = resize_pos_embed(pos, (4, 4), size)
    expected = _numpy_resize(pos[0].numpy(), (4, 4), size)
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-10)


def test_position_embedding_is_frozen_and_resized_per_forward(backbone):
    size = (48, 80)  # token grid 3×5 from the stored 4×4: shrinks one side, grows the other
    x = torch.randn(1, 3, *size)
    captured: dict[str, torch.Tensor] = {}
    hook = backbone.vit.blocks[0].register_forward_pre_hook(lambda _m, args: captured.update(tokens=args[0]))
    try:
        with torch.no_grad():
            backbone(x)
            patches = backbone.vit.patch_embed(x).reshape(1, 15, -1)
    finally:
        hook.remove()
    added = captured["tokens"] - torch.cat((backbone.vit.cls_token.detach(), patches), dim=1)
    stored = backbone.vit.pos_embed[0].numpy()
    expected_patch = _numpy_resize(stored[1:], (4, 4), (3, 5))
    np.testing.assert_allclose(added[0, 1:].numpy(), expected_patch, atol=1e-5)
    np.testing.assert_allclose(added[0, 0].numpy(), stored[0], atol=1e-6)  # class-token part kept
    assert not backbone.vit.pos_embed.requires_grad


def test_gradients_skip_only_the_position_embedding():
    net = ViTBackbone(TINY, aux_layer=0, model_kwargs={**TINY_KWARGS, "depth": 2})
    features, aux = net(torch.randn(1, 3, 32, 48))
    (features.square().mean() + aux.square().mean()).backward()
    assert net.vit.pos_embed.grad is None
    # the cls token only acts through attention, yet every other parameter must get a gradient
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_trained_position_embedding_gets_a_gradient_through_its_resampling():
    net = ViTBackbone(TINY, aux_layer=0, model_kwargs={**TINY_KWARGS, "depth": 2}, train_pos_embed=True)
    features, _ = net(torch.randn(1, 3, 32, 48))  # a 2x3 grid resampled from the stored 4x4
    features.square().mean().backward()
    grad = net.vit.pos_embed.grad
    assert net.vit.pos_embed.requires_grad and grad is not None
    # every stored patch position feeds the bicubic resample
    assert bool((grad[0, 1:].abs().sum(-1) > 0).all())


@pytest.mark.parametrize(("aux_layer", "block"), [(-3, 1), (0, 0), (3, 3)])
def test_aux_tokens_are_the_raw_output_of_the_chosen_block(aux_layer, block):
    torch.manual_seed(0)
    net = ViTBackbone(TINY, aux_layer=aux_layer, model_kwargs=TINY_KWARGS).eval()
    captured: dict[str, torch.Tensor] = {}
    hook = net.vit.blocks[block].register_forward_hook(lambda _m, _a, out: captured.update(out=out))
    try:
        with torch.no_grad():
            _, aux = net(torch.randn(2, 3, 32, 48))
    finally:
        hook.remove()
    tokens = captured["out"][:, 1:]  # (B, 2·3, D), no final norm applied
    assert net.aux_layer == block
    assert torch.equal(aux, tokens.transpose(1, 2).reshape(2, 64, 2, 3))


def test_bad_backbone_names_are_rejected():
    with pytest.raises(ValueError, match=r"backbone: unknown timm model 'not_a_vit'.*list_models"):
        ViTBackbone("not_a_vit")
    with pytest.raises(ValueError, match=r"backbone: .*'resnet18'.*not a plain ViT"):
        ViTBackbone("resnet18")


@pytest.mark.parametrize("aux_layer", [4, -5])
def test_aux_layer_outside_the_depth_is_rejected(aux_layer):
    with pytest.raises(ValueError, match=r"aux_layer: .*\[-4, 3\]"):
        ViTBackbone(TINY, aux_layer=aux_layer, model_kwargs=TINY_KWARGS)


def test_bad_model_kwargs_are_named():
    with pytest.raises(ValueError, match=r"model_kwargs: \['num_classes'\]"):
        ViTBackbone(TINY, model_kwargs={"num_classes": 3})
    with pytest.raises(ValueError, match=r"model_kwargs: .*unexpected keyword"):
        ViTBackbone(TINY, model_kwargs={"no_such_argument": 1})


def test_input_not_a_multiple_of_the_patch_size_is_rejected(backbone):
    with pytest.raises(ValueError, match=r"multiples of the patch size 16, got 40×48"):
        backbone(torch.randn(1, 3, 40, 48))


def test_local_weights_file_round_trip(tmp_path):
    torch.manual_seed(1)
    # a checkpoint as released: wrapped under "model" (here with DDP's "module." prefix), with an ImageNet
    # head that the backbone drops
    source = timm.create_model(TINY, pretrained=False, **TINY_KWARGS)  # with the 1000-class head
    path = tmp_path / "vit_tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    net = ViTBackbone(TINY, weights=str(path), model_kwargs=TINY_KWARGS)
    loaded = net.vit.state_dict()
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name
    assert not net.vit.pos_embed.requires_grad  # still frozen after loading


def test_unusable_weights_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights: .*missing\.pth"):
        ViTBackbone(TINY, weights=str(tmp_path / "missing.pth"), model_kwargs=TINY_KWARGS)
    other = tmp_path / "deeper.pth"
    torch.save(timm.create_model(TINY, pretrained=False, **{**TINY_KWARGS, "depth": 5}).state_dict(), other)
    with pytest.raises(ValueError, match=r"weights: .*deeper\.pth does not match.*blocks\.4"):
        ViTBackbone(TINY, weights=str(other), model_kwargs=TINY_KWARGS)
    narrower = tmp_path / "narrower.pth"
    torch.save(
        timm.create_model(TINY, pretrained=False, **{**TINY_KWARGS, "embed_dim": 32}).state_dict(), narrower
    )
    with pytest.raises(ValueError, match=r"weights: .*narrower\.pth does not fit"):
        ViTBackbone(TINY, weights=str(narrower), model_kwargs=TINY_KWARGS)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"weights: could not read .*garbage\.pth"):
        ViTBackbone(TINY, weights=str(garbage), model_kwargs=TINY_KWARGS)
