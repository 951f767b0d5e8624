"""U2PL contrastive step (loss + memory-bank update + backward): batched ring buffer vs. a per-class loop.

Shapes follow VOC training: 8 labeled + 8 unlabeled images, 21 classes, 256-d representations on the
1/4 grid of a 513 crop (129 x 129; ``--size`` lets CPU runs use a smaller grid), memory bank at full
capacity (30,000 keys per class, 50,000 for class 0). Inputs are synthetic but shaped like a real batch:
each image holds background and two foreground classes in smooth blobs, and the teacher probabilities
favour the label with random confidence.

The baseline is the straightforward implementation the released code uses: a Python loop over classes
with boolean-mask gathers, queues as lists of tensors that are concatenated in full on every push, and
the whole queue of every contributing class cloned before drawing negatives (U2PL
``compute_contra_memobank_loss`` in ``u2pl/utils/loss_helper.py`` and ``dequeue_and_enqueue`` in
``u2pl/utils/utils.py``; single process, so without its per-class ``all_gather_object``).

Usage::

    python benchmarks/u2pl_contrastive.py [--size 65] [--steps 6] [--rule code paper] [--device cpu]

Each row times one training-step's worth of contrastive work (negative selection, bank update, anchor and
negative sampling, loss, backward to the representations); the batched version is run with its default
cap of 8,192 enqueued keys per step and uncapped (every negative, as released).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.methods.u2pl import ContrastiveConfig
from wsss_lightning.methods.u2pl.contrastive import u2pl_contrastive_loss
from wsss_lightning.methods.u2pl.losses import entropy_band_masks
from wsss_lightning.methods.u2pl.memory_bank import CategoryMemoryBank

NUM_CLASSES, DIM = 21, 256
CAPACITY, BACKGROUND_CAPACITY = 30000, 50000


def synthetic_inputs(batch: int, size: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """Student/teacher representations, labels, teacher probabilities and entropy masks."""
    g = torch.Generator().manual_seed(seed)
    b = 2 * batch
    fg = torch.randint(1, NUM_CLASSES, (b, 2), generator=g)
    classes = torch.cat([torch.zeros(b, 1, dtype=torch.long), fg], 1)  # background + 2 objects per image
    blobs = F.interpolate(torch.randn(b, 3, 5, 5, generator=g), size=(size, size), mode="bilinear")
    labels = classes.gather(1, blobs.argmax(1).flatten(1)).view(b, size, size)
    noise = torch.randn(b, NUM_CLASSES, size, size, generator=g)
    confidence = 6 * torch.rand(b, 1, size, size, generator=g)
    prob = torch.softmax(noise + confidence * F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2), 1)
    labels_l = labels[:batch].clone()
    labels_l[:, :2] = 255  # some ignored boundary pixels
    x = {
        "rep": torch.randn(b, DIM, size, size, generator=g),
        "rep_teacher": torch.randn(b, DIM, size, size, generator=g),
        "labels_l": labels_l,
        "labels_u": labels[batch:],
        "prob_l": prob[:batch],
        "prob_u": prob[batch:],
    }
    low, high = entropy_band_masks(x["prob_u"], x["labels_u"], 20.0, 80.0)
    x["low_mask_u"], x["high_mask_u"] = low, high
    return {k: v.to(device) for k, v in x.items()}


def baseline_step(
    x: dict[str, Tensor], queues: list[list[Tensor]], rule: str, gen: torch.Generator
) -> Tensor:
    """Per-class loop over list-of-tensor queues (the released algorithm, matched class indices)."""
    rep, rep_t = x["rep"], x["rep_teacher"]
    prob_l, prob_u = x["prob_l"], x["prob_u"]
    labels_l, labels_u = x["labels_l"], x["labels_u"]
    labels = torch.cat([labels_l, labels_u])
    low = torch.cat([labels_l != 255, x["low_mask_u"]])
    high = torch.cat([labels_l != 255, x["high_mask_u"]])
    prob = torch.cat([prob_l, prob_u])
    rep_p, rep_tp = rep.permute(0, 2, 3, 1), rep_t.permute(0, 2, 3, 1)
    order_l = torch.sort(prob_l, 1, True)[1].permute(0, 2, 3, 1)
    order_u = torch.sort(prob_u, 1, True)[1].permute(0, 2, 3, 1)
    anchors, protos, valid = [], [], []
    for c in range(NUM_CLASSES):
        onehot = labels == c
        low_c, high_c = onehot & low, onehot & high
        anchors.append(rep_p[low_c & (prob[:, c] > 0.3)])
        protos.append(rep_tp[low_c].mean(0) if low_c.any() else None)
        top_l = order_l[..., :3].eq(c).any(-1)
        band_u = order_u[..., 3:20].eq(c).any(-1)
        if rule == "code":
            neg = high_c & torch.cat([top_l & (labels_l != c), band_u])
        else:
            neg_l = top_l & (labels_l != c) & (labels_l != 255)
            neg = torch.cat([neg_l, band_u & x["high_mask_u"]])
        keys = rep_tp[neg].detach()
        # The released dequeue_and_enqueue: concatenate the whole queue, keep the newest `capacity`.
        cap = BACKGROUND_CAPACITY if c == 0 else CAPACITY
        queues[c][0] = torch.cat([queues[c][0], keys.cpu()])[-cap:]
        if low_c.any():
            valid.append(c)
    loss = 0 * rep.sum()
    if len(valid) < 2:
        return loss
    for c in valid:
        if len(anchors[c]) == 0 or len(queues[c][0]) == 0:
            continue
        idx = torch.randint(len(anchors[c]), (256,), generator=gen)
        anchor = anchors[c][idx.to(rep.device)]
        with torch.no_grad():
            negatives = queues[c][0].clone().to(rep.device)  # the whole queue, every step
            neg_idx = torch.randint(len(negatives), (256 * 50,), generator=gen).to(rep.device)
            negatives = negatives[neg_idx].view(256, 50, DIM)
            proto = protos[c]
            assert proto is not None  # c is valid
            keys = torch.cat([proto.expand(256, 1, DIM), negatives], 1)
        logits = torch.cosine_similarity(anchor[:, None], keys, dim=2) / 0.5
        loss = loss + F.cross_entropy(logits, torch.zeros(256, dtype=torch.long, device=rep.device))
    return loss / len(valid)


def time_step(step: Callable[[], Tensor], rep: Tensor, device: torch.device) -> float:
    """Milliseconds of one step: forward, bank update and backward to the representations."""
    rep.grad = None  # rep stands for a non-leaf activation: no gradient accumulation across steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8, help="labeled (= unlabeled) images per step")
    parser.add_argument(
        "--size", type=int, default=None, help="representation grid side (default 129 GPU, 65 CPU)"
    )
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (each variant once per round)")
    parser.add_argument("--rule", nargs="+", default=["code", "paper"], choices=["code", "paper"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or (129 if device.type == "cuda" else 65)
    x = synthetic_inputs(args.batch, size, device)
    x["rep"].requires_grad_(True)

    g = torch.Generator().manual_seed(1)
    bank = CategoryMemoryBank(NUM_CLASSES, DIM, CAPACITY, BACKGROUND_CAPACITY, normalize=True).to(device)
    prefill = [torch.randn(cap, DIM, generator=g) for cap in bank.capacity_list]
    for c, keys in enumerate(prefill):
        bank.push(keys.to(device), torch.full((len(keys),), c, device=device))
    print(
        f"device {device}, {torch.get_num_threads()} threads; batch {args.batch}+{args.batch}, {NUM_CLASSES} classes, "
        f"rep {DIM}x{size}x{size}; bank {bank.capacity_list[1]}/{bank.capacity_list[0]} per class, "
        f"full: {bank.nbytes / 2**20:.1f} MiB ({bank.keys.dtype})\n"
    )
    print(
        "| negative rule | keys enqueued per step | per-class loop (ms/step) | batched (ms/step) | speed-up |"
    )
    print("|---|---|---:|---:|---:|")
    for rule in args.rule:
        queues = [[keys.clone()] for keys in prefill]  # host queues, as released
        base_gen = torch.Generator().manual_seed(2)
        gens = {cap: torch.Generator(device=device).manual_seed(3) for cap in (8192, None)}

        def baseline(rule: str = rule) -> Tensor:
            return baseline_step(x, queues, rule, base_gen)  # noqa: B023

        def batched(
            cap: int | None, rule: str = rule, gens: dict[int | None, torch.Generator] = gens
        ) -> Tensor:
            return u2pl_contrastive_loss(
                x["rep"],
                x["rep_teacher"],
                x["labels_l"],
                x["labels_u"],
                x["prob_l"],
                x["prob_u"],
                x["low_mask_u"],
                x["high_mask_u"],
                bank,
                ContrastiveConfig(negative_rule=rule, max_keys_per_step=cap),  # type: ignore[arg-type]
                generator=gens[cap],
            ).loss

        # Interleaved in rotating order (each variant follows each other equally often; the allocator
        # state a step inherits matters on CPU), one warm-up round, medians: robust to other load.
        variants: dict[str, Callable[[], Tensor]] = {
            "base": baseline,
            "8192": lambda: batched(8192),
            "None": lambda: batched(None),
        }
        times: dict[str, list[float]] = {key: [] for key in variants}
        names = list(variants)
        for i in range(args.steps + 1):
            for name in names[i % 3 :] + names[: i % 3]:
                ms = time_step(variants[name], x["rep"], device)
                if i:
                    times[name].append(ms)
        base_ms = median(times["base"])
        for key, label in (("8192", "<= 8192"), ("None", "all")):
            ms = median(times[key])
            print(f"| {rule} | {label} | {base_ms:.1f} | {ms:.1f} | {base_ms / ms:.1f}x |")


if __name__ == "__main__":
    main()
