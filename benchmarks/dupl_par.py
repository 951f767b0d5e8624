"""PAR (pixel-adaptive refinement) at DuPL's pseudo-label shapes: batched vs. a per-image loop.

DuPL refines CAMs with PAR on the half-resolution training crop (448 → 224). The released code loops over
images and, for each, refines only the background plane plus that image's present classes (1 + K_i
channels, softmax over channels first), and it does so four times per image per step ({δ_h, δ_l}
background × two sub-networks), recomputing the image's affinity kernel every time (DuPL
``utils/cam_helper.py``).
The batched path computes the kernel once per batch and refines every image together, padding the
channels to 1 + max_i K_i; the 21-channel rows (VOC background + 20 classes, no restriction to present
classes) show what that restriction saves. On CPU, ``PAR`` processes a batch in cache-sized chunks (one
224×224 image at a time, at most 8 channels per refinement pass) and skips channels that are 0 in a chunk
(the padding), so the batched call does the per-image loop's work; the "one pass" column runs the
accelerator strategy (whole batch and all padded channels in every pass, ``PAR.chunk_on_cpu = False``) on
the CPU for comparison.

Usage::

    python benchmarks/dupl_par.py [--device cpu|cuda] [--batch 4 2] [--size 224] [--repeats 5]
                                  [--threads N] [--reference]

Tables (median ms of ``--repeats`` interleaved rounds after one warm-up round):

1. one PAR call (kernel + 10 refinement iterations) per image batch: per-image loop vs. batched (on CPU
   also the one-pass accelerator strategy);
2. the batched ``kernel()`` and ``refine()`` separately;
3. the four refinements of one DuPL step: four per-image loops of full PAR calls vs. one batched kernel
   followed by either four refines (one per channel stack) or one refine of the four stacks concatenated;
4. (``--reference``) the original algorithm, which gathers all 48 neighbours into a (B, C, 48, H, W)
   tensor, run per image as released, against the batched module.

Every batched result is checked against the loop it is compared with (``torch.testing.assert_close``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from wsss_lightning.models.par import PAR

NUM_CLASSES = 20  # VOC foreground classes
PRESENT = [3, 1, 2, 1]  # present foreground classes per image (cycled); VOC crops hold 1-3 typically


def synthetic_inputs(batch: int, size: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images of smooth colour blobs with pixel noise, and CAM-like maps for all 20 classes.

    Returns:
        images ``(B, 3, S, S)`` in [0, 1]; cams ``(B, 20, S, S)`` in [0, 1].
    """
    g = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.rand(batch, 3, 7, 7, generator=g), size=(size, size), mode="bilinear")
    images = (blobs + 0.03 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    cams = F.interpolate(
        torch.rand(batch, NUM_CLASSES, 28, 28, generator=g), size=(size, size), mode="bilinear"
    )
    return images.to(device), cams.to(device)


def channel_stack(cams: Tensor, classes: list[list[int]], background: float) -> list[Tensor]:
    """Per image: softmax over [constant background plane ; present-class CAMs] -> ``(1, 1 + K_i, S, S)``."""
    out = []
    for i, cls in enumerate(classes):
        cam = cams[i : i + 1, cls]
        out.append(torch.softmax(torch.cat([torch.full_like(cam[:, :1], background), cam], 1), 1))
    return out


def pad_channels(stacks: list[Tensor]) -> Tensor:
    """Concatenate per-image stacks along the batch, zero-padding channels to the largest stack."""
    k = max(s.shape[1] for s in stacks)
    return torch.cat([F.pad(s, (0, 0, 0, 0, 0, k - s.shape[1])) for s in stacks])


def reference_par(par: PAR, image: Tensor, masks: Tensor) -> Tensor:
    """The original algorithm: every neighbour gathered into one (B, C, N, H, W) tensor, per-dilation pads."""
    h, w = image.shape[-2:]
    masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=True)

    def gather(x: Tensor) -> Tensor:
        views = []
        for d in par.dilations:
            p = F.pad(x, (d, d, d, d), mode="replicate")
            views += [
                p[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
                if dy or dx
            ]
        return torch.stack(views, 2)

    nb = gather(image)
    std = nb.std(2, keepdim=True)
    aff = -(((nb - image.unsqueeze(2)).abs() / (std + 1e-8) / par.w1) ** 2).mean(1, keepdim=True)
    pos = par.pos_softmax.to(image).view(1, 1, -1, 1, 1)
    kappa = torch.softmax(aff, 2) + par.w2 * pos
    for _ in range(par.num_iter):
        masks = (gather(masks) * kappa).sum(2)
    return masks


def per_image(fn: Callable[[Tensor, Tensor], Tensor], images: Tensor, stacks: list[Tensor]) -> list[Tensor]:
    """The released loop: ``fn(image_i, stack_i)`` image by image."""
    return [fn(images[i : i + 1], s) for i, s in enumerate(stacks)]


def step_loop(par: PAR, images: Tensor, step_stacks: list[list[Tensor]]) -> list[Tensor]:
    """A DuPL step as released: a full PAR call per image and per channel stack."""
    return [out for stacks in step_stacks for out in per_image(par, images, stacks)]


def step_batched(par: PAR, images: Tensor, step_stacks: list[list[Tensor]]) -> Tensor:
    """A DuPL step batched: one kernel, one refine of all stacks concatenated along channels."""
    masks = torch.cat([pad_channels(stacks) for stacks in step_stacks], 1)
    return par.refine(masks, par.kernel(images))


def step_shared_kernel(par: PAR, images: Tensor, step_stacks: list[list[Tensor]]) -> Tensor:
    """A DuPL step batched: one kernel, one refine per channel stack."""
    kappa = par.kernel(images)
    return torch.cat([par.refine(pad_channels(stacks), kappa) for stacks in step_stacks], 1)


def one_pass(par: PAR, images: Tensor, masks: Tensor) -> Tensor:
    """The accelerator strategy on any device: the whole batch and every padded channel in each pass."""
    par.chunk_on_cpu = False
    try:
        return par(images, masks)
    finally:
        del par.chunk_on_cpu  # back to the class default


def check(batched: Tensor, outputs: list[Tensor], channels: int = 0) -> None:
    """Image i's output must equal ``batched[i]``'s first channels (after ``channels`` skipped)."""
    for i, s in enumerate(outputs):
        got = batched[i : i + 1, channels : channels + s.shape[1]]
        torch.testing.assert_close(got, s, rtol=1e-5, atol=1e-6)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_timed(
    variants: dict[str, Callable[[], object]], args: argparse.Namespace, device: torch.device
) -> dict[str, tuple[float, float]]:
    """Median ms (and peak CUDA MiB, else nan) of each variant, rounds interleaved in rotating order."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    peak: dict[str, float] = dict.fromkeys(variants, float("nan"))
    names = list(variants)
    for i in range(args.repeats + 1):  # round 0 is the warm-up
        for name in names[i % len(names) :] + names[: i % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            sync(device)
            start = time.perf_counter()
            variants[name]()
            sync(device)
            if i:
                times[name].append((time.perf_counter() - start) * 1000)
            if device.type == "cuda":
                peak[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return {k: (sorted(v)[len(v) // 2], peak[k]) for k, v in times.items()}


def fmt_mem(mib: float) -> str:
    return "" if math.isnan(mib) else f" ({mib:.0f} MiB)"  # nan on CPU


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--size", type=int, default=224, help="image side (DuPL: half of the 448 crop)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each variant once per round)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--reference", action="store_true", help="also time the gather-all original")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    par = PAR().to(device)  # DuPL: dilations (1, 2, 4, 8, 12, 24), 10 iterations, w1 0.3, w2 0.01
    print(
        f"device {device}, {torch.get_num_threads()} CPU threads; image {args.size}x{args.size}; "
        f"PAR dilations {par.dilations}, {par.num_iter} iterations; present classes per image cycle {PRESENT}; "
        f"median of {args.repeats}"
        + (" (peak extra CUDA memory in brackets)" if device.type == "cuda" else "")
        + "\n"
    )
    rows: dict[str, list[str]] = {"call": [], "parts": [], "step": [], "ref": []}
    with torch.no_grad():
        for b in args.batch:
            images, cams = synthetic_inputs(b, args.size, device)
            present = [list(range(PRESENT[i % len(PRESENT)])) for i in range(b)]
            every = [list(range(NUM_CLASSES))] * b
            for label, classes in ((f"1+K_i -> {1 + max(map(len, present))}", present), ("21", every)):
                stacks = channel_stack(cams, classes, 0.7)
                padded = pad_channels(stacks)
                batched = partial(par, images, padded)
                check(batched(), per_image(par, images, stacks))
                variants = {"loop": partial(per_image, par, images, stacks), "batched": batched}
                if device.type == "cpu":
                    variants["one pass"] = partial(one_pass, par, images, padded)
                    check(variants["one pass"](), per_image(par, images, stacks))
                r = run_timed(variants, args, device)
                (lm, lp), (bm, bp) = r["loop"], r["batched"]
                om = r["one pass"][0] if "one pass" in r else math.nan
                rows["call"].append(
                    f"| {b} | {label} | {lm:.1f}{fmt_mem(lp)} | {bm:.1f}{fmt_mem(bp)} | {lm / bm:.2f}x | "
                    + ("-" if math.isnan(om) else f"{om:.1f} ({lm / om:.2f}x)")
                    + " |"
                )

                kernel = partial(par.kernel, images)
                r = run_timed(
                    {"kernel": kernel, "refine": partial(par.refine, padded, kernel())}, args, device
                )
                (km, kp), (rm, rp) = r["kernel"], r["refine"]
                rows["parts"].append(
                    f"| {b} | {padded.shape[1]} | {km:.1f}{fmt_mem(kp)} | {rm:.1f}{fmt_mem(rp)} |"
                )

                if args.reference and classes is present:
                    original = partial(per_image, partial(reference_par, par), images, stacks)
                    check(batched(), original())
                    r = run_timed({"original": original, "batched": batched}, args, device)
                    (fm, fp), (bm, bp) = r["original"], r["batched"]
                    rows["ref"].append(
                        f"| {b} | {label} | {fm:.1f}{fmt_mem(fp)} | {bm:.1f}{fmt_mem(bp)} | {fm / bm:.1f}x |"
                    )

            # One DuPL step: {δ_h = 0.7, δ_l = 0.25} backgrounds × two sub-networks' CAMs, present classes.
            cams2 = cams.flip(-1)  # stands in for the second sub-network's CAMs
            step_stacks = [channel_stack(c, present, bg) for c in (cams, cams2) for bg in (0.7, 0.25)]
            k = pad_channels(step_stacks[0]).shape[1]
            outs = [step_batched(par, images, step_stacks), step_shared_kernel(par, images, step_stacks)]
            for n, stacks in enumerate(step_stacks):
                for out in outs:
                    check(out, per_image(par, images, stacks), channels=n * k)
            r = run_timed(
                {
                    "loop": partial(step_loop, par, images, step_stacks),
                    "four": partial(step_shared_kernel, par, images, step_stacks),
                    "one": partial(step_batched, par, images, step_stacks),
                },
                args,
                device,
            )
            (lm, lp), (fm, fp), (om, op) = r["loop"], r["four"], r["one"]
            rows["step"].append(
                f"| {b} | {k} | {lm:.1f}{fmt_mem(lp)} | {fm:.1f}{fmt_mem(fp)} ({lm / fm:.2f}x) | "
                f"{om:.1f}{fmt_mem(op)} ({lm / om:.2f}x) |"
            )

    print("1. one PAR call (ms)\n")
    print(
        "| batch | channels | per-image loop | batched | loop / batched | one pass (loop / one pass) |\n"
        "|---:|---|---:|---:|---:|---:|"
    )
    print("\n".join(rows["call"]))
    print("\n2. batched parts (ms)\n")
    print("| batch | channels | kernel() | refine() (10 iterations) |\n|---:|---:|---:|---:|")
    print("\n".join(rows["parts"]))
    print("\n3. four refinements of one DuPL step (ms; speed-up over the loop in brackets)\n")
    print(
        "| batch | channels per stack | per-image loop (4 PAR calls per image) | 1 kernel + 4 refines "
        "| 1 kernel + 1 refine of 4 stacks |\n|---:|---:|---:|---:|---:|"
    )
    print("\n".join(rows["step"]))
    if rows["ref"]:
        print("\n4. original gather-all algorithm, per image, vs. batched module (ms)\n")
        print(
            "| batch | channels | original loop | batched | original / batched |\n|---:|---|---:|---:|---:|"
        )
        print("\n".join(rows["ref"]))


if __name__ == "__main__":
    main()
