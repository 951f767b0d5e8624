"""The ``wsss`` command: LightningCLI over every method and the shared datamodule.

``wsss fit|validate|test|predict -c configs/<method>/<dataset>.yaml [--data.root DIR] [...]``
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from typing_extensions import override

import wsss_lightning.callbacks
import wsss_lightning.data  # noqa: F401
from wsss_lightning.methods import SegmentationMethod


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Writes ``config.yaml`` and also sends the resolved config to the logger (e.g. W&B run config),
    with the facts that decide reproducibility: global batch size, device count, seed and versions."""

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.logger is None:
            return
        # The YAML dump turns jsonargparse paths, tuples and dataclasses into plain values loggers accept.
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        data = getattr(trainer, "datamodule", None)
        per_device = getattr(data, "batch_size", None)
        facts: dict[str, Any] = {
            "world_size": trainer.world_size,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "git_sha": _git_sha(),
            "torch_version": str(torch.__version__),
            "lightning_version": str(L.__version__),
        }
        if per_device is not None:
            facts["global_batch_size"] = per_device * trainer.world_size * trainer.accumulate_grad_batches
        trainer.logger.log_hyperparams({"config": config, "run": facts})


class WSSSLightningCLI(LightningCLI):
    """LightningCLI with the dataset facts linked into the method."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in (
            ("data.num_classes", "model.init_args.num_classes"),
            ("data.ignore_index", "model.init_args.ignore_index"),
            ("data.class_names", "model.init_args.class_names"),
            ("data.mean", "model.init_args.image_mean"),
            ("data.std", "model.init_args.image_std"),
        ):
            parser.link_arguments(source, target, apply_on="instantiate")


def run_cli(args: ArgsType = None, run: bool = True) -> WSSSLightningCLI:
    """Parse ``args`` (``sys.argv`` when ``None``) like the ``wsss`` command, run it, return the CLI object.

    ``run_cli(["fit", "-c", "configs/quickstart.yaml"]).trainer`` gives access to the trained state.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    cli = WSSSLightningCLI(
        SegmentationMethod,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"default_env": False},
        args=args,
        run=run,
    )
    # DDP processes that exit with a live process group occasionally abort at interpreter shutdown.
    if run and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return cli


def main(args: ArgsType = None) -> None:
    """Entry point of the ``wsss`` console script."""
    run_cli(args)


if __name__ == "__main__":
    main()
