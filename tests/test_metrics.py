from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import run_gloo
from wsss_lightning.metrics import (
    SegmentationIoU,
    build_iou_metric,
    iou_from_confusion,
    iou_log_dict,
    miou_from_per_class,
    removal_precision_recall,
)

NUM_CLASSES = 6


def numpy_reference(preds: np.ndarray, target: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """Plain confusion-matrix mIoU over classes present in prediction or ground truth."""
    keep = target != 255
    p, t = preds[keep].astype(np.int64), target[keep].astype(np.int64)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (t, p), 1)
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return float(np.nanmean(iou)), iou


def random_data(seed: int, n: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and targets over classes 0..4 of 6 (class 5 never appears), 20 % ignore pixels."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES - 1, (n, size, size), generator=g)
    preds = torch.where(
        torch.rand(n, size, size, generator=g) < 0.6,
        target,
        torch.randint(0, NUM_CLASSES - 1, (n, size, size), generator=g),
    )
    target[torch.rand(n, size, size, generator=g) < 0.2] = 255
    return preds, target


def test_segmentation_iou_matches_numpy_reference() -> None:
    preds, target = random_data(0)
    metric = SegmentationIoU(NUM_CLASSES)
    metric.update(preds[:2], target[:2])
    metric.update(preds[2:], target[2:])
    miou, per_class = metric.compute()
    ref_miou, ref_iou = numpy_reference(preds.numpy(), target.numpy(), NUM_CLASSES)
    assert math.isnan(per_class[-1])
    np.testing.assert_allclose(per_class.numpy(), ref_iou, equal_nan=True)
    assert float(miou) == pytest.approx(ref_miou)


def test_segmentation_iou_accepts_scores() -> None:
    preds, target = random_data(1)
    scores = torch.nn.functional.one_hot(preds, NUM_CLASSES).permute(0, 3, 1, 2).float()
    a, b = SegmentationIoU(NUM_CLASSES), SegmentationIoU(NUM_CLASSES)
    a.update(preds, target)
    b.update(scores, target)
    torch.testing.assert_close(a.compute()[1], b.compute()[1], equal_nan=True)


def test_segmentation_iou_rejects_bad_ids() -> None:
    metric = SegmentationIoU(3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([[7, 1]]))


def test_torchmetrics_jaccard_agrees_on_present_classes() -> None:
    preds, target = random_data(2)
    metric = build_iou_metric(NUM_CLASSES)
    metric.update(preds, target)
    per_class = metric.compute()
    ref_miou, ref_iou = numpy_reference(preds.numpy(), target.numpy(), NUM_CLASSES)
    present = torch.from_numpy(~np.isnan(ref_iou))
    np.testing.assert_allclose(per_class.numpy()[present.numpy()], ref_iou[present.numpy()], rtol=1e-6)
    assert miou_from_per_class(per_class, present) == pytest.approx(ref_miou)


def test_iou_from_confusion_and_empty() -> None:
    per_class, present = iou_from_confusion(torch.tensor([[2, 1], [0, 0]]))
    assert per_class[0] == pytest.approx(2 / 3) and present.tolist() == [True, True]
    assert per_class[1] == 0.0
    assert math.isnan(miou_from_per_class(torch.zeros(2), torch.zeros(2, dtype=torch.bool)))


def test_iou_log_dict() -> None:
    logs = iou_log_dict("val", torch.tensor(0.5), torch.tensor([0.25, float("nan")]), ["background", "cat"])
    assert logs["val/miou"] == 0.5 and logs["val/iou/background"] == 0.25
    assert math.isnan(logs["val/iou/cat"])
    with pytest.raises(ValueError, match="class_names"):
        iou_log_dict("val", 0.5, [0.1], ["a", "b"])


def _ddp_worker(rank: int, world_size: int, result_path: str) -> None:
    preds, target = random_data(3, n=4)
    half = preds.shape[0] // world_size
    metric = SegmentationIoU(NUM_CLASSES)
    metric.update(preds[rank * half : (rank + 1) * half], target[rank * half : (rank + 1) * half])
    miou, per_class = metric.compute()
    torch.save({"miou": miou, "per_class": per_class}, f"{result_path}.{rank}")


def test_ddp_sync_equals_reference_on_all_data(tmp_path) -> None:
    result = str(tmp_path / "result")
    run_gloo(_ddp_worker, result)
    preds, target = random_data(3, n=4)
    ref_miou, ref_iou = numpy_reference(preds.numpy(), target.numpy(), NUM_CLASSES)
    for rank in range(2):
        out = torch.load(f"{result}.{rank}")
        np.testing.assert_allclose(out["per_class"].numpy(), ref_iou, equal_nan=True)
        assert float(out["miou"]) == pytest.approx(ref_miou)


def test_removal_precision_recall_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (3, 9, 11))
    labels[rng.random(labels.shape) < 0.1] = 255
    target = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 4, labels.shape))
    target[rng.random(labels.shape) < 0.1] = 255
    removed = rng.random(labels.shape) < 0.3
    candidates = labels != 0
    valid = candidates & (target != 255) & (labels != 255)
    wrong = valid & (labels != target)
    expected = (
        (removed & wrong).sum() / (removed & valid).sum(),
        (removed & wrong).sum() / wrong.sum(),
        wrong.sum() / valid.sum(),
    )
    got = removal_precision_recall(
        torch.from_numpy(removed),
        torch.from_numpy(labels),
        torch.from_numpy(target),
        torch.from_numpy(candidates),
    )
    np.testing.assert_allclose([float(v) for v in got], expected, rtol=1e-6)
    # nothing removed, nothing wrong: zeros, not NaN
    none = torch.zeros(2, 3, 3, dtype=torch.bool)
    same = torch.ones(2, 3, 3, dtype=torch.long)
    assert [float(v) for v in removal_precision_recall(none, same, same, ~none)] == [0.0, 0.0, 0.0]
