"""Start-up time of the ``wsss`` and ``wsss-data`` commands, each run in a fresh interpreter.

Every command runs ``--repeats`` times in a new subprocess (as a user's shell would start it) and the table
gives the median and the fastest wall time. ``python -c "import lightning"`` is the reference: ``wsss`` needs
Lightning, so its ``--help`` cannot start faster than that; ``wsss-data`` commands that train nothing should
not import Lightning at all.

The package imported is the one under ``--tree`` (put first on ``PYTHONPATH``), so the same script times
an older checkout too.

Usage::

    python benchmarks/cli_startup.py [--repeats 5] [--tree .]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA_CLI = ("-m", "wsss_lightning.data.cli")
TINY_SYNTHETIC = ("--num-train", "2", "--num-val", "2", "--size", "32", "32")


def commands(workdir: Path) -> list[tuple[str, list[str]]]:
    """(label, argv after the interpreter) of each command to time; data commands work under ``workdir``."""
    data = workdir / "voc"
    ids = data / "ImageSets" / "Segmentation" / "train_aug.txt"
    return [
        ('python -c "import lightning"', ["-c", "import lightning"]),
        ("wsss --help", ["-m", "wsss_lightning.cli", "--help"]),
        ("wsss fit --help", ["-m", "wsss_lightning.cli", "fit", "--help"]),
        ("wsss-data --help", ["-m", "wsss_lightning.data.cli", "--help"]),
        (
            "wsss-data synthetic (voc, 2 + 2 images of 32×32)",
            [*DATA_CLI, "synthetic", "--layout", "voc", "--out", str(data), *TINY_SYNTHETIC],
        ),
        (
            "wsss-data check (voc val, 2 images)",
            [
                "-m",
                "wsss_lightning.data.cli",
                "check",
                "--dataset",
                "voc",
                "--root",
                str(data),
                "--split",
                "val",
            ],
        ),
        (
            "wsss-data partitions (2 ids)",
            [*DATA_CLI, "partitions", "--list", str(ids), "--out", str(workdir / "splits")],
        ),
    ]


def time_command(argv: list[str], env: dict[str, str], repeats: int, cwd: Path) -> list[float]:
    """Wall seconds of ``repeats`` fresh runs of ``python argv`` in ``cwd``; raises if a run fails.

    ``cwd`` holds no package: ``python -m`` puts the working folder first on ``sys.path``, ahead of
    ``PYTHONPATH``, so running from a checkout would time that checkout instead of ``--tree``.
    """
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, check=False
        )
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh runs per command (default: 5)")
    parser.add_argument(
        "--tree",
        type=Path,
        default=Path(__file__).resolve().parents[1],
        help="checkout whose package is timed",
    )
    args = parser.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(args.tree.resolve()), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("WANDB_MODE", "disabled")
    print(f"python {sys.version.split()[0]}, package from {args.tree.resolve()}, {args.repeats} runs each\n")
    print("| command | median | fastest |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, argv in commands(Path(tmp)):
            # One untimed run first: it warms the file cache and creates the data later commands read.
            time_command(argv, env, 1, Path(tmp))
            times = time_command(argv, env, args.repeats, Path(tmp))
            print(f"| `{label}` | {statistics.median(times):.2f} s | {min(times):.2f} s |", flush=True)


if __name__ == "__main__":
    main()
