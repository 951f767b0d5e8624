"""Where a U2PL training step spends its time: one semi-supervised step split into its parts.

Runs ``U2PLModule``'s step on a synthetic VOC-layout batch and times each part separately (the same calls
the module makes, in the same order): teacher pseudo-labels (eval mode) + CutMix, student forward +
backward with the supervised loss, teacher train-mode forward, unsupervised loss (with the teacher entropy, sorted once and shared), contrastive loss with the
memory-bank update (including its share of the backward). Also prints the memory of the bank.

Usage::

    python benchmarks/u2pl_step.py [--encoder resnet18] [--crop 129] [--batch 4] [--steps 5] [--device cpu]

The reference setting is ResNet-101 (``resnet101s``), crop 513, 4 + 4 images per GPU; on a CPU use a small
encoder and crop and read the figures as proportions.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections import defaultdict

import torch

from wsss_lightning.methods.u2pl import ContrastiveConfig, U2PLModule
from wsss_lightning.methods.u2pl.cutmix import apply_cutmix, cutmix_boxes
from wsss_lightning.methods.u2pl.losses import teacher_entropy, unsupervised_loss
from wsss_lightning.models.resize import resize


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--crop", type=int, default=129)
    parser.add_argument("--batch", type=int, default=4, help="labeled and unlabeled images per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    grid = (args.crop - 1) // 4 + 1  # representation grid (the network pads to k * 8 + 1)
    model = U2PLModule(encoder=args.encoder, multi_grid=None, contrastive=ContrastiveConfig()).to(device)
    model.train()
    bank = model.contrastive.memory_bank
    # a full bank, as in the middle of training
    bank.push(torch.randn(bank.keys.shape[0] - 2, 256, device=device),
              torch.arange(21, device=device).repeat_interleave(bank.capacities))  # fmt: skip
    opt = torch.optim.SGD(model.student.parameters(), lr=1e-3)
    b, size = args.batch, (args.crop, args.crop)
    images_l, images_u = torch.randn(b, 3, *size, device=device), torch.randn(b, 3, *size, device=device)
    labels_l = torch.randint(0, 21, (b, *size), device=device)
    times: dict[str, list[float]] = defaultdict(list)

    def tick() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    for step in range(args.steps + 1):
        t = {"start": tick()}
        conf, labels_u = model._pseudo_labels(images_u)
        boxes = cutmix_boxes(b, *size, prob=1.0, device=device)
        mixed, labels_u, conf = apply_cutmix(images_u, labels_u, conf, boxes)
        t["pseudo-labels + CutMix"] = tick()
        both = torch.cat([images_l, mixed])
        out = model.student(both)
        loss_sup = model._supervised(out, labels_l, count=b)
        t["student forward + sup. loss"] = tick()
        with torch.no_grad(), model.teacher.train_mode():
            teacher = model.teacher(both)
        prob_u_large = resize(teacher["pred"][b:], size, align_corners=True).softmax(1)
        t["teacher train-mode forward"] = tick()
        entropy = teacher_entropy(prob_u_large, labels_u)  # once per step, shared by both losses
        loss_unsup = unsupervised_loss(
            resize(out["pred"][b:], size, align_corners=True), labels_u, prob_u_large, 20.0, entropy=entropy
        )
        t["unsupervised loss"] = tick()
        loss_con = model._contrastive(out["rep"], teacher, labels_l, labels_u, prob_u_large, entropy)
        t["contrastive loss + bank update"] = tick()
        opt.zero_grad()
        (loss_sup + loss_unsup + 0.25 * loss_con).backward()
        opt.step()
        t["backward + optimizer step"] = tick()
        if step == 0:
            continue  # warm-up
        names = list(t)
        for prev, name in itertools.pairwise(names):
            times[name].append(t[name] - t[prev])
    total = sum(sum(v) for v in times.values()) / args.steps
    print(f"U2PL step, {args.encoder}, crop {args.crop} ({grid}x{grid} grid), {b} + {b} images, {device}:")
    print("| part | ms / step | share |\n|---|---:|---:|")
    for name, values in times.items():
        ms = 1000 * sum(values) / len(values)
        print(f"| {name} | {ms:.0f} | {100 * ms / (1000 * total):.0f} % |")
    print(f"| **total** | **{1000 * total:.0f}** | 100 % |")
    print(
        f"memory bank: {bank.keys.shape[0]} x {bank.keys.shape[1]} {bank.keys.dtype} = {bank.nbytes / 2**20:.1f} MiB"
    )


if __name__ == "__main__":
    main()
