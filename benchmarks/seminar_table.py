"""Seminar Learning vs its baselines on the synthetic VOC set with simulated clicks (CPU, minutes per run).

Rows (all the same network, data pipeline and schedule: ``configs/seminar/synthetic_voc_ancillary.yaml``):

* full masks: the ceiling, the ground-truth masks read as if every pixel were clicked, plain CE;
* partial CE: clicks only (Table 3's "pCE");
* partial CE + CRF: the rloss baseline;
* ancillary: partial CE + consistency with the EMA teacher + CRF (Eq. 5);
* primary: the ancillary losses + the frozen ancillary's pseudo-labels (Eq. 7), from that seed's ancillary.

Each row is a ``wsss fit`` (validation mIoU of the student at the end), repeated for every seed; prints a
markdown table with the per-seed values and their mean.

``--pretrained`` starts every row (the ceiling included) from the ResNet-18 of ``wsss-data pretrain-encoder``
(default arguments, trained once and cached under ``outputs/pretrained``) with the backbone at 0.1x the head's
learning rate, the ratio of the paper's ImageNet-initialised schedule (0.007 / 0.07).

Usage::

    python benchmarks/seminar_table.py --root outputs/synthetic_voc64 [--seeds 1 2] [--steps 400] [--parallel 2]
        [--pretrained]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from learning_runs import run_env

from wsss_lightning.data.pretrain_task import PretrainConfig
from wsss_lightning.data.synthetic import generate_once
from wsss_lightning.models.pretrain import pretrain_encoder
from wsss_lightning.runs import last_checkpoint, newest_last

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "seminar" / "synthetic_voc_ancillary.yaml"
PRIMARY = REPO / "configs" / "seminar" / "synthetic_voc_primary.yaml"
#: side of the synthetic images: the configs' crop (64) holds about as many clicks as VOC's 513 crop
IMAGE_SIZE = 64
NO_CONSISTENCY = "--model.init_args.consistency.weight=0"
NO_CRF = "--model.init_args.crf_loss.enabled=false"

#: row name -> (config, extra arguments)
ROWS: dict[str, tuple[Path, tuple[str, ...]]] = {
    "full masks (ceiling)": (
        CONFIG,
        (
            "--data.init_args.view.init_args.clicks_dir=SegmentationClassAug",
            "--model.init_args.partial_ce.batch_average=false",
            NO_CONSISTENCY,
            NO_CRF,
        ),
    ),
    "partial CE": (CONFIG, (NO_CONSISTENCY, NO_CRF)),
    "partial CE + CRF": (CONFIG, (NO_CONSISTENCY,)),
    "ancillary (pCE + consistency + CRF)": (CONFIG, ()),
    "primary (+ ancillary pseudo-labels)": (PRIMARY, ()),
}
ANCILLARY = "ancillary (pCE + consistency + CRF)"
PRIMARY_ROW = "primary (+ ancillary pseudo-labels)"


def slug(row: str) -> str:
    """Folder name of a row."""
    return "".join(c if c.isalnum() else "_" for c in row.split(" (")[0]).strip("_")


def final_miou(folder: Path) -> float:
    """The last ``val/miou`` a run logged."""
    values = []
    for path in folder.rglob("metrics.csv"):
        with path.open() as f:
            values += [float(row["val/miou"]) for row in csv.DictReader(f) if row.get("val/miou")]
    if not values:
        raise RuntimeError(f"{folder}: no val/miou logged")
    return values[-1]


def pretrained_args(out_dir: Path = REPO / "outputs" / "pretrained") -> tuple[str, ...]:
    """Arguments that start a row from the cached pretrained ResNet-18 (trained first when missing)."""
    weights = pretrain_encoder(PretrainConfig(encoder="resnet18"), out_dir)
    return (f"--model.init_args.encoder_weights={weights}", "--model.init_args.optim.lr_mult.backbone=0.1")


def fit(
    row: str,
    seed: int,
    root: Path,
    out: Path,
    steps: int,
    ancillary: Path | None,
    start: tuple[str, ...] = (),
) -> tuple[float, float]:
    """Run one row with one seed (``start``: extra arguments of every row); returns (val mIoU, seconds)."""
    config, extra = ROWS[row]
    extra = (*extra, *start)
    folder = out / f"{slug(row)}_seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    wsss = shutil.which("wsss", path=str(Path(sys.executable).parent)) or "wsss"
    args = [
        wsss, "fit", "-c", str(config), "--data.init_args.source.root", str(root), *extra,
        f"--seed_everything={seed + (100 if config == PRIMARY else 0)}", f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}", f"--trainer.default_root_dir={folder}",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--data.init_args.loader.num_workers=0", "--data.init_args.loader.persistent_workers=false",
    ]  # fmt: skip
    if ancillary is not None:
        args.append(f"--model.init_args.ancillary_checkpoint={ancillary}")
    began = time.perf_counter()
    result = subprocess.run(args, env=run_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{row}, seed {seed}: wsss fit failed:\n{result.stderr[-3000:]}")
    return final_miou(folder), time.perf_counter() - began


def run_table(
    root: Path,
    out: Path,
    seeds: list[int],
    steps: int,
    parallel: int,
    rows: list[str] | None = None,
    start: tuple[str, ...] = (),
) -> dict[str, list[float]]:
    """Val mIoU per row and seed (the primary rows wait for their seed's ancillary); ``start``: extra
    arguments of every row (:func:`pretrained_args`)."""
    rows = rows or list(ROWS)
    results: dict[str, dict[int, float]] = {row: {} for row in rows}
    seconds: dict[str, list[float]] = {row: [] for row in rows}
    # the rows the primary and the bar depend on first
    first = sorted(
        (r for r in rows if ROWS[r][0] != PRIMARY), key=lambda r: (r != ANCILLARY, r != "partial CE")
    )
    with ThreadPoolExecutor(parallel) as pool:
        jobs = {(r, s): pool.submit(fit, r, s, root, out, steps, None, start) for r in first for s in seeds}
        for (r, s), job in jobs.items():
            results[r][s], sec = job.result()
            seconds[r].append(sec)
        later = [r for r in rows if ROWS[r][0] == PRIMARY]
        if later:
            if ANCILLARY not in first:
                raise ValueError("the primary row needs the ancillary row")
            jobs = {
                (r, s): pool.submit(
                    fit,
                    r,
                    s,
                    root,
                    out,
                    steps,
                    last_checkpoint(newest_last(out / f"{slug(ANCILLARY)}_seed{s}") or out),
                    start,
                )
                for r in later
                for s in seeds
            }
            for (r, s), job in jobs.items():
                results[r][s], sec = job.result()
                seconds[r].append(sec)
    print(f"| row | {' | '.join(f'seed {s}' for s in seeds)} | mean | s / run |")
    print(f"|---|{'---:|' * len(seeds)}---:|---:|")
    for r in rows:
        values = [results[r][s] for s in seeds]
        mean = sum(values) / len(values)
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {r} | {cells} | **{mean:.3f}** | {sum(seconds[r]) / len(seconds[r]):.0f} |")
    return {r: [results[r][s] for s in seeds] for r in rows}


def check_image_size(root: Path) -> None:
    """Refuse a set whose images are not ``IMAGE_SIZE`` square (the configs' crop and CRF scale assume it)."""
    from PIL import Image

    image = next(iter(sorted((root / "JPEGImages").glob("*.jpg"))), None)
    if image is None:
        raise SystemExit(f"{root}/JPEGImages: no .jpg image; expected the synthetic VOC set")
    with Image.open(image) as im:
        size = im.size
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise SystemExit(
            f"{image}: {size[0]}x{size[1]} px; the Seminar synthetic configs expect {IMAGE_SIZE}x{IMAGE_SIZE} "
            f"(wsss-data synthetic --layout voc --size {IMAGE_SIZE} {IMAGE_SIZE} --out <root>)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path("outputs/synthetic_voc64"))
    parser.add_argument("--out", type=Path, default=Path("outputs/seminar_table"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=None)
    parser.add_argument("--pretrained", action="store_true", help="start from the pretrained ResNet-18")
    args = parser.parse_args()
    generate_once("voc", args.root, image_size=(IMAGE_SIZE, IMAGE_SIZE))
    check_image_size(args.root)
    start = pretrained_args() if args.pretrained else ()
    run_table(args.root, args.out, args.seeds, args.steps, args.parallel, args.rows, start)


if __name__ == "__main__":
    main()
