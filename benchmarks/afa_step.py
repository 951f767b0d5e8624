"""AFA / U2PL+ WS training step time with a breakdown, on random data with every phase active.

Times the real ``AFAModule.training_step`` (or ``U2PLWeakModule``'s with ``--contrastive``) inside a Lightning
``Trainer``, after the warm-up, with the propagated labels on: the pieces are measured by wrapping the
functions the module calls (the multi-scale CAM passes, PAR pseudo-labels with and without the random walk,
the affinity labels and loss, the contrastive loss and memory bank); "losses + rest" is the remainder of the
step. The method's overhead is everything beyond the network passes the algorithm needs: the CAM passes
(``AFANetwork.cams_and_affinity``), the training forward, backward and the optimizer update.

Usage::

    python benchmarks/afa_step.py --size 256 --batch 4
    python benchmarks/afa_step.py --size 512 --batch 2 --steps 3 --contrastive
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from step_timing import TIMES, fit_timed, print_parts, timed

from wsss_lightning.data import DATASET_INFO
from wsss_lightning.methods import AFAModule, AFAPhaseConfig, U2PLWeakModule, WeakContrastiveConfig
from wsss_lightning.methods.afa import module as afa
from wsss_lightning.methods.u2pl import weak_module
from wsss_lightning.models.afa import AFANetwork


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--encoder", default="mit_b1")
    parser.add_argument("--contrastive", action="store_true", help="U2PL+ WS instead of AFA")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cam_key = "CAM passes (3 scales x flip, no grad) + walk matrix"
    for name, label in (
        ("par_pseudo_labels", "PAR pseudo-labels (refined + propagated)"),
        ("affinity_labels", "affinity labels"),
        ("affinity_loss", "affinity loss"),
    ):
        setattr(afa, name, timed(label, getattr(afa, name)))
    AFAModule.cams_with_walk = timed(cam_key, AFAModule.cams_with_walk)  # type: ignore[method-assign]
    AFANetwork.cams_and_affinity = timed("CAM network passes", AFANetwork.cams_and_affinity)  # type: ignore[method-assign]
    AFANetwork.forward = timed("training forward", AFANetwork.forward)  # type: ignore[method-assign]
    weak_module.WeakContrastiveLoss.forward = timed(  # type: ignore[method-assign]
        "contrastive loss + memory bank", weak_module.WeakContrastiveLoss.forward
    )
    AFAModule.backward = timed("backward", AFAModule.backward)  # type: ignore[method-assign]
    AFAModule.optimizer_step = timed("optimizer_step", AFAModule.optimizer_step)  # type: ignore[method-assign]
    AFAModule.training_step = timed("training_step", AFAModule.training_step)  # type: ignore[method-assign]

    skip = 2  # step 0: CAM only; step 1: segmentation + affinity; propagated labels from step 1
    common: dict[str, Any] = {
        "encoder": args.encoder,
        "class_names": DATASET_INFO["voc"].class_names,
        "phases": AFAPhaseConfig(seg_start=1, propagation_start=1),
    }
    model: AFAModule
    if args.contrastive:
        model = U2PLWeakModule(contrastive=WeakContrastiveConfig(start_step=1), **common)
    else:
        model = AFAModule(**common)
    step = fit_timed(model, args, skip)
    # the CAM wrapper's time includes its network passes: split them off
    TIMES["CAM resize / flip-merge / normalise, walk matrix"] = (
        TIMES.pop(cam_key) - TIMES["CAM network passes"]
    )
    network = ("CAM network passes", "training forward", "backward", "optimizer update + hooks")
    name = "U2PL+ WS" if args.contrastive else "AFA"
    print(f"\n{name} step, {args.encoder}, batch {args.batch}, {args.size}x{args.size}, {args.device}, "
          f"{torch.get_num_threads()} threads, mean of {args.steps} steps: {step:.2f} s")  # fmt: skip
    print_parts(step, args.steps, "losses, logging (rest)")
    net = sum(TIMES[n] for n in network) / args.steps
    print(f"\nnetwork passes the algorithm needs (CAM passes, training forward, backward, optimizer update): "
          f"{100 * net / step:.1f}% of the step; method overhead beyond them: {100 * (step - net) / step:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
