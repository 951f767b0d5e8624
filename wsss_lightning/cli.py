"""The ``wsss`` command: LightningCLI over every method and the shared datamodule.

``wsss fit|validate|test|predict -c configs/<method>/<dataset>.yaml [--data.source.root DIR] [...]``
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, cast

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from wsss_lightning.callbacks import LastCheckpoint
from wsss_lightning.data.legacy import legacy_data_options_message
from wsss_lightning.methods import SegmentationMethod
from wsss_lightning.methods.u2pl.options import renamed_options_message
from wsss_lightning.runs import (
    CKPT_PATH_ENV,
    RUN_DIR_ENV,
    best_checkpoint,
    claimed_run,
    experiment_folder,
    is_run_folder,
    last_checkpoint,
    launch_key,
    new_version,
    newest_best,
    newest_last,
)


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
    """Writes ``config.yaml`` into the run folder and sends the resolved config to the logger (e.g. W&B run config).

    Along with it go the facts that decide reproducibility: global batch size, device count, seed and
    versions.
    """

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Write ``config.yaml`` at the top of the run folder (whatever the logger), then send it to the logger."""
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run = Path(trainer.default_root_dir)
            run.mkdir(parents=True, exist_ok=True)
            self.parser.save(
                self.config, str(run / self.config_filename), skip_none=False, overwrite=True, multifile=False
            )
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

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


#: the callbacks a run gets when its configuration does not set trainer.callbacks (``last.ckpt`` comes from the
#: ``checkpoint`` section, :class:`~wsss_lightning.callbacks.LastCheckpoint`, which every run has)
DEFAULT_CALLBACKS: list[tuple[str, dict[str, Any]]] = [
    (
        "lightning.pytorch.callbacks.ModelCheckpoint",
        {
            "dirpath": None,
            "monitor": "val/miou",
            "mode": "max",
            "filename": "best-{step}",
            "save_last": False,
        },
    ),
    ("lightning.pytorch.callbacks.LearningRateMonitor", {"logging_interval": "step"}),
    ("wsss_lightning.callbacks.RunProgressBar", {}),
]

# jsonargparse's ``Namespace.__init__`` is unannotated; this is the same constructor, typed.
_namespace = cast(Callable[..., Namespace], Namespace)


def _subconfig(config: Namespace) -> Namespace:
    """The part of a parsed config that the subcommand being run reads (all of it without subcommands)."""
    subcommand = config.get("subcommand")
    return config[subcommand] if subcommand else config


def _restarted() -> bool:
    """Whether this process belongs to a requeued SLURM job or a restarted torchrun worker group."""
    return any(
        os.environ.get(name, "0") not in ("", "0")
        for name in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
    )


def _data_root_note(run: Path, config: Namespace) -> str:
    """``" (trained on DIR)"`` when the run's saved config names another data root than this one, else ``""``."""
    saved = run / "config.yaml"
    try:
        before = yaml.safe_load(saved.read_text())["data"]["init_args"]["source"]["root"]
        now = config["data"]["init_args"]["source"]["root"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return ""
    return "" if str(before) == str(now) else f" (that run was trained on --data.source.root {before})"


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
        given = sys.argv[1:] if args is None else args
        try:
            with _raising_errors([parser, *getattr(self, "_subcommand_parsers", {}).values()]):
                super().parse_arguments(parser, args)
            _refuse_optimizer_options(_subconfig(self.config))
        except (ArgumentError, ConfigurationError) as exc:
            _exit_with_config_error(parser, str(exc), _subcommand(args), _renamed_option_messages(given))

    @override
    def _parse_ckpt_path(self) -> None:
        try:
            self._choose_run_folder()
        except ConfigurationError as exc:
            _exit_with_config_error(self.parser, str(exc), self.config.get("subcommand"))
        explicit = self.config
        super()._parse_ckpt_path()
        if self.config is explicit:  # no checkpoint file, or no hyper-parameters in it
            return
        from_ckpt = self.config
        self.config = self.parser.parse_object(self._given(), from_ckpt)
        if hasattr(self, "_run_folder"):
            self._apply_run_folder()  # the second parse brought back what the command line said
        sub = self.config["subcommand"]
        changed = _differences(from_ckpt[sub].get("model"), self.config[sub].get("model"), "model")
        if changed:
            rank_zero_info(
                "wsss: options that differ from the checkpoint's hyper-parameters (the config / command line "
                "wins): " + "; ".join(f"{key}: {new!r} (checkpoint: {old!r})" for key, old, new in changed)
            )

    def _choose_run_folder(self) -> None:
        """Set ``trainer.default_root_dir`` to this run's folder and resolve ``--ckpt_path last | best`` inside it.

        The experiment folder is ``trainer.default_root_dir`` or ``outputs/<the config files' names>``; a run is
        a ``version_N`` inside it (:mod:`wsss_lightning.runs`). ``fit --ckpt_path last`` continues the newest run
        that has a ``last.ckpt``, in its own folder; validate / test / predict with ``last`` or ``best`` evaluate
        that run's file in a new run folder. A ``default_root_dir`` naming a run folder (``.../version_3``)
        selects that run (evaluations of it get a new folder beside it).
        """
        subcommand = self.config.get("subcommand")
        config = _subconfig(self.config)
        trainer = config["trainer"]
        configs = [str(path) for path in config.get("config") or []]
        experiment = trainer.get("default_root_dir") or experiment_folder(configs)
        if not subcommand:  # run=False: classes only, nothing is written
            trainer["default_root_dir"] = experiment
            return
        ckpt_path = config.get("ckpt_path")
        key = launch_key(subcommand=subcommand)
        parent = Path(experiment).parent if is_run_folder(experiment) else Path(experiment)

        def fresh() -> Path:  # a new run folder, the same one for every process of an srun / torchrun launch
            return claimed_run(parent, key) if key is not None else new_version(parent)

        inherited = os.environ.get(RUN_DIR_ENV)
        # a process that Lightning started for this run (DDP): the first process resolved it all
        if inherited:
            run = Path(inherited)
            config["ckpt_path"] = os.environ.get(CKPT_PATH_ENV) or ckpt_path
        elif ckpt_path in ("last", "best"):
            found = self._find_checkpoint(experiment, configs, subcommand, ckpt_path, explicit_root=bool(
                trainer.get("default_root_dir")))  # fmt: skip
            config["ckpt_path"] = str(found)
            run = found.parent.parent if subcommand == "fit" else fresh()
            rank_zero_info(
                f"wsss: --ckpt_path {ckpt_path} -> {found}{_data_root_note(found.parent.parent, config)}"
            )
        elif subcommand != "fit":  # an evaluation never writes into a training run's folder
            run = fresh()
        else:
            run = Path(experiment) if is_run_folder(experiment) else fresh()
            run.mkdir(parents=True, exist_ok=True)
            if ckpt_path is None and last_checkpoint(run).is_file():
                if not _restarted():
                    raise ConfigurationError(
                        f"{run} holds a run with {last_checkpoint(run).name}: continue it with --ckpt_path last, "
                        "or start a new run (give --trainer.default_root_dir an experiment folder, or launch "
                        "with a new torchrun --rdzv_id)"
                    )
                # a requeued SLURM job / restarted torchrun worker continues from the newest checkpoint
                newest = max(
                    [last_checkpoint(run), *run.glob("hpc_ckpt_*.ckpt")], key=lambda p: p.stat().st_mtime
                )
                config["ckpt_path"] = str(newest)
                rank_zero_info(f"wsss: restarted job continues from {newest}")
        self._run_folder = (str(run), config.get("ckpt_path"))
        self._apply_run_folder()
        # the processes Lightning starts (DDP) join this run, with the checkpoint resolved here
        os.environ[RUN_DIR_ENV] = str(run)
        if config.get("ckpt_path"):
            os.environ[CKPT_PATH_ENV] = str(config["ckpt_path"])

    @staticmethod
    def _find_checkpoint(
        experiment: str, configs: list[str], subcommand: str, which: str, explicit_root: bool
    ) -> Path:
        """The ``last.ckpt`` (or best checkpoint) of the newest run of the experiment that has one.

        Evaluation fragments stacked on the training configs (e.g. ``eval_center_crop.yaml``) name another
        experiment: without an explicit ``default_root_dir``, an evaluation looks in the experiment of the
        longest leading part of the config list that has a run.
        """
        lookup = newest_last if which == "last" else newest_best
        found = lookup(experiment)
        if found is None and subcommand != "fit" and not explicit_root:
            shorter = (lookup(experiment_folder(configs[:k])) for k in range(len(configs) - 1, 0, -1))
            found = next((run for run in shorter if run is not None), None)
        if found is None:
            wanted = os.path.join("checkpoints", "last.ckpt" if which == "last" else "best-*.ckpt")
            raise ConfigurationError(
                f"--ckpt_path {which}: no run under {experiment} has {wanted} (start without --ckpt_path, or set "
                "--trainer.default_root_dir to the experiment or run folder that holds it)"
            )
        try:
            return last_checkpoint(found) if which == "last" else best_checkpoint(found)
        except ValueError as exc:
            raise ConfigurationError(f"--ckpt_path best: {exc}") from exc

    def _apply_run_folder(self) -> None:
        config = _subconfig(self.config)
        config["trainer"]["default_root_dir"], config["ckpt_path"] = self._run_folder

    @override
    def before_instantiate_classes(self) -> None:
        """Point the default logger and every checkpoint callback without a folder at the run folder.

        Unless ``trainer.logger`` is set, CSV files go to ``<run>/logs/version_N`` (a continued run adds a
        version rather than overwriting the first part's metrics); a logger without ``save_dir`` (the W&B
        fragment) writes into the run folder. A ModelCheckpoint without a folder writes to ``<run>/checkpoints``.
        """
        trainer = _subconfig(self.config)["trainer"]
        root = trainer["default_root_dir"]
        if trainer.get("logger") in (None, True):  # not set: CSV files in the run folder
            trainer["logger"] = _namespace(
                class_path="lightning.pytorch.loggers.CSVLogger",
                init_args=_namespace(save_dir=root, name="logs"),
            )
        for logger in trainer["logger"] if isinstance(trainer["logger"], list) else [trainer["logger"]]:
            init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
            if init_args is not None and init_args.get("save_dir") in (None, "", "."):
                init_args["save_dir"] = root
                if "WandbLogger" in logger["class_path"] and init_args.get("name") is None:
                    init_args["name"] = os.path.join(*Path(root).parts[-2:])  # "<experiment>/version_N"
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
    def instantiate_classes(self) -> None:
        """Instantiate as LightningCLI does; a class refusing its arguments ends the run as a configuration error.

        The option dataclasses and the methods check their values when they are built; their ValueError /
        TypeError is the message the user needs, so it is printed as the run's last line (exit status 2)
        instead of a traceback under jsonargparse's union-type report. ``JSONARGPARSE_DEBUG=1`` keeps the
        traceback.
        """
        try:
            super().instantiate_classes()
            _refuse_linked_options(self._given_model_options(_subconfig(self.config)), self.datamodule)
        except (ValueError, TypeError, ArgumentError) as exc:
            if os.environ.get("JSONARGPARSE_DEBUG"):
                raise
            _exit_with_config_error(self.parser, _root_message(exc), self.subcommand)

    def _given(self) -> dict[str, Any]:
        """Only what the config files and the command line set, no defaults (parsed once)."""
        if getattr(self, "_given_options", None) is None:
            args = self._cli_args
            if isinstance(args, dict | Namespace):
                self._given_options = args.as_dict() if isinstance(args, Namespace) else dict(args)
            else:
                argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
                self._given_options = self.parser.parse_args(argv, defaults=False).as_dict()
        return self._given_options

    def _given_model_options(self, config: Namespace) -> dict[str, Any]:
        """The linked model arguments (``LINKED``) that the config files or the command line set."""
        args = self._cli_args
        if not isinstance(args, dict | Namespace) and getattr(self, "_given_options", None) is None:
            # a second parse costs time: only when a config file or the command line names a linked argument
            argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
            texts = argv + [
                Path(str(c)).read_text() for c in config.get("config") or [] if Path(str(c)).is_file()
            ]
            if not any(name in text for text in texts for name in LINKED.values()):
                return {}
        given = self._given()
        if self.subcommand:
            given = given.get(self.subcommand) or {}
        init_args = (given.get("model") or {}).get("init_args") or {}
        return {name: init_args[name] for name in LINKED.values() if init_args.get(name) is not None}

    @override
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[L.Callback]) -> L.Trainer:
        # `trainer.enable_checkpointing=false` turns the `checkpoint:` section's LastCheckpoint off too
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, LastCheckpoint)]
        return super()._instantiate_trainer(config, callbacks)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Every run keeps last.ckpt and the best checkpoint by val/miou, logs the learning rate and shows a
        # progress bar, unless its configuration sets trainer.callbacks itself.
        # last.ckpt every N steps / M minutes and on SIGTERM / SIGUSR1: configs tune it in a `checkpoint:` section
        parser.add_lightning_class_args(LastCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "trainer.callbacks": [
                    _namespace(class_path=c, init_args=_namespace(**a)) for c, a in DEFAULT_CALLBACKS
                ]
            }
        )
        for source, target in LINKED.items():
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")


#: datamodule attribute -> the model argument the CLI sets from it (a value the user gives must agree)
LINKED = {
    "num_classes": "num_classes",
    "ignore_index": "ignore_index",
    "class_names": "class_names",
    "mean": "image_mean",
    "std": "image_std",
}


class ConfigurationError(ValueError):
    """A configuration the run cannot honour; the CLI prints its message as the last line."""


@contextmanager
def _raising_errors(parsers: Sequence[LightningArgumentParser]) -> Iterator[None]:
    """Parse errors raise ArgumentError instead of printing the whole usage with the message in the middle.

    Each subcommand has its own parser, which reports its own errors: all of them are switched.
    """
    previous = [p.exit_on_error for p in parsers]
    for p in parsers:
        p.exit_on_error = False
    try:
        yield
    finally:
        for p, value in zip(parsers, previous, strict=True):
            p.exit_on_error = value


def _renamed_option_messages(given: Any) -> list[str]:
    """Where the options a failed parse names have moved, one message per kind.

    The datamodule's old flat options ("root", "supervision", ...) and U2PL's renamed options.
    """
    messages = [legacy_data_options_message(given)]
    if not isinstance(given, dict | Namespace):
        argv = [str(a) for a in given]
        configs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
        keys = [a.split("=")[0] for a in argv if a.startswith("--model.")]
        messages.append(renamed_options_message(configs, keys))
    return [m for m in messages if m]


def _exit_with_config_error(
    parser: LightningArgumentParser, message: str, subcommand: str | None, more: Sequence[str] = ()
) -> NoReturn:
    """Print a one-line usage hint, then the message as one line and the ``more`` specific ones; exit status 2."""
    prog = parser.prog.replace(" [options]", "")
    sys.stderr.write(f"usage: {prog} {subcommand or '{fit,validate,test,predict}'} -c CONFIG [options] "
                     f"(`{prog} {subcommand or 'fit'} --help` lists them)\n")  # fmt: skip
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    for line in more:  # the lists of new spellings keep their one-per-line layout
        sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def _root_message(exc: BaseException) -> str:
    """The message of the innermost exception behind ``exc`` (the package's check under jsonargparse's report)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if (
            inner is None
            or id(inner) in seen
            or not isinstance(inner, ValueError | TypeError | ArgumentError)
        ):
            return str(exc)
        seen.add(id(inner))
        exc = inner


def _refuse_optimizer_options(config: Namespace) -> None:
    """Refuse LightningCLI's ``--optimizer`` / ``--lr_scheduler``.

    LightningCLI would replace the method's ``configure_optimizers`` with them, silently dropping the method's
    parameter groups (their learning-rate multipliers) and its warm-up + poly schedule, which the methods'
    published numbers depend on. Refusing keeps one way to set the optimizer: ``model.init_args.optim``.
    """
    for key in ("optimizer", "lr_scheduler"):
        if config.get(key) is not None:
            raise ConfigurationError(
                f"--{key} is not supported: the method builds its own optimizer over its parameter groups "
                "with a warm-up + poly schedule; set model.init_args.optim.* instead (name: sgd | adamw, lr, "
                "weight_decay, momentum, betas, lr_mult, warmup_steps, poly_power)"
            )


def _refuse_linked_options(given: dict[str, Any], data: Any) -> None:
    """Refuse a linked model argument the user set to a value other than the dataset's (it would be replaced)."""
    for source, target in LINKED.items():
        if target not in given or data is None or not hasattr(data, source):
            continue
        value, expected = given[target], getattr(data, source)
        if _plain(value) != _plain(expected):
            raise ConfigurationError(
                f"model.init_args.{target} = {value!r} but it is set from the dataset (data.{source} = "
                f"{_plain(expected)!r}); remove model.init_args.{target} from the config / command line"
            )


def _plain(value: Any) -> Any:
    """Lists / tuples / tensors as lists of Python numbers or strings, for comparing configured values."""
    if isinstance(value, torch.Tensor):
        return value.flatten().tolist()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
        inherited = os.environ.get(RUN_DIR_ENV)
        try:
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
        except SIGTERMException as exc:
            # Lightning stops a multi-process run on SIGTERM with exit status 0; a pre-empted run did not finish
            if exc.code in (None, 0):
                raise SystemExit(128 + signal.SIGTERM) from exc
            raise
        finally:  # the run folder is passed to this run's own processes only, never to the next run_cli call
            if inherited is None:
                os.environ.pop(RUN_DIR_ENV, None)
                os.environ.pop(CKPT_PATH_ENV, None)
    # DDP processes that exit with a live process group occasionally abort at interpreter shutdown.
    if run and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return cli


def main(args: ArgsType = None) -> None:
    """Entry point of the ``wsss`` console script."""
    run_cli(args)


if __name__ == "__main__":
    main()
