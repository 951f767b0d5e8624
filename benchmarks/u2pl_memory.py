"""Host memory of one U2PL contrastive step at VOC shapes (loss + memory-bank update + backward), on CPU.

Shapes as ``benchmarks/u2pl_contrastive.py``: 8 labeled + 8 unlabeled images, 21 classes, 256-d
representations on the 129 x 129 grid of a 513 crop, the memory bank full (30,000 keys per class, 50,000
for class 0, 635 MiB), every negative enqueued (the default). torch allocations are invisible to
``tracemalloc``, so this reads the resident set size: ``ru_maxrss`` (the process's peak) and the current RSS
from ``/proc/self/statm``. Run it in a fresh process per variant: the peak is process-wide.

Usage::

    python benchmarks/u2pl_memory.py [--size 129] [--batch 8] [--steps 3]

Prints the RSS before the steps (bank, inputs, model state), the peak during the steps above it (the
step's transient memory, including buffers it keeps), the RSS kept after the steps above it, and the
milliseconds per step.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from u2pl_contrastive import synthetic_inputs  # type: ignore[import-not-found]

from wsss_lightning.methods.u2pl import ContrastiveConfig
from wsss_lightning.methods.u2pl.contrastive import U2PLContrastiveLoss

MIB = 2**20


def rss() -> int:
    """Current resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """Peak resident set size of the process in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=129, help="representation grid side")
    parser.add_argument("--batch", type=int, default=8, help="labeled and unlabeled images per step")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    loss_fn = U2PLContrastiveLoss(21, ContrastiveConfig())
    bank = loss_fn.memory_bank
    bank.push(
        torch.randn(bank.keys.shape[0] - 2, bank.dim), torch.arange(21).repeat_interleave(bank.capacities)
    )
    x = synthetic_inputs(args.batch, args.size, torch.device("cpu"))
    x["rep"].requires_grad_()
    gen = torch.Generator().manual_seed(1)
    before, peak_before = rss(), peak_rss()
    times = []
    for _ in range(args.steps):
        x["rep"].grad = None
        start = time.perf_counter()
        loss_fn(*x.values(), generator=gen).loss.backward()
        times.append(1000 * (time.perf_counter() - start))
    x["rep"].grad = None
    after, peak = rss(), peak_rss()
    print(f"contrastive step, {args.batch} + {args.batch} images, {args.size}x{args.size} grid, CPU:")
    print(f"RSS before the steps: {before / MIB:.0f} MiB (peak so far {peak_before / MIB:.0f} MiB)")
    print(f"peak during the steps above it: {(peak - before) / MIB:.0f} MiB")
    print(f"RSS kept after the steps above it: {(after - before) / MIB:.0f} MiB")
    print(f"ms / step: {', '.join(f'{t:.0f}' for t in times)}")


if __name__ == "__main__":
    main()
