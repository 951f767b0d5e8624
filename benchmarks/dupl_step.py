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

import torch
from step_timing import TIMES, fit_timed, print_parts, timed

from wsss_lightning.data import DATASET_INFO
from wsss_lightning.methods import DuPLModule, NoiseFilterConfig, PhaseConfig
from wsss_lightning.methods.dupl import module as dupl
from wsss_lightning.methods.dupl.network import DuPLSubNet


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
    step = fit_timed(model, args, skip)
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
    print_parts(step, args.steps, "losses, thresholds, logging (rest)")
    net = sum(TIMES[n] for n in network) / args.steps
    cams = TIMES["CAM network passes"] / args.steps
    print(f"\nnetwork passes the algorithm needs (CAM passes, training and strong-view forwards, backward, "
          f"optimizer update): {100 * net / step:.1f}% of the step, of which CAM passes {100 * cams / step:.1f}%; "
          f"method overhead beyond them: {100 * (step - net) / step:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
