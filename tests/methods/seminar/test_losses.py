from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.references import np_softmax, random_seg, t
from wsss_lightning.methods.seminar.losses import consistency_mse, partial_ce, pseudo_label_ce


def np_ce(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel CE (B, H, W); target must be valid everywhere."""
    logp = np.log(np_softmax(logits.astype(np.float64)))
    return -np.take_along_axis(logp, target[:, None], 1)[:, 0]


@pytest.mark.parametrize("batch_average", [True, False])
def test_partial_ce_matches_numpy(batch_average):
    logits, target, _ = random_seg(0, b=3, ignore=0.9)  # sparse "clicks"
    valid = target != 255
    ce = np_ce(logits, np.where(valid, target, 0))
    expected = ce[valid].mean() / (3 if batch_average else 1)
    got = partial_ce(t(logits), t(target), batch_average=batch_average)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_partial_ce_without_clicks_is_zero_with_a_finite_gradient():
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    loss = partial_ce(logits, torch.full((2, 5, 5), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and not logits.grad.any()


@pytest.mark.parametrize("reduction", ["elements", "classes"])
def test_consistency_mse_matches_numpy_with_and_without_region(reduction):
    rng = np.random.default_rng(1)
    s = np_softmax(rng.normal(size=(2, 5, 4, 6))).astype(np.float32)
    tt = np_softmax(rng.normal(size=(2, 5, 4, 6))).astype(np.float32)
    region = rng.random((2, 4, 6)) < 0.7
    per_pixel = ((s.astype(np.float64) - tt) ** 2).sum(1) / (5 if reduction == "elements" else 1)
    assert float(consistency_mse(t(s), t(tt), reduction=reduction)) == pytest.approx(
        per_pixel.mean(), rel=1e-5
    )
    got = consistency_mse(t(s), t(tt), t(region), reduction=reduction)
    assert float(got) == pytest.approx(per_pixel[region].mean(), rel=1e-5)
    if reduction == "elements":  # the F.mse_loss convention
        assert float(consistency_mse(t(s), t(tt))) == pytest.approx(
            float(torch.nn.functional.mse_loss(t(s), t(tt)))
        )


def test_consistency_gradient_reaches_the_student_only():
    s = torch.rand(1, 3, 2, 2, requires_grad=True)
    teacher = torch.rand(1, 3, 2, 2, requires_grad=True)
    consistency_mse(s, teacher).backward()
    assert s.grad is not None and teacher.grad is None


def test_pseudo_label_ce_matches_numpy_and_masks_padding():
    logits, _, teacher = random_seg(2, b=2)
    labels = teacher.argmax(1)
    region = np.ones(labels.shape, bool)
    region[:, -2:] = False  # padding rows
    ce = np_ce(logits, labels)
    assert float(pseudo_label_ce(t(logits), t(labels))) == pytest.approx(ce.mean(), rel=1e-5)
    got = pseudo_label_ce(t(logits), t(labels), t(region), batch_average=True)
    assert float(got) == pytest.approx(ce[region].mean() / 2, rel=1e-5)


def test_shape_errors_name_the_function():
    with pytest.raises(ValueError, match="partial_ce"):
        partial_ce(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="consistency_mse"):
        consistency_mse(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="reduction"):
        consistency_mse(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), reduction="sum")  # type: ignore[arg-type]
