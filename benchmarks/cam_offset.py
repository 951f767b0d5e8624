"""Where a trained network's CAMs put their content on its token grid (CPU, seconds per checkpoint).

A stride-``s`` token map can be resampled to pixels with token ``c`` at pixel ``origin + s*c``. Where the
networks' padded convolutions centre an untrained token is ``origin = 0`` (``tests/models/test_token_grid.py``);
a bilinear resize with ``align_corners=False`` uses ``(s - 1) / 2``, the cell centre. Training decides where a
CAM's content ends up, so this measures it: the single-scale CAMs of a trained AFA / U2PL+ WS / ASDT checkpoint on
the val images of a VOC-layout set, resampled with each origin on the rows only, the columns only and both, turned
into labels (ground-truth tags, each class map divided by its maximum, background score 0.45) and scored against
the masks. The origin with the highest mIoU is where the content sits.

    python benchmarks/cam_offset.py --root outputs/synthetic_voc800 --checkpoint PATH [PATH ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wsss_lightning.data.supervision import tags_from_mask
from wsss_lightning.methods import AFAModule, ASDTModule
from wsss_lightning.metrics import SegmentationIoU
from wsss_lightning.models.token_grid import TokenGrid, sample_grid
from wsss_lightning.pseudo_labels.cam import cam_labels_eval, present_classes


def load_split(root: Path, split: str = "val") -> tuple[Tensor, Tensor]:
    """``(N, 3, H, W)`` RGB images in [0, 1] and ``(N, H, W)`` masks of a VOC-layout split (one image size)."""
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    rgb = np.stack([np.array(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in ids])
    masks = np.stack([np.array(Image.open(root / "SegmentationClassAug" / f"{i}.png")) for i in ids])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(masks).long()


def trained_cams(checkpoint: Path, rgb: Tensor) -> tuple[Tensor, float, str]:
    """Raw CAMs ``(N, C - 1, h, w)`` of RGB images, the token stride and the method of a checkpoint."""
    # the module that wrote the file (SegmentationMethod.on_save_checkpoint); U2PL+ WS's is an AFAModule
    writer = str(torch.load(checkpoint, map_location="cpu", weights_only=True).get("method", ""))
    cls: type[AFAModule | ASDTModule] = ASDTModule if writer.endswith(".ASDTModule") else AFAModule
    model = cls.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    images = (rgb - model.image_mean) / model.image_std  # the normalisation the model was trained with
    with torch.no_grad():
        if isinstance(model, ASDTModule):
            cams = torch.cat([model.net.cams(x) for x in images.split(8)])
            stride = float(model.net.token_grid.stride)
        else:
            cams = torch.cat(
                [model.net.cam(model.net.encoder(x).features[-1]).relu() for x in images.split(8)]
            )
            stride = float(model.net.stride)
    return cams, stride, cls.__name__


def true_classes(masks: Tensor, num_classes: int) -> Tensor:
    """``(N, K)`` each mask's foreground classes (``present_classes`` of its tags)."""
    tags = np.stack([tags_from_mask(m, num_classes) for m in masks.numpy()])
    return present_classes(torch.from_numpy(tags[:, 1:]))


def score(
    cams: Tensor, masks: Tensor, classes: Tensor, stride: float, row_origin: float, col_origin: float
) -> float:
    """CAM-label mIoU with token ``c`` at pixel ``origin + stride * c`` (per axis)."""
    metric = SegmentationIoU(cams.shape[1] + 1)
    rows = TokenGrid(stride, row_origin).token_positions(masks.shape[-2], masks.shape[-2]).float()
    cols = TokenGrid(stride, col_origin).token_positions(masks.shape[-1], masks.shape[-1]).float()
    for maps, batch, present in zip(cams.split(8), masks.split(8), classes.split(8), strict=True):
        pixels = sample_grid(maps, rows, cols)
        picked = torch.gather(
            pixels, 1, present.clamp(min=0)[:, :, None, None].expand(-1, -1, *pixels.shape[-2:])
        )
        picked = picked * (present >= 0)[:, :, None, None]
        picked = picked / picked.flatten(2).amax(2).clamp_min(1e-5)[:, :, None, None]
        metric.update(cam_labels_eval(picked, None, 0.45, classes=present), batch)
    return float(metric.compute()[0])


def checkpoints_and_val_split(description: str | None) -> tuple[list[Path], Tensor, Tensor]:
    """The command line of the checkpoint scripts (``--root``, ``--checkpoint``): the checkpoints and the val
    split of their set (``load_split``); one thread."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="VOC-layout set the checkpoints trained on")
    parser.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    return list(args.checkpoint), *load_split(args.root)


def main() -> None:
    checkpoints, images, masks = checkpoints_and_val_split(__doc__)
    for checkpoint in checkpoints:
        cams, stride, method = trained_cams(checkpoint, images)
        classes = true_classes(masks, cams.shape[1] + 1)
        centre = (stride - 1) / 2
        origins = (0.0, centre / 2, centre, 1.5 * centre)
        print(f"\n{method} {checkpoint} (stride {stride:g}; cell centre {centre:g})")
        print("| origin (px) | rows only | columns only | both |")
        print("|---:|---:|---:|---:|")
        for o in origins:
            cells = (score(cams, masks, classes, stride, o, 0.0), score(cams, masks, classes, stride, 0.0, o))
            both = score(cams, masks, classes, stride, o, o)
            print(f"| {o:g} | {cells[0]:.3f} | {cells[1]:.3f} | {both:.3f} |")


if __name__ == "__main__":
    main()
