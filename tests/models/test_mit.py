from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from wsss_lightning.models.mit import MiTEncoder, MiTOutput, attention_logits, mit_architecture

# 5 blocks, widths 16-128: built and run in milliseconds
TINY = {"embed_dims": [16, 32, 64, 128], "depths": [1, 1, 1, 2], "num_heads": [1, 1, 2, 4]}


def _tiny(**kwargs) -> MiTEncoder:
    torch.manual_seed(0)
    kwargs.setdefault("model_kwargs", TINY)
    return MiTEncoder(**kwargs).eval()


@pytest.mark.parametrize(
    ("strides", "size"),
    [
        ((4, 2, 2, 2), (64, 64)),
        ((4, 2, 2, 1), (64, 64)),
        ((4, 2, 2, 2), (64, 96)),
        ((4, 2, 2, 1), (48, 80)),
        ((4, 2, 1, 1), (48, 80)),
    ],
)
def test_stage_shapes(strides, size):
    enc = _tiny(strides=strides, attention_blocks=2)
    with torch.no_grad():
        out = enc(torch.randn(2, 3, *size))
    assert isinstance(out, MiTOutput)
    assert enc.reductions == [
        4,
        4 * strides[1],
        4 * strides[1] * strides[2],
        4 * strides[1] * strides[2] * strides[3],
    ]
    assert [f.shape for f in out.features] == [
        (2, c, -(-size[0] // r), -(-size[1] // r))
        for c, r in zip(enc.out_channels, enc.reductions, strict=True)
    ]
    tokens = out.features[3].shape[-2] * out.features[3].shape[-1]
    assert [a.shape for a in out.attentions] == [(2, 4, tokens, tokens)] * 2
    assert enc.attention_channels == 8 and enc.num_heads == [1, 1, 2, 4]


def test_no_capture_by_default():
    out = _tiny()(torch.randn(1, 3, 32, 32))
    assert out.attentions == [] and _tiny().attention_channels == 0


def _block_io(enc: MiTEncoder, x: torch.Tensor) -> tuple[MiTOutput, list[dict[str, torch.Tensor]]]:
    """Run ``enc`` recording each last-stage block's attention input, kv output and proj input."""
    records: list[dict[str, torch.Tensor]] = []
    handles = []
    for block in enc.backbone.block4:
        rec: dict[str, torch.Tensor] = {}
        records.append(rec)
        handles.append(block.attn.register_forward_pre_hook(lambda m, a, rec=rec: rec.update(x=a[0])))
        handles.append(block.attn.kv.register_forward_hook(lambda m, a, o, rec=rec: rec.update(kv=o)))
        handles.append(
            block.attn.proj.register_forward_pre_hook(lambda m, a, rec=rec: rec.update(mixed=a[0]))
        )
    with torch.no_grad():
        out = enc(x)
    for h in handles:
        h.remove()
    return out, records


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("sr_ratios", [None, [2, 2, 2, 2]])
def test_logits_match_numpy_recomputation(sr_ratios, scaled):
    """Unscaled ``q·kᵀ`` as AFA's released encoder returns it by default; ``scaled_attention``: the softmax input."""
    kwargs = dict(TINY, sr_ratios=sr_ratios) if sr_ratios else TINY
    enc = _tiny(attention_blocks=2, model_kwargs=kwargs, scaled_attention=scaled)
    out, records = _block_io(enc, torch.randn(2, 3, 64, 96))
    heads, width = 4, 32
    for block, rec, logits in zip(enc.backbone.block4, records, out.attentions, strict=True):
        x = rec["x"].double().numpy()
        q = x @ block.attn.q.weight.double().detach().numpy().T + block.attn.q.bias.double().detach().numpy()
        kv = rec["kv"].double().numpy()  # keys from the (possibly spatially reduced) tokens
        if sr_ratios is None:  # no reduction: recompute the keys from the tokens too
            w, b = (
                block.attn.kv.weight.double().detach().numpy(),
                block.attn.kv.bias.double().detach().numpy(),
            )
            np.testing.assert_allclose(kv, x @ w.T + b, atol=1e-5)
        batch, n, m = x.shape[0], x.shape[1], kv.shape[1]
        qh = q.reshape(batch, n, heads, width).transpose(0, 2, 1, 3)
        kh = kv[..., : heads * width].reshape(batch, m, heads, width).transpose(0, 2, 1, 3)
        vh = kv[..., heads * width :].reshape(batch, m, heads, width).transpose(0, 2, 1, 3)
        softmax_input = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(width)
        expected = softmax_input if scaled else softmax_input * np.sqrt(width)
        assert logits.shape == (batch, heads, n, m) and (m < n) == (sr_ratios is not None)
        np.testing.assert_allclose(logits.double().numpy(), expected, atol=1e-5)
        # softmax(q·kᵀ·scale) @ v is what smp's attention fed to its output projection
        att = np.exp(softmax_input - softmax_input.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        mixed = (att @ vh).transpose(0, 2, 1, 3).reshape(batch, n, heads * width)
        np.testing.assert_allclose(rec["mixed"].double().numpy(), mixed, atol=1e-5)


def test_attention_logits_function_on_known_values():
    q = torch.tensor([[[1.0, 0.0, 0.0, 2.0]]])  # B=1, N=1, C=4, 2 heads of width 2
    kv = torch.tensor([[[3.0, 1.0, 0.0, 5.0, 9.0, 9.0, 9.0, 9.0]]])  # k = (3, 1 | 0, 5), v ignored
    logits = attention_logits(q, kv, num_heads=2, scale=0.5)
    assert torch.equal(logits, torch.tensor([[[[1.5]], [[5.0]]]]))


def test_gradients_reach_q_and_k_through_the_logits():
    enc = _tiny(attention_blocks=2)
    out = enc(torch.randn(1, 3, 64, 64))
    sum(a.square().mean() for a in out.attentions).backward()
    for block in enc.backbone.block4:
        k_grad, _ = block.attn.kv.weight.grad.chunk(2)
        assert block.attn.q.weight.grad.abs().sum() > 0 and k_grad.abs().sum() > 0
    # the last logits depend on that block's keys, not on its values: the gradient came through the logits
    assert enc.backbone.block4[-1].attn.kv.weight.grad.chunk(2)[1].abs().sum() == 0
    assert enc.backbone.patch_embed1.proj.weight.grad.abs().sum() > 0  # and on through the whole encoder


def test_capture_under_no_grad_and_leaves_no_hooks():
    enc = _tiny(attention_blocks=1)
    with torch.no_grad():
        first = enc(torch.randn(1, 3, 32, 32)).attentions
        second = enc(torch.randn(1, 3, 64, 64)).attentions
    assert len(first) == len(second) == 1 and first[0].grad_fn is None
    assert first[0].shape[-1] == 1 and second[0].shape[-1] == 4  # fresh storage at every call
    assert all(not b.attn.q._forward_hooks and not b.attn.kv._forward_hooks for b in enc.backbone.block4)


def test_deepcopy_captures_its_own_attention():
    enc = _tiny(attention_blocks=2)
    teacher = copy.deepcopy(enc)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        own, other = enc(x).attentions, teacher(x).attentions
    assert not torch.allclose(own[0], other[0])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"attention_blocks: expected 0 … 2 .*got 3"):
        MiTEncoder(attention_blocks=3, model_kwargs=TINY)
    with pytest.raises(ValueError, match=r"mit_b0.*mit_b5"):
        MiTEncoder("mit_b9")
    for strides in ((4, 2, 2, 4), (2, 2, 2, 2), (4, 2, 2)):
        with pytest.raises(ValueError, match="strides"):
            MiTEncoder(strides=strides, model_kwargs=TINY)
    with pytest.raises(ValueError, match=r"model_kwargs: \['embed_dim'\]"):
        MiTEncoder(model_kwargs={"embed_dim": 8})
    with pytest.raises(ValueError, match="drop_path_rate"):
        MiTEncoder(model_kwargs={"drop_path_rate": 0.2})
    with pytest.raises(ValueError, match="depths needs one value per stage"):
        MiTEncoder(model_kwargs=dict(TINY, depths=[1, 1, 1]))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MiTEncoder(model_kwargs=dict(TINY, num_heads=[1, 1, 3, 4]))


def test_weights_file_round_trip(tmp_path):
    source = _tiny(strides=(4, 2, 2, 1))
    path = tmp_path / "mit.pth"
    torch.save(source.state_dict(), path)  # keys "backbone.patch_embed1..." (prefix stripped on load)
    torch.manual_seed(1)
    loaded = MiTEncoder(weights=path, strides=(4, 2, 2, 1), model_kwargs=TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source(x).features, loaded(x).features, strict=True):
            torch.testing.assert_close(a, b)


def test_release_layout_loads(tmp_path):
    # the SegFormer ImageNet files: bare MixVisionTransformer names plus a 1000-class head
    source = _tiny()
    state = dict(source.backbone.state_dict())
    assert {
        "patch_embed1.proj.weight",
        "block1.0.attn.q.weight",
        "block4.1.attn.kv.weight",
        "norm4.bias",
    } <= set(state)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 128), torch.randn(1000)
    torch.save({"state_dict": state}, tmp_path / "mit_tiny.pth")
    loaded = MiTEncoder(weights=tmp_path / "mit_tiny.pth", model_kwargs=TINY)
    torch.testing.assert_close(loaded.backbone.state_dict(), source.backbone.state_dict())


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        MiTEncoder(weights=tmp_path / "nowhere.pth", model_kwargs=TINY)


def test_mit_b1_architecture_is_smps():
    params = mit_architecture("mit_b1")
    assert params["embed_dims"] == [64, 128, 320, 512]
    assert params["num_heads"] == [1, 2, 5, 8] and params["depths"] == [2, 2, 2, 2]
    assert params["sr_ratios"] == [8, 4, 2, 1] and params["qkv_bias"] is True
    assert "out_channels" not in params
    enc = MiTEncoder("mit_b1", strides=(4, 2, 2, 1), attention_blocks=2)
    assert enc.out_channels == [64, 128, 320, 512] and enc.attention_channels == 16
    assert enc.backbone.patch_embed4.proj.stride == (1, 1)


def test_norm_parameters_are_the_layer_norms():
    enc = _tiny()
    norms = {id(p) for p in enc.norm_parameters()}
    by_name = {id(p) for n, p in enc.named_parameters() if "norm" in n}  # the selection AFA's code makes
    assert norms == by_name
    others = enc.non_norm_parameters()
    assert len(norms) + len(others) == len(list(enc.parameters())) and not norms & {id(p) for p in others}
