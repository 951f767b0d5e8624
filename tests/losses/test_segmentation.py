"""Shared segmentation losses against NumPy references (U2PL's and ToCo's helpers written out)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.references import np_ce_rce, np_pixel_ce, np_softmax, random_labels, random_seg, t
from wsss_lightning.losses import balanced_seg_ce, classification_loss, ohem_ce, symmetric_ce


def test_symmetric_ce_matches_numpy() -> None:
    logits, target, _ = random_seg(3)
    ce, rce = np_ce_rce(logits, target)
    valid = target != 255
    ref = (1.0 * ce + 0.5 * rce)[valid].mean()
    assert float(symmetric_ce(t(logits), t(target), 1.0, 0.5)) == pytest.approx(ref, rel=1e-5)
    per_pixel = symmetric_ce(t(logits), t(target), 1.0, 0.5, reduction="none").numpy()
    np.testing.assert_allclose(per_pixel, np.where(valid, ce + 0.5 * rce, 0.0), rtol=1e-5, atol=1e-6)


def np_ohem(logits: np.ndarray, target: np.ndarray, thresh: float, min_kept: int) -> float:
    """U2PL's ``OhemCrossEntropy2dTensor`` in NumPy."""
    c = logits.shape[1]
    prob = np_softmax(logits.astype(np.float64)).transpose(1, 0, 2, 3).reshape(c, -1)
    tgt = target.reshape(-1).copy()
    valid = tgt != 255
    tgt = tgt * valid
    num_valid = valid.sum()
    if min_kept <= num_valid and num_valid > 0:
        prob[:, ~valid] = 1
        mask_prob = prob[tgt, np.arange(len(tgt))]
        threshold = thresh
        index = np.argsort(mask_prob, kind="stable")
        threshold_index = index[min(len(index), min_kept) - 1]
        if mask_prob[threshold_index] > thresh:
            threshold = mask_prob[threshold_index]
        valid = valid & (mask_prob <= threshold)
    ce, _ = np_ce_rce(logits, np.where(valid, tgt, 255).reshape(target.shape))
    return float(ce.reshape(-1)[valid].mean())


@pytest.mark.parametrize("min_kept", [1, 10, 40, 1000])
def test_ohem_matches_numpy(min_kept: int) -> None:
    logits, target, _ = random_seg(6, b=2, h=8, w=8)
    out = ohem_ce(t(logits), t(target), 0.7, min_kept)
    assert float(out) == pytest.approx(np_ohem(logits, target, 0.7, min_kept), rel=1e-5)


def test_classification_loss_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6)) * 3
    tags = (rng.random((3, 6)) < 0.4).astype(np.float64)
    sig = 1 / (1 + np.exp(-logits))
    ref = -(tags * np.log(sig) + (1 - tags) * np.log(1 - sig)).mean(1).mean()
    out = classification_loss(t(logits.astype(np.float32)), t(tags.astype(np.float32)))
    assert out.shape == ()
    assert float(out) == pytest.approx(ref, rel=1e-5)
    # Integer / bool tags are accepted.
    out_bool = classification_loss(t(logits.astype(np.float32)), t(tags > 0))
    assert float(out_bool) == pytest.approx(ref, rel=1e-5)


def test_classification_loss_shape_error() -> None:
    with pytest.raises(ValueError, match="tags"):
        classification_loss(torch.zeros(2, 5), torch.zeros(2, 4))


def np_balanced_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    ce = np_pixel_ce(logits, labels)
    bg = labels == 0
    fg = (labels != 0) & (labels != 255)
    return 0.5 * (ce[bg].sum() / (bg.sum() + 1e-6) + ce[fg].sum() / (fg.sum() + 1e-6))


def test_balanced_seg_ce_matches_numpy() -> None:
    rng = np.random.default_rng(6)
    logits = (rng.normal(size=(2, 4, 5, 6)) * 2).astype(np.float32)
    labels = random_labels(rng, (2, 5, 6), 4)
    out = balanced_seg_ce(t(logits), t(labels.astype(np.uint8)))
    assert float(out) == pytest.approx(np_balanced_ce(logits, labels), rel=1e-5)


def test_balanced_seg_ce_balances_bg_and_fg() -> None:
    # One fg pixel weighs as much as all the background pixels together.
    logits = torch.zeros(1, 3, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = 2
    logits[0, 0] = 5.0  # confident background everywhere, wrong on the fg pixel
    ce_bg = -torch.log_softmax(torch.tensor([5.0, 0.0, 0.0]), 0)[0]
    ce_fg = -torch.log_softmax(torch.tensor([5.0, 0.0, 0.0]), 0)[2]
    assert float(balanced_seg_ce(logits, labels)) == pytest.approx(float(0.5 * (ce_bg + ce_fg)), rel=1e-5)


def test_balanced_seg_ce_edge_cases() -> None:
    rng = np.random.default_rng(7)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 4, 4)).astype(np.float32)).requires_grad_(True)
    # No foreground: only the bg half counts.
    bg_only = t(np.where(rng.random((2, 4, 4)) < 0.3, 255, 0))
    ref = np_balanced_ce(logits.detach().numpy(), bg_only.numpy())
    assert float(balanced_seg_ce(logits.detach(), bg_only)) == pytest.approx(ref, rel=1e-5)
    # Everything ignored: zero, finite, and still attached to the graph.
    loss = balanced_seg_ce(logits, torch.full((2, 4, 4), 255))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_balanced_seg_ce_requires_label_size() -> None:
    with pytest.raises(ValueError, match="label size"):
        balanced_seg_ce(torch.zeros(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))


def test_balanced_seg_ce_of_shared_log_probabilities_is_bitwise_the_same() -> None:
    """DuPL shares one log-softmax between its noise filter and ``L_seg``: loss and gradient are unchanged."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (2, 8, 8), generator=g)
    labels[0, :2] = 255
    direct = balanced_seg_ce(logits, labels)
    (grad_direct,) = torch.autograd.grad(direct, logits)
    shared = balanced_seg_ce(F.log_softmax(logits, dim=1), labels, log_probs=True)
    (grad_shared,) = torch.autograd.grad(shared, logits)
    torch.testing.assert_close(shared, direct, rtol=0, atol=0)
    torch.testing.assert_close(grad_shared, grad_direct, rtol=0, atol=0)
