"""ASDT's Table 4 rows on the synthetic VOC set from tags (CPU, minutes per run).

Rows (all ``configs/asdt/synthetic_voc.yaml``: the same network, data and schedule; only ``teaching.mode``
differs):

* I, class-teacher only (RRM): the student learns from B^ct every step;
* II, seg-teacher only: the student learns from B^st, the CRF of the seg-teacher's prediction, every step;
* V, alternate (ASDT): the pulse-width wave switches between the two (T = 150, τ = 5).

Every row starts from the ResNet-18 of ``wsss-data pretrain-encoder`` (default arguments; trained once and cached
under ``outputs/pretrained``), standing in for RRM's classification-trained start, and warms the classifier up for
the config's ``warmup_steps``. Each run reports the final validation mIoU of P^st (seg-teacher), P^s (student) and
P̄ = max(P^st, P^s), and the precision of the class-teacher's reliable label on the pixels it keeps.

Usage::

    python benchmarks/asdt_table.py --root outputs/synthetic_voc [--seeds 0 1] [--steps 600] [--parallel 2]
        [--rows ...] [--model.init_args.labels.token_positions=encoder ...]

Arguments of the form ``--model.* / --data.* / --trainer.*=VALUE`` are added to every run's ``wsss fit`` (give such
runs their own ``--out``: a run's folder is replaced when it is run again).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from learning_runs import wsss_fit

from wsss_lightning.data.pretrain_task import PretrainConfig
from wsss_lightning.data.synthetic import generate_once
from wsss_lightning.models.pretrain import pretrain_encoder

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "asdt" / "synthetic_voc.yaml"
ROWS = {"I (class-teacher only)": "class", "II (seg-teacher only)": "seg", "V (alternate, ASDT)": "alternate"}
OUTPUTS = {"P^st": "val/seg_teacher/miou", "P^s": "val/student/miou", "P-bar": "val/max/miou",
           "B^ct precision": "val/ct_label_precision", "B^ct kept": "val/ct_label_kept"}  # fmt: skip


def run_table(
    root: Path, out: Path, seeds: list[int], steps: int, parallel: int, rows: list[str] | None = None,
    weights: Path | None = None, overrides: tuple[str, ...] = (),
) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """Final validation values per row, output and seed; prints a markdown table."""
    rows = rows or list(ROWS)
    start = [f"--model.init_args.encoder_weights={weights}"] if weights is not None else []
    with ThreadPoolExecutor(parallel) as pool:
        jobs = {
            (row, seed): pool.submit(
                wsss_fit,
                row,
                [CONFIG],
                [
                    f"--data.init_args.source.root={root}",
                    f"--model.init_args.teaching.mode={ROWS[row]}",
                    *start,
                    *overrides,
                ],
                out / f"{ROWS[row]}_seed{seed}",
                seed,
                steps,
            )
            for row in rows
            for seed in seeds
        }
        results = {key: job.result() for key, job in jobs.items()}
    table: dict[str, dict[str, list[float]]] = {}
    print(f"| row | {' | '.join(OUTPUTS)} | min / run |")
    print(f"|---|{'---:|' * len(OUTPUTS)}---:|")
    for row in rows:
        table[row] = {name: [results[row, s][0][key] for s in seeds] for name, key in OUTPUTS.items()}
        cells = " | ".join(
            f"{sum(v) / len(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})" for v in table[row].values()
        )
        minutes = sum(results[row, s][1] for s in seeds) / len(seeds) / 60
        print(f"| {row} | {cells} | {minutes:.0f} |")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("outputs/synthetic_voc"))
    parser.add_argument("--out", type=Path, default=Path("outputs/asdt_table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None)
    parser.add_argument(
        "--scratch", action="store_true", help="random backbone instead of the pretrained one"
    )
    # any other ``--model.* / --data.* / --trainer.*=VALUE`` argument is added to every run
    args, overrides = parser.parse_known_args()
    unknown = [
        a for a in overrides if not a.startswith(("--model.", "--data.", "--trainer.")) or "=" not in a
    ]
    if unknown:
        parser.error(f"unrecognized arguments (give others as --KEY=VALUE): {' '.join(unknown)}")
    fixed = ("teaching.mode", "max_steps", "val_check_interval", "default_root_dir", "source.root", "seed")
    taken = [a for a in overrides if any(f".{key}=" in a for key in fixed)]
    if taken:
        parser.error(f"set by the script itself (rows, --steps, --out, --root, --seeds): {' '.join(taken)}")
    generate_once("voc", args.root)
    weights = None if args.scratch else pretrain_encoder(PretrainConfig(), REPO / "outputs" / "pretrained")
    run_table(
        args.root, args.out, args.seeds, args.steps, args.parallel, args.rows, weights, tuple(overrides)
    )


if __name__ == "__main__":
    main()
