from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_lightning.methods.u2pl.cutmix import apply_cutmix, cutmix_boxes


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """(N, 4) rows (y0, x0, h, w) of masks that must each be one filled axis-aligned rectangle."""
    rows, cols = np.asarray(masks.any(axis=2)), np.asarray(masks.any(axis=1))
    h, w = rows.sum(1), cols.sum(1)
    y0, x0 = rows.argmax(1), cols.argmax(1)
    assert (masks.sum((1, 2)) == h * w).all(), "a mask is not a filled rectangle"
    # contiguous: last covered row/column - first + 1 equals the count
    assert (rows.shape[1] - rows[:, ::-1].argmax(1) - y0 == h).all()
    assert (cols.shape[1] - cols[:, ::-1].argmax(1) - x0 == w).all()
    return np.stack([y0, x0, h, w], axis=1)


@pytest.mark.parametrize(("height", "width", "n"), [(65, 65, 400), (48, 64, 400), (513, 513, 100)])
def test_boxes_follow_u2pl_generate_cutout_mask(height: int, width: int, n: int) -> None:
    g = torch.Generator().manual_seed(0)
    masks = cutmix_boxes(n, height, width, prob=1.0, generator=g).numpy()
    assert masks.shape == (n, height, width) and masks.dtype == np.bool_
    y0, x0, h, w = boxes_of(masks).T
    low = width // 2 + 1  # np.random.randint(W / 2 + 1, W) truncates the float bound
    assert w.min() >= low and w.max() <= width - 1
    np.testing.assert_array_equal(h, np.round(height * width / 2 / w))  # U2PL: h = round(area / w)
    assert (y0 + h <= height).all() and (x0 + w <= width).all()
    area = h * w / (height * width)
    assert np.abs(area - 0.5).max() < 0.5 * width / (height * width) + 1e-9  # half the area up to rounding
    assert abs(area.mean() - 0.5) < 0.01
    # uniform width and positions: means near the middle of their ranges
    assert abs(w.mean() - (low + width - 1) / 2) < 0.1 * (width - low)
    tolerance = 0.08 if n >= 400 else 0.15
    assert abs((x0 / np.maximum(width - w, 1)).mean() - 0.5) < tolerance
    assert abs((y0 / np.maximum(height - h, 1)).mean() - 0.5) < tolerance


def test_whole_batch_is_mixed_with_probability_half() -> None:
    g = torch.Generator().manual_seed(1)
    draws = torch.stack(
        [cutmix_boxes(4, 16, 16, prob=0.5, generator=g).flatten(1).any(1) for _ in range(1000)]
    )
    assert ((draws.all(1)) | (~draws.any(1))).all()  # all or none within a batch
    assert abs(draws[:, 0].float().mean().item() - 0.5) < 0.05
    per_sample = torch.stack(
        [
            cutmix_boxes(4, 16, 16, prob=0.3, per_sample=True, generator=g).flatten(1).any(1)
            for _ in range(1000)
        ]
    )
    assert abs(per_sample.float().mean().item() - 0.3) < 0.03
    assert not (per_sample.all(1) | ~per_sample.any(1)).all()
    assert not cutmix_boxes(8, 16, 16, prob=0.0, generator=g).any()


def test_boxes_are_reproducible_from_the_generator() -> None:
    a = cutmix_boxes(6, 32, 40, prob=1.0, generator=torch.Generator().manual_seed(7))
    b = cutmix_boxes(6, 32, 40, prob=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def numpy_mix(x: np.ndarray, mask: np.ndarray, partner: np.ndarray) -> np.ndarray:
    out = x.copy()
    for i in range(x.shape[0]):
        m = mask[i] if x.ndim == 3 else np.broadcast_to(mask[i], x.shape[1:])
        out[i][m] = x[partner[i]][m]
    return out


@pytest.mark.parametrize("use_perm", [False, True])
def test_apply_cutmix_matches_numpy_and_keeps_labels_consistent(use_perm: bool) -> None:
    b, h, w = 5, 12, 14
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 21, (b, h, w), generator=g)
    labels[0, :2] = 255
    confidence = torch.rand(b, h, w, generator=g)
    # channel 0 encodes the label and channel 1 the confidence, so consistency is checkable per pixel
    images = torch.stack([labels.float(), confidence, torch.rand(b, h, w, generator=g)], dim=1)
    mask = cutmix_boxes(b, h, w, prob=1.0, generator=g)
    partner = torch.randperm(b, generator=g) if use_perm else None
    originals = [t.clone() for t in (images, labels, confidence)]

    mixed_images, mixed_labels, mixed_conf = apply_cutmix(images, labels, confidence, mask, partner)

    idx = partner.numpy() if partner is not None else (np.arange(b) + 1) % b
    np.testing.assert_array_equal(mixed_labels.numpy(), numpy_mix(labels.numpy(), mask.numpy(), idx))
    np.testing.assert_array_equal(mixed_conf.numpy(), numpy_mix(confidence.numpy(), mask.numpy(), idx))
    np.testing.assert_array_equal(mixed_images.numpy(), numpy_mix(images.numpy(), mask.numpy(), idx))
    assert torch.equal(mixed_images[:, 0], mixed_labels.float())
    assert torch.equal(mixed_images[:, 1], mixed_conf)
    assert mixed_labels.dtype == labels.dtype and mixed_conf.dtype == confidence.dtype
    for before, after in zip(originals, (images, labels, confidence), strict=True):
        assert torch.equal(before, after)  # inputs untouched


def test_batch_of_one_mixes_with_itself() -> None:
    images, labels, conf = torch.rand(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8)), torch.rand(1, 8, 8)
    mask = cutmix_boxes(1, 8, 8, prob=1.0)
    out = apply_cutmix(images, labels, conf, mask)
    assert all(torch.equal(a, b) for a, b in zip(out, (images, labels, conf), strict=True))


def test_bad_inputs_are_reported() -> None:
    with pytest.raises(ValueError, match="too small"):
        cutmix_boxes(2, 8, 2)
    with pytest.raises(ValueError, match="area_ratio"):
        cutmix_boxes(2, 8, 8, area_ratio=1.0)
    images, labels, conf = torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long), torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="labels must be"):
        apply_cutmix(images, labels[:, :4], conf, torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        apply_cutmix(images, labels, conf, torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="partner"):
        apply_cutmix(images, labels, conf, torch.zeros(2, 8, 8, dtype=torch.bool), torch.tensor([0]))
