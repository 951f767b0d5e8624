"""The ``wsss`` command: LightningCLI over every method and the shared datamodule.

``wsss fit|validate|test|predict -c configs/<method>/<dataset>.yaml [--data.source.root DIR] [...]``
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

import wsss_lightning.callbacks  # noqa: F401  (registers the callbacks' short class names)
from wsss_lightning.data.legacy import legacy_data_options_message
from wsss_lightning.methods import SegmentationMethod
from wsss_lightning.methods.u2pl.options import renamed_options_message


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
    """Writes ``config.yaml`` and also sends the resolved config to the logger (e.g. W&B run config).

    Along with it go the facts that decide reproducibility: global batch size, device count, seed and
    versions.
    """

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


#: the callbacks a run gets when its configuration does not set trainer.callbacks
DEFAULT_CALLBACKS: list[tuple[str, dict[str, Any]]] = [
    (
        "lightning.pytorch.callbacks.ModelCheckpoint",
        {"dirpath": None, "save_last": True, "monitor": "val/miou", "mode": "max"},
    ),
    ("lightning.pytorch.callbacks.LearningRateMonitor", {"logging_interval": "step"}),
    ("wsss_lightning.callbacks.RunProgressBar", {}),
]

# jsonargparse's ``Namespace.__init__`` is unannotated; this is the same constructor, typed.
_namespace = cast(Callable[..., Namespace], Namespace)


def run_folder(configs: list[str], parent: str = "outputs") -> str:
    """The folder of a run whose configuration does not set ``trainer.default_root_dir``.

    Named after its config files, trainer / logger fragments left out:
    ``-c configs/u2pl/voc.yaml -c configs/u2pl/splits/voc_92.yaml -c configs/u2pl/suponly.yaml`` ->
    ``outputs/u2pl_voc+voc_92+suponly``; the first file is prefixed with its folder unless that is ``configs``.
    """
    paths = [Path(c) for c in configs if Path(c).parent.name not in ("trainer", "logger")]
    if not paths:
        return os.path.join(parent, "run")
    first = paths[0]
    names = [f"{first.parent.name}_{first.stem}" if first.parent.name not in ("", "configs") else first.stem]
    return os.path.join(parent, "+".join(names + [p.stem for p in paths[1:]]))


def _import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


class WSSSLightningCLI(LightningCLI):
    """LightningCLI linking the dataset facts into the method; a checkpoint never overrides what the user set.

    Given ``--ckpt_path FILE``, LightningCLI applies the hyper-parameters saved in the checkpoint on top of
    the parsed config, which silently drops every model option the user set (``wsss test --ckpt_path X
    --model.init_args.inference.crf.enabled=true`` would run without CRF). Here the checkpoint fills in the
    model arguments and the config files and command line are applied again on top; each option where the
    run now differs from the checkpoint is reported once.
    """

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        self._cli_args = args
        try:
            super().parse_arguments(parser, args)
        except SystemExit as exc:
            # The parser rejects the datamodule's old flat options ("root", "supervision", ...) before the
            # datamodule exists; name their new places after its own message.
            if exc.code not in (None, 0):
                given = sys.argv[1:] if args is None else args
                message = legacy_data_options_message(given)
                if message:
                    print(f"error: {message}", file=sys.stderr)
                if not isinstance(given, dict | Namespace):
                    argv = [str(a) for a in given]
                    configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
                    keys = [a.split("=")[0] for a in argv if a.startswith("--model.")]
                    renamed = renamed_options_message(configs, keys)
                    if renamed:
                        print(f"error: {renamed}", file=sys.stderr)
            raise

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
    def before_instantiate_classes(self) -> None:
        """Fill in the run folder and the checkpoint folder where the configuration leaves them unset.

        ``trainer.default_root_dir`` unset: ``outputs/<the config files' names>`` (:func:`run_folder`), so each
        combination of base config and fragments (split, SupOnly, ...) gets its own folder. A ModelCheckpoint
        without a folder writes to ``<default_root_dir>/checkpoints``: a fixed folder (not the logger's next
        version folder), so ``fit --ckpt_path last`` finds the run's ``last.ckpt``.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config["trainer"]
        if trainer.get("default_root_dir") is None:
            trainer["default_root_dir"] = run_folder([str(path) for path in config.get("config") or []])
        root = trainer["default_root_dir"]
        if trainer.get("logger") in (
            None,
            True,
        ):  # not set: CSV files in the run folder, <root>/logs/version_N
            trainer["logger"] = _namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=_namespace(save_dir=root, name="logs"),
            )
        if trainer.get("enable_progress_bar") is False:  # the run asks for none: drop the default bar
            trainer["callbacks"] = [
                c for c in trainer.get("callbacks") or []
                if not (isinstance(c, Namespace) and issubclass(_import_class(c["class_path"]), ProgressBar))
            ]  # fmt: skip
        for callback in trainer.get("callbacks") or []:
            init_args = callback.get("init_args") if isinstance(callback, Namespace) else None
            if (
                init_args is not None
                and "dirpath" in init_args
                and init_args["dirpath"] is None
                and issubclass(_import_class(callback["class_path"]), ModelCheckpoint)
            ):
                init_args["dirpath"] = os.path.join(root, "checkpoints")

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Every run keeps last.ckpt and the best checkpoint by val/miou, logs the learning rate and shows a
        # progress bar, unless its configuration sets trainer.callbacks itself.
        parser.set_defaults(
            {
                "trainer.callbacks": [
                    _namespace(class_path=c, init_args=_namespace(**a)) for c, a in DEFAULT_CALLBACKS
                ]
            }
        )
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


#: modules defining the classes a config may name by their short name (``model: DuPLModule``); jsonargparse
#: finds those among the imported subclasses, so they are imported before parsing anything but top-level help
SHORT_NAME_MODULES = (
    "wsss_lightning.methods.dupl",
    "wsss_lightning.methods.seminar",
    "wsss_lightning.methods.supervised",
    "wsss_lightning.methods.u2pl.module",
    "wsss_lightning.data.datamodule",
)


def _only_top_level_help(args: ArgsType) -> bool:
    """Whether ``args`` just ask for ``wsss --help``, which lists the subcommands and needs no method."""
    given = sys.argv[1:] if args is None else args
    return isinstance(given, list | tuple) and len(given) == 1 and given[0] in ("-h", "--help")


def _subcommand(args: ArgsType) -> str | None:
    """The subcommand ``args`` ask for (``fit``, ``validate``, ``test``, ``predict``), if any."""
    given = sys.argv[1:] if args is None else args
    if isinstance(given, dict | Namespace):
        return cast(str | None, given.get("subcommand"))
    return next((str(a) for a in given if str(a) in ("fit", "validate", "test", "predict")), None)


class _LightningTips(logging.Filter):
    """Drops Lightning's advertisements for its cloud products (litlogger, litmodels) from the run's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            str(record.msg).startswith("💡 Tip: For seamless cloud")
            and "connectors" in Path(record.pathname).parts
        )


@contextlib.contextmanager
def _without_lightning_tips() -> Iterator[None]:
    """Holds :class:`_LightningTips` on the logger of Lightning's ``rank_zero_info`` for one run."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tips = _LightningTips()
    logger.addFilter(tips)
    try:
        yield
    finally:
        logger.removeFilter(tips)


def run_cli(args: ArgsType = None, run: bool = True) -> WSSSLightningCLI:
    """Parse ``args`` (``sys.argv`` when ``None``) like the ``wsss`` command, run it, return the CLI object.

    ``run_cli(["fit", "-c", "configs/quickstart.yaml"]).trainer`` gives access to the trained state.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    with warnings.catch_warnings(), _without_lightning_tips():  # the filters hold for this run only
        if not _only_top_level_help(args):
            for module in SHORT_NAME_MODULES:
                importlib.import_module(module)
        # Frozen teachers stay in eval mode on purpose; Lightning's generic warning about eval-mode modules at
        # the start of fit would fire on every run of a teacher-student method.
        warnings.filterwarnings(
            "ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training"
        )
        # DuPL lists each batch's present classes on the host in on_before_batch_transfer on purpose (no
        # device read later); Lightning warns about any module override of that hook beside a datamodule.
        warnings.filterwarnings(
            "ignore",
            message=r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a "
            r"`LightningDataModule`",
        )
        # Lightning's own pytree helper uses an API torch deprecated; nothing a user can change.
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            module=r"lightning\.pytorch\.utilities\._pytree",
        )
        # LightningCLI calls jsonargparse functions that jsonargparse has deprecated; also nothing to change.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
        if _subcommand(args) != "fit":
            # validate / test / predict write no checkpoint, so the checkpoint callback's top-k bookkeeping,
            # which it drops when the run folder differs from the one that wrote the file, is not needed.
            warnings.filterwarnings(
                "ignore",
                message=r"The dirpath has changed from",
                module=r"lightning\.pytorch\.callbacks\.model_checkpoint",
            )
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
