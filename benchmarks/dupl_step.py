"""DuPL training step time with a breakdown, on random data with every phase active.

Times the real ``DuPLModule.training_step`` inside a Lightning ``Trainer``: the pieces are measured by
wrapping the functions the module calls (multi-scale CAM passes, PAR pseudo-labels, noise filtering, the
strong view's RandAugment, the sub-nets' training forwards, backward, optimizer step); "losses + rest" is
the remainder of the step. The method's overhead is everything beyond the network passes the algorithm needs:
the CAM passes (``DuPLSubNet.cams``), the training and strong-view forwards, backward and the optimizer
update. The first steps (warm-up, phase switches) are not counted.

Usage::

    python benchmarks/dupl_step.py --size 224 --batch 4
    python benchmarks/dupl_step.py --size 448 --batch 4 --steps 3
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from wsss_lightning.data import DATASET_INFO
from wsss_lightning.methods import DuPLModule, NoiseFilterConfig, PhaseConfig
from wsss_lightning.methods.dupl import module as dupl
from wsss_lightning.methods.dupl.network import DuPLSubNet

TIMES: dict[str, float] = defaultdict(float)
COUNTING = [False]


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if COUNTING[0]:
            TIMES[name] += time.perf_counter() - start
        return out

    return wrapper


class RandomTags(Dataset):
    """Random crops with 1-3 present classes and a valid box covering most of the crop."""

    def __init__(self, size: int, num_classes: int, length: int) -> None:
        self.size, self.num_classes, self.length = size, num_classes, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        tags = torch.zeros(self.num_classes)
        tags[0] = 1
        tags[1 + torch.randperm(self.num_classes - 1, generator=g)[: 1 + i % 3]] = 1
        s = self.size
        return {
            "image": torch.randn(3, s, s, generator=g),
            "tags": tags,
            "valid_box": torch.tensor([0, 0, s - s // 8, s]),
            "name": str(i),
        }


class StepTimer(L.Callback):
    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        COUNTING[0] = trainer.global_step >= self.skip
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if COUNTING[0]:
            TIMES["step"] += time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # every function the step calls through the method module, plus the networks' passes
    for name, label in (
        ("multiscale_cams", "CAM passes (2 sub-nets x 3 scales x flip, no grad)"),
        ("par_pseudo_labels", "PAR pseudo-labels"),
        ("adaptive_noise_filter", "noise filtering (GMM)"),
        ("color_randaugment", "strong-view RandAugment"),
    ):
        setattr(dupl, name, timed(label, getattr(dupl, name)))
    DuPLSubNet.cams = timed("CAM network passes", DuPLSubNet.cams)  # type: ignore[method-assign]
    DuPLSubNet.forward = timed("sub-net forward (train)", DuPLSubNet.forward)  # type: ignore[method-assign]
    DuPLSubNet.segment = timed("sub-net forward (strong view)", DuPLSubNet.segment)  # type: ignore[method-assign]
    DuPLModule.backward = timed("backward", DuPLModule.backward)  # type: ignore[method-assign]
    # Lightning runs training_step and backward inside optimizer_step's closure
    DuPLModule.optimizer_step = timed("optimizer_step", DuPLModule.optimizer_step)  # type: ignore[method-assign]
    DuPLModule.training_step = timed("training_step", DuPLModule.training_step)  # type: ignore[method-assign]

    skip = 3  # steps 0-2 switch the phases on (segmentation at 1, noise filter at 2, consistency at 3)
    model = DuPLModule(
        backbone=args.backbone,
        class_names=DATASET_INFO["voc"].class_names,
        phases=PhaseConfig(seg_start=0, noise_filter_start=2),
        # the random crops give no trained-looking loss maps: fit every map so the GMM cost is real
        noise_filter=NoiseFilterConfig(min_pixels=0, min_gap=0.0),
    )
    trainer = L.Trainer(
        accelerator=args.device,
        devices=1,
        max_steps=skip + args.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepTimer(skip)],
    )
    data = DataLoader(RandomTags(args.size, 21, args.batch * (skip + args.steps)), batch_size=args.batch)
    trainer.fit(model, data)

    step = TIMES.pop("step") / args.steps
    closure = TIMES.pop("optimizer_step")
    TIMES["optimizer update + hooks"] = closure - TIMES["backward"] - TIMES.pop("training_step")
    # the CAM wrapper's time includes its network passes: split them off
    cam_key = "CAM passes (2 sub-nets x 3 scales x flip, no grad)"
    TIMES["CAM resize / flip-merge / normalise"] = TIMES.pop(cam_key) - TIMES["CAM network passes"]
    network = (
        "CAM network passes",
        "sub-net forward (train)",
        "sub-net forward (strong view)",
        "backward",
        "optimizer update + hooks",
    )
    print(f"\nDuPL step, {args.backbone}, batch {args.batch}, {args.size}x{args.size}, {args.device}, "
          f"{torch.get_num_threads()} threads, mean of {args.steps} steps: {step:.2f} s")  # fmt: skip
    print(f"{'part':55s} {'s/step':>8s} {'share':>7s}")
    accounted = 0.0
    for name, total in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        per_step = total / args.steps
        accounted += per_step
        print(f"{name:55s} {per_step:8.3f} {100 * per_step / step:6.1f}%")
    print(
        f"{'losses, thresholds, logging (rest)':55s} {step - accounted:8.3f} {100 * (step - accounted) / step:6.1f}%"
    )
    net = sum(TIMES[n] for n in network) / args.steps
    cams = TIMES["CAM network passes"] / args.steps
    print(f"\nnetwork passes the algorithm needs (CAM passes, training and strong-view forwards, backward, "
          f"optimizer update): {100 * net / step:.1f}% of the step, of which CAM passes {100 * cams / step:.1f}%; "
          f"method overhead beyond them: {100 * (step - net) / step:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
