"""Whether AFA's random walk or its learned affinity keeps the propagated CAM below the raw one (CPU, seconds).

AFA (Ru et al., CVPR 2022, Sec. 3.3, Eq. 6-7) propagates the CAM with a random walk on the affinity its head
predicts from the attention maps. On the synthetic sets the propagated CAM scores below the raw CAM
(``benchmarks/README.md``, "AFA and U2PL+ WS vs the ceiling"). This script takes a trained AFA / U2PL+ WS
checkpoint and, on the val images of its VOC-layout set, walks the same multi-scale CAMs (the validation's, with
the ground-truth tags and the checkpoint's background score) with four affinities, everything else as the
checkpoint's validation (walk scale, radius window, power, token placement):

* **learned**: ``sigmoid`` of the affinity head, the validation's ``val/aff_cam`` row;
* **head targets**: the same / different-label pairs (``affinity_labels``) of the refined CAM label the head is
  trained towards, sampled at the tokens where the walk reads the CAMs; the head has no target where either
  token is ignored (the label's uncertain band), so those pairs are shown at 0.5 and at 0;
* **ground truth**: ``p_iᵀ p_j`` of the ground-truth mask's class shares sampled at the tokens as the walk samples
  the CAMs (a perfect affinity: 1 inside a region, 0 across regions of different classes);
* **none**: 1 for every pair of the window (the walk alone, without an affinity).

A further column walks the learned affinity as AFA's own ``validate()`` scores its ``aff_cam``
(``scripts/dist_train_voc.py``): the affinity of the plain scale-1.0 forward and background score 0.35, where
the validation here (``val/aff_cam``) walks with the training walk's affinity (the largest scale) and the raw
CAM's background score (0.45), so that the raw and the propagated CAM are scored alike.

It also prints the learned affinity's mean on the ground-truth same-class and different-class pairs of the
window (tokens whose sample is mostly ignored pixels and each token's pair with itself left out), and the
same-class mean split into background-background and object (same foreground class) pairs: the affinity loss
weighs the two kinds together (AFA) or apart (``labels.affinity_balance: affinitynet``). A walk that helps with the ground-truth affinity and hurts with the learned one places the loss in the
affinity head, not in the walk.

    python benchmarks/afa_walk_oracle.py --root outputs/synthetic_voc800 --checkpoint PATH [PATH ...]
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from cam_offset import checkpoints_and_val_split, true_classes
from torch import Tensor

from wsss_lightning.methods import AFAModule
from wsss_lightning.metrics import SegmentationIoU
from wsss_lightning.pseudo_labels.affinity import WalkGrid, propagated_cam_labels, radius_mask, walk_matrix
from wsss_lightning.pseudo_labels.cam import affinity_labels, cam_labels_eval

AFFINITIES = ("learned", "head targets, ignored 0.5", "head targets, ignored 0", "ground truth", "none")


def token_classes(labels: Tensor, grid: WalkGrid, num_classes: int, ignore_index: int) -> Tensor:
    """``(B, C + 1, N)`` a ``(B, H, W)`` label map's one-hot sampled at the walk's tokens as the walk samples the
    CAMs (``WalkGrid.down``); the last channel is the ignored pixels' share. Sums to 1 per token."""
    ignored = labels == ignore_index
    ids = torch.where(ignored, num_classes, labels.clamp(max=num_classes - 1))
    onehot = F.one_hot(ids, num_classes + 1).permute(0, 3, 1, 2).float()
    return grid.down(onehot).flatten(2)


@torch.no_grad()
def affinities(
    model: AFAModule, images: Tensor, masks: Tensor, cams: Tensor, classes: Tensor, grid: WalkGrid
) -> dict[str, Tensor]:
    """``(B, N, N)`` pair affinities in ``[0, 1]`` of :data:`AFFINITIES` on the walk's token grid."""
    assert grid.input_size is not None
    at_walk_scale = F.interpolate(images, size=grid.input_size, mode="bilinear", align_corners=False)
    learned = torch.sigmoid(model.net.cams_and_affinity(at_walk_scale)[1])
    # the refined label at the tokens where the walk reads the CAMs (the majority of each token's sample)
    refined, _ = model.refined_labels(model.denormalize(images), cams, classes, None)
    shares = token_classes(refined, grid, model.num_classes, model.ignore_index)
    tokens = shares.argmax(1)
    tokens = torch.where(tokens == model.num_classes, model.ignore_index, tokens).view(-1, *grid.size)
    pairs = affinity_labels(tokens, model.ignore_index, radius=None, diagonal="positive")
    # the ground truth: p_i . p_j of the class shares (ignored pixels count for no class)
    truth = token_classes(masks, grid, model.num_classes, model.ignore_index)[:, :-1]
    truth = truth / truth.sum(1, keepdim=True).clamp_min(1e-6)
    return {
        "learned": learned,
        "head targets, ignored 0.5": torch.where(pairs == model.ignore_index, 0.5, pairs.float()),
        "head targets, ignored 0": torch.where(pairs == model.ignore_index, 0.0, pairs.float()),
        "ground truth": torch.einsum("bcn,bcm->bnm", truth, truth),
        "none": torch.ones_like(learned),
    }


PAIRS = ("same", "background", "object", "other")


def evaluate(model: AFAModule, rgb: Tensor, masks: Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """mIoU of the raw CAM and of the CAM walked with each affinity; the learned affinity's mean on the window's
    ground-truth pairs of :data:`PAIRS` (same class; of it, both background and both one foreground class;
    different classes), tokens with a majority class, the diagonal left out; and the background pairs' share of
    the same-class pairs (``background share``)."""
    cfg = model.options.labels
    classes = true_classes(masks, model.num_classes)
    metrics = {
        name: SegmentationIoU(model.num_classes, model.ignore_index) for name in ("raw CAM", *AFFINITIES)
    }
    pairs: dict[str, list[Tensor]] = {kind: [] for kind in PAIRS}
    for x, y, present in zip(rgb.split(8), masks.split(8), classes.split(8), strict=True):
        images = (x - model.image_mean) / model.image_std
        with torch.no_grad():
            cams, _, grid = model.cams_with_walk(images, present, with_walk=False)
            window = radius_mask(*grid.size, cfg.radius, device=images.device)
            metrics["raw CAM"].update(cam_labels_eval(cams, None, cfg.background, classes=present), y)
            pair_values = affinities(model, images, y, cams, present, grid)
            for name, values in pair_values.items():
                walk = walk_matrix(
                    values, mask=window, power=cfg.walk_power, log_iterations=cfg.walk_log_iterations
                )
                metrics[name].update(propagated_cam_labels(cams, present, walk, grid, cfg.background), y)
            truth = token_classes(y, grid, model.num_classes, model.ignore_index).argmax(1)
            known = truth < model.num_classes
            counted = (
                window & ~torch.eye(window.shape[0], dtype=torch.bool) & known[:, :, None] & known[:, None, :]
            )
            same_class = (truth[:, :, None] == truth[:, None, :]) & counted
            background = same_class & (truth == 0)[:, :, None]
            kinds = {"same": same_class, "background": background, "object": same_class & ~background}
            kinds["other"] = ~same_class & counted
            for kind, selected in kinds.items():
                pairs[kind].append(pair_values["learned"][selected])
    scores = {name: float(metric.compute()[0]) for name, metric in metrics.items()}
    learned = {kind: float(torch.cat(values).mean()) for kind, values in pairs.items()}
    counts = {kind: sum(len(v) for v in values) for kind, values in pairs.items()}
    learned["background share"] = counts["background"] / counts["same"]
    return scores, learned


#: AFA's ``validate()``: ``propagte_aff_cam_with_bkg(..., aff=attn_pred, bkg_score=0.35)`` on the plain forward
AFA_VALIDATE_SCALE, AFA_VALIDATE_BACKGROUND = 1.0, 0.35


def afa_validate_score(model: AFAModule, rgb: Tensor, masks: Tensor) -> float:
    """mIoU of the CAM walked with the learned affinity of the scale-1.0 forward, background score 0.35."""
    labels = model.options.labels
    model.options.labels = dataclasses.replace(labels, propagation_scale=AFA_VALIDATE_SCALE)
    metric = SegmentationIoU(model.num_classes, model.ignore_index)
    try:
        classes = true_classes(masks, model.num_classes)
        for x, y, present in zip(rgb.split(8), masks.split(8), classes.split(8), strict=True):
            images = (x - model.image_mean) / model.image_std
            cams, walk, grid = model.cams_with_walk(images, present)
            assert walk is not None
            metric.update(propagated_cam_labels(cams, present, walk, grid, AFA_VALIDATE_BACKGROUND), y)
    finally:
        model.options.labels = labels
    return float(metric.compute()[0])


def main() -> None:
    checkpoints, rgb, masks = checkpoints_and_val_split(__doc__)
    print(
        "| checkpoint | raw CAM | "
        + " | ".join(f"walk: {a}" for a in AFFINITIES)
        + " | walk: learned, AFA's validate() | learned: same / other"
        + " | learned same: background / object (background's share of the pairs) |"
    )
    print("|---|" + "---:|" * (len(AFFINITIES) + 4))
    for checkpoint in checkpoints:
        model = AFAModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
        scores, learned = evaluate(model, rgb, masks)
        cells = " | ".join(f"{v:.3f}" for v in (*scores.values(), afa_validate_score(model, rgb, masks)))
        print(
            f"| {checkpoint} | {cells} | {learned['same']:.2f} / {learned['other']:.2f} | "
            f"{learned['background']:.2f} / {learned['object']:.2f} ({learned['background share']:.2f}) |"
        )


if __name__ == "__main__":
    main()
