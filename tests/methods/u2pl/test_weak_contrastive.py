"""U2PL+'s weakly supervised contrastive loss (Eq. 29-31) against plain loops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.references import t
from wsss_lightning.host_reads import accelerator_paths
from wsss_lightning.methods.u2pl.memory_bank import CategoryMemoryBank
from wsss_lightning.methods.u2pl.options import WeakContrastiveConfig
from wsss_lightning.methods.u2pl.prototypes import PrototypeBank
from wsss_lightning.methods.u2pl.weak import (
    WeakContrastiveLoss,
    weak_contrastive_loss,
    weak_contrastive_masks,
)

C, D, B, K, H, W = 5, 6, 3, 3, 4, 5


def random_cams(seed: int, beta: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of each image's tagged classes: padding, a class listed twice, an image with no class, ties."""
    rng = np.random.default_rng(seed)
    cams = rng.random((B, K, H, W)).astype(np.float32)
    cams[rng.random(cams.shape) < 0.1] = beta  # exactly beta: neither anchor nor low-score negative
    classes = np.array([[1, 3, -1], [2, 2, 3], [-1, -1, -1]])
    return cams, classes


def np_masks(
    cams: np.ndarray, classes: np.ndarray, beta: float, negatives: str, background: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel by pixel, class by class."""
    anchor = np.zeros((cams.shape[0], C, *cams.shape[2:]), dtype=bool)
    negative = np.zeros_like(anchor)
    for b in range(cams.shape[0]):
        for c in range(C):
            if c == 0 and not background:
                continue
            channels = [k for k in range(cams.shape[1]) if classes[b, k] == c]
            fg = [k for k in range(cams.shape[1]) if classes[b, k] >= 1]
            for y in range(cams.shape[2]):
                for x in range(cams.shape[3]):
                    if c == 0:
                        tagged, score = True, 1.0 - max([cams[b, k, y, x] for k in fg], default=0.0)
                    else:
                        tagged = bool(channels)
                        score = max([cams[b, k, y, x] for k in channels], default=0.0)
                    absent, low = not tagged, tagged and score < beta
                    anchor[b, c, y, x] = tagged and score > beta
                    negative[b, c, y, x] = {"both": absent or low, "absent": absent, "low": low}[negatives]
    return anchor, negative


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("negatives", ["both", "absent", "low"])
def test_masks_match_a_pixel_loop(negatives: str, background: bool) -> None:
    cams, classes = random_cams(0)
    anchor, negative = weak_contrastive_masks(t(cams), t(classes), C, 0.5, negatives, background)  # type: ignore[arg-type]
    ref_anchor, ref_negative = np_masks(cams, classes, 0.5, negatives, background)
    assert anchor.dtype == torch.bool and anchor.shape == (B, C, H, W)
    np.testing.assert_array_equal(anchor.numpy(), ref_anchor)
    np.testing.assert_array_equal(negative.numpy(), ref_negative)
    assert anchor[2, 0].all() == background  # no foreground tag: background scores 1 everywhere
    assert not anchor[:, 4].any()  # class 4 is never tagged


def test_pixels_outside_the_valid_region_are_neither_anchors_nor_negatives() -> None:
    # the padding of a crop larger than the rescaled image
    cams, classes = random_cams(1)
    valid = torch.zeros(B, H, W, dtype=torch.bool)
    valid[:, : H // 2] = True
    anchor, negative = weak_contrastive_masks(t(cams), t(classes), C, 0.5, "both", True, valid)
    full_anchor, full_negative = weak_contrastive_masks(t(cams), t(classes), C, 0.5, "both", True)
    assert not anchor[:, :, H // 2 :].any() and not negative[:, :, H // 2 :].any()
    assert torch.equal(anchor[:, :, : H // 2], full_anchor[:, :, : H // 2])
    assert torch.equal(negative[:, :, : H // 2], full_negative[:, :, : H // 2])
    with pytest.raises(ValueError, match="valid must be"):
        weak_contrastive_masks(t(cams), t(classes), C, 0.5, "both", True, valid[:, :-1])


def options(**kwargs: Any) -> WeakContrastiveConfig:
    base: dict[str, Any] = {
        "beta": 0.5,
        "capacity": 40,
        "background_capacity": 60,
        "num_anchors": 7,
        "num_negatives": 4,
        "max_keys_per_step": None,
    }
    return WeakContrastiveConfig(**{**base, **kwargs})


def filled_bank(seed: int, capacities: list[int], sizes: list[int]) -> tuple[CategoryMemoryBank, list[Any]]:
    rng = np.random.default_rng(seed)
    bank = CategoryMemoryBank(C, D, capacities=capacities, normalize=True)
    queues = []
    for c, n in enumerate(sizes):
        keys = rng.normal(size=(n, D)).astype(np.float32)
        bank.push(t(keys), torch.full((n,), c))
        queues.append(torch.from_numpy(keys).double())
    return bank, queues


def reference_loss(
    rep: torch.Tensor,
    anchor: np.ndarray,
    negative: np.ndarray,
    queues: list[torch.Tensor],
    capacities: list[int],
    old: torch.Tensor,
    old_valid: list[bool],
    config: WeakContrastiveConfig,
    seed: int,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Torch float64 loop over classes, drawing the documented uniforms from the same generator."""
    gen = torch.Generator().manual_seed(seed)
    pixels = rep.permute(0, 2, 3, 1).reshape(-1, D)  # (b, y, x) raster order
    keys = pixels.detach()
    m, tau = config.prototype_momentum, config.temperature
    queues = list(queues)
    protos = old.clone()
    for c in range(C):
        queues[c] = torch.cat([queues[c], keys[negative[:, c].reshape(-1)]])[-capacities[c] :]
        sel = anchor[:, c].reshape(-1)
        if sel.any():
            centroid = keys[sel].mean(0)
            protos[c] = m * old[c] + (1 - m) * centroid if old_valid[c] else centroid
    u_anchor = torch.rand((C, config.num_anchors), generator=gen, dtype=torch.float64)
    u_neg = torch.rand((C * config.num_anchors, config.num_negatives), generator=gen, dtype=torch.float64)
    u_neg = u_neg.view(C, config.num_anchors, config.num_negatives)
    valid = [c for c in range(C) if anchor[:, c].any()]
    total = rep.sum() * 0
    for c in valid:
        cand = np.flatnonzero(anchor[:, c].reshape(-1))
        if len(queues[c]) == 0:
            continue
        a = pixels[cand[(u_anchor[c] * len(cand)).long().clamp_max(len(cand) - 1).numpy()]]
        negs = queues[c][(u_neg[c] * len(queues[c])).long().clamp_max(len(queues[c]) - 1)]
        pos_logit = F.cosine_similarity(a, protos[c][None], dim=-1)[:, None]
        neg_logit = F.cosine_similarity(a[:, None], negs, dim=-1)
        logits = torch.cat([pos_logit, neg_logit], 1) / tau
        total = total + (torch.logsumexp(logits, 1) - logits[:, 0]).mean()
    denom = len(valid) if config.normalization == "present" else C
    return total / denom, queues, protos


@pytest.mark.parametrize(
    "case",
    [
        {"negatives": "both", "background": True},
        {"negatives": "low", "background": True, "normalization": "all"},
        {"negatives": "absent", "background": False, "prototype_momentum": 0.5},
    ],
)
def test_loss_matches_a_float64_loop(case: dict[str, Any]) -> None:
    config = options(**case)
    cams, classes = random_cams(1)
    rng = np.random.default_rng(2)
    rep_np = rng.normal(size=(B, D, H, W)).astype(np.float32)
    capacities, sizes = [60, 40, 40, 40, 40], [0, 3, 39, 8, 5]  # class 2 overflows this step
    bank, queues = filled_bank(3, capacities, sizes)
    protos = PrototypeBank(C, D, config.prototype_momentum)
    old = torch.from_numpy(rng.normal(size=(C, D)).astype(np.float32))
    old_valid = [True, True, False, True, True]  # class 2 starts without a prototype
    protos.update(old, torch.tensor(old_valid).long())
    rep = t(rep_np).requires_grad_()
    out = weak_contrastive_loss(
        rep, t(cams), t(classes), bank, protos, config, generator=torch.Generator().manual_seed(4)
    )
    out.loss.backward()

    anchor, negative = np_masks(cams, classes, 0.5, config.negatives, config.background)
    rep64 = t(rep_np).double().requires_grad_()
    ref, ref_queues, ref_protos = reference_loss(
        rep64, anchor, negative, queues, capacities, old.double(), old_valid, config, 4
    )
    ref.backward()
    assert out.loss.item() > 0
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert rep.grad is not None and rep64.grad is not None
    torch.testing.assert_close(rep.grad.double(), rep64.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(protos.prototypes.double(), ref_protos, rtol=1e-5, atol=1e-6)
    for c in range(C):
        torch.testing.assert_close(
            bank.queue(c).double(), F.normalize(ref_queues[c], dim=1), msg=f"queue {c}"
        )
    # Gradient only through the anchors: keys and prototypes are detached.
    grad = rep.grad.abs().sum(1)
    assert torch.all(grad[~torch.from_numpy(anchor.any(1))] == 0) and grad.sum() > 0
    assert out.valid_classes.tolist() == anchor.any((0, 2, 3)).tolist()


def test_hand_computed_case() -> None:
    """One image of 4 pixels, one anchor candidate per class and queues of one key: no randomness left."""
    config = options(
        capacity=1, background_capacity=1, num_negatives=1, num_anchors=3, prototype_momentum=0.5
    )
    cams = torch.tensor([[0.875, 0.125, 0.25, 0.375], [0.125, 0.75, 0.25, 0.5]]).view(1, 2, 1, 4)
    classes = torch.tensor([[1, 2]])
    # Background 1 - max = [0.125, 0.25, 0.75, 0.5]. Anchors: bg px2, class 1 px0, class 2 px1 (px3 ties
    # beta for bg and class 2). Newest negatives: bg px1 (of px0, px1), class 1 px3, class 2 px2.
    loss = WeakContrastiveLoss(3, config, dim=3)
    old = torch.tensor([[1.0, 2.0, 0.5], [-1.0, 0.5, 2.0], [0.0, 0.0, 0.0]])
    loss.prototype_bank.update(old, torch.tensor([1, 1, 0]))
    z = torch.tensor([[0.3, -1.2, 0.8], [1.1, 0.4, -0.5], [-0.7, 0.9, 0.2], [0.5, 0.5, 1.5]])
    rep = z.T.reshape(1, 3, 1, 4).clone().requires_grad_()
    out = loss(rep, cams, classes)
    out.loss.backward()

    z64 = z.double().requires_grad_()
    zd = z64.detach()
    positives = [0.5 * old[0].double() + 0.5 * zd[2], 0.5 * old[1].double() + 0.5 * zd[0], zd[1]]
    terms = []
    for c, (a, neg) in enumerate([(2, 1), (0, 3), (1, 2)]):
        p = F.cosine_similarity(z64[a], positives[c], dim=0) / 0.5
        n = F.cosine_similarity(z64[a], zd[neg], dim=0) / 0.5
        terms.append(torch.log1p(torch.exp(n - p)))
    expected = torch.stack(terms).sum() / 3
    expected.backward()
    assert out.loss.item() == pytest.approx(float(expected.detach()), rel=1e-6)
    assert rep.grad is not None and z64.grad is not None
    torch.testing.assert_close(rep.grad[0, :, 0].T.double(), z64.grad, rtol=1e-5, atol=1e-7)
    assert torch.all(rep.grad[..., 3] == 0)  # px3 is only a key
    torch.testing.assert_close(loss.prototype_bank.prototypes.double(), torch.stack(positives))
    for c, neg in enumerate([1, 3, 2]):
        torch.testing.assert_close(loss.memory_bank.queue(c)[0], F.normalize(z[neg], dim=0))
    assert out.active_classes.tolist() == [True, True, True]
    assert {"memory_bank.keys", "prototype_bank.prototypes"} <= set(loss.state_dict())


def test_classes_absent_everywhere_contribute_nothing() -> None:
    """Class 4 is in no image's tags: its queue is filled (it is absent from every pixel) but whatever it
    holds, the loss and the gradient are the same, and it is neither valid nor active."""
    cams, classes = random_cams(5)
    rep_np = np.random.default_rng(6).normal(size=(B, D, H, W)).astype(np.float32)
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    for sizes in ([0, 3, 5, 4, 0], [0, 3, 5, 4, 30]):
        bank, _ = filled_bank(7, [60, 40, 40, 40, 40], sizes)
        before = int(bank.count[4])
        rep = t(rep_np).requires_grad_()
        out = weak_contrastive_loss(
            rep, t(cams), t(classes), bank, PrototypeBank(C, D), options(), torch.Generator().manual_seed(8)
        )
        out.loss.backward()
        assert int(bank.count[4]) == min(before + B * H * W, 40)
        assert not out.valid_classes[4] and not out.active_classes[4]
        assert rep.grad is not None
        results.append((out.loss.detach(), rep.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("max_keys", [None, 16])
def test_accelerator_paths_give_the_same_loss(max_keys: int | None) -> None:
    cams, classes = random_cams(9)
    rep = torch.randn(B, D, H, W, generator=torch.Generator().manual_seed(10))
    losses = []
    for padded in (False, True):
        loss = WeakContrastiveLoss(C, options(max_keys_per_step=max_keys), dim=D)
        with accelerator_paths(padded):
            for step in range(2):
                out = loss(rep, t(cams), t(classes), torch.Generator().manual_seed(step))
        losses.append(out.loss)
        assert out.keys.shape[0] == (max_keys or out.keys.shape[0])
    assert torch.equal(losses[0], losses[1])


def test_bad_options_and_inputs_name_the_field() -> None:
    for beta in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"contrastive\.beta = .*expected a CAM score in \(0, 1\)"):
            WeakContrastiveConfig(beta=beta)
    with pytest.raises(ValueError, match=r"contrastive\.negatives"):
        WeakContrastiveConfig(negatives="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"contrastive\.capacity = 10; expected >= num_negatives \(50\)"):
        WeakContrastiveConfig(capacity=10)
    with pytest.raises(ValueError, match=r"contrastive\.temperature"):
        WeakContrastiveConfig(temperature=0.0)
    cams, classes = (t(a) for a in random_cams(11))
    with pytest.raises(ValueError, match="beta must be a CAM score in"):
        weak_contrastive_masks(cams, classes, C, 1.0)
    with pytest.raises(
        ValueError, match=r"classes holds foreground class indices 1\.\.4 or -1 \(padding\); got \[0, 5\]"
    ):
        weak_contrastive_masks(cams, torch.tensor([[0, 1, -1], [5, 2, 2], [-1, -1, -1]]), C, 0.5)
    with pytest.raises(ValueError, match=r"cams must be \(B, K, h, w\) and classes \(B, K\)"):
        weak_contrastive_masks(cams, classes[:, :2], C, 0.5)
    bank = CategoryMemoryBank(C, D, capacity=50, background_capacity=50)
    with pytest.raises(ValueError, match="on the same grid"):
        weak_contrastive_loss(torch.randn(B, D, H + 1, W), cams, classes, bank, None, options())
    with pytest.raises(ValueError, match="memory_bank holds 5 classes of 6-d keys"):
        weak_contrastive_loss(torch.randn(B, D + 1, H, W), cams, classes, bank, None, options())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host syncs")
@pytest.mark.parametrize("max_keys", [None, 16])
def test_weak_loss_does_not_sync_on_cuda(max_keys: int | None) -> None:
    cams, classes = (t(a).cuda() for a in random_cams(12))
    rep = torch.randn(B, D, H, W, device="cuda", requires_grad=True)
    loss = WeakContrastiveLoss(C, options(max_keys_per_step=max_keys), dim=D).cuda()
    generator = torch.Generator("cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            loss(rep, cams, classes, generator).loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
