"""One contract over every method, through the ``wsss`` command on tiny synthetic data.

For each entry of :data:`METHODS`: ``fit`` a few steps, ``validate``, ``test`` and ``predict`` to PNGs from its
last checkpoint, an interrupted ``fit`` continued with ``--ckpt_path last`` that ends with exactly the weights
(and teachers, banks, schedules) of the uninterrupted run, and ``fit`` with DDP on 2 CPU processes (gloo) that
keeps every parameter and every replicated state identical on both ranks. A new method joins by adding one
entry; :func:`test_every_exported_method_is_in_the_contract` fails until it does.

The fits whose processes matter (the straight run, the killed run and its continuation in fresh processes, DDP)
run the installed console script; the evaluations, the bf16 run and the diverging run go through
:func:`~wsss_lightning.cli.run_cli` in the test's process, the same code path without the interpreter start-up
(importing Lightning alone takes seconds).
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.methods import tiny
from wsss_lightning import methods
from wsss_lightning.cli import run_cli
from wsss_lightning.data.classes import train_id_to_label_id
from wsss_lightning.methods.nonfinite import NonFiniteLossError, NonFiniteWeightsError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


@dataclass(frozen=True)
class MethodCase:
    """A method in the contract.

    Attributes:
        name: test id.
        method: the LightningModule class the configs select.
        configs: config files (relative to ``configs/``), stacked in this order.
        layout: synthetic dataset layout.
        tiny: arguments that make the run tiny (network, sizes, schedule).
        steps: optimizer steps of the fit.
        interrupt_at: global step at which the interrupted run dies.
        replicated: state-dict key prefixes that must be identical on every DDP rank besides the parameters
            (teachers, memory banks, schedule buffers).
        after: name of the case whose fitted checkpoint this one starts from (a later stage of a multi-stage
            method), handed over with ``--model.init_args.<stage_argument>``.
        stage_argument: the model argument that receives that checkpoint.
        target_layout: synthetic layout of the unlabelled target domain (domain-adaptive methods).
    """

    name: str
    method: type
    configs: tuple[str, ...]
    layout: str
    tiny: tuple[str, ...]
    steps: int
    interrupt_at: int
    replicated: tuple[str, ...] = ()
    after: str | None = None
    stage_argument: str = ""
    target_layout: str | None = None


COMMON = (
    *tiny.CPU,
    "--trainer.log_every_n_steps=1",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.limit_predict_batches=1",
)

METHODS = [
    MethodCase(
        name="supervised",
        method=methods.SupervisedModule,
        configs=("supervised/synthetic_voc.yaml",),
        layout="voc",
        tiny=(*tiny.SMALL_BATCHES, "--trainer.val_check_interval=4"),
        steps=4,
        interrupt_at=2,
    ),
    MethodCase(
        name="dupl",
        method=methods.DuPLModule,
        configs=("quickstart.yaml",),
        layout="voc",
        tiny=(*tiny.DUPL, "--trainer.val_check_interval=6"),
        steps=6,
        interrupt_at=4,  # after the noise filter and the strong view have started
        replicated=("class_thresholds",),
    ),
    MethodCase(
        name="u2pl",
        method=methods.U2PLModule,
        configs=("u2pl/synthetic_voc_1_8.yaml",),
        layout="voc",
        tiny=(*tiny.U2PL, "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=3"),
        steps=6,
        interrupt_at=5,  # in the semi-supervised phase, mid-epoch
        replicated=("teacher.", "contrastive.memory_bank."),
    ),
    MethodCase(
        name="afa",
        method=methods.AFAModule,
        configs=("afa/synthetic_voc.yaml",),
        layout="voc",
        tiny=(*tiny.AFA, "--trainer.val_check_interval=4"),
        steps=4,
        interrupt_at=3,  # after the switch to the propagated labels
    ),
    MethodCase(
        name="u2pl_weak",
        method=methods.U2PLWeakModule,
        configs=("u2pl/synthetic_voc_weak.yaml",),
        layout="voc",
        tiny=(*tiny.U2PL_WEAK, "--trainer.val_check_interval=4"),
        steps=4,
        interrupt_at=3,  # with keys in the memory bank and moved prototypes
        replicated=("contrastive.memory_bank.", "contrastive.prototype_bank."),
    ),
    MethodCase(
        name="seminar_ancillary",
        method=methods.SeminarModule,
        configs=("seminar/synthetic_voc_ancillary.yaml",),
        layout="voc",
        tiny=(*tiny.SEMINAR, "--trainer.val_check_interval=2"),
        steps=4,
        interrupt_at=3,  # mid-epoch, after the consistency ramp moved
        replicated=("teacher.",),
    ),
    MethodCase(
        name="seminar_primary",
        method=methods.SeminarModule,
        configs=("seminar/synthetic_voc_primary.yaml",),
        layout="voc",
        tiny=(*tiny.SEMINAR, "--trainer.val_check_interval=2"),
        steps=4,
        interrupt_at=3,
        replicated=("teacher.", "ancillary."),
        after="seminar_ancillary",
        stage_argument="ancillary_checkpoint",
    ),
    MethodCase(
        name="daformer",
        method=methods.DAFormerModule,
        configs=("daformer/synthetic_gta5_to_cityscapes.yaml",),
        layout="gta5",
        target_layout="cityscapes",
        tiny=(*tiny.DAFORMER, "--trainer.val_check_interval=4"),
        steps=4,
        interrupt_at=3,  # with a moved teacher and a mid-epoch rare-class sampler
        replicated=("teacher.",),
    ),
    MethodCase(
        name="u2pl_da",
        method=methods.U2PLDomainModule,
        configs=("u2pl/synthetic_gta5_to_cityscapes.yaml",),
        layout="gta5",
        target_layout="cityscapes",
        tiny=(*tiny.U2PL_DA, "--trainer.val_check_interval=4"),
        steps=4,
        interrupt_at=3,  # with keys in the memory bank and moved prototypes
        replicated=("teacher.", "contrastive.memory_bank.", "contrastive.prototype_bank."),
    ),
    MethodCase(
        name="asdt",
        method=methods.ASDTModule,
        configs=("asdt/synthetic_voc.yaml",),
        layout="voc",
        tiny=(*tiny.ASDT, "--trainer.val_check_interval=4"),
        steps=4,
        interrupt_at=3,  # in the seg-teacher phase of the wave; it resumes into a class-teacher step
    ),
]
CASES = {case.name: case for case in METHODS}
_STAGES: dict[str, Path] = {}


def _wsss(args: list[str], cwd: Path, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``wsss`` console script; fail with the end of its stderr unless it exits as expected."""
    wsss = shutil.which("wsss", path=str(Path(sys.executable).parent)) or shutil.which("wsss")
    assert wsss, "the wsss console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [wsss, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if expect_ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wsss <args>`` in this process, from ``cwd`` (the relative paths of the arguments resolve there)."""
    cwd.mkdir(parents=True, exist_ok=True)
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        run_cli(args)


def _earlier_stage(case: MethodCase, root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--model.init_args.<stage_argument>=<checkpoint>`` of the earlier stage, fitted once per session."""
    if case.after is None:
        return []
    if case.after not in _STAGES:
        earlier = CASES[case.after]
        folder = tmp_path_factory.mktemp(f"stage_{earlier.name}")
        _wsss(_fit_args(earlier, root, "dump", steps=2), folder)
        _STAGES[case.after] = folder / "ckpts" / "last.ckpt"
    return [f"--model.init_args.{case.stage_argument}={_STAGES[case.after]}"]


def _target_root(case: MethodCase, synthetic) -> list[str]:  # type: ignore[no-untyped-def]
    """``--data.init_args.view.init_args.target.root=<synthetic target>`` of a domain-adaptive case."""
    if case.target_layout is None:
        return []
    return [f"--data.init_args.view.init_args.target.root={synthetic(case.target_layout)}"]


def _run_args(case: MethodCase, root: Path, logs: str) -> list[str]:
    configs = [arg for c in case.configs for arg in ("-c", str(CONFIGS / c))]
    return [
        *configs,
        "--data.init_args.source.root", str(root), *COMMON, *case.tiny, *case_stage.get(case.name, []),
        "--trainer.callbacks=[]",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={logs}",
    ]  # fmt: skip


def _fit_args(case: MethodCase, root: Path, dump: str, steps: int | None = None) -> list[str]:
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": "ckpts", "every_n_train_steps": 1, "save_top_k": 0, "save_last": True},
    }
    dump_state = {"class_path": "tests.helpers.DumpState", "init_args": {"out": dump}}
    # every training step, from the first on, reads nothing from the device on the host (HOST_READS aside)
    no_sync = {"class_path": "tests.helpers.HostSyncCheck"}
    return [
        "fit", *_run_args(case, root, "logs"), f"--trainer.max_steps={steps or case.steps}",
        f"--trainer.callbacks={json.dumps([no_sync, checkpoint, dump_state])}", "--checkpoint.every_n_steps=1",
    ]  # fmt: skip


def _logged(logs: Path, key: str) -> list[float]:
    values = []
    for path in logs.rglob("metrics.csv"):
        with path.open() as f:
            values += [float(row[key]) for row in csv.DictReader(f) if row.get(key)]
    return values


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str]) -> None:
    for name in keys:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


#: stage arguments of the running test's case (set by each test before it builds command lines)
case_stage: dict[str, list[str]] = {}


@pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)
def test_fit_validate_test_predict_and_exact_resume(
    case: MethodCase,
    synthetic,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = synthetic(case.layout)
    case_stage[case.name] = _earlier_stage(case, root, tmp_path_factory) + _target_root(case, synthetic)
    straight = tmp_path / "straight"
    _wsss(_fit_args(case, root, "dump"), straight)
    ckpt = straight / "ckpts" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(straight / "dump" / "rank0.pt")
    assert _logged(straight / "logs", "train/loss"), "no training loss was logged"
    # the checkpoint alone rebuilds the module (no datamodule, no config at hand)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    rebuilt = case.method.load_from_checkpoint(ckpt, map_location="cpu").state_dict()
    _same_state(saved, rebuilt, list(saved))

    # validate / test / predict from the last checkpoint, with the run's configuration
    for stage, key in (("validate", "val/miou"), ("test", "test/miou")):
        out = tmp_path / stage
        _in_process([stage, *_run_args(case, root, "logs"), f"--ckpt_path={ckpt}"], out, monkeypatch)
        values = _logged(out / "logs", key)
        assert values and all(0.0 <= v <= 1.0 for v in values), (stage, values)
    pngs = tmp_path / "predictions"
    _in_process([
        "predict", *_run_args(case, root, "logs"), f"--ckpt_path={ckpt}",
        "--trainer.callbacks+=wsss_lightning.callbacks.PredictionWriter", f"--trainer.callbacks.output_dir={pngs}",
    ], tmp_path / "predict", monkeypatch)  # fmt: skip
    written = sorted(pngs.rglob("*.png"))
    assert written, "predict wrote no PNG"
    masks = [np.asarray(Image.open(p)) for p in written]
    num_classes = torch.load(ckpt, weights_only=False)["hyper_parameters"]["num_classes"]
    # street layouts are written as Cityscapes label ids (what their benchmark server reads)
    to_label_id = train_id_to_label_id(case.target_layout or case.layout)
    allowed = set(range(num_classes)) if to_label_id is None else set(to_label_id[:num_classes].tolist())
    assert all(m.ndim == 2 and set(np.unique(m).tolist()) <= allowed for m in masks)

    # the same fit, killed mid-run and continued from last.ckpt, ends with the same state
    resumed = tmp_path / "resumed"
    interrupt = [
        "--trainer.callbacks+=tests.helpers.InterruptAtStep",
        f"--trainer.callbacks.step={case.interrupt_at}",
    ]
    died = _wsss([*_fit_args(case, root, "dump_interrupted"), *interrupt], resumed, expect_ok=False)
    assert died.returncode != 0 and "Interrupt" in died.stderr, died.stderr[-2000:]
    _wsss([*_fit_args(case, root, "dump"), "--ckpt_path=last"], resumed)
    after = torch.load(resumed / "dump" / "rank0.pt")
    assert after.keys() == state.keys()
    _same_state(state, after, list(state))


@pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)
def test_fit_with_ddp_on_two_cpu_processes(
    case: MethodCase, synthetic, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = synthetic(case.layout)
    case_stage[case.name] = _earlier_stage(case, root, tmp_path_factory) + _target_root(case, synthetic)
    _wsss([
        *_fit_args(case, root, "dump"), "-c", str(CONFIGS / "trainer" / "ddp_cpu.yaml"),
        "--trainer.limit_val_batches=0",
    ], tmp_path)  # fmt: skip
    rank0, rank1 = (torch.load(tmp_path / "dump" / f"rank{r}.pt") for r in (0, 1))
    # the logger got the facts that decide reproducibility (run config of W&B, hparams.yaml of CSV)
    hparams = yaml.safe_load(next((tmp_path / "logs").rglob("hparams.yaml")).read_text())
    batch = int(next(a for a in case.tiny if "loader.batch_size=" in a).split("=")[1])
    assert hparams["run"]["world_size"] == 2 and hparams["run"]["global_batch_size"] == 2 * batch
    module = case.method.__name__
    parameters = [k for k in rank0 if not any(b in k for b in ("running_", "num_batches_tracked"))]
    replicated = [k for k in rank0 if k.startswith(case.replicated)] if case.replicated else []
    missing = [p for p in case.replicated if not any(k.startswith(p) for k in replicated)]
    assert not missing, f"{module}: no state under {missing}"
    assert parameters, module
    # DDP averaged the gradients: both ranks hold the same weights; replicated state stays in step
    _same_state(rank0, rank1, sorted(set(parameters) | set(replicated)))


def test_every_exported_method_is_in_the_contract() -> None:
    exported = {
        cls for _, cls in inspect.getmembers(methods, inspect.isclass)
        if issubclass(cls, methods.SegmentationMethod) and cls is not methods.SegmentationMethod
    }  # fmt: skip
    assert exported <= {case.method for case in METHODS}, exported - {case.method for case in METHODS}


@pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)
def test_diverging_fit_stops_naming_step_and_term(
    case: MethodCase,
    synthetic,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = synthetic(case.layout)
    case_stage[case.name] = _earlier_stage(case, root, tmp_path_factory) + _target_root(case, synthetic)
    # an absurd learning rate: the loss is NaN within a few steps; a checkpoint is attempted at every step
    with pytest.raises((NonFiniteLossError, NonFiniteWeightsError)) as died:
        _in_process(
            [*_fit_args(case, root, "dump", steps=8), "--model.init_args.optim.lr=1e6"], tmp_path, monkeypatch
        )
    # the loss term and step, or (a BatchNorm variance overflowing while the loss stays finite) the tensor
    message = str(died.value)
    assert re.search(r"non-finite loss: train/loss\w* is (nan|inf|-inf).* at step \d+", message) or re.search(
        r"not writing a checkpoint at step \d+: \S+ holds NaN", message
    ), message
    for ckpt in (tmp_path / "ckpts").glob("*.ckpt"):
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        bad = [k for k, v in saved.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, f"{ckpt.name} holds non-finite {bad[:3]}"


@pytest.mark.parametrize("case", METHODS, ids=lambda c: c.name)
def test_fit_under_bf16_mixed_precision_on_cpu(
    case: MethodCase,
    synthetic,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = synthetic(case.layout)
    case_stage[case.name] = _earlier_stage(case, root, tmp_path_factory) + _target_root(case, synthetic)
    _in_process([*_fit_args(case, root, "dump"), "--trainer.precision=bf16-mixed"], tmp_path, monkeypatch)
    losses = _logged(tmp_path / "logs", "train/loss")
    assert losses and all(np.isfinite(losses)), losses
