"""Run folders, ``--ckpt_path last`` inside the run being continued, and ``last.ckpt`` on a cadence / on signals."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb

from tests.cli.test_cli import CONFIGS, tiny_args
from wsss_lightning.callbacks.checkpointing import LastCheckpoint
from wsss_lightning.cli import run_cli
from wsss_lightning.runs import claimed_run, experiment_folder, launch_key, new_version, newest_last, versions

REPO = Path(__file__).resolve().parents[2]
CONFIG = CONFIGS / "supervised" / "synthetic_voc.yaml"
EXPERIMENT = Path("outputs") / "supervised_synthetic_voc"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def fit(root: Path, steps: int, *extra: str) -> object:
    return run_cli(["fit", *tiny_args(CONFIG, root, steps), *QUIET, *extra])


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


def test_every_run_gets_a_versioned_folder_with_its_config_logs_and_checkpoints(
    synthetic, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    fit(root, 2)
    fit(root, 2)
    runs = versions(EXPERIMENT)
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        assert (run / "config.yaml").is_file()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert _step(run / "checkpoints" / "last.ckpt") == 2
        assert next((run / "logs").rglob("metrics.csv")).is_file()
    # one option moves the whole experiment
    fit(root, 1, f"--trainer.default_root_dir={tmp_path / 'elsewhere'}")
    assert (tmp_path / "elsewhere" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert len(versions(EXPERIMENT)) == 2


def test_ckpt_path_last_continues_the_newest_run_in_its_own_folder(synthetic, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    fit(root, 2)
    fit(root, 1)
    with caplog.at_level(logging.INFO):
        cli = fit(root, 3, "--ckpt_path=last")
    newest = EXPERIMENT / "version_1" / "checkpoints" / "last.ckpt"
    assert f"--ckpt_path last -> {newest}" in caplog.text
    assert cli.trainer.global_step == 3 and _step(newest) == 3
    assert [r.name for r in versions(EXPERIMENT)] == ["version_0", "version_1"]  # no new run folder
    assert len(list((EXPERIMENT / "version_1" / "logs").glob("version_*"))) == 2  # first part's logs kept
    # a run folder given as default_root_dir selects that run
    cli = fit(root, 4, "--ckpt_path=last", f"--trainer.default_root_dir={EXPERIMENT / 'version_0'}")
    assert _step(EXPERIMENT / "version_0" / "checkpoints" / "last.ckpt") == 4
    # evaluation with `last` reads the newest run's file and logs into a run folder of its own
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cli = run_cli(["validate", *tiny_args(CONFIG, root), *QUIET, "--ckpt_path=last"])
    assert f"--ckpt_path last -> {newest}" in caplog.text
    assert cli.trainer.ckpt_path == str(newest)
    # an evaluation fragment stacked on the training config still finds the training run
    crop = CONFIGS / "seminar" / "eval_center_crop.yaml"
    cli = run_cli(["validate", *tiny_args(CONFIG, root), "-c", str(crop), *QUIET, "--ckpt_path=last"])
    assert cli.trainer.ckpt_path == str(newest)
    assert (EXPERIMENT / "version_2" / "config.yaml").is_file()


def test_ckpt_path_last_never_reaches_into_another_experiment(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    fit(root, 1, "--trainer.default_root_dir=outputs/other")
    with pytest.raises(SystemExit) as refused:
        fit(root, 2, "--ckpt_path=last")
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert refused.value.code == 2 and last_line.startswith(
        "error: --ckpt_path last: no run under outputs/supervised_"
    )
    # a run folder that holds a run is not trained over from scratch
    with pytest.raises(SystemExit):
        fit(root, 2, "--trainer.default_root_dir=outputs/other/version_0")
    assert "continue it with --ckpt_path last" in capsys.readouterr().err


def test_last_checkpoint_is_written_every_n_steps_on_sigusr1_and_at_the_end(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written: list[int] = []
    original = LastCheckpoint._write

    def record(self, trainer, why):
        written.append(trainer.global_step)
        original(self, trainer, why)

    monkeypatch.setattr(LastCheckpoint, "_write", record)
    signal_at = {"class_path": "tests.helpers.SignalAtStep", "init_args": {"step": 3, "signal": "SIGUSR1"}}
    cli = fit(
        synthetic("voc"), 7, "--checkpoint.every_n_steps=3", f"--trainer.callbacks+={json.dumps(signal_at)}"
    )
    assert written == [3, 4, 6, 7]  # steps 3 and 6; SIGUSR1 during step 4; the end
    assert cli.trainer.global_step == 7  # SIGUSR1 does not stop the run
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # the handler is removed after fit
    written.clear()
    fit(synthetic("voc"), 3, "--checkpoint.every_n_steps=0", "--checkpoint.every_n_minutes=1e-9")
    assert sorted(set(written)) == [1, 2, 3]  # time is always up (step 3 again after its validation)


def test_sigterm_writes_last_and_stops_and_the_run_continues_exactly(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    dump = {"class_path": "tests.helpers.DumpState", "init_args": {"out": "straight"}}
    fit(root, 6, f"--trainer.callbacks+={json.dumps(dump)}", "--trainer.default_root_dir=outputs/straight")
    sigterm = {"class_path": "tests.helpers.SignalAtStep", "init_args": {"step": 2, "signal": "SIGTERM"}}
    with pytest.raises(SystemExit) as stopped:
        fit(root, 6, f"--trainer.callbacks+={json.dumps(sigterm)}", "--checkpoint.every_n_steps=100")
    assert stopped.value.code == 143
    assert _step(EXPERIMENT / "version_0" / "checkpoints" / "last.ckpt") == 3
    dump["init_args"]["out"] = "resumed"
    fit(root, 6, f"--trainer.callbacks+={json.dumps(dump)}", "--ckpt_path=last")
    straight, resumed = torch.load("straight/rank0.pt"), torch.load("resumed/rank0.pt")
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def _wsss_process(
    args: list[str], cwd: Path, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``wsss`` in a process of its own, its error output appended to ``<cwd>/stderr.txt``."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "disabled",
        **(env_extra or {}),
    }
    env.pop("WSSS_RUN_DIR", None)
    cwd.mkdir(parents=True, exist_ok=True)
    with (cwd / "stderr.txt").open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "wsss_lightning.cli", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def _stderr(cwd: Path) -> str:
    return (cwd / "stderr.txt").read_text()[-3000:]


def _steps(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.is_file() else []


def test_fit_killed_with_sigkill_again_and_again_ends_with_the_uninterrupted_weights(synthetic, tmp_path):
    """SIGKILL at random steps, ``fit --ckpt_path last`` after each: the final weights are the uninterrupted
    run's and no continuation recomputes more than ``every_n_steps`` steps."""
    root, steps, every = synthetic("voc"), 14, 3
    base = [
        *tiny_args(CONFIG, root, steps), *QUIET, "--trainer.val_check_interval=5",
        f"--checkpoint.every_n_steps={every}", "--checkpoint.every_n_minutes=null",
    ]  # fmt: skip

    def callbacks(dump: str) -> list[str]:
        log = {"class_path": "tests.helpers.StepLog", "init_args": {"out": "steps.txt"}}
        state = {"class_path": "tests.helpers.DumpState", "init_args": {"out": dump}}
        return [f"--trainer.callbacks+={json.dumps(log)}", f"--trainer.callbacks+={json.dumps(state)}"]

    straight = _wsss_process(["fit", *base, *callbacks("dump")], tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, _stderr(tmp_path / "straight")

    work = tmp_path / "killed"
    work.mkdir()
    log = work / "steps.txt"
    rng = random.Random(0)
    kills = 0
    resume: list[str] = []
    while True:
        before = len(_steps(log))
        done_before = _steps(log)[-1] if before else 0
        target = rng.randint(done_before + 1, steps - 1) if kills < 3 and done_before < steps - 2 else None
        proc = _wsss_process(["fit", *base, *callbacks("dump"), *resume], work)
        while target is not None and proc.poll() is None:
            if any(s >= target for s in _steps(log)[before:]):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        code = proc.wait(timeout=600)
        continued = _steps(log)[before:]
        if resume and continued:
            # the first step after a continuation follows the checkpoint, at most `every` steps back
            assert done_before - (continued[0] - 1) <= every, (done_before, continued)
        if target is None:
            assert code == 0, _stderr(work)
            break
        assert code == -signal.SIGKILL, _stderr(work)
        kills += 1
        resume = ["--ckpt_path=last"]
    assert kills == 3 and _steps(log)[-1] == steps
    a = torch.load(tmp_path / "straight" / "dump" / "rank0.pt")
    b = torch.load(work / "dump" / "rank0.pt")
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


def test_experiment_folder_is_named_after_the_configs():
    assert experiment_folder(
        ["configs/u2pl/voc.yaml", "configs/u2pl/splits/voc_92.yaml", "configs/trainer/gpu.yaml"]
    ) == os.path.join("outputs", "u2pl_voc+voc_92")
    assert experiment_folder(["configs/quickstart.yaml"]) == os.path.join("outputs", "quickstart")


def _claim(args: tuple[str, str, multiprocessing.Queue]) -> None:
    experiment, key, queue = args
    queue.put(str(claimed_run(experiment, key)))


def test_processes_of_one_launch_share_a_run_folder_and_a_requeued_job_finds_its_own(tmp_path):
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_claim, args=((str(tmp_path), "slurm-7", queue),)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    chosen = {queue.get(timeout=5) for _ in procs}
    assert chosen == {str(tmp_path / "version_0")}
    assert claimed_run(tmp_path, "slurm-7") == tmp_path / "version_0"  # requeued: the same job id
    assert claimed_run(tmp_path, "slurm-8") == tmp_path / "version_1"
    assert new_version(tmp_path) == tmp_path / "version_2"
    assert newest_last(tmp_path) is None
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"}
    assert launch_key(slurm) == "slurm-7.0-fit"
    assert launch_key({**slurm, "SLURM_STEP_ID": "1"}, subcommand="test") == "slurm-7.1-test"
    assert launch_key({**slurm, "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm-5_3.0-fit"
    assert launch_key({"TORCHELASTIC_RUN_ID": "abc"}) == "torchrun-abc-fit"
    assert launch_key({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None  # a batch script's own process
    assert launch_key({}) is None


def test_torchrun_launches_two_processes_into_one_run_folder(synthetic, tmp_path):
    """``torchrun`` (the launcher Lightning uses across nodes) with 2 CPU processes: one run folder, one
    checkpoint, the global batch of the config (2 processes x the per-process batch)."""
    root = synthetic("voc")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    env.pop("WSSS_RUN_DIR", None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*torchrun, "-m", "wsss_lightning.cli", "fit", *tiny_args(CONFIG, root, 2), *QUIET,
         "-c", str(CONFIGS / "trainer" / "ddp_cpu.yaml"), "--trainer.limit_val_batches=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    runs = versions(tmp_path / EXPERIMENT)
    assert [r.name for r in runs] == ["version_0"], runs
    assert _step(runs[0] / "checkpoints" / "last.ckpt") == 2
    hparams = (next((runs[0] / "logs").rglob("hparams.yaml"))).read_text()
    assert "world_size: 2" in hparams and "global_batch_size: 4" in hparams


def test_every_process_of_a_ddp_evaluation_loads_the_checkpoint_ckpt_path_last_names(synthetic, tmp_path):
    """``validate --ckpt_path last`` on 2 processes: the process Lightning starts evaluates the same weights."""
    root = synthetic("voc")
    fit_run = _wsss_process(["fit", *tiny_args(CONFIG, root, 2), *QUIET], tmp_path)
    assert fit_run.wait(timeout=600) == 0, _stderr(tmp_path)
    dump = {"class_path": "tests.helpers.DumpState", "init_args": {"out": "dump", "at": "validation_end"}}
    validate = _wsss_process([
        "validate", *tiny_args(CONFIG, root), *QUIET, "-c", str(CONFIGS / "trainer" / "ddp_cpu.yaml"),
        "--ckpt_path=last", f"--trainer.callbacks+={json.dumps(dump)}",
    ], tmp_path)  # fmt: skip
    assert validate.wait(timeout=600) == 0, _stderr(tmp_path)
    saved = torch.load(tmp_path / EXPERIMENT / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    for rank in (0, 1):
        state = torch.load(tmp_path / "dump" / f"rank{rank}.pt")
        for name, value in saved["state_dict"].items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=f"rank {rank}: {name}")
    assert [r.name for r in versions(tmp_path / EXPERIMENT)] == ["version_0", "version_1"]


def test_slurm_requeue_continues_in_the_same_run_folder(synthetic, tmp_path):
    """A SLURM job as far as one machine allows: on SIGUSR1 (``--signal=SIGUSR1@90``) last.ckpt is written at
    the end of the step and the job is requeued (``scontrol`` is absent here: a warning), the job dies, and the
    requeued job (same job id, ``SLURM_RESTART_COUNT=1``) finds its folder and continues exactly."""
    root = synthetic("voc")
    base = [*tiny_args(CONFIG, root, 5), *QUIET, "--checkpoint.every_n_steps=100"]
    dump = {"class_path": "tests.helpers.DumpState", "init_args": {"out": "dump"}}
    straight = _wsss_process(
        ["fit", *base, f"--trainer.callbacks+={json.dumps(dump)}"], tmp_path / "straight"
    )
    assert straight.wait(timeout=600) == 0, _stderr(tmp_path / "straight")

    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_JOB_NAME": "wsss", "SLURM_STEP_ID": "0",
    }  # fmt: skip
    usr1 = {"class_path": "tests.helpers.SignalAtStep", "init_args": {"step": 2, "signal": "SIGUSR1"}}
    dies = {"class_path": "tests.helpers.InterruptAtStep", "init_args": {"step": 4}}
    work = tmp_path / "job"
    first = _wsss_process(
        ["fit", *base, f"--trainer.callbacks+={json.dumps(usr1)}", f"--trainer.callbacks+={json.dumps(dies)}"],
        work, slurm,
    )  # fmt: skip
    assert first.wait(timeout=600) != 0
    run = work / EXPERIMENT / "version_0"
    assert _step(run / "checkpoints" / "last.ckpt") == 3, _stderr(work)
    assert "could not requeue SLURM job 4242" in (work / "stderr.txt").read_text()
    requeued = _wsss_process(
        ["fit", *base, f"--trainer.callbacks+={json.dumps(dump)}"],
        work,
        {**slurm, "SLURM_RESTART_COUNT": "1"},
    )
    assert requeued.wait(timeout=600) == 0, _stderr(work)
    resumed_from = EXPERIMENT / "version_0" / "checkpoints" / "last.ckpt"
    assert f"restarted job continues from {resumed_from}" in (work / "stderr.txt").read_text()
    assert [r.name for r in versions(work / EXPERIMENT)] == ["version_0"]
    # the same job step launched again without a requeue does not train over the run
    again = _wsss_process(["fit", *base], work, slurm)
    assert again.wait(timeout=600) == 2 and "continue it with --ckpt_path last" in _stderr(work)
    a, b = torch.load(tmp_path / "straight" / "dump" / "rank0.pt"), torch.load(work / "dump" / "rank0.pt")
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)


def test_a_wandb_run_keeps_its_files_and_config_in_the_run_folder(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.finish()  # a run an earlier test left open would be reused, with its folder
    cli = fit(synthetic("voc"), 1, "-c", str(CONFIGS / "logger" / "wandb.yaml"))
    run = EXPERIMENT / "version_0"
    assert (run / "config.yaml").is_file() and (run / "wandb").is_dir()
    assert cli.trainer.logger.experiment.name == "supervised_synthetic_voc/version_0"
    wandb.finish()
