"""DAFormer's label downscaling and thing-class feature distance against loop-based NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_lightning.methods.daformer.feature_distance import downscale_label_ratio, feature_distance_loss


def _labels(seed: int, b: int = 2, h: int = 12, w: int = 16, num_classes: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, num_classes, (b, h // 4, w // 4), generator=g)
    labels = coarse.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    noise = torch.rand((b, h, w), generator=g)
    labels = torch.where(noise < 0.15, torch.randint(0, num_classes, (b, h, w), generator=g), labels)
    return torch.where(noise > 0.9, 255, labels)


def _downscale_numpy(labels: np.ndarray, h: int, w: int, c: int, min_ratio: float) -> np.ndarray:
    b, big_h, big_w = labels.shape
    bh, bw = big_h // h, big_w // w
    out = np.full((b, h, w), 255, dtype=np.int64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                block = labels[i, y * bh : (y + 1) * bh, x * bw : (x + 1) * bw]
                counts = [(block == k).sum() for k in range(c)] + [(block == 255).sum()]
                best = int(np.argmax(counts))
                if best < c and counts[best] / block.size >= min_ratio:
                    out[i, y, x] = best
    return out


@pytest.mark.parametrize("min_ratio", [0.75, 0.5, 0.3])
@pytest.mark.parametrize("size", [(3, 4), (6, 8), (12, 16), (1, 2)])
def test_downscale_matches_numpy(min_ratio: float, size: tuple[int, int]) -> None:
    labels = _labels(0)
    out = downscale_label_ratio(labels, size, 4, min_ratio)
    assert out.dtype == torch.int64 and out.shape == (2, *size)
    np.testing.assert_array_equal(out.numpy(), _downscale_numpy(labels.numpy(), *size, 4, min_ratio))


def test_downscale_requires_divisible_sizes() -> None:
    with pytest.raises(ValueError, match="must divide"):
        downscale_label_ratio(_labels(0), (5, 4), 4)


def _distance_numpy(student, imagenet, cells, things):
    total, count = 0.0, 0
    for i in range(student.shape[0]):
        for y in range(student.shape[2]):
            for x in range(student.shape[3]):
                if cells[i, y, x] in things:
                    total += np.sqrt(((student[i, :, y, x] - imagenet[i, :, y, x]) ** 2).sum())
                    count += 1
    return total / count


def test_feature_distance_matches_numpy() -> None:
    g = torch.Generator().manual_seed(2)
    labels = _labels(1)
    student = torch.randn((2, 5, 3, 4), generator=g, dtype=torch.float64, requires_grad=True)
    imagenet = torch.randn((2, 5, 3, 4), generator=g, dtype=torch.float64, requires_grad=True)
    loss = feature_distance_loss(student, imagenet, labels, [1, 3], num_classes=4)
    cells = _downscale_numpy(labels.numpy(), 3, 4, 4, 0.75)
    assert np.isin(cells, [1, 3]).any()
    expected = _distance_numpy(student.detach().numpy(), imagenet.detach().numpy(), cells, {1, 3})
    assert loss.dtype == torch.float64 and loss.ndim == 0
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert imagenet.grad is None  # detached inside


def test_no_thing_cell_gives_zero_with_a_graph() -> None:
    labels = torch.zeros((1, 8, 8), dtype=torch.long)
    student = torch.randn((1, 3, 2, 2), requires_grad=True)
    loss = feature_distance_loss(student, torch.randn(1, 3, 2, 2), labels, [2], num_classes=4)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert student.grad is not None and torch.equal(student.grad, torch.zeros_like(student))


def test_equal_features_give_finite_gradients() -> None:
    """At zero distance (the student starts from the ImageNet weights) the L2 norm's gradient stays finite."""
    labels = torch.full((1, 8, 8), 2, dtype=torch.long)
    student = torch.ones((1, 3, 2, 2), requires_grad=True)
    loss = feature_distance_loss(student, torch.ones(1, 3, 2, 2), labels, [2], num_classes=4)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_bad_thing_classes_are_rejected() -> None:
    with pytest.raises(ValueError, match="thing_classes"):
        feature_distance_loss(
            torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1, 8, 8).long(), [4], 4
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host syncs")
def test_cuda_matches_cpu_without_host_sync() -> None:
    g = torch.Generator().manual_seed(3)
    labels = _labels(4)
    student = torch.randn((2, 5, 3, 4), generator=g, dtype=torch.float64)
    imagenet = torch.randn((2, 5, 3, 4), generator=g, dtype=torch.float64)
    expected = feature_distance_loss(student, imagenet, labels, [1, 3], num_classes=4)
    cuda_student = student.cuda().requires_grad_()
    cuda_imagenet, cuda_labels = imagenet.cuda(), labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = feature_distance_loss(cuda_student, cuda_imagenet, cuda_labels, [1, 3], num_classes=4)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.allclose(loss.detach().cpu(), expected)
