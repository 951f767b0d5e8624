"""SeminarModule through the CLI on synthetic VOC clicks: both stages, the frozen ancillary, start-up errors.

Exact resume and DDP are checked for both stages by ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import NoSyncMode, forbid_host_reads
from tests.methods import tiny
from wsss_lightning.cli import run_cli
from wsss_lightning.host_reads import accelerator_paths
from wsss_lightning.methods import SeminarModule
from wsss_lightning.methods.seminar import ConsistencyConfig
from wsss_lightning.teachers import FrozenNetwork

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs" / "seminar"

# the EMA teacher and the ancillary are in eval mode on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode")


def args(root: Path, config: str, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--config", str(CONFIGS / config), "--data.source.root", str(root), *tiny.SEMINAR, *tiny.CPU,
        "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2", f"--trainer.max_steps={steps}",
        "--trainer.enable_progress_bar=false", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ancillary(synthetic, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A fitted ancillary stage: its last checkpoint and its student's weights."""
    folder = tmp_path_factory.mktemp("ancillary")
    cwd = Path.cwd()
    try:
        os.chdir(folder)
        # 4 steps: epoch 0 (ramp 0, no teacher pass) and epoch 1 (the 2-epoch ramp, scaled into the 2-epoch run,
        # at its end)
        cli = run_cli(["fit", *args(synthetic("voc"), "synthetic_voc_ancillary.yaml", steps=4)])
    finally:
        os.chdir(cwd)
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss_pce", "train/loss_consistency", "train/loss_crf", "teacher/decay", "val/miou"):
        assert key in metrics, key
    assert "train/loss_pseudo" not in metrics and cli.model.ancillary is None
    assert float(metrics["teacher/decay"]) == pytest.approx(0.75)  # a_4 = 1 - 1/4
    assert float(metrics["schedule/consistency_ramp"]) == pytest.approx(1.0)
    ckpt = folder / "outputs" / "seminar_synthetic_voc_ancillary" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    student = {k: v.clone() for k, v in cli.model.student.state_dict().items()}
    return ckpt, student


def test_primary_stage_learns_from_the_frozen_ancillary(ancillary, synthetic, tmp_path, monkeypatch):
    ckpt, ancillary_student = ancillary
    monkeypatch.chdir(tmp_path)
    cli = run_cli([
        "fit", *args(synthetic("voc"), "synthetic_voc_primary.yaml", f"--model.init_args.ancillary_checkpoint={ckpt}"),
    ])  # fmt: skip
    model: SeminarModule = cli.model
    assert "train/loss_pseudo" in cli.trainer.callback_metrics
    assert model.ancillary is not None and bool(model.ancillary_loaded)
    # the ancillary is the earlier student, untouched by training, in eval mode, outside the optimizer and DDP
    for name, value in model.ancillary.module.state_dict().items():
        torch.testing.assert_close(value, ancillary_student[name], rtol=0, atol=0, msg=name)
    assert not model.ancillary.training and not any(p.requires_grad for p in model.ancillary.parameters())
    optimized = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.ancillary.parameters()}
    assert optimized == {id(p) for p in model.student.parameters()}
    ignored = set(model._ddp_params_and_buffers_to_ignore)
    assert {f"ancillary.{n}" for n, _ in model.ancillary.named_parameters()} <= ignored
    assert {f"ancillary.{n}" for n, _ in model.ancillary.named_buffers()} <= ignored
    # its checkpoint rebuilds it without the ancillary's file
    saved = tmp_path / "outputs" / "seminar_synthetic_voc_primary" / "version_0" / "checkpoints" / "last.ckpt"
    rebuilt = SeminarModule.load_from_checkpoint(saved, map_location="cpu", ancillary_checkpoint="moved.ckpt")
    assert bool(rebuilt.ancillary_loaded)


def test_start_up_errors_name_the_field(ancillary, synthetic, tmp_path, monkeypatch):
    ckpt, _ = ancillary
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    field = "model.init_args.ancillary_checkpoint"
    with pytest.raises(FileNotFoundError, match=field):
        run_cli(["fit", *args(root, "synthetic_voc_primary.yaml", f"--{field}=missing.ckpt")])
    # another method's checkpoint
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "method": "wsss_lightning.methods.dupl.module.DuPLModule",
                "hyper_parameters": {"num_classes": 21}}, other)  # fmt: skip
    with pytest.raises(ValueError, match=f"{field}.*DuPLModule"):
        run_cli(["fit", *args(root, "synthetic_voc_primary.yaml", f"--{field}={other}")])
    # another number of classes
    fewer = tmp_path / "fewer.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["num_classes"] = 5
    torch.save(state, fewer)
    with pytest.raises(ValueError, match=f"{field}.*5 classes but this run has 21"):
        run_cli(["fit", *args(root, "synthetic_voc_primary.yaml", f"--{field}={fewer}")])
    # not the click view
    with pytest.raises(ValueError, match="ClickView"):
        run_cli(["fit", *args(root, "synthetic_voc_ancillary.yaml", "--data.view=FullView")])


def test_training_step_does_not_synchronise(monkeypatch):
    """A primary-stage step (student, teacher, ancillary, every loss, backward) reads no device value on the host.

    The accelerators' paths (the lattice's sync-free padded layout) are taken on the CPU
    (``accelerator_paths``); host reads and data-dependent sizes raise (``tests.helpers.NoSyncMode``)."""
    torch.manual_seed(0)
    model = SeminarModule(num_classes=5, encoder="resnet18", multi_grid=(1, 2), decoder_channels=16)
    model.ancillary = FrozenNetwork(model._network(pretrained=False))
    model.consistency_ramp = 1.0
    model.train()
    clicks = torch.full((2, 32, 32), 255)
    clicks[:, 5, 7], clicks[:, 20, 11] = 1, 0
    batch = {
        "image": torch.randn(2, 3, 32, 32),
        "clicks": clicks,
        "valid_box": torch.tensor([[0, 0, 32, 32], [0, 0, 24, 30]]),
    }
    monkeypatch.setattr(model, "log_dict", lambda *args, **kwargs: None)
    with monkeypatch.context() as patch, accelerator_paths(), NoSyncMode():
        forbid_host_reads(patch)
        loss = model.training_step(batch, 0)
        loss.backward()
    assert torch.isfinite(loss.detach())


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_the_teacher_has_bn_statistics_in_either_mode(mode):
    """An eval-mode teacher never runs in train mode: it averages the student's BN statistics with its weights
    (without them it would predict from the initial mean 0 / variance 1 and the consistency would pull the
    student to that). A train-mode teacher keeps the statistics of its own forwards (mean teacher)."""
    torch.manual_seed(0)
    model = SeminarModule(
        num_classes=3, encoder="resnet18", multi_grid=(1, 2), decoder_channels=16,
        consistency=ConsistencyConfig(teacher_mode=mode),
    )  # fmt: skip
    model.student.train()
    model.student(torch.randn(2, 3, 32, 32) * 3 + 2)  # the student's BN statistics move
    initial = {k: v.clone() for k, v in model.teacher.module.state_dict().items()}
    model.teacher.update(model.student, decay=0.25)
    student, teacher = model.student.state_dict(), model.teacher.module.state_dict()
    buffers = [
        k for k in student if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
    ]
    assert buffers and all(not torch.equal(student[k], initial[k]) for k in buffers)  # the student's moved
    for key in buffers:
        if mode == "train":  # its own, untouched by the update
            expected = initial[key]
        elif key.endswith("num_batches_tracked"):  # copied
            expected = student[key]
        else:
            expected = 0.25 * initial[key] + 0.75 * student[key]
        torch.testing.assert_close(teacher[key], expected, msg=key)


def test_evaluating_a_teacher_that_never_runs_is_refused():
    # an eval-mode teacher follows the student's BN statistics whatever the consistency weight
    SeminarModule(
        num_classes=3, encoder="resnet18", multi_grid=(1, 2), evaluate="teacher",
        consistency=ConsistencyConfig(weight=0.0, teacher_mode="eval"),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"evaluate = 'teacher' with consistency\.weight = 0"):
        SeminarModule(
            num_classes=3, encoder="resnet18", consistency=ConsistencyConfig(weight=0.0), evaluate="teacher"
        )
