"""Domain adaptation on the synthetic street layouts: GTA5-style -> Cityscapes-style (CPU, minutes per run).

Rows (the same small MiT + DAFormer decoder from scratch, data pipeline and schedule:
``configs/daformer/synthetic_gta5_to_cityscapes.yaml``), each evaluated on the Cityscapes-style val images:

* source only: trained on the labelled GTA5-style images alone;
* target oracle: trained on the Cityscapes-style training images with their masks (the upper end);
* DAFormer: self-training with the EMA teacher, ClassMix, strong augmentation, rare-class sampling;
* U2PL+ DA: DAFormer plus the contrastive loss with unreliable target pixels as negatives.

Each run is a ``wsss fit`` (validation at the end), repeated for every seed; prints a markdown table with the
per-seed values, their mean, the share of the source-only -> oracle gap each closes and the bars (DAFormer
closes >= 30 % of the gap and gains >= 0.05 mIoU over source only; U2PL+ DA within 0.02 of DAFormer or above).

Usage::

    python benchmarks/da_table.py [--seeds 0 1] [--steps 1500] [--parallel 2]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from learning_runs import wsss_fit

from wsss_lightning.data.synthetic import generate_once

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SOURCE = Path("outputs/synthetic_gta5_600")
TARGET = Path("outputs/synthetic_cityscapes_600")

#: table row -> config
ROWS: dict[str, Path] = {
    "source only": CONFIGS / "daformer" / "synthetic_gta5_to_cityscapes_source_only.yaml",
    "target oracle (target masks)": CONFIGS / "daformer" / "synthetic_cityscapes_oracle.yaml",
    "DAFormer": CONFIGS / "daformer" / "synthetic_gta5_to_cityscapes.yaml",
    "U2PL+ DA": CONFIGS / "u2pl" / "synthetic_gta5_to_cityscapes.yaml",
}
#: the bars the table must show (on the means over the seeds)
BARS = ("DAFormer closes >= 30 % of the gap", "DAFormer >= source only + 0.05", "U2PL+ DA >= DAFormer - 0.02")


def gap_closed(mean: dict[str, float], row: str) -> float:
    """Share of the source-only -> oracle gap that ``row`` closes."""
    low, high = mean["source only"], mean["target oracle (target masks)"]
    return (mean[row] - low) / max(high - low, 1e-9)


def bars(mean: dict[str, float]) -> dict[str, bool]:
    """Whether each of :data:`BARS` is met by the means."""
    daformer = mean["DAFormer"]
    return dict(
        zip(
            BARS,
            (
                gap_closed(mean, "DAFormer") >= 0.3,
                daformer >= mean["source only"] + 0.05,
                mean["U2PL+ DA"] >= daformer - 0.02,
            ),
            strict=True,
        )
    )


def make_data(source: Path = SOURCE, target: Path = TARGET) -> None:
    """Write the two synthetic street datasets the configs name, where missing."""
    for layout, root, num_val in (("gta5", source, 30), ("cityscapes", target, 100)):
        generate_once(layout, root, num_train=600, num_val=num_val, image_size=(128, 256))  # type: ignore[arg-type]


def run_table(
    out: Path,
    seeds: list[int],
    steps: int,
    parallel: int,
    rows: list[str],
    source: Path = SOURCE,
    target_root: Path = TARGET,
) -> dict[str, list[float]]:
    """Per row, the final val mIoU of every seed; prints the table and the bars."""
    roots = ("--data.init_args.source.root", str(source))
    target = ("--data.init_args.view.init_args.target.root", str(target_root))
    with ThreadPoolExecutor(parallel) as pool:
        jobs = {}
        for seed in seeds:  # one seed's rows first, in the order given
            for row in rows:
                oracle = "oracle" in row
                extra = ("--data.init_args.source.root", str(target_root)) if oracle else (*roots, *target)
                slug = row.split(" (")[0].replace(" ", "_").replace("+", "p")
                folder = out / f"{slug}_seed{seed}"
                jobs[row, seed] = pool.submit(wsss_fit, row, [ROWS[row]], extra, folder, seed, steps)
        results = {key: job.result() for key, job in jobs.items()}
    table = {row: [results[row, s][0]["val/miou"] for s in seeds] for row in rows}
    minutes = {row: sum(results[row, s][1] for s in seeds) / len(seeds) / 60 for row in rows}
    mean = {row: sum(v) / len(v) for row, v in table.items()}
    complete = all(row in mean for row in ROWS)
    print(f"| row | {' | '.join(f'seed {s}' for s in seeds)} | mean | gap closed | min / run |")
    print(f"|---|{'---:|' * len(seeds)}---:|---:|---:|")
    for row, values in table.items():
        cells = " | ".join(f"{v:.3f}" for v in values)
        closed = f"{gap_closed(mean, row):.2f}" if complete else "-"
        print(f"| {row} | {cells} | **{mean[row]:.3f}** | {closed} | {minutes[row]:.1f} |")
    if complete:
        for name, ok in bars(mean).items():
            print(f"{name}: {'met' if ok else 'MISSED'}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/da_table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    make_data()
    run_table(args.out, args.seeds, args.steps, args.parallel, args.rows)


if __name__ == "__main__":
    main()
