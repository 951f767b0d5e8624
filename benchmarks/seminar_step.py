"""Where a Seminar training step spends its time: one primary-stage step split into its parts.

Runs the calls of ``SeminarModule.training_step`` (primary stage: student, EMA teacher, frozen ancillary) on a
random batch and times each part separately, in the module's order: student forward, teacher train-mode
forward (+ BN-buffer sync, a no-op without DDP), ancillary forward + argmax, partial CE / consistency /
pseudo-label CE, dense-CRF loss forward, backward (network + CRF gradient), optimizer step, EMA update. The
method's own overhead is everything but the three network passes, the backward and the optimizer step.

Usage::

    python benchmarks/seminar_step.py [--encoder resnet18] [--crop 256] [--batch 4] [--steps 3] [--device cpu]

The published setting is ResNet-101, crop 513, batch 12 on one GPU; on a CPU use a small encoder and crop and
read the figures as proportions.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import defaultdict

import torch

from wsss_lightning.methods.seminar import DenseCRFLossConfig, SeminarModule
from wsss_lightning.methods.seminar.losses import consistency_mse, partial_ce, pseudo_label_ce
from wsss_lightning.teachers import FrozenNetwork

NETWORK = {"student forward", "teacher forward", "ancillary forward", "backward", "optimizer step"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--channels", type=int, default=256, help="ASPP / decoder width")
    parser.add_argument("--kernel", default="lattice", choices=["lattice", "exact"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    grid = None if args.encoder in ("resnet18", "resnet34") else (1, 2, 4)
    multi_grid = (1, 2) if grid is None else grid
    model = SeminarModule(
        encoder=args.encoder,
        multi_grid=multi_grid,
        decoder_channels=args.channels,
        crf_loss=DenseCRFLossConfig(kernel=args.kernel),
    )
    model.ancillary = FrozenNetwork(model._network())  # the primary stage's frozen ancillary student
    model = model.to(device).train()
    opt = torch.optim.SGD(model.student.parameters(), lr=1e-3, momentum=0.9)
    b, size = args.batch, (args.crop, args.crop)
    images = torch.randn(b, 3, *size, device=device)
    clicks = torch.full((b, *size), 255, device=device)
    clicks[:, ::37, ::41] = torch.randint(0, 21, clicks[:, ::37, ::41].shape, device=device)
    region = torch.ones(b, *size, dtype=torch.bool, device=device)
    times: dict[str, list[float]] = defaultdict(list)

    def tick() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    for step in range(args.steps + 1):
        t = {"start": tick()}
        logits = model.student(images)
        probs = logits.float().softmax(1)
        t["student forward"] = tick()
        with torch.no_grad(), model.teacher.train_mode():
            teacher_probs = model.teacher(images).float().softmax(1)
        model.teacher.sync_buffers()
        t["teacher forward"] = tick()
        with torch.no_grad():
            pseudo = model.ancillary(images).argmax(1)
        t["ancillary forward"] = tick()
        loss = partial_ce(logits, clicks) + 200.0 * consistency_mse(probs, teacher_probs, region)
        loss = loss + pseudo_label_ce(logits, pseudo, region)
        t["partial CE + consistency + pseudo-label CE"] = tick()
        loss = loss + model.dense_crf(model.denormalize(images) * 255.0, probs, region)
        t["dense-CRF loss forward"] = tick()
        opt.zero_grad()
        loss.backward()
        t["backward"] = tick()
        opt.step()
        t["optimizer step"] = tick()
        model.teacher.update(model.student, 0.999)
        t["EMA update"] = tick()
        if step == 0:
            continue  # warm-up
        for prev, name in itertools.pairwise(list(t)):
            times[name].append(t[name] - t[prev])
    total = sum(sum(v) for v in times.values()) / args.steps
    overhead = sum(sum(v) for k, v in times.items() if k not in NETWORK) / args.steps
    print(
        f"Seminar primary step, {args.encoder} (width {args.channels}), crop {args.crop}, batch {b}, {args.kernel} CRF, {device}:"
    )
    print("| part | ms / step | share |\n|---|---:|---:|")
    for name, values in times.items():
        ms = 1000 * sum(values) / len(values)
        print(f"| {name} | {ms:.0f} | {100 * ms / (1000 * total):.1f} % |")
    print(f"| **total** | **{1000 * total:.0f}** | 100 % |")
    print(
        f"method overhead beyond the network passes (losses, CRF, EMA): {1000 * overhead:.0f} ms = "
        f"{100 * overhead / (total - overhead):.1f} % of the network time"
    )


if __name__ == "__main__":
    main()
