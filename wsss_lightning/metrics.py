"""Dataset-level mIoU ("total-area" IoU, as in the papers and mmseg).

One confusion matrix is accumulated over the whole split (and summed over DDP ranks by torchmetrics);
IoU is computed from it once at the end. Averaging per-image IoUs instead
(``torchmetrics.segmentation.MeanIoU``) gives different, non-comparable numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from wsss_lightning.ops import channel_argmax

__all__ = [
    "SegmentationIoU",
    "build_iou_metric",
    "iou_from_confusion",
    "iou_log_dict",
    "miou_from_per_class",
    "pseudo_label_accuracy",
]


def build_iou_metric(num_classes: int, ignore_index: int = 255) -> MulticlassJaccardIndex:
    """Per-class IoU from one dataset-level confusion matrix (torchmetrics).

    Note that this metric reports IoU 0 (not NaN) for classes absent from both prediction and
    ground truth; use :class:`SegmentationIoU` when such classes must be left out of the mean.

    Args:
        num_classes: number of classes C.
        ignore_index: target value whose pixels are not counted.

    Returns:
        A ``MulticlassJaccardIndex(average="none")``; ``update(preds (B,H,W) int, target (B,H,W) int)``,
        ``compute() -> (C,)`` IoU per class.
    """
    return MulticlassJaccardIndex(
        num_classes=num_classes, average="none", ignore_index=ignore_index, validate_args=False
    )


def iou_from_confusion(confmat: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class IoU from a confusion matrix.

    Args:
        confmat: (C, C) counts, rows = ground truth, columns = prediction.

    Returns:
        ``(per_class, present)``: (C,) float64 IoU = TP / (TP + FP + FN), NaN where the class appears in
        neither prediction nor ground truth; (C,) bool mask of the classes that do appear.
    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be a square (C, C) matrix, got shape {tuple(confmat.shape)}")
    counts = confmat.to(torch.float64)
    tp = counts.diagonal()
    union = counts.sum(0) + counts.sum(1) - tp
    present = union > 0
    per_class = torch.where(present, tp / union.clamp_min(1), torch.full_like(tp, math.nan))
    return per_class, present


def miou_from_per_class(per_class_iou: Tensor, present: Tensor) -> float:
    """Mean IoU over the classes that appear in prediction or ground truth.

    Args:
        per_class_iou: (C,) IoU per class (values of absent classes are ignored, whatever they are).
        present: (C,) bool, True for classes to average over.

    Returns:
        The mean as a Python float; NaN if no class is present.
    """
    if per_class_iou.shape != present.shape:
        raise ValueError(
            f"per_class_iou {tuple(per_class_iou.shape)} and present {tuple(present.shape)} must have the same shape"
        )
    if not bool(present.any()):
        return math.nan
    return float(per_class_iou[present.bool()].double().mean())


class SegmentationIoU(MulticlassConfusionMatrix):
    """Dataset-level mIoU whose mean skips classes absent from both prediction and ground truth.

    A thin wrapper over torchmetrics' confusion matrix (state ``confmat``, summed across DDP ranks).
    ``update`` counts with ``torch.bincount`` directly: torchmetrics' deterministic-mode fallback builds an
    N_pixels x C² tensor, which does not fit in memory for segmentation, while integer counting is
    deterministic anyway.

    Args:
        num_classes: number of classes C.
        ignore_index: target value whose pixels are not counted.
        validate_args: raise ``ValueError`` on class ids outside ``[0, C)``.

    ``compute`` returns a tuple, so log its result rather than the metric object, e.g. in
    ``on_validation_epoch_end``: ``self.log_dict(iou_log_dict("val", *metric.compute(), names))``
    followed by ``metric.reset()``.

    Example:
        >>> metric = SegmentationIoU(num_classes=21)
        >>> metric.update(preds, target)  # (B, H, W) int class ids, or (B, C, H, W) scores
        >>> miou, per_class = metric.compute()  # scalar, (C,) with NaN for absent classes
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, validate_args: bool = True) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, validate_args=False)
        self.check_ids = validate_args

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch.

        Args:
            preds: (B, H, W) integer class ids, or (B, C, H, W) scores (argmax over dim 1 is taken).
            target: (B, H, W) integer class ids; ``ignore_index`` pixels are skipped.
        """
        if preds.is_floating_point():
            preds = channel_argmax(preds)
        if preds.shape != target.shape:
            raise ValueError(
                f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same (B, H, W) shape"
            )
        preds = preds.reshape(-1).long()
        target = target.reshape(-1).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            preds, target = preds[keep], target[keep]
        c = self.num_classes
        bad = (target < 0) | (target >= c) | (preds < 0) | (preds >= c)
        # The check costs a device sync per batch; ``validate_args=False`` skips it.
        if self.check_ids and bool(bad.any()):
            raise ValueError(
                f"class ids must lie in [0, {c}) (or equal ignore_index={self.ignore_index} in target); "
                f"found target values {torch.unique(target[bad]).tolist()[:10]}, "
                f"pred values {torch.unique(preds[bad]).tolist()[:10]}"
            )
        self.confmat += torch.bincount(target * c + preds, minlength=c * c).reshape(c, c)

    def compute(self) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Returns ``(miou, per_class)``: scalar float64 mean over present classes, (C,) IoU (NaN if absent)."""
        per_class, present = iou_from_confusion(self.confmat)
        miou = torch.tensor(miou_from_per_class(per_class, present), dtype=torch.float64)
        return miou, per_class


def iou_log_dict(
    prefix: str, miou: float | Tensor, per_class: Sequence[float] | Tensor, class_names: Sequence[str]
) -> dict[str, float]:
    """Flat dict for ``LightningModule.log_dict``.

    Args:
        prefix: key prefix such as ``"val"`` or ``"test/seg"``.
        miou: the mean IoU.
        per_class: (C,) IoU per class; NaN entries (absent classes) are kept as NaN.
        class_names: C names, in train-id order.

    Returns:
        ``{"<prefix>/miou": miou, "<prefix>/iou/<class_name>": iou, ...}``.
    """
    values = per_class.tolist() if isinstance(per_class, Tensor) else list(per_class)
    if len(values) != len(class_names):
        raise ValueError(f"per_class has {len(values)} entries but class_names has {len(class_names)}")
    out = {f"{prefix}/miou": float(miou)}
    out.update({f"{prefix}/iou/{name}": float(v) for name, v in zip(class_names, values, strict=True)})
    return out


def pseudo_label_accuracy(pred: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Share of pixels labelled in both maps (B, H, W) whose pseudo-label ``pred`` equals ``target``.

    A diagnostic of pseudo-labels against ground truth that is never trained on; 0-d tensor, no host sync.
    """
    valid = (pred != ignore_index) & (target != ignore_index)
    return ((pred == target) & valid).sum() / valid.sum().clamp(min=1)


def removal_precision_recall(
    removed: Tensor, labels: Tensor, target: Tensor, candidates: Tensor, ignore_index: int = 255
) -> tuple[Tensor, Tensor, Tensor]:
    """How well a label filter removes the wrong pseudo-labels, against ground truth it never sees.

    Among the ``candidates`` (the pixels the filter may remove) that the ground truth labels: precision =
    share of the ``removed`` pixels whose pseudo-label was wrong, recall = share of the wrong pseudo-labels
    that were removed, and the error rate of the candidates (the precision a filter removing at random
    would have). All maps ``(N, H, W)``; 0-d tensors, no host sync (0 where nothing is counted).
    """
    valid = candidates & (target != ignore_index) & (labels != ignore_index)
    wrong = valid & (labels != target)
    removed = removed & valid
    caught = (removed & wrong).sum()
    return (
        caught / removed.sum().clamp(min=1),
        caught / wrong.sum().clamp(min=1),
        wrong.sum() / valid.sum().clamp(min=1),
    )
