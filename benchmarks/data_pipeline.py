"""Training-pipeline throughput of ``WSSSDataModule`` (images per second) for 0, 1 and 2 workers.

Generates a synthetic VOC tree of realistic image size (default 100 images of 375x500, the usual VOC size) in a
temporary folder and iterates the training loader (decode JPEG + PNG, augment, normalise, collate). Worker
start-up is excluded: the first epoch warms up persistent workers and the following epochs are timed.

Usage::

    python benchmarks/data_pipeline.py [--images 100] [--crop 448] [--workers 0 1 2] [--epochs 2]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L

from wsss_lightning.data import DatasetSource, LoaderOptions, TransformOptions, WSSSDataModule
from wsss_lightning.data.synthetic import generate
from wsss_lightning.data.views import VIEWS

PIPELINES: dict[str, dict[str, Any]] = {
    # scale / pad / crop / flip only: the weak augmentation of the semi-supervised methods
    "weak": {},
    # DuPL's photometric block on top: jitter (0.4, 0.4, 0.2, 0.1) p=0.8, greyscale p=0.2, blur always
    "dupl": {"color_jitter": (0.4, 0.4, 0.2, 0.1), "grayscale_p": 0.2, "blur_p": 1.0},
}


def images_per_second(root: Path, crop: int, workers: int, epochs: int, view: str, **aug: Any) -> float:
    """Mean training-loader throughput over ``epochs`` timed epochs (after one warm-up epoch)."""
    L.seed_everything(0, verbose=False)
    dm = WSSSDataModule(
        DatasetSource(root=str(root)),
        view=VIEWS[view](),
        transform=TransformOptions(crop_size=crop, **aug),
        loader=LoaderOptions(batch_size=8, num_workers=workers, persistent_workers=True, pin_memory=False),
        cache_dir=str(root / "cache"),
    )
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert not isinstance(loader, dict)
    for _ in loader:  # warm-up: forks workers, fills OS file caches
        pass
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            seen += batch["image"].shape[0]
    rate = seen / (time.perf_counter() - start)
    # Shut the persistent workers down now: a stale iterator inherited by the next loader's forked workers
    # would try to join processes that are not its children.
    del loader
    gc.collect()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--crop", type=int, nargs="+", default=[320, 448])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--view", default="full", choices=["full", "image", "click"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = generate(
            "voc",
            Path(tmp) / "voc",
            seed=0,
            num_train=args.images,
            num_val=4,
            image_size=(args.height, args.width),
        )
        print(
            f"generated {args.images} images of {args.height}x{args.width} in {time.perf_counter() - start:.1f} s; "
            f"view={args.view}, batch 8, {os.cpu_count()} CPU cores\n"
        )
        header = "| pipeline | crop | " + " | ".join(f"{w} workers" for w in args.workers) + " |"
        print(header)
        print("|" + "---|" * (2 + len(args.workers)))
        for name, aug in PIPELINES.items():
            for crop in args.crop:
                rates = [
                    images_per_second(root, crop, w, args.epochs, args.view, **aug) for w in args.workers
                ]
                print(
                    f"| {name} | {crop} | " + " | ".join(f"{r:.0f} img/s" for r in rates) + " |", flush=True
                )


if __name__ == "__main__":
    main()
