"""``wsss fit`` with DDP over 2 CPU processes (gloo), through the installed console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_fit_with_ddp_on_two_cpu_processes(synthetic, tmp_path):
    wsss = shutil.which("wsss", path=str(Path(sys.executable).parent)) or shutil.which("wsss")
    assert wsss, "the wsss console script is not installed"
    args = [
        wsss, "fit", "-c", str(CONFIGS / "supervised" / "voc.yaml"), "-c", str(CONFIGS / "trainer" / "ddp_cpu.yaml"),
        "--data.root", str(synthetic("voc")), "--model.init_args.encoder=resnet18",
        "--data.init_args.crop_size=64", "--data.init_args.batch_size=2", "--data.init_args.num_workers=0",
        "--data.init_args.eval_batch_size=2", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
        "--trainer.limit_val_batches=2", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false", "--trainer.logger.init_args.save_dir=logs",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    hparams = yaml.safe_load(next((tmp_path / "logs").rglob("hparams.yaml")).read_text())
    assert hparams["run"]["world_size"] == 2
    assert hparams["run"]["global_batch_size"] == 4  # 2 processes x 2 per device
    metrics = next((tmp_path / "logs").rglob("metrics.csv")).read_text()
    assert "val/miou" in metrics
