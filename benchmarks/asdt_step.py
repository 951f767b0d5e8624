"""ASDT training step time with a breakdown, and its class-teacher CRFs against RRM's per-image CPU CRFs.

Times the real ``ASDTModule.training_step`` inside a Lightning ``Trainer`` on random tagged crops, after the
classification warm-up, with the pulse-width wave switching teacher every step (T = 2, τ = 2), so the mean covers
both phases (B^st's CRF runs in half of the steps). The parts are measured by wrapping what the step calls: the
training forward (backbone + three heads), the extra CAM scales, B^ct / R^ct (two dense CRFs on the device +
RRM's rules), B^st (one dense CRF), the two gated dense-CRF energies L_str, backward and the optimizer update;
"losses + rest" is the remainder. The network passes the algorithm needs are the training forward, the CAM passes,
backward and the update; everything else is the method's overhead.

Then the CRFs of B^ct alone on the same batch, three ways: the device CRF (one batched call for both background
powers, as the module runs it), pydensecrf2 image by image in this process (RRM: two CRFs per image, serially),
and pydensecrf2 in a pool of 2 processes (``CRFPostProcessor``).

Usage::

    python benchmarks/asdt_step.py --encoder resnet101 --size 321 --batch 4 --steps 2
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from step_timing import TIMES, fit_timed, print_parts, timed

from wsss_lightning.data import DATASET_INFO
from wsss_lightning.inference.crf import CRFPostProcessor, dense_crf
from wsss_lightning.losses.dense_crf import DenseCRFLoss
from wsss_lightning.methods import ASDTModule, PWWaveConfig, ReliableLabelConfig
from wsss_lightning.methods.asdt import labels as asdt_labels
from wsss_lightning.methods.asdt import module as asdt_module
from wsss_lightning.methods.asdt.network import ASDTNetwork


def crf_comparison(batch: int, size: int, repeats: int = 2) -> None:
    """Seconds for the CRFs of B^ct of one batch: device (batched), serial pydensecrf2 (RRM), a pool of 2."""
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, 1, 1, generator=g) * 255).expand(batch, 3, size, size).clone()
    images[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 200.0
    images = (images + torch.randn(batch, 3, size, size, generator=g) * 4).clamp(0, 255).round()
    tags = torch.zeros(batch, 20)
    tags[:, 0] = tags[::2, 7] = 1
    low = torch.rand(batch, 20, size // 8, size // 8, generator=g)
    cams = asdt_labels.normalise_by_max(
        torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear") * tags[:, :, None, None]
    )
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        asdt_labels.class_teacher_labels(images, cams, tags)
        best = min(best, time.perf_counter() - start)
    # the two stacks RRM runs the CRF on: [bg_alpha; present classes]
    rgb = images.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    stacks, pictures = [], []
    for i in range(batch):
        present = cams[i][tags[i] > 0].numpy()
        for alpha in (4.0, 32.0):
            bg = (1 - present.max(0)) ** alpha
            stacks.append(np.concatenate([bg[None], present]).astype(np.float32))
            pictures.append(np.ascontiguousarray(rgb[i]))
    start = time.perf_counter()
    for picture, stack in zip(pictures, stacks, strict=True):
        dense_crf(picture, stack, asdt_labels.RRM_TRAIN_CRF)
    serial = time.perf_counter() - start
    with CRFPostProcessor(asdt_labels.RRM_TRAIN_CRF, num_workers=2) as pool:
        pool(pictures, stacks)
        start = time.perf_counter()
        pool(pictures, stacks)
        pooled = time.perf_counter() - start
    print(f"\nB^ct CRFs of one batch ({batch} images, {size}x{size}, 2 CRFs each):")
    print(f"  device CRF, batched (this module):         {best:.2f} s")
    print(f"  pydensecrf2, per image, serial (RRM):      {serial:.2f} s")
    print(f"  pydensecrf2, pool of 2 processes:          {pooled:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--crf-backend", choices=["device", "pydensecrf"], default="device", help="labels.crf_backend"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    for name, label in (
        ("class_teacher_labels", "B^ct / R^ct: 2 CRFs + RRM's rules"),
        ("seg_teacher_labels", "B^st: 1 CRF (seg-teacher steps)"),
    ):
        setattr(asdt_module, name, timed(label, getattr(asdt_module, name)))
    ASDTNetwork.forward = timed("training forward (backbone + 3 heads)", ASDTNetwork.forward)  # type: ignore[method-assign]
    ASDTNetwork.cams = timed("CAM passes (extra scales, no grad)", ASDTNetwork.cams)  # type: ignore[method-assign]
    DenseCRFLoss.forward = timed("L_str: 2 gated dense-CRF energies", DenseCRFLoss.forward)  # type: ignore[method-assign]
    ASDTModule.backward = timed("backward", ASDTModule.backward)  # type: ignore[method-assign]
    ASDTModule.optimizer_step = timed("optimizer_step", ASDTModule.optimizer_step)  # type: ignore[method-assign]
    ASDTModule.training_step = timed("training_step", ASDTModule.training_step)  # type: ignore[method-assign]

    skip = 2  # step 0: classification warm-up; step 1 untimed
    model = ASDTModule(
        encoder=args.encoder, class_names=DATASET_INFO["voc"].class_names, warmup_steps=1,
        pw=PWWaveConfig(period=2, tau=2.0), labels=ReliableLabelConfig(crf_backend=args.crf_backend),
    )  # fmt: skip
    kwargs: dict[str, Any] = {}
    step = fit_timed(model, args, skip, **kwargs)
    network = (
        "training forward (backbone + 3 heads)", "CAM passes (extra scales, no grad)", "backward",
        "optimizer update + hooks",
    )  # fmt: skip
    print(f"\nASDT step, {args.encoder}, batch {args.batch}, {args.size}x{args.size}, {args.device}, "
          f"{torch.get_num_threads()} threads, mean of {args.steps} steps: {step:.2f} s")  # fmt: skip
    print_parts(step, args.steps, "losses, logging (rest)")
    net = sum(TIMES[n] for n in network) / args.steps
    print(f"\nnetwork passes the algorithm needs: {100 * net / step:.1f}% of the step; "
          f"method overhead beyond them: {100 * (step - net) / step:.1f}%")  # fmt: skip
    crf_comparison(args.batch, args.size)


if __name__ == "__main__":
    main()
