"""U2PLModule through the CLI on synthetic VOC: semi-supervised and SupOnly runs, exact resume, DDP, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CHECKPOINT_EVERY_STEP, fit_ddp_cpu_and_dump, straight_and_resumed_states
from wsss_lightning.cli import run_cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "u2pl"

# A small network, a small bank, a few steps: one warm-up epoch of 2 steps, then semi-supervised steps.
TINY = [
    "--model.init_args.encoder=resnet18",
    "--model.init_args.multi_grid=null",
    "--model.init_args.contrastive.capacity=256",
    "--model.init_args.contrastive.background_capacity=512",
    "--model.init_args.contrastive.num_anchors=16",
    "--model.init_args.contrastive.num_negatives=8",
    "--data.init_args.labeled_list=splits/1_8/labeled.txt",
    "--data.init_args.unlabeled_list=splits/1_8/unlabeled.txt",
    "--data.init_args.crop_size=64",
    "--data.init_args.batch_size=2",
    "--data.init_args.unlabeled_batch_size=2",
    "--data.init_args.eval_batch_size=2",
    "--data.init_args.num_workers=0",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32-true",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
]


def args(root: Path, config: str = "voc_1464.yaml", epochs: int = 2) -> list[str]:
    return [
        "--config",
        str(CONFIGS / config),
        "--data.root",
        str(root),
        *TINY,
        f"--trainer.max_epochs={epochs}",
    ]


def test_u2pl_fit_runs_warmup_then_semi_supervised_losses(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # keep_target_masks: the unlabeled ground truth is loaded for the pseudo-label accuracy diagnostic only
    cli = run_cli(["fit", *args(synthetic("voc")), "--data.init_args.keep_target_masks=true"])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 4
    assert 0.0 <= float(metrics["train/pseudo_accuracy"]) <= 1.0
    for key in ("train/loss_sup", "train/loss_unsup", "train/loss_contrastive", "val/miou", "teacher/decay"):
        assert key in metrics, key
    model = cli.model
    assert model.contrastive.memory_bank.filled().sum() > 0, "no negatives were enqueued"
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert float(metrics["schedule/anneal"]) == pytest.approx(0.5)  # alpha_t at epoch 1 of 2


def test_suponly_baseline_trains_on_labeled_list_only(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny = [a for a in TINY if "labeled_list" not in a and "unlabeled" not in a]
    cli = run_cli([
        "fit", "--config", str(CONFIGS / "voc_1464_suponly.yaml"), "--data.root", str(synthetic("voc")), *tiny,
        "--data.init_args.train_split=splits/1_8/labeled.txt", "--trainer.max_epochs=1",
    ])  # fmt: skip
    assert cli.model.contrastive is None  # no memory bank is allocated for SupOnly
    assert "train/loss_sup" in cli.trainer.callback_metrics and "val/miou" in cli.trainer.callback_metrics


def test_resume_restores_student_teacher_and_memory_bank_exactly(synthetic, tmp_path, monkeypatch):
    common = [*args(synthetic("voc"), epochs=3), f"--trainer.callbacks={CHECKPOINT_EVERY_STEP}",
              "--trainer.limit_val_batches=0"]  # fmt: skip
    # dies in the semi-supervised phase, mid-epoch
    straight, resumed, step = straight_and_resumed_states(common, tmp_path, monkeypatch, interrupt_at=5)
    assert step == 6
    assert any(k.startswith("teacher.") for k in straight) and any("memory_bank" in k for k in straight)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)


def test_ddp_two_processes_keep_memory_banks_and_teachers_identical(synthetic, tmp_path):
    rank0, rank1 = fit_ddp_cpu_and_dump(args(synthetic("voc"), epochs=2), tmp_path)
    bank = [k for k in rank0 if "memory_bank" in k]
    teacher = [k for k in rank0 if k.startswith("teacher.")]
    assert bank and teacher
    assert int(rank0["contrastive.memory_bank.count"].sum()) > 0
    for name in bank + teacher:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (["--model.init_args.contrastive.num_negatives=1000"], "num_negatives"),
        (["--model.init_args.encoder=no_such_encoder"], "encoder"),
        (["--model.init_args.drop_percent=150"], "drop_percent"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_field(override, field, synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, SystemExit)) as err:
        run_cli(["fit", *args(synthetic("voc")), *override])
    assert field in str(err.value) or field in str(err.value.__context__)


def test_split_file_that_does_not_match_the_dataset_is_named(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "labeled.txt"
    bad.write_text("2099_999999\n")
    with pytest.raises(ValueError, match=r"labeled\.txt"):
        run_cli(["fit", *args(synthetic("voc")), f"--data.init_args.labeled_list={bad}",
                 "--data.init_args.unlabeled_list=null"])  # fmt: skip


def test_evaluation_uses_the_configured_network_outside_fit():
    from wsss_lightning.methods import ContrastiveConfig, U2PLModule

    for evaluate in ("teacher", "student"):
        model = U2PLModule(encoder="resnet18", multi_grid=None, evaluate=evaluate,
                           contrastive=ContrastiveConfig(enabled=False)).eval()  # fmt: skip
        with torch.no_grad():
            for p in model.teacher.parameters():
                p.add_(0.1)
            images = torch.randn(1, 3, 33, 33)
            expected = getattr(model, evaluate)(images, with_rep=False)["pred"]
            torch.testing.assert_close(model(images), expected)
