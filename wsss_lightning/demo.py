"""``make demo``: train the quickstart config on a synthetic dataset generated on the fly (CPU).

Usage: ``python -m wsss_lightning.demo [--config configs/quickstart.yaml] [--data-dir DIR] [extra CLI args]``.
Extra arguments go to ``wsss fit`` (e.g. ``--trainer.max_steps 100``). Prints the final validation mIoU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from wsss_lightning.cli import run_cli
from wsss_lightning.data.synthetic import LAYOUTS, generate_once


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Run the demo and return the final validation metrics."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--layout", default="voc", choices=LAYOUTS, help="synthetic layout to generate")
    parser.add_argument("--data-dir", default="outputs/synthetic_voc", type=Path)
    args, extra = parser.parse_known_args(argv)
    root = generate_once(args.layout, args.data_dir)
    start = time.perf_counter()
    cli = run_cli(["fit", "--config", args.config, "--data.source.root", str(root), *extra])
    results = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    minutes = (time.perf_counter() - start) / 60
    summary = {k: float(v) for k, v in results.items() if k.endswith("miou")}
    print(f"\nTrained {cli.trainer.global_step} steps in {minutes:.1f} min.")
    for key, value in sorted(summary.items()):
        print(f"final {key}: {value:.4f}")
    return summary


if __name__ == "__main__":
    run()
