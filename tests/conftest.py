"""Shared fixtures: synthetic datasets in the real on-disk layouts, generated once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

# Small sets so every test stays fast; each layout generated at most once per session (per xdist worker).
SMALL = {"num_train": 16, "num_val": 4, "image_size": (64, 64)}


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Return ``make(layout) -> root`` building a small synthetic dataset of that layout once."""
    from wsss_lightning.data.synthetic import generate

    cache: dict[str, Path] = {}

    def make(layout: str) -> Path:
        if layout not in cache:
            out = tmp_path_factory.mktemp(f"synthetic_{layout}")
            cache[layout] = Path(generate(layout, out, seed=0, **SMALL))  # type: ignore[arg-type]
        return cache[layout]

    return make


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist every worker would start one torch thread per core: on a 2-core machine two
    # workers then oversubscribe the CPU several-fold. One thread per worker keeps both cores busy.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
