"""What the CAM path loses to where it places the tokens: a perfect CAM through ``multiscale_cams`` (CPU, seconds).

The "perfect CAM" of a class is, at every token of a stride-``s`` padded-convolution grid (MiT's, token ``c``
at pixel ``s*c``, ``ceil(n / s)`` tokens), the fraction of that class's pixels in the window of ``s + 1`` pixels
centred on the token; it is made from
the ground-truth masks of the val images at every CAM scale and flip, exactly as a network whose tokens saw the
masks would. It goes through AFA's CAM path (``multiscale_cams``: scales 1.0 / 0.5 / 1.5 with flips, max-merge,
normalisation; labels at background score 0.45 over the ground-truth tags) with the tokens at ``s*c``
(``labels.token_positions: encoder``) and as the released code resizes them (``cell_centres``), and the labels
are scored against the masks. Any shortfall from 1.0 is the token grid's and the resampling's. The perfect CAM's
content sits at ``s*c`` by construction: this is what a wrong placement costs, not where a trained network's
content sits (``cam_offset.py`` measures that).

    python benchmarks/cam_alignment.py --root outputs/synthetic_voc800
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss_lightning.metrics import SegmentationIoU
from wsss_lightning.models.token_grid import TokenGrid
from wsss_lightning.pseudo_labels.cam import cam_labels_eval, multiscale_cams, present_classes

NUM_CLASSES = 21


def load_masks(root: Path, split: str) -> torch.Tensor:
    """``(N, H, W)`` int64 ground-truth masks of a VOC-layout split (255 kept)."""
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    masks = [np.array(Image.open(root / "SegmentationClassAug" / f"{i}.png")) for i in ids]
    return torch.from_numpy(np.stack(masks)).long()


def perfect_cam_fn(stride: int) -> Callable[[torch.Tensor], tuple[torch.Tensor]]:
    """Token maps of the one-hot masks carried in the 'image' channels, on a padded-convolution grid."""

    def cam_fn(onehot: torch.Tensor) -> tuple[torch.Tensor]:
        # token c: the mean over pixels s*c - s/2 .. s*c + s/2 (centred on s*c); ceil(n / s) tokens, as MiT's
        return (F.avg_pool2d(onehot[:, 1:], stride + 1, stride, stride // 2, count_include_pad=False),)

    return cam_fn


def score(masks: torch.Tensor, stride: int, tokens: TokenGrid | None, scales: tuple[float, ...]) -> float:
    """mIoU of the perfect CAM's labels through ``multiscale_cams`` with these token positions."""
    metric = SegmentationIoU(NUM_CLASSES)
    for batch in masks.split(8):
        valid = batch != 255
        onehot = F.one_hot(batch.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float()
        onehot = onehot * valid[:, None]
        tags = (onehot[:, 1:].flatten(2).amax(2) > 0).float()
        classes = present_classes(tags)
        (cams,) = multiscale_cams(perfect_cam_fn(stride), onehot, scales, 1, classes, tokens=tokens)
        metric.update(cam_labels_eval(cams, None, 0.45, classes=classes), batch)
    return float(metric.compute()[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("outputs/synthetic_voc800"))
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    masks = load_masks(args.root, args.split)
    print(f"{len(masks)} {args.split} masks of {masks.shape[-2]}x{masks.shape[-1]} px")
    print("| token grid | CAM scales | tokens at s*c | cell-centre resize (released code) |")
    print("|---|---|---:|---:|")
    for stride in (16, 8):
        for scales in ((1.0,), (1.0, 0.5, 1.5)):
            sit = score(masks, stride, TokenGrid(float(stride)), scales)
            cell = score(masks, stride, None, scales)
            print(f"| stride {stride} | {', '.join(map(str, scales))} | {sit:.3f} | {cell:.3f} |")


if __name__ == "__main__":
    main()
