"""A pretrained starting point on the CPU: an encoder trained once on a generated classification task.

The papers start every method from ImageNet weights; the synthetic benchmarks cannot download them and cannot
afford ImageNet. :func:`pretrain_encoder` stands in: it generates a multi-label classification set of object
scenes (:func:`wsss_lightning.data.synthetic.generate`, VOC layout, the 20 object classes, a seed disjoint from
the benchmark sets' so no benchmark image is seen), trains the encoder with a global-average-pooled linear
classifier and binary cross-entropy, and writes the encoder's weights where every method's ``encoder_weights``
argument reads them (timm parameter names, the layout :func:`~wsss_lightning.models.weights.load_encoder_weights`
loads; dilation does not change the parameters, so the stride-32 encoder trained here loads into the dilated
encoders of DeepLab / DeepLabV3+). A MiT (``mit_b0`` …, with the config's architecture overrides) is trained the
same way and saved with the SegFormer release's parameter names, the layout
:class:`~wsss_lightning.models.mit.MiTEncoder`'s ``weights`` reads; patch-embedding strides do not change the
parameters either, so it loads into AFA's encoder with the last stage at 1/16. The file name carries every argument, so a second call with the same arguments
reuses the file (``wsss-data pretrain-encoder``).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from wsss_lightning.data.pretrain_task import NUM_OBJECT_CLASSES, SEED_OFFSET, PretrainConfig
from wsss_lightning.data.supervision import load_tags
from wsss_lightning.data.synthetic import generate
from wsss_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss_lightning.files import atomic_write
from wsss_lightning.models.deeplab import feature_info
from wsss_lightning.models.mit import MiTEncoder, MiTOutput

__all__ = ["PretrainConfig", "pretrain_encoder", "pretrained_path"]


def pretrained_path(config: PretrainConfig, out_dir: str | Path) -> Path:
    """Where :func:`pretrain_encoder` writes (and finds) the weights of ``config``."""
    return Path(out_dir) / f"{config.name}.pth"


def _load_set(root: Path, size: int) -> tuple[Tensor, Tensor]:
    """(N, 3, S, S) uint8 images and (N, 20) multi-hot object tags of a generated VOC-layout split."""
    ids = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    tags = load_tags(root / "cls_labels.txt", NUM_OBJECT_CLASSES + 1, ids)
    images = np.stack([np.asarray(Image.open(root / "JPEGImages" / f"{i}.jpg").convert("RGB")) for i in ids])
    if images.shape[1:3] != (size, size):
        raise ValueError(f"{root}: generated images are {images.shape[1:3]}, expected {size}x{size}")
    labels = np.stack([tags[i][1:] for i in ids])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def _augment(images: Tensor, crop: int, generator: torch.Generator) -> Tensor:
    """Random crops and horizontal flips of a uint8 batch, normalised as the segmentation pipeline does."""
    b, _, h, w = images.shape
    rows = torch.randint(0, h - crop + 1, (b, 1), generator=generator) + torch.arange(crop)
    cols = torch.randint(0, w - crop + 1, (b, 1), generator=generator) + torch.arange(crop)
    flip = torch.rand(b, 1, generator=generator) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    # advanced indices around the channel slice: (B, crop, crop, 3)
    crops = images[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return _normalise(crops.permute(0, 3, 1, 2))


def _normalise(images: Tensor) -> Tensor:
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None]
    return (images.float() / 255 - mean) / std


class _Classifier(nn.Module):
    """The encoder's last stage, global-average-pooled, into a linear multi-label classifier."""

    def __init__(self, encoder: str, overrides: dict[str, Any]) -> None:
        super().__init__()
        self.encoder: nn.Module
        if encoder.startswith("mit_"):
            # no stochastic depth: a few thousand steps of a small network from scratch need no extra regulariser
            self.encoder = MiTEncoder(encoder, drop_path_rate=0.0, model_kwargs=overrides)
            channels = self.encoder.out_channels[-1]
        else:
            self.encoder = timm.create_model(encoder, features_only=True, pretrained=False, **overrides)
            channels = feature_info(self.encoder).channels()[-1]
        self.head = nn.Linear(channels, NUM_OBJECT_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        output = self.encoder(x)
        features: list[Tensor] = output.features if isinstance(output, MiTOutput) else output
        logits: Tensor = self.head(features[-1].mean((2, 3)))
        return logits

    def encoder_state(self) -> dict[str, Tensor]:
        """The encoder's weights under the names its loaders expect (a MiT without its wrapper prefix)."""
        module = self.encoder.backbone if isinstance(self.encoder, MiTEncoder) else self.encoder
        return dict(module.state_dict())


def _f1(logits: Tensor, labels: Tensor) -> float:
    """Micro F1 of the tags at probability 0.5."""
    pred = logits > 0
    tp = (pred & (labels > 0)).sum()
    return float(2 * tp / (pred.sum() + (labels > 0).sum()).clamp_min(1))


def pretrain_encoder(config: PretrainConfig, out_dir: str | Path, verbose: bool = True) -> Path:
    """Train (or reuse) the encoder of ``config``; returns the weights file.

    The file holds the encoder's ``state_dict``; ``<file>.json`` beside it the arguments, the held-out tag F1
    and the minutes it took.
    """
    path = pretrained_path(config, out_dir)
    if path.is_file():
        if verbose:
            print(f"pretrained encoder found: {path}")
        return path
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(
            "voc", Path(tmp) / "data", seed=SEED_OFFSET + config.seed, num_train=config.num_images,
            num_val=1, image_size=(config.image_size, config.image_size),
        )  # fmt: skip
        images, labels = _load_set(root, config.image_size)
    held_out = max(1, len(images) // 10)
    train_x, train_y = images[held_out:], labels[held_out:]
    model = _Classifier(config.encoder, config.overrides())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / config.steps)
    model.train()
    for step in range(config.steps):
        index = torch.randint(0, len(train_x), (config.batch_size,), generator=generator)
        x = _augment(train_x[index], config.crop, generator)
        loss = F.binary_cross_entropy_with_logits(model(x), train_y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        if verbose and (step + 1) % max(1, config.steps // 10) == 0:
            print(f"pretrain step {step + 1}/{config.steps}: loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        f1 = _f1(model(_normalise(images[:held_out])), labels[:held_out])
    path.parent.mkdir(parents=True, exist_ok=True)
    minutes = (time.perf_counter() - start) / 60
    info = {**asdict(config), "held_out_tag_f1": round(f1, 4), "minutes": round(minutes, 2)}
    path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    # an interrupted save leaves no partial weights file that a later call would load
    atomic_write(path, lambda tmp: torch.save(model.encoder_state(), tmp))
    if verbose:
        print(f"pretrained {config.encoder} in {minutes:.1f} min (held-out tag F1 {f1:.3f}): {path}")
    return path
