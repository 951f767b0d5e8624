"""The learning-table runs train the package of the checkout whose configs they read and whose commit they record."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import load_benchmark

REPO = Path(__file__).resolve().parents[2]


def test_a_run_imports_this_checkouts_package_whatever_the_path_held(tmp_path: Path, monkeypatch) -> None:
    # another checkout's package first on the inherited path, as an editable install of it would place it
    other = tmp_path / "other"
    (other / "wsss_lightning").mkdir(parents=True)
    (other / "wsss_lightning" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(other))
    env = load_benchmark("learning_runs").run_env()
    assert env["OMP_NUM_THREADS"] == "1" and env["WANDB_MODE"] == "disabled"
    found = subprocess.run(
        [sys.executable, "-c", "import wsss_lightning; print(wsss_lightning.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(found) == REPO / "wsss_lightning" / "__init__.py"
