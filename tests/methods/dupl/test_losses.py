from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from tests.references import np_log_softmax, np_pixel_ce, random_labels, t
from wsss_lightning.losses import balanced_seg_ce, classification_loss
from wsss_lightning.methods.dupl.losses import (
    consistency_loss,
    discrepancy_loss,
    patch_contrast_loss,
)


def np_cos(a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Cosine along the last axis, each side normalised with max(norm, eps)."""
    na = np.maximum(np.linalg.norm(a, axis=-1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=-1), eps)
    return (a * b).sum(-1) / (na * nb)


# --- classification ----------------------------------------------------------------------------------------------


# --- patch-token contrast ----------------------------------------------------------------------------------------


def np_ptc(features: np.ndarray, affinity: np.ndarray) -> float:
    b, d, h, w = features.shape
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = 0
    for i in range(b):
        tok = features[i].reshape(d, h * w).T.astype(np.float64)
        tok = tok / np.maximum(np.linalg.norm(tok, axis=1, keepdims=True), 1e-8)
        c = np.abs(tok @ tok.T)
        pos_sum += c[affinity[i] == 1].sum()
        neg_sum += c[affinity[i] == 0].sum()
        n_pos += int((affinity[i] == 1).sum())
        n_neg += int((affinity[i] == 0).sum())
    return 0.5 * (1 - pos_sum / (n_pos + 1)) + 0.5 * neg_sum / (n_neg + 1)


def random_affinity(rng: np.random.Generator, b: int, n: int, num_labels: int = 3) -> np.ndarray:
    labels = rng.integers(0, num_labels, size=(b, n))
    labels[rng.random((b, n)) < 0.2] = 255
    aff = (labels[:, :, None] == labels[:, None, :]).astype(np.int64)
    aff[(labels[:, :, None] == 255) | (labels[:, None, :] == 255)] = 255
    aff[:, np.arange(n), np.arange(n)] = 255
    return aff


def test_patch_contrast_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(2, 8, 3, 4)).astype(np.float32)
    aff = random_affinity(rng, 2, 12)
    out = patch_contrast_loss(t(feats), t(aff))
    assert float(out) == pytest.approx(np_ptc(feats, aff), rel=1e-5)


def test_patch_contrast_uses_absolute_cosine() -> None:
    # Two anti-parallel tokens labelled "same" are already perfect: |cos| = 1.
    feats = torch.tensor([1.0, -1.0]).view(1, 1, 1, 2).repeat(1, 3, 1, 1)
    aff = torch.tensor([[[255, 1], [1, 255]]])
    assert float(patch_contrast_loss(feats, aff)) == pytest.approx(0.5 * (1 - 2 / 3))


def test_patch_contrast_edge_cases() -> None:
    rng = np.random.default_rng(2)
    feats = torch.from_numpy(rng.normal(size=(2, 4, 2, 3)).astype(np.float32)).requires_grad_(True)
    n = 6
    # No pair labelled at all: constant 0.5 and zero gradient.
    all_ignore = torch.full((2, n, n), 255)
    loss = patch_contrast_loss(feats, all_ignore)
    assert float(loss.detach()) == pytest.approx(0.5)
    loss.backward()
    assert feats.grad is not None and torch.count_nonzero(feats.grad) == 0
    # Only negatives: 0.5 + 0.5 * mean-ish of |cos| over negatives.
    only_neg = torch.zeros(2, n, n, dtype=torch.long)
    ref = np_ptc(feats.detach().numpy(), only_neg.numpy())
    assert float(patch_contrast_loss(feats.detach(), only_neg)) == pytest.approx(ref, rel=1e-5)
    assert ref > 0.5
    # Only positives.
    only_pos = torch.ones(2, n, n, dtype=torch.long)
    ref = np_ptc(feats.detach().numpy(), only_pos.numpy())
    assert float(patch_contrast_loss(feats.detach(), only_pos)) == pytest.approx(ref, rel=1e-5)
    assert ref < 0.5


def test_patch_contrast_shape_error() -> None:
    with pytest.raises(ValueError, match="affinity"):
        patch_contrast_loss(torch.zeros(1, 4, 2, 3), torch.zeros(1, 5, 5))


# --- discrepancy -------------------------------------------------------------------------------------------------


def np_discrepancy(f1: np.ndarray, f2: np.ndarray, form: str) -> float:
    b, d = f1.shape[:2]
    a = f1.reshape(b, d, -1).astype(np.float64)
    c = f2.reshape(b, d, -1).astype(np.float64)
    cos = np_cos(a, c, 1e-6)  # symmetric in its arguments; (B, D)
    if form == "cosine":
        return 2 * (1 + cos.mean())
    return 2 * (-np.log(np.maximum(1 - cos, 1e-6))).mean()


@pytest.mark.parametrize("form", ["cosine", "log"])
def test_discrepancy_matches_numpy(form: str) -> None:
    rng = np.random.default_rng(3)
    f1 = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    f2 = (f1 * 0.5 + rng.normal(size=f1.shape)).astype(np.float32)
    out = discrepancy_loss(t(f1), t(f2), form=form)  # type: ignore[arg-type]
    assert float(out) == pytest.approx(np_discrepancy(f1, f2, form), rel=1e-5)


def test_discrepancy_is_spatial_per_channel() -> None:
    # Channel maps that are identical up to a positive scale have cosine 1 whatever happens across channels.
    rng = np.random.default_rng(4)
    f1 = torch.from_numpy(rng.normal(size=(2, 3, 4, 4)).astype(np.float32))
    scales = torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1)
    assert float(discrepancy_loss(f1, f1 * scales)) == pytest.approx(4.0, abs=1e-5)
    assert float(discrepancy_loss(f1, -f1 * scales)) == pytest.approx(0.0, abs=1e-5)
    assert float(discrepancy_loss(f1, -f1, form="log")) == pytest.approx(-2 * np.log(2), abs=1e-5)
    # Identical maps under the log form: 1 - cos is clamped, so the loss is large but finite.
    same = discrepancy_loss(f1, f1, form="log")
    assert torch.isfinite(same) and float(same) > 20


@pytest.mark.parametrize("form", ["cosine", "log"])
def test_discrepancy_gradient_goes_to_the_non_detached_side(form: str) -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    b = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    f1 = t(a).requires_grad_(True)
    f2 = t(b).requires_grad_(True)
    discrepancy_loss(f1, f2, form=form).backward()  # type: ignore[arg-type]

    def term(target: torch.Tensor, online: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.cosine_similarity(target.flatten(2), online.flatten(2), dim=-1, eps=1e-6)
        return 1 + cos.mean() if form == "cosine" else -torch.log(1 - cos).mean()

    # f2's gradient is that of d(sg(f1), f2) alone, f1's that of d(sg(f2), f1) alone: not the full symmetric
    # gradient (which would be twice as large, as the term is symmetric in its arguments).
    g2 = t(b).requires_grad_(True)
    term(t(a), g2).backward()
    g1 = t(a).requires_grad_(True)
    term(t(b), g1).backward()
    assert f1.grad is not None and f2.grad is not None
    torch.testing.assert_close(f2.grad, g2.grad)
    torch.testing.assert_close(f1.grad, g1.grad)
    assert float(f1.grad.abs().sum()) > 0


def test_discrepancy_errors() -> None:
    with pytest.raises(ValueError, match="f1 and f2"):
        discrepancy_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="form"):
        discrepancy_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), form="l2")  # type: ignore[arg-type]


# --- balanced segmentation CE ------------------------------------------------------------------------------------


# --- consistency -------------------------------------------------------------------------------------------------


def np_consistency(strong: np.ndarray, clean: np.ndarray, sup: np.ndarray, confidence: float | None) -> float:
    logp = np_log_softmax(clean.astype(np.float64))
    prob = np.exp(logp)
    mask = sup == 255
    if confidence is not None:
        mask &= prob.max(1) > confidence
    target = clean.argmax(1)
    ce = np_pixel_ce(strong, target)
    return ce[mask].sum() / max(mask.sum(), 1)


@pytest.mark.parametrize("confidence", [0.9, 0.6, None])
def test_consistency_matches_numpy(confidence: float | None) -> None:
    rng = np.random.default_rng(8)
    strong = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    clean = (rng.normal(size=(2, 4, 6, 5)) * 3).astype(np.float32)
    sup = random_labels(rng, (2, 6, 5), 4, ignore=0.5)
    out = consistency_loss(t(strong), t(clean), t(sup), confidence=confidence)
    ref = np_consistency(strong, clean, sup, confidence)
    assert ref > 0
    assert float(out) == pytest.approx(ref, rel=1e-5)
    # the gate read from shared log-probabilities
    log_probs = torch.log_softmax(t(clean), dim=1)
    shared = consistency_loss(t(strong), t(clean), t(sup), confidence=confidence, clean_log_probs=log_probs)
    assert float(shared) == pytest.approx(ref, rel=1e-5)


def test_consistency_gradients_and_empty_mask() -> None:
    rng = np.random.default_rng(9)
    strong = torch.from_numpy(rng.normal(size=(1, 3, 4, 4)).astype(np.float32)).requires_grad_(True)
    clean = torch.from_numpy(rng.normal(size=(1, 3, 4, 4)).astype(np.float32)).requires_grad_(True)
    sup = torch.full((1, 4, 4), 255)
    consistency_loss(strong, clean, sup, confidence=None).backward()
    assert clean.grad is None  # the target side is detached
    assert strong.grad is not None and float(strong.grad.abs().sum()) > 0
    # No ignored pixel -> empty mask -> a zero that is still attached to strong_logits.
    strong.grad = None
    loss = consistency_loss(strong, clean, torch.zeros(1, 4, 4, dtype=torch.long))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert strong.grad is not None and torch.count_nonzero(strong.grad) == 0
    # A gate nothing passes also empties the mask.
    assert float(consistency_loss(strong, clean, sup, confidence=1.0).detach()) == 0.0
    log_probs = torch.log_softmax(clean, dim=1)
    assert (
        float(consistency_loss(strong, clean, sup, confidence=1.0, clean_log_probs=log_probs).detach()) == 0.0
    )
    everything = consistency_loss(strong, clean, sup, confidence=0.0, clean_log_probs=log_probs)
    assert float(everything.detach()) == pytest.approx(
        float(consistency_loss(strong, clean, sup, None).detach())
    )


def test_consistency_shape_errors() -> None:
    with pytest.raises(ValueError, match="clean_logits"):
        consistency_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="strong_logits"):
        consistency_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_losses_on_cuda_match_cpu() -> None:
    rng = np.random.default_rng(10)
    feats = t(rng.normal(size=(2, 8, 3, 4)).astype(np.float32))
    aff = t(random_affinity(rng, 2, 12))
    logits = t(rng.normal(size=(2, 4, 5, 6)).astype(np.float32))
    strong = t(rng.normal(size=(2, 4, 5, 6)).astype(np.float32))
    labels = t(random_labels(rng, (2, 5, 6), 4, ignore=0.5))
    tags = t((rng.random((2, 4)) < 0.5).astype(np.float32))
    cases: list[tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = [
        (classification_loss, (logits[:, :, 0, 0], tags)),
        (patch_contrast_loss, (feats, aff)),
        (discrepancy_loss, (feats, feats.flip(-1))),
        (balanced_seg_ce, (logits, labels)),
        (consistency_loss, (strong, logits, labels)),
    ]
    for fn, args in cases:
        cpu = fn(*args)
        gpu = fn(*(a.cuda() for a in args))
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)
