"""DAFormer's thing-class ImageNet feature distance and the label downscaling it uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["downscale_label_ratio", "feature_distance_loss"]


def downscale_label_ratio(
    labels: Tensor,
    size: tuple[int, int],
    num_classes: int,
    min_ratio: float = 0.75,
    ignore_index: int = 255,
) -> Tensor:
    """Downscale labels by blocks: a cell keeps its block's majority label if it covers ``>= min_ratio``.

    DAFormer (Hoyer et al., CVPR 2022, Sec. 3.4: the thing-class mask at feature resolution);
    reference: lhoyer/DAFormer ``mmseg/utils/utils.py`` (``downscale_label_ratio``). As there, the ignore label
    is one more class of the vote (a block mostly unlabelled stays ignored), the vote is a one-hot average over
    ``(H / h) x (W / w)`` blocks, and for ``min_ratio <= 0.5`` a tie goes to the smaller class index (ignore
    last). ``H`` and ``W`` must be multiples of ``h`` and ``w`` (the reference uses one factor ``W // w`` for
    both axes and drops what does not fit).

    Args:
        labels: ``(B, H, W)`` int64 labels in ``[0, num_classes)`` or ``ignore_index``.
        size: ``(h, w)`` of the output.
        num_classes: number of classes C.
        min_ratio: smallest share of its block the majority label must cover.
        ignore_index: label of unlabelled pixels, and of cells without a clear majority.

    Returns:
        ``(B, h, w)`` int64 labels.
    """
    if labels.ndim != 3 or labels.dtype != torch.int64:
        raise ValueError(
            f"downscale_label_ratio: labels must be int64 (B, H, W), got {labels.dtype} {tuple(labels.shape)}"
        )
    big_h, big_w = labels.shape[-2:]
    h, w = size
    if h < 1 or w < 1 or big_h % h or big_w % w:
        raise ValueError(
            f"downscale_label_ratio: size {tuple(size)} must divide the label size {(big_h, big_w)} exactly"
        )
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"downscale_label_ratio: ignore_index {ignore_index} must lie outside [0, {num_classes})"
        )
    slots = torch.where(labels == ignore_index, num_classes, labels)
    one_hot = F.one_hot(slots, num_classes + 1).permute(0, 3, 1, 2).float()
    share = F.avg_pool2d(one_hot, kernel_size=(big_h // h, big_w // w))
    ratio, majority = share.max(dim=1)
    keep = (majority < num_classes) & (ratio >= min_ratio)
    return torch.where(keep, majority, ignore_index)


def feature_distance_loss(
    student: Tensor,
    imagenet: Tensor,
    labels: Tensor,
    thing_classes: Sequence[int],
    num_classes: int,
    min_ratio: float = 0.75,
    ignore_index: int = 255,
) -> Tensor:
    """Mean L2 distance between student and ImageNet features over the cells of thing classes.

    DAFormer (Hoyer et al., CVPR 2022, Sec. 3.4, thing-class ImageNet feature distance; weighted by ``lambda_FD`` outside this function);
    reference: lhoyer/DAFormer ``mmseg/models/uda/dacs.py`` (``calc_feat_dist``, ``masked_feat_dist``) on the
    last encoder stage. The per-cell distance is ``||f_student - f_imagenet||_2`` over channels; the mask is
    :func:`downscale_label_ratio` of the source labels at the features' size, restricted to ``thing_classes``.

    The reference takes ``torch.mean`` of the selected distances, which is NaN when no cell of the batch is a
    thing class (it stays finite only because Cityscapes / GTA crops almost always hold one). Here the sum is
    divided by ``max(count, 1)``: 0 with no such cell, with the graph kept (``0 * sum``) and no host read.
    The ImageNet features are detached here.

    Args:
        student: ``(B, C, h, w)`` student features.
        imagenet: ``(B, C, h, w)`` features of the frozen ImageNet-pretrained encoder.
        labels: ``(B, H, W)`` int64 source labels, ``H`` and ``W`` multiples of ``h`` and ``w``.
        thing_classes: class indices whose cells count (Cityscapes: 6, 7, 11-18).
        num_classes: number of classes C.
        min_ratio: see :func:`downscale_label_ratio`.
        ignore_index: label of unlabelled pixels.

    Returns:
        Scalar loss in ``student``'s dtype.
    """
    if student.ndim != 4 or student.shape != imagenet.shape:
        raise ValueError(
            f"feature_distance_loss: student and imagenet must be the same (B, C, h, w), got "
            f"{tuple(student.shape)} and {tuple(imagenet.shape)}"
        )
    if labels.ndim != 3 or labels.shape[0] != student.shape[0]:
        raise ValueError(
            f"feature_distance_loss: labels must be (B, H, W) with B = {student.shape[0]}, got {tuple(labels.shape)}"
        )
    if any(not 0 <= c < num_classes for c in thing_classes):
        raise ValueError(
            f"feature_distance_loss: thing_classes must lie in [0, {num_classes}), got {list(thing_classes)}"
        )
    cells = downscale_label_ratio(
        labels, (student.shape[-2], student.shape[-1]), num_classes, min_ratio, ignore_index
    )
    is_thing = torch.zeros(num_classes + 1, dtype=torch.bool, device=labels.device)
    things = torch.tensor(list(thing_classes), dtype=torch.long).to(labels.device, non_blocking=True)
    is_thing[things] = True
    mask = is_thing[torch.where(cells == ignore_index, num_classes, cells)]
    distance = torch.linalg.vector_norm(student - imagenet.detach(), dim=1)
    total = (distance * mask.to(distance.dtype)).sum()
    count = mask.sum().clamp_min(1).to(distance.dtype)
    loss: Tensor = total / count
    return loss
