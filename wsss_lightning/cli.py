"""The ``wsss`` command: LightningCLI over every method and the shared datamodule.

``wsss fit|validate|test|predict -c configs/<method>/<dataset>.yaml [--data.root DIR] [...]``
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
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
    """LightningCLI with the dataset facts linked into the method, and checkpoint hyper-parameters that
    never override what the config files or the command line set.

    Given ``--ckpt_path FILE``, LightningCLI applies the hyper-parameters saved in the checkpoint on top of
    the parsed config, which silently drops every model option the user set (``wsss test --ckpt_path X
    --model.init_args.inference.crf.enabled=true`` would run without CRF). Here the checkpoint fills in the
    model arguments and the config files and command line are applied again on top; each option where the
    run now differs from the checkpoint is reported once.
    """

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        self._cli_args = args
        super().parse_arguments(parser, args)

    @override
    def _parse_ckpt_path(self) -> None:
        explicit = self.config
        super()._parse_ckpt_path()
        if self.config is explicit:  # no checkpoint file, or no hyper-parameters in it
            return
        from_ckpt = self.config
        args = self._cli_args
        if isinstance(args, dict | Namespace):
            given = args
        else:  # only what the config files and the command line set, no defaults
            given = self.parser.parse_args(sys.argv[1:] if args is None else args, defaults=False).as_dict()
        self.config = self.parser.parse_object(given, from_ckpt)
        sub = self.config["subcommand"]
        changed = _differences(from_ckpt[sub].get("model"), self.config[sub].get("model"), "model")
        if changed:
            rank_zero_info(
                "wsss: options that differ from the checkpoint's hyper-parameters (the config / command line "
                "wins): " + "; ".join(f"{key}: {new!r} (checkpoint: {old!r})" for key, old, new in changed)
            )

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


def _differences(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """Leaf keys where two (nested) config values differ: ``[(dotted key, old, new)]``."""
    if isinstance(old, Namespace):
        old = old.as_dict()
    if isinstance(new, Namespace):
        new = new.as_dict()
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    return [] if old == new else [(prefix, old, new)]


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
