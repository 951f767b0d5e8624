"""Dense-CRF loss (rloss): forward + backward time of the pure-torch lattice, and lattice / exact ratio.

Inputs as in rloss's VOC training: a batch of 12 images with 21-class softmax maps, either at full
resolution 513×513 down-scaled by 0.5 inside the loss (σ_xy 100 → 50 on the 256×256 grid), or directly on the
256×256 grid (scale 1, σ_xy 50). Images are synthetic but natural-like (flat discs and blocks on a colour
gradient with sensor noise: the lattice's cost depends on how many simplices the pixels occupy), probability
maps are the softmax of low-resolution logits upsampled, as a segmentation head produces.

Timings are the best of ``--repeats`` after a warm-up: the whole ``dense_crf_loss`` forward and backward into
the probabilities (the ``probs`` leaf's gradient reset each time), plus the lattice's construction and one
filtering of the 21 channels alone. Scaling runs the 256² setting on 64², 128², 256² (and 384²) grids with
σ_xy scaled to the grid (the same scenes at more pixels), reporting µs per pixel (pixels of the whole batch).

The ratio table compares the lattice to the exact Gaussian sum on the same images: the slope of
``(W v)_lattice`` against ``(W v)_exact`` over all pixels and channels, their correlation, and the ratio of the
energies ``Σ vᵀ W v``; on grids above 128² the exact sums are taken for 2048 random query pixels.

Usage::

    python benchmarks/dense_crf_loss.py [--threads 1 2] [--device cpu] [--repeats 3] [--skip-ratio]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from wsss_lightning.losses import PermutohedralLattice, bilateral_features, dense_crf_loss


def natural_like(batch: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    """``(B, 3, size, size)`` float RGB in 0..255: discs and blocks on a colour gradient, noise σ = 4."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    images = []
    for _ in range(batch):
        img = torch.rand(3, 1, 1, generator=g).expand(3, size, size) * 255
        for shape in range(8):
            cy, cx = (torch.rand(2, generator=g) * size).tolist()
            r = (0.05 + 0.25 * torch.rand(1, generator=g).item()) * size
            if shape % 2:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            else:
                inside = ((yy - cy).abs() < r) & ((xx - cx).abs() < 0.6 * r)
            img = torch.where(inside, torch.rand(3, 1, 1, generator=g) * 255, img)
        angle = torch.rand(1, generator=g).item() * 2 * math.pi
        ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / size
        img = (
            img
            + 30 * ramp[None] * torch.randn(3, 1, 1, generator=g)
            + torch.randn(3, size, size, generator=g) * 4
        )
        images.append(img.clamp(0, 255))
    return torch.stack(images).to(device)


def smooth_probs(batch: int, classes: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    """``(B, K, size, size)`` softmax of logits on a stride-16 grid, bilinearly upsampled."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, classes, -(-size // 16), -(-size // 16), generator=g) * 3
    logits = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return logits.softmax(1).to(device)


def best_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Best of ``repeats`` timed calls after one untimed warm-up call."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def time_case(
    size: int, scale: float, sigma_xy: float, batch: int, classes: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Seconds for the loss forward + backward, the lattice construction and one filtering."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    images = natural_like(batch, size, 0, device)
    probs = smooth_probs(batch, classes, size, 1, device).requires_grad_()

    def step() -> None:
        probs.grad = None
        dense_crf_loss(images, probs, scale=scale, sigma_xy=sigma_xy).backward()

    grid = math.floor(size * scale)
    small = F.interpolate(images, scale_factor=scale, mode="nearest") if scale != 1 else images
    feats = bilateral_features(small, sigma_xy * scale, 15.0)
    values = torch.rand(batch, grid * grid, classes, device=device)
    lattice = PermutohedralLattice(feats)
    return {
        "total": best_seconds(step, repeats, sync),
        "build": best_seconds(lambda: PermutohedralLattice(feats), repeats, sync),
        "filter": best_seconds(lambda: lattice.filter(values), repeats, sync),
        "pixels": batch * grid * grid,
        "vertices": lattice.num_vertices / batch,
    }


def exact_rows(feats: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Exact ``(W v)`` at the query pixels ``rows`` only: ``(B, R, K)`` (float64 sums)."""
    out = []
    for start in range(0, rows.numel(), 512):
        q = feats[:, rows[start : start + 512]].double()
        kernel = torch.exp(-0.5 * torch.cdist(q, feats.double()).square())
        out.append(torch.bmm(kernel, values.double()))
    return torch.cat(out, 1).float()


def ratio_row(size: int, seeds: int, device: torch.device) -> str:
    """Lattice / exact agreement on ``seeds`` natural-like images of ``size``² (σ_xy 50 × size / 256)."""
    slopes, corrs, energies = [], [], []
    for seed in range(seeds):
        images = natural_like(1, size, 100 + seed, device)
        feats = bilateral_features(images, 50.0 * size / 256, 15.0)
        values = smooth_probs(1, 21, size, 200 + seed, device).permute(0, 2, 3, 1).reshape(1, -1, 21)
        n = size * size
        rows = (
            torch.arange(n)
            if n <= 128 * 128
            else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:2048]
        )
        rows = rows.to(device)
        exact = exact_rows(feats, values, rows)
        approx = PermutohedralLattice(feats).filter(values)[:, rows]
        slopes.append(float((approx * exact).sum() / (exact * exact).sum()))
        corrs.append(float(torch.corrcoef(torch.stack([approx.flatten(), exact.flatten()]))[0, 1]))
        v = values[:, rows]
        energies.append(float((v * approx).sum() / (v * exact).sum()))

    def stats(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"

    queries = "all" if size * size <= 128 * 128 else "2048"
    return f"| {size}² | {seeds} | {queries} | {stats(slopes)} | {min(corrs):.4f} | {stats(energies)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 128, 256, 384])
    parser.add_argument("--seeds", type=int, default=4, help="images per size for the ratio table")
    parser.add_argument("--skip-ratio", action="store_true")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    b, k = args.batch, args.classes
    print(f"torch {torch.__version__}, device {device}, batch {b}, {k} classes")

    print(
        "\n| threads | setting | fwd + bwd s | µs / pixel | lattice build s | filter (K channels) s | vertices / image |"
    )
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size, scale, sigma, name in (
            (513, 0.5, 100.0, "513² at scale 0.5"),
            (256, 1.0, 50.0, "256² at scale 1"),
        ):
            t = time_case(size, scale, sigma, b, k, args.repeats, device)
            print(
                f"| {threads} | {b}×{k}×{name} | {t['total']:.3f} | {t['total'] / t['pixels'] * 1e6:.2f} "
                f"| {t['build']:.3f} | {t['filter']:.3f} | {t['vertices']:.0f} |"
            )

    print("\n| threads | grid | pixels (batch) | fwd + bwd s | µs / pixel | lattice build s | filter s |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for grid in args.grids:
            t = time_case(grid, 1.0, 50.0 * grid / 256, b, k, args.repeats, device)
            print(
                f"| {threads} | {grid}² | {t['pixels']:,} | {t['total']:.3f} | {t['total'] / t['pixels'] * 1e6:.2f} "
                f"| {t['build']:.3f} | {t['filter']:.3f} |"
            )

    if not args.skip_ratio:
        torch.set_num_threads(max(args.threads))
        print(
            "\n| grid | images | query pixels | W·v slope lattice / exact: mean (range) | min correlation | energy ratio: mean (range) |"
        )
        print("|---|---|---|---|---|---|")
        for size in (32, 64, 128, 256):
            print(ratio_row(size, args.seeds, device))


if __name__ == "__main__":
    main()
