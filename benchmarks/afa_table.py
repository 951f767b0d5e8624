"""AFA and U2PL+ (weakly supervised) on the synthetic VOC set from image-level tags (CPU, minutes per run).

Runs (the same small MiT from scratch, data pipeline and schedule: ``configs/afa/synthetic_voc.yaml``):

* full masks: the ceiling, the same network with its segmentation head trained on the ground-truth masks
  (``labels.target=mask``) from the first step;
* AFA: the baseline; its run also gives the raw CAM, the affinity-propagated CAM and the pseudo-label mIoU of
  the final validation;
* U2PL+ WS: ``configs/u2pl/synthetic_voc_weak.yaml``, AFA plus the contrastive loss of Eq. 29-31.

Each run is a ``wsss fit`` (validation at the end), repeated for every seed; prints a markdown table with the
per-seed values, their mean and the bars (propagated CAM > raw CAM, AFA >= 0.6 of the ceiling, U2PL+ WS within
0.02 of AFA or above).

``--pretrained`` starts every run (the ceiling included) from the same small MiT pretrained by ``wsss-data
pretrain-encoder`` (:data:`PRETRAINED`, trained once and cached under ``outputs/pretrained``), in place of
AFA's ImageNet ``mit_b1.pth``, with AFA's treatment of a pretrained encoder: the encoder at 0.1x the heads'
learning rate (AFA: 6e-5 / 6e-4) and its LayerNorms frozen (AFA's ``backbone_norm`` group at rate 0).

Usage::

    python benchmarks/afa_table.py --root outputs/synthetic_voc800 [--seeds 0 1] [--steps 1200] [--parallel 2]
        [--pretrained] [--runs afa u2pl_weak ceiling] [--override KEY=VALUE ...]

``--override`` passes ``--KEY=VALUE`` to every run (``--override model.init_args.labels.affinity_balance=affinitynet``
for the variant of ``benchmarks/README.md``); ``--runs`` trains only some of the runs (the rows and bars that
need the others are left out).
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from learning_runs import wsss_fit

from wsss_lightning.data.pretrain_task import PretrainConfig
from wsss_lightning.data.synthetic import generate_once

REPO = Path(__file__).resolve().parents[1]
AFA = REPO / "configs" / "afa" / "synthetic_voc.yaml"
U2PL_WEAK = REPO / "configs" / "u2pl" / "synthetic_voc_weak.yaml"

#: run name -> (config, extra arguments)
RUNS: dict[str, tuple[Path, tuple[str, ...]]] = {
    "ceiling": (AFA, ("--model.init_args.labels.target=mask", "--model.init_args.phases.seg_start=0")),
    "afa": (AFA, ()),
    "u2pl_weak": (U2PL_WEAK, ()),
}
#: the small MiT of the synthetic configs, pretrained on 4,000 generated 128² scenes (about 15 min on 2 threads)
PRETRAINED = PretrainConfig(
    encoder="mit_b0",
    architecture='{"embed_dims": [32, 64, 128, 192], "depths": [1, 2, 2, 2], "num_heads": [1, 2, 4, 4]}',
    num_images=4000, image_size=128, crop=96, steps=4000, batch_size=32, lr=1e-3,
)  # fmt: skip
#: table row -> (run, logged metric)
ROWS = {
    "raw CAM (AFA run)": ("afa", "val/cam/miou"),
    "propagated CAM (AFA run)": ("afa", "val/aff_cam/miou"),
    "pseudo-labels, kept pixels (AFA run)": ("afa", "val/pseudo/miou"),
    "AFA segmentation": ("afa", "val/miou"),
    "U2PL+ WS segmentation": ("u2pl_weak", "val/miou"),
    "full masks (ceiling)": ("ceiling", "val/miou"),
}


def pretrained_args(out_dir: Path = REPO / "outputs" / "pretrained") -> tuple[str, ...]:
    """Arguments that start a run from the cached pretrained MiT (trained first when missing)."""
    from wsss_lightning.models.pretrain import pretrain_encoder  # torch only when asked

    weights = pretrain_encoder(PRETRAINED, out_dir)
    return (
        f"--model.init_args.encoder_weights={weights}",
        "--model.init_args.optim.lr_mult.backbone=0.1",
        "--model.init_args.optim.lr_mult.backbone_norm=0.0",
        "--model.init_args.optim.lr_mult.head=1.0",
    )


def fit(
    run: str, seed: int, root: Path, out: Path, steps: int, start: tuple[str, ...] = ()
) -> tuple[dict[str, float], float]:
    """One run with one seed (``start``: extra arguments of every run); returns (final validation metrics, seconds)."""
    config, extra = RUNS[run]
    extra = ("--data.init_args.source.root", str(root), *extra, *start)
    return wsss_fit(run, [config], extra, out / f"{run}_seed{seed}", seed, steps)


def run_table(
    root: Path,
    out: Path,
    seeds: list[int],
    steps: int,
    parallel: int,
    start: tuple[str, ...] = (),
    runs: tuple[str, ...] = ("afa", "u2pl_weak", "ceiling"),
) -> dict[str, list[float]]:
    """Per row of the trained ``runs``, the value of every seed; prints the table and the bars (all runs)."""
    results: dict[tuple[str, int], dict[str, float]] = {}
    seconds: dict[str, list[float]] = {run: [] for run in runs}
    with ThreadPoolExecutor(parallel) as pool:
        jobs = {(r, s): pool.submit(fit, r, s, root, out, steps, start) for r in runs for s in seeds}
        for (r, s), job in jobs.items():
            results[r, s], sec = job.result()
            seconds[r].append(sec)
    table = {row: [results[run, s][key] for s in seeds] for row, (run, key) in ROWS.items() if run in runs}
    mean = {row: sum(v) / len(v) for row, v in table.items()}
    print(f"| row | {' | '.join(f'seed {s}' for s in seeds)} | mean | ratio to ceiling |")
    print(f"|---|{'---:|' * len(seeds)}---:|---:|")
    ceiling = mean.get("full masks (ceiling)")
    for row, values in table.items():
        cells = " | ".join(f"{v:.3f}" for v in values)
        ratio = "–" if ceiling is None else f"{mean[row] / ceiling:.2f}"
        print(f"| {row} | {cells} | **{mean[row]:.3f}** | {ratio} |")
    print()
    print(" | ".join(f"{run}: {sum(s) / len(s) / 60:.1f} min / run" for run, s in seconds.items()))
    if set(runs) == set(RUNS):  # the bars compare all three runs
        for name, ok in bars(mean).items():
            print(f"{name}: {'met' if ok else 'MISSED'}")
    return table


#: the bars the table must show (on the means over the seeds)
BARS = ("propagated CAM > raw CAM", "AFA >= 0.6 x ceiling", "U2PL+ WS >= AFA - 0.02")


def bars(mean: dict[str, float]) -> dict[str, bool]:
    """Whether each of :data:`BARS` is met by the mean of every row."""
    afa = mean["AFA segmentation"]
    return dict(
        zip(
            BARS,
            (
                mean["propagated CAM (AFA run)"] > mean["raw CAM (AFA run)"],
                afa >= 0.6 * mean["full masks (ceiling)"],
                mean["U2PL+ WS segmentation"] >= afa - 0.02,
            ),
            strict=True,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("outputs/synthetic_voc800"))
    parser.add_argument("--out", type=Path, default=Path("outputs/afa_table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--pretrained", action="store_true", help="start from the pretrained small MiT")
    parser.add_argument("--runs", nargs="+", choices=tuple(RUNS), default=list(RUNS), help="runs to train")
    parser.add_argument(
        "--override", nargs="+", default=[], metavar="KEY=VALUE", help="--KEY=VALUE for every run"
    )
    args = parser.parse_args()
    generate_once("voc", args.root, num_train=800)
    start = (*(pretrained_args() if args.pretrained else ()), *(f"--{o}" for o in args.override))
    run_table(args.root, args.out, args.seeds, args.steps, args.parallel, start, tuple(args.runs))


if __name__ == "__main__":
    main()
