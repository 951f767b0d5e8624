"""Run folders: every ``wsss`` run writes its config, logs and checkpoints into a folder of its own.

``<experiment>/version_<N>``, where ``<experiment>`` is ``trainer.default_root_dir`` or, left unset,
``outputs/<the config files' names>`` (:func:`experiment_folder`). A new run takes the next free version; ``fit
--ckpt_path last`` continues in the newest run that has a ``checkpoints/last.ckpt`` (:func:`newest_last`);
``trainer.default_root_dir`` naming a run folder itself (``.../version_3``) selects that run.

All processes of one launch must agree on the folder before any process group exists:

* processes that Lightning starts itself (DDP on one node) inherit :data:`RUN_DIR_ENV` from the first one;
* processes started by a launcher (``torchrun``, SLURM's ``srun``) share a launch key
  (:func:`launch_key`): the first to arrive claims the next version with an exclusive file create, the
  others read its choice. A requeued SLURM job has the same key, so it continues in its folder (where
  Lightning finds its ``hpc_ckpt_*.ckpt``).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

#: the environment variables through which a run passes its folder and resolved checkpoint to the processes it
#: starts
RUN_DIR_ENV = "WSSS_RUN_DIR"
CKPT_PATH_ENV = "WSSS_CKPT_PATH"
#: the subfolder of a run that holds its checkpoints
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"

_VERSION = re.compile(r"version_(\d+)$")
_CLAIMS = ".launches"


def experiment_folder(configs: list[str], parent: str = "outputs") -> str:
    """The experiment folder of a run whose configuration does not set ``trainer.default_root_dir``.

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


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` names a run folder (``.../version_N``) rather than an experiment folder."""
    return _VERSION.search(Path(path).name) is not None


def versions(experiment: str | Path) -> list[Path]:
    """The run folders of an experiment, oldest (lowest version) first."""
    root = Path(experiment)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION.search(p.name))]
    return [p for _, p in sorted(found)]


def last_checkpoint(run: str | Path) -> Path:
    """Where a run keeps its ``last.ckpt``."""
    return Path(run) / CHECKPOINTS / LAST


def _newest_run(experiment: str | Path, holds: Callable[[Path], bool]) -> Path | None:
    """The newest run of an experiment for which ``holds`` is true, or ``None``; a run folder stands for itself."""
    runs = [Path(experiment)] if is_run_folder(experiment) else versions(experiment)
    return next((run for run in reversed(runs) if holds(run)), None)


def newest_last(experiment: str | Path) -> Path | None:
    """The newest run of an experiment that holds a ``last.ckpt``, or ``None``; a run folder stands for itself."""
    return _newest_run(experiment, lambda run: last_checkpoint(run).is_file())


def best_checkpoints(run: str | Path) -> list[Path]:
    """The best-by-``val/miou`` checkpoints a run holds (``checkpoints/best-*.ckpt``)."""
    return sorted((Path(run) / CHECKPOINTS).glob("best-*.ckpt"))


def best_checkpoint(run: str | Path) -> Path:
    """A run's best checkpoint; an error naming them when it holds several (``save_top_k`` > 1)."""
    found = best_checkpoints(run)
    if len(found) != 1:
        raise ValueError(
            f"{Path(run) / CHECKPOINTS} holds {len(found)} best-*.ckpt files ({', '.join(p.name for p in found)}); "
            "pass the one to use as --ckpt_path FILE"
        )
    return found[0]


def newest_best(experiment: str | Path) -> Path | None:
    """The newest run of an experiment that holds a best checkpoint, or ``None``; a run folder stands for itself."""
    return _newest_run(experiment, lambda run: bool(best_checkpoints(run)))


def new_version(experiment: str | Path) -> Path:
    """Create and return the experiment's next free run folder (``version_<highest + 1>``)."""
    root = Path(experiment)
    root.mkdir(parents=True, exist_ok=True)
    existing = versions(root)
    number = int(_VERSION.search(existing[-1].name).group(1)) + 1 if existing else 0  # type: ignore[union-attr]
    while True:
        run = root / f"version_{number}"
        try:
            run.mkdir()
            return run
        except FileExistsError:  # another launch took it meanwhile
            number += 1


def slurm_job_id(env: Mapping[str, str]) -> str:
    """The SLURM job id as ``scontrol`` takes it: ``<array job>_<task>`` for an array task."""
    array = env.get("SLURM_ARRAY_JOB_ID")
    return f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env["SLURM_JOB_ID"]


def launch_key(environ: dict[str, str] | None = None, subcommand: str = "fit") -> str | None:
    """A key shared by every process of one ``srun`` or ``torchrun`` launch of a subcommand, ``None`` otherwise.

    SLURM: the job (array job and task for array jobs) and the job step, so each ``srun`` of a batch script has
    its own run; a requeued job starts its steps from 0 again and finds its runs. torchrun: its run id when set
    (``--rdzv_id``; needed across nodes), else the launching agent's process id and host (one node).
    """
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and "SLURM_NTASKS" in env:
        return f"slurm-{slurm_job_id(env)}.{env['SLURM_STEP_ID']}-{subcommand}"
    if "TORCHELASTIC_RUN_ID" in env:
        run_id = env["TORCHELASTIC_RUN_ID"]
        if run_id and run_id != "none":
            return f"torchrun-{run_id}-{subcommand}"
        return f"torchrun-{socket.gethostname()}-{os.getppid()}-{subcommand}"
    return None


def claimed_run(experiment: str | Path, key: str, timeout: float = 120.0) -> Path:
    """The run folder of launch ``key``: claimed by the first process to arrive, read by the others.

    The claim is a file ``<experiment>/.launches/<key>`` created exclusively; it holds the run folder's name.
    """
    claims = Path(experiment) / _CLAIMS
    claims.mkdir(parents=True, exist_ok=True)
    claim = claims / key
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        deadline = time.monotonic() + timeout
        while True:
            text = claim.read_text()
            if text.endswith("\n"):  # written in full
                return Path(experiment) / text.strip()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{claim} names no run folder after {timeout:.0f} s; the process that created it did not "
                    "finish: delete the file and launch again"
                ) from None
            time.sleep(0.05)
    run = new_version(experiment)
    with os.fdopen(fd, "w") as f:
        f.write(run.name + "\n")
    return run
