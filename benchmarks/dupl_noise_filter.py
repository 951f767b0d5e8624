"""DuPL's adaptive noise filter: per-image scikit-learn mixtures vs. the batched torch implementation.

The reference does what DuPL's training loop does for every image of both sub-nets: fit
``GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)`` on the
foreground losses above 0.1 (if there are more than 1000), and if the two means are more than 1.0 apart,
drop the foreground pixels whose noise posterior (``predict_proba`` on all pixels) exceeds 0.95. The torch
side is one call of ``adaptive_noise_filter`` on all maps.

Synthetic loss maps at DuPL's crop size (448x448): one to three elliptic foreground objects with an ignore
band around them; clean losses ``|N(0.3, 0.3)|``, a blob covering 10-40 % of the foreground with noisy
losses ``N(3, 0.8)``; every fourth map is unimodal (nothing to filter) and maps may hold a few very large
losses (outliers, as confidently wrong pixels produce).

Usage::

    python benchmarks/dupl_noise_filter.py [--maps 8 4] [--size 448] [--repeats 5] [--device cpu] [--threads N]

Prints a markdown table: ms per call for both, the speed-up and the agreement of the per-pixel decisions.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from wsss_lightning.methods.dupl.noise_filter import adaptive_noise_filter


def synthetic_map(rng: np.random.Generator, size: int, bimodal: bool) -> tuple[np.ndarray, np.ndarray]:
    """One ``(size, size)`` float32 loss map and int64 pseudo-label (0 bg, 1..20 fg, 255 ignore)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    labels = np.zeros((size, size), np.int64)
    ellipse = np.full((size, size), np.inf)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.2, 0.35, 2) * size
        e = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        labels[e < 1.0] = rng.integers(1, 21)
        ellipse = np.minimum(ellipse, e)
    labels[(ellipse >= 1.0) & (ellipse < 1.12)] = 255
    loss = np.abs(rng.normal(0.2, 0.3, (size, size)))
    fg = (labels != 0) & (labels != 255)
    loss[fg] = np.abs(rng.normal(0.3, 0.3, fg.sum()))
    if bimodal:
        fy, fx = np.nonzero(fg)
        seed = rng.integers(fy.size)
        k = int(rng.uniform(0.1, 0.4) * fy.size)
        near = np.argpartition((fy - fy[seed]) ** 2 + (fx - fx[seed]) ** 2, k)[:k]
        loss[fy[near], fx[near]] = np.clip(rng.normal(3.0, 0.8, k), 0.0, None)
    if rng.random() < 0.5:
        outliers = fg & (rng.random((size, size)) < 0.001)
        loss[outliers] = rng.uniform(6.0, 12.0, outliers.sum())
    loss[labels == 255] = 0.0
    return loss.astype(np.float32), labels


def sklearn_filter(loss: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """DuPL's per-image noise filter with scikit-learn; returns the (H, W) bool noise mask."""
    foreground = (labels != 0) & (labels != 255)
    candidates = loss[foreground]
    candidates = candidates[candidates > 0.1]
    noise = np.zeros(labels.shape, bool)
    if candidates.size > 1000:
        gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
        gmm.fit(candidates.reshape(-1, 1))
        means = gmm.means_.ravel()
        if abs(means[0] - means[1]) > 1.0:
            posterior = gmm.predict_proba(loss.reshape(-1, 1))[:, int(np.argmax(means))].reshape(labels.shape)
            noise = (posterior > 0.95) & foreground
    return noise


def sklearn_all(maps: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """The reference on every map, one after the other (as DuPL's training loop does)."""
    return [sklearn_filter(loss, labels) for loss, labels in maps]


def best_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Best of ``repeats`` timed calls after one untimed warm-up call, in milliseconds."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--maps", type=int, nargs="+", default=[8, 4], help="maps per call (batch x 2 sub-nets)"
    )
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warnings.filterwarnings("ignore", module="sklearn")  # ConvergenceWarning at max_iter=10 is expected

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}")
    print(
        "| maps | size | scikit-learn ms | torch ms | speed-up | pixel agreement | fg-pixel agreement "
        "| maps filtered (torch / sklearn) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    for n in args.maps:
        maps = [synthetic_map(rng, args.size, bimodal=i % 4 != 2) for i in range(n)]
        losses_np = np.stack([m[0] for m in maps])
        labels_np = np.stack([m[1] for m in maps])
        losses = torch.from_numpy(losses_np).to(device)
        labels = torch.from_numpy(labels_np).to(device)

        reference = np.stack(sklearn_all(maps))
        _, noise = adaptive_noise_filter(losses, labels)
        noise_np = noise.cpu().numpy()
        foreground = (labels_np != 0) & (labels_np != 255)
        agree_all = (noise_np == reference).mean() * 100
        agree_fg = (noise_np == reference)[foreground].mean() * 100
        filtered_torch, filtered_ref = noise_np.any((1, 2)), reference.any((1, 2))

        ms_ref = best_ms(partial(sklearn_all, maps), args.repeats, lambda: None)
        ms_torch = best_ms(partial(adaptive_noise_filter, losses, labels), args.repeats, sync)
        print(
            f"| {n} | {args.size} | {ms_ref:.1f} | {ms_torch:.1f} | {ms_ref / ms_torch:.1f}x "
            f"| {agree_all:.4f} % | {agree_fg:.4f} % | {filtered_torch.sum()} / {filtered_ref.sum()}"
            + ("" if (filtered_torch == filtered_ref).all() else " (different maps)")
            + " |"
        )


if __name__ == "__main__":
    main()
