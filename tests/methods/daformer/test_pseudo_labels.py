"""DAFormer's pseudo-label weights and weighted cross-entropy against loop-based NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_lightning.methods.daformer.pseudo_labels import pseudo_label_weights, weighted_ce


def _prob(seed: int, b: int = 3, c: int = 4, h: int = 20, w: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # sharp logits so that a fair share of pixels passes the threshold
    return torch.softmax(torch.randn((b, c, h, w), generator=g, dtype=torch.float64) * 4.0, dim=1)


def _weights_numpy(prob: np.ndarray, tau: float, top: int, bottom: int, per_image: bool):
    b, _, h, w = prob.shape
    labels = np.zeros((b, h, w), dtype=np.int64)
    confident = np.zeros((b, h, w), dtype=bool)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                labels[i, y, x] = int(np.argmax(prob[i, :, y, x]))
                confident[i, y, x] = prob[i, :, y, x].max() >= tau
    weight = np.zeros((b, h, w))
    for i in range(b):
        q = confident[i].mean() if per_image else confident.mean()
        for y in range(h):
            in_band = y < top or y >= h - bottom
            weight[i, y, :] = 0.0 if in_band else q
    return labels, weight


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize(("top", "bottom"), [(3, 5), (0, 0), (15, 120), (12, 9)])
def test_weights_match_numpy(per_image: bool, top: int, bottom: int) -> None:
    prob = _prob(0)
    labels, weight = pseudo_label_weights(prob, 0.968, top, bottom, per_image=per_image)
    expected_labels, expected_weight = _weights_numpy(prob.numpy(), 0.968, top, bottom, per_image)
    assert labels.dtype == torch.int64 and weight.dtype == torch.float64
    assert labels.shape == weight.shape == (3, 20, 6)
    np.testing.assert_array_equal(labels.numpy(), expected_labels)
    np.testing.assert_allclose(weight.numpy(), expected_weight, atol=1e-12)


def test_quality_counts_the_rows_that_are_zeroed() -> None:
    """Confident pixels only in the top band still raise the quality of the kept rows."""
    prob = torch.full((1, 2, 10, 4), 0.5)
    prob[0, 0, :2] = 1.0
    prob[0, 1, :2] = 0.0
    _, weight = pseudo_label_weights(prob, 0.968, ignore_top=2, ignore_bottom=0)
    assert torch.allclose(weight[0, 2:], torch.full((8, 4), 0.2))
    assert (weight[0, :2] == 0).all()


def test_threshold_is_inclusive() -> None:
    prob = torch.tensor([[[[0.968]], [[0.032]]]], dtype=torch.float64)
    _, weight = pseudo_label_weights(prob, 0.968, 0, 0)
    assert weight.item() == 1.0


def test_bad_bands_are_rejected() -> None:
    with pytest.raises(ValueError, match="ignore_top"):
        pseudo_label_weights(_prob(0), ignore_top=-1)


def test_weighted_ce_matches_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn((2, 5, 4, 3), generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 4, 3), generator=g)
    labels[0, 0] = 255
    weight = torch.rand((2, 4, 3), generator=g, dtype=torch.float64)
    out = weighted_ce(logits, labels, weight)
    lg, lb, wt = logits.numpy(), labels.numpy(), weight.numpy()
    total = 0.0
    for i in range(2):
        for y in range(4):
            for x in range(3):
                if lb[i, y, x] == 255:
                    continue  # zero loss, still counted in the denominator
                z = lg[i, :, y, x]
                log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
                total += -log_p[lb[i, y, x]] * wt[i, y, x]
    assert out.dtype == torch.float64 and out.ndim == 0
    np.testing.assert_allclose(out.item(), total / lb.size, rtol=1e-12)


def test_weighted_ce_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="weight must be"):
        weighted_ce(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host syncs")
@pytest.mark.parametrize("per_image", [True, False])
def test_cuda_matches_cpu_without_host_sync(per_image: bool) -> None:
    prob = _prob(3)
    labels, weight = pseudo_label_weights(prob, per_image=per_image, ignore_top=2, ignore_bottom=4)
    logits = prob.log()
    expected = weighted_ce(logits, labels, weight)
    cuda_prob = prob.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        cuda_labels, cuda_weight = pseudo_label_weights(
            cuda_prob, per_image=per_image, ignore_top=2, ignore_bottom=4
        )
        loss = weighted_ce(cuda_prob.log(), cuda_labels, cuda_weight)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(cuda_labels.cpu(), labels)
    assert torch.allclose(cuda_weight.cpu(), weight)
    assert torch.allclose(loss.cpu(), expected)
