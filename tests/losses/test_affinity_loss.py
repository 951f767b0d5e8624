from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from wsss_lightning.losses.affinity import affinity_loss
from wsss_lightning.pseudo_labels.cam import affinity_labels


def np_affinity_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    pos_sum = neg_sum = 0.0
    n_pos = n_neg = 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            for j in range(logits.shape[2]):
                s = 1.0 / (1.0 + np.exp(-logits[b, i, j]))
                if labels[b, i, j] == 1:
                    pos_sum, n_pos = pos_sum + (1.0 - s), n_pos + 1
                elif labels[b, i, j] == 0:
                    neg_sum, n_neg = neg_sum + s, n_neg + 1
    return 0.5 * pos_sum / (n_pos + 1) + 0.5 * neg_sum / (n_neg + 1)


def torch_loop_reference(logits: Tensor, labels: Tensor) -> Tensor:
    """The same per-pair loop in torch double, for autograd."""
    pos_terms, neg_terms = [], []
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            for j in range(logits.shape[2]):
                s = torch.sigmoid(logits[b, i, j])
                if labels[b, i, j] == 1:
                    pos_terms.append(1.0 - s)
                elif labels[b, i, j] == 0:
                    neg_terms.append(s)
    zero = logits.sum() * 0
    pos = sum(pos_terms, zero) / (len(pos_terms) + 1)
    neg = sum(neg_terms, zero) / (len(neg_terms) + 1)
    return 0.5 * pos + 0.5 * neg


def case(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    token_labels = torch.randint(0, 3, (2, 3, 4), generator=g)
    token_labels[0, 0, :2] = 255
    labels = affinity_labels(token_labels, radius=2, diagonal="positive")
    logits = torch.randn(2, 12, 12, generator=g, dtype=torch.float64) * 3
    return logits, labels


def test_affinity_loss_matches_numpy_and_its_gradient_autograd_of_the_loop() -> None:
    logits, labels = case(0)
    assert {0, 1, 255} <= set(labels.unique().tolist())
    leaf = logits.clone().requires_grad_()
    loss = affinity_loss(leaf, labels)
    assert loss.ndim == 0 and loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), np_affinity_loss(logits.numpy(), labels.numpy()), rtol=1e-12)
    (grad,) = torch.autograd.grad(loss, leaf)
    ref_leaf = logits.clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(torch_loop_reference(ref_leaf, labels), ref_leaf)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)
    assert (
        (grad[labels == 255] == 0).all() and (grad[labels == 1] < 0).all() and (grad[labels == 0] > 0).all()
    )


def np_affinitynet_balance(logits: np.ndarray, labels: np.ndarray, token_labels: np.ndarray) -> float:
    """AffinityNet's Eq. 7 balance of AFA's terms, pair by pair: bg-bg positives, fg-fg positives, negatives."""
    sums = {"bg": 0.0, "fg": 0.0, "neg": 0.0}
    counts = {"bg": 0, "fg": 0, "neg": 0}
    for b in range(logits.shape[0]):
        flat = token_labels[b].reshape(-1)
        for i in range(logits.shape[1]):
            for j in range(logits.shape[2]):
                s = 1.0 / (1.0 + np.exp(-logits[b, i, j]))
                if labels[b, i, j] == 1:
                    kind = "bg" if flat[i] == 0 and flat[j] == 0 else "fg"
                    sums[kind], counts[kind] = sums[kind] + (1.0 - s), counts[kind] + 1
                elif labels[b, i, j] == 0:
                    sums["neg"], counts["neg"] = sums["neg"] + s, counts["neg"] + 1
    mean = {k: sums[k] / (counts[k] + 1) for k in sums}
    return 0.25 * mean["bg"] + 0.25 * mean["fg"] + 0.5 * mean["neg"]


def test_affinitynet_balance_matches_numpy_and_weighs_foreground_positives_apart() -> None:
    g = torch.Generator().manual_seed(3)
    token_labels = torch.randint(0, 3, (2, 3, 4), generator=g)
    token_labels[:, :2] = 0  # mostly background, as small objects give
    token_labels[0, 2, :1] = 255
    labels = affinity_labels(token_labels, radius=2, diagonal="positive")
    logits = torch.randn(2, 12, 12, generator=g, dtype=torch.float64) * 3
    background = token_labels.flatten(1) == 0
    leaf = logits.clone().requires_grad_()
    loss = affinity_loss(leaf, labels, background=background)
    reference = np_affinitynet_balance(logits.numpy(), labels.numpy(), token_labels.numpy())
    np.testing.assert_allclose(loss.item(), reference, rtol=1e-12)
    assert abs(loss.item() - affinity_loss(logits, labels).item()) > 1e-3  # a different loss than AFA's
    # a foreground-foreground positive pair weighs more than a background-background one
    (grad,) = torch.autograd.grad(loss, leaf)
    flat = token_labels.flatten(1)
    both_bg = (flat[:, :, None] == 0) & (flat[:, None, :] == 0)
    positive = labels == 1
    scale = torch.sigmoid(logits) * (1 - torch.sigmoid(logits))  # d(1 - s)/dlogit = -scale
    per_pair = -grad / scale
    fg_weight = per_pair[positive & ~both_bg].unique()
    bg_weight = per_pair[positive & both_bg].unique()
    torch.testing.assert_close(fg_weight, fg_weight[:1].expand_as(fg_weight))
    torch.testing.assert_close(bg_weight, bg_weight[:1].expand_as(bg_weight))
    assert fg_weight[0] > bg_weight[0] > 0


def test_affinity_loss_rejects_a_background_of_the_wrong_shape() -> None:
    logits, labels = case(0)
    with pytest.raises(ValueError, match="affinity_loss: background must be a bool"):
        affinity_loss(logits, labels, background=torch.zeros(2, 11, dtype=torch.bool))


def test_affinity_loss_counts_over_the_whole_batch() -> None:
    logits, labels = case(1)
    whole = affinity_loss(logits, labels)
    mean_of_images = (affinity_loss(logits[:1], labels[:1]) + affinity_loss(logits[1:], labels[1:])) / 2
    assert not torch.isclose(whole, mean_of_images)
    np.testing.assert_allclose(whole.item(), np_affinity_loss(logits.numpy(), labels.numpy()), rtol=1e-12)


def test_affinity_loss_without_pairs_is_zero_and_attached() -> None:
    logits = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    loss = affinity_loss(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_affinity_loss_bad_inputs_name_the_argument() -> None:
    logits, labels = case(2)
    with pytest.raises(ValueError, match="affinity_loss: logits must be"):
        affinity_loss(logits[0], labels[0])
    with pytest.raises(ValueError, match="affinity_loss: labels must have the shape"):
        affinity_loss(logits, labels[:1])
    with pytest.raises(ValueError, match="affinity_loss: labels must be integers"):
        affinity_loss(logits, labels.double())
