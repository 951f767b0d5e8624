"""Shared by the learning-table scripts: one ``wsss fit`` on a CPU thread and its final validation metrics."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_env() -> dict[str, str]:
    """The environment of a run: one thread, W&B off, and this checkout's package first on the import path, so that
    a run trains the code of the checkout whose configs it reads and whose commit it records, even where the
    environment's editable install points to another checkout."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": path}


def final_metrics(folder: Path) -> dict[str, float]:
    """The last logged value of every validation metric of a run."""
    values: dict[str, float] = {}
    for path in sorted(folder.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                values.update({k: float(v) for k, v in row.items() if k.startswith("val/") and v})
    if "val/miou" not in values:
        raise RuntimeError(f"{folder}: no val/miou logged")
    return values


def wsss_fit(
    name: str, configs: Sequence[Path], extra: Sequence[str], folder: Path, seed: int, steps: int
) -> tuple[dict[str, float], float]:
    """``wsss fit`` of the stacked ``configs`` with one thread, validated at its end.

    Returns:
        (the final validation metrics, seconds).
    """
    shutil.rmtree(folder, ignore_errors=True)
    wsss = shutil.which("wsss", path=str(Path(sys.executable).parent)) or "wsss"
    args = [
        wsss, "fit", *(a for c in configs for a in ("-c", str(c))), *extra,
        f"--seed_everything={seed}", f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
        f"--trainer.default_root_dir={folder}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--data.init_args.loader.num_workers=0", "--data.init_args.loader.persistent_workers=false",
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(args, env=run_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{name}, seed {seed}: wsss fit failed:\n{result.stderr[-3000:]}")
    return final_metrics(folder), time.perf_counter() - start
