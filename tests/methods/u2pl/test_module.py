"""U2PLModule through the CLI on synthetic VOC: semi-supervised and SupOnly runs, errors.

Exact resume and DDP are checked for every method by ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.methods import tiny
from wsss_lightning.cli import run_cli

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs" / "u2pl"

# voc.yaml states a global batch of 16 (checked at fit): these tests run 2 images per step
TINY = [*tiny.U2PL, *tiny.CPU, "--trainer.limit_val_batches=1", "--data.init_args.loader.global_batch_size=2"]


def args(root: Path, *fragments: str, epochs: int = 2) -> list[str]:
    configs = [arg for c in ("voc.yaml", *fragments) for arg in ("--config", str(CONFIGS / c))]
    return [
        *configs,
        "--data.source.root",
        str(root),
        *TINY,
        f"--trainer.max_epochs={epochs}",
    ]


def test_u2pl_fit_runs_warmup_then_semi_supervised_losses(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # keep_target_masks: the unlabeled ground truth is loaded for the pseudo-label accuracy diagnostic only
    cli = run_cli(["fit", *args(synthetic("voc")), "--data.init_args.view.init_args.keep_target_masks=true"])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 4
    assert 0.0 <= float(metrics["train/pseudo_accuracy"]) <= 1.0
    for key in ("train/loss_sup", "train/loss_unsup", "train/loss_contrastive", "val/miou", "teacher/decay"):
        assert key in metrics, key
    model = cli.model
    assert model.contrastive.memory_bank.filled().sum() > 0, "no negatives were enqueued"
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert float(metrics["schedule/anneal"]) == pytest.approx(0.5)  # alpha_t at epoch 1 of 2


@pytest.mark.parametrize("oracle", ["oracle_labels", "oracle_filter"])
def test_oracle_diagnostics_train_on_the_ground_truth(oracle, synthetic, tmp_path, monkeypatch):
    from wsss_lightning.methods.u2pl import module as u2pl_module

    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "truth": [], "trained": []}
    accuracy, cutmix = u2pl_module.pseudo_label_accuracy, u2pl_module.apply_cutmix

    def spy_accuracy(labels, truth, ignore_index):
        seen["teacher"].append(labels.clone())
        seen["truth"].append(truth.clone())
        return accuracy(labels, truth, ignore_index)

    def spy_cutmix(images, labels, conf, boxes):
        seen["trained"].append(labels.clone())
        return cutmix(images, labels, conf, boxes)

    monkeypatch.setattr(u2pl_module, "pseudo_label_accuracy", spy_accuracy)
    monkeypatch.setattr(u2pl_module, "apply_cutmix", spy_cutmix)
    monkeypatch.chdir(tmp_path)
    run_cli(
        [
            "fit",
            *args(synthetic("voc")),
            "--data.init_args.view.init_args.keep_target_masks=true",
            f"--model.init_args.unsupervised.{oracle}=true",
        ]
    )
    assert len(seen["trained"]) == len(seen["truth"]) == 2  # the two semi-supervised steps
    for teacher, truth, trained in zip(seen["teacher"], seen["truth"], seen["trained"], strict=True):
        teacher, truth, trained = teacher.numpy(), truth.to(teacher.dtype).numpy(), trained.numpy()
        if oracle == "oracle_labels":
            expected = truth
        else:  # the teacher's labels, those that disagree with a known ground truth ignored
            expected = np.where((truth != 255) & (teacher != truth), 255, teacher)
            assert (expected == 255).any() and (
                expected != 255
            ).any()  # the untrained teacher errs, not always
        np.testing.assert_array_equal(trained, expected)


def test_suponly_baseline_trains_on_the_labeled_list_only(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        ["fit", *args(synthetic("voc"), "suponly.yaml", epochs=1), "--trainer.limit_train_batches=null"]
    )
    assert cli.model.contrastive is None  # no memory bank is allocated for SupOnly
    assert "train/loss_sup" in cli.trainer.callback_metrics and "val/miou" in cli.trainer.callback_metrics
    labeled = (synthetic("voc") / "splits" / "1_8" / "labeled.txt").read_text().split()
    # one plain loader over the labeled images: an epoch is one pass over them, nothing else is read
    assert cli.trainer.global_step == len(labeled) // 2
    dataset = cli.datamodule.train_dataloader().dataset
    assert sorted(dataset.source.ids[i] for i in dataset.indices) == sorted(labeled)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (["--model.init_args.contrastive.num_negatives=1000"], "num_negatives"),
        (["--model.init_args.encoder=no_such_encoder"], "encoder"),
        (["--model.init_args.unsupervised.drop_percent=150"], "drop_percent"),
        (["--model.init_args.unsupervised.oracle_labels=true"], "keep_target_masks"),  # no ground truth kept
        (["--model.init_args.unsupervised.oracle_filter=true"], "keep_target_masks"),
        (
            [
                "--model.init_args.unsupervised.oracle_labels=true",
                "--model.init_args.unsupervised.oracle_filter=true",
                "--data.init_args.view.init_args.keep_target_masks=true",
            ],
            "oracle_filter",
        ),
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
        run_cli(["fit", *args(synthetic("voc")), f"--data.init_args.view.init_args.labeled_list={bad}"])


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


def test_old_flat_u2pl_options_fail_with_their_new_spelling(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text(
        "model:\n  class_path: wsss_lightning.methods.U2PLModule\n"
        "  init_args: {aux_weight: 0.4, drop_percent: 20.0, teacher_copy_first_epoch: true}\n"
    )
    with pytest.raises(SystemExit):
        run_cli(["fit", "-c", str(old), "--model.init_args.unsup_weight=1.0", "--print_config"])
    err = capsys.readouterr().err
    assert "model.init_args.aux_weight -> model.init_args.supervised.aux_weight" in err
    assert "model.init_args.teacher_copy_first_epoch -> model.init_args.teacher.copy_first_epoch" in err
    assert "--model.init_args.unsup_weight -> --model.init_args.unsupervised.weight" in err


@pytest.mark.parametrize("max_keys", [None, 100])  # every negative (released) / a key budget
def test_semi_supervised_step_does_not_synchronise(monkeypatch, max_keys):
    """A semi-supervised step with a full memory bank (teacher pseudo-labels, CutMix, student and teacher
    forwards, supervised, unsupervised and contrastive losses, bank update, backward) reads no device value
    on the host: host reads and data-dependent sizes raise (``tests.helpers.NoSyncMode``)."""
    from tests.helpers import NoSyncMode, forbid_host_reads
    from wsss_lightning.host_reads import accelerator_paths
    from wsss_lightning.methods import ContrastiveConfig, U2PLModule

    torch.manual_seed(0)
    config = ContrastiveConfig(capacity=64, background_capacity=96, num_anchors=16, num_negatives=8,
                               max_keys_per_step=max_keys)  # fmt: skip
    model = U2PLModule(encoder="resnet18", multi_grid=None, num_classes=5, contrastive=config).train()
    bank = model.contrastive.memory_bank
    bank.push(torch.randn(bank.total_capacity, bank.dim), torch.arange(5).repeat_interleave(bank.capacities))
    assert torch.equal(bank.count, bank.capacities)  # full: every push wraps around
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    monkeypatch.setattr(model, "log_dict", lambda *args, **kwargs: None)
    images_l, images_u = torch.randn(2, 3, 33, 33), torch.randn(2, 3, 33, 33)
    labels_l = torch.randint(0, 5, (2, 33, 33))
    labels_l[:, :4] = 255
    ptr = bank.ptr.clone()
    with monkeypatch.context() as patch, accelerator_paths(), NoSyncMode():
        forbid_host_reads(patch)
        loss = model._semi_step(images_l, labels_l, images_u)
        loss.backward()
    assert torch.isfinite(loss.detach())
    assert not torch.equal(bank.ptr, ptr)  # the bank was updated
    assert all(p.grad is not None for p in model.student.parameters() if p.requires_grad)
