from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import NoSyncMode, forbid_host_reads
from tests.references import np_log_softmax, np_softmax, t
from wsss_lightning.losses.dense_crf import dense_crf_loss
from wsss_lightning.losses.segmentation import balanced_seg_ce
from wsss_lightning.methods.asdt.losses import bg_fg_ce, structure_gate


def np_rrm_ce(logits: np.ndarray, labels: np.ndarray) -> float:
    """RRM's seg loss: CE mean over bg pixels + CE mean over fg pixels of the batch, a side without pixels 0."""
    logp = np_log_softmax(logits.astype(np.float64), axis=1)
    safe = np.where(labels == 255, 0, labels)
    ce = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    total = 0.0
    for side in (labels == 0, (labels != 0) & (labels != 255)):
        if side.any():
            total += ce[side].mean()
    return float(total)


def np_gate(probs: np.ndarray, labels: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """RRM DenseEnergyLoss.py: Gate = ROI - max_k(S_k * ROI); Gate[label == 255] = 1; Gate[Gate < 0] = 0."""
    gate = roi - (probs * roi[:, None]).max(axis=1)
    gate[labels == 255] = 1.0
    gate[gate < 0] = 0.0
    return np.asarray(gate * roi)  # outside the ROI the energy and its gradient vanish whatever the gate


def labels_with(
    rng: np.random.Generator, shape: tuple[int, ...], classes: int, p_ignore: float
) -> np.ndarray:
    labels = rng.integers(0, classes, size=shape)
    return np.where(rng.random(shape) < p_ignore, 255, labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bg_fg_ce_matches_rrm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(3, 5, 6, 7)) * 3).astype(np.float32)
    labels = labels_with(rng, (3, 6, 7), 5, 0.3)
    out = bg_fg_ce(t(logits), t(labels))
    assert float(out) == pytest.approx(np_rrm_ce(logits, labels), rel=1e-5)
    # twice ToCo's balanced CE, whose default scale is unchanged
    assert float(out) == pytest.approx(2 * float(balanced_seg_ce(t(logits), t(labels))), rel=1e-6)


def test_bg_fg_ce_degenerate_batches_are_finite_without_host_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    logits_np = rng.normal(size=(2, 4, 5, 5)).astype(np.float32)
    no_fg = np.where(rng.random((2, 5, 5)) < 0.4, 255, 0)
    no_bg = np.where(rng.random((2, 5, 5)) < 0.3, 255, rng.integers(1, 4, size=(2, 5, 5)))
    nothing = np.full((2, 5, 5), 255)
    forbid_host_reads(monkeypatch)
    for labels in (no_fg, no_bg, nothing):
        logits = t(logits_np).requires_grad_(True)
        with NoSyncMode():
            loss = bg_fg_ce(logits, t(labels))
            loss.backward()  # type: ignore[no-untyped-call]
        monkeypatch.undo()
        assert np.isfinite(float(loss.detach()))
        assert float(loss.detach()) == pytest.approx(np_rrm_ce(logits_np, labels), rel=1e-5, abs=1e-7)
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        if labels is nothing:
            assert torch.count_nonzero(logits.grad) == 0
        forbid_host_reads(monkeypatch)


@pytest.mark.parametrize("with_roi", [True, False])
def test_structure_gate_matches_rrm(with_roi: bool) -> None:
    rng = np.random.default_rng(4)
    probs = np_softmax(rng.normal(size=(2, 4, 6, 5)) * 2, axis=1).astype(np.float32)
    labels = labels_with(rng, (2, 6, 5), 4, 0.4)
    roi = (rng.random((2, 6, 5)) < 0.8).astype(np.float32) if with_roi else np.ones((2, 6, 5), np.float32)
    probs_t = t(probs).requires_grad_(True)
    with NoSyncMode():
        gate = structure_gate(probs_t, t(labels), t(roi > 0) if with_roi else None)
    assert gate.shape == (2, 6, 5) and gate.dtype == torch.float32 and not gate.requires_grad
    np.testing.assert_allclose(gate.numpy(), np_gate(probs, labels, roi), rtol=1e-6, atol=1e-7)
    assert float(gate.min()) >= 0.0 and float(gate.max()) <= 1.0
    # unlabelled pixels inside the ROI get the full energy, labelled ones 1 - max S
    inside = roi > 0
    np.testing.assert_array_equal(gate.numpy()[(labels == 255) & inside], 1.0)
    np.testing.assert_allclose(
        gate.numpy()[(labels != 255) & inside], 1.0 - probs.max(axis=1)[(labels != 255) & inside], rtol=1e-6
    )


def test_structure_gate_is_zero_on_certain_pixels_and_outside_the_roi() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.5, 0.5], [1.25, 0.0]]).T.reshape(1, 2, 1, 4)
    labels = torch.tensor([[[0, 1, 255, 0]]])
    gate = structure_gate(probs, labels, torch.tensor([[[True, True, False, True]]]))
    # certain -> 0; uncertain -> 1 - max S; padding -> 0 even unlabelled; a score above 1 is clamped to 0
    torch.testing.assert_close(gate, torch.tensor([[[0.0, 0.3, 0.0, 0.0]]]))


def test_gated_structure_loss_is_rrms_energy() -> None:
    """``dense_crf_loss(gate=structure_gate(...))`` = -(w/B) sum_k S~_k^T (G * W S~_k) (RRM DenseEnergyLoss)."""
    rng = np.random.default_rng(5)
    b, k, h, w = 2, 3, 5, 6
    images = rng.integers(0, 256, size=(b, 3, h, w)).astype(np.float64)
    probs = np_softmax(rng.normal(size=(b, k, h, w)), axis=1)
    labels = labels_with(rng, (b, h, w), k, 0.5)
    roi = (rng.random((b, h, w)) < 0.85).astype(np.float64)
    sigma_rgb, sigma_xy, weight = 15.0, 4.0, 1e-3

    gate = structure_gate(t(probs), t(labels), t(roi))
    loss = dense_crf_loss(
        t(images), t(probs), t(roi), weight=weight, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, scale=1.0,
        kernel="exact", calibration=1.0, gate=gate,
    )  # fmt: skip

    ys, xs = np.mgrid[0:h, 0:w]
    position = np.stack([xs, ys], -1).reshape(-1, 2) / sigma_xy
    expected = 0.0
    g = np_gate(probs, labels, roi)
    for i in range(b):
        colour = images[i].reshape(3, -1).T / sigma_rgb
        features = np.concatenate([position, colour], 1)
        kernel = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
        seg = (probs[i] * roi[i]).reshape(k, -1)
        expected -= float(np.sum(seg * (g[i].reshape(1, -1) * (seg @ kernel.T))))
    assert float(loss) == pytest.approx(weight * expected / b, rel=1e-6)
