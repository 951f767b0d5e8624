"""DAFormerModule and U2PLDomainModule: the mixed batch, the baselines, the options, bad configuration.

Exact resume and DDP are checked for every method by ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.methods import tiny
from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.cli import run_cli
from wsss_lightning.methods import DAFormerModule, U2PLDomainModule
from wsss_lightning.models.mit import MiTEncoder

REPO = Path(__file__).resolve().parents[3]
DAFORMER = REPO / "configs" / "daformer" / "synthetic_gta5_to_cityscapes.yaml"
ENCODER = {"embed_dims": [8, 16, 16, 32], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}
SMALL: dict[str, Any] = {"num_classes": 19, "encoder": "mit_b0", "encoder_kwargs": ENCODER, "embed_dim": 16}


def quiet(module: DAFormerModule, logged: dict[str, torch.Tensor] | None = None) -> DAFormerModule:
    """Run ``training_step`` without a trainer: logging calls land in ``logged``."""
    store = {} if logged is None else logged
    module.log_dict = lambda values, **_: store.update(values)  # type: ignore[method-assign]
    module.log = lambda name, value, **_: store.__setitem__(name, value)  # type: ignore[method-assign]
    module.log_progress_loss = lambda *a, **k: None  # type: ignore[method-assign]
    module.total_steps = lambda: 100  # type: ignore[method-assign]
    return module


def batch(n: int = 2, size: int = 64, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # blocks of a few classes, so each source image holds several classes
    blocks = torch.randint(0, 19, (n, size // 16, size // 16), generator=g)
    mask = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)
    mask[:, :4] = 255
    return {
        "source": {"image": torch.randn(n, 3, size, size, generator=g), "mask": mask},
        "target": {"image": torch.randn(n, 3, size, size, generator=g)},
    }


def test_mixed_batch_pastes_half_the_source_classes_and_weights_the_pseudo_labels() -> None:
    torch.manual_seed(0)
    module = DAFormerModule(**SMALL, self_training={"ignore_top": 3, "ignore_bottom": 5})
    data = batch()
    mixed = module.mixed_batch(data["source"], data["target"])
    src = data["source"]["mask"]
    torch.testing.assert_close(mixed.labels[mixed.pasted], src[mixed.pasted])
    assert bool((mixed.weights[mixed.pasted] == 1).all())
    pseudo = mixed.target_prob.argmax(1)
    torch.testing.assert_close(mixed.labels[~mixed.pasted], pseudo[~mixed.pasted])
    confident = (mixed.target_prob.max(1).values >= 0.968).float().mean((1, 2))
    for i in range(src.shape[0]):
        present = [c for c in src[i].unique().tolist() if c != 255]
        pasted = mixed.labels[i][mixed.pasted[i]].unique().tolist()
        assert set(pasted) <= set(present) and len(pasted) == math.ceil(len(present) / 2)
        target_pixels = ~mixed.pasted[i]
        rows = torch.arange(64)[:, None].expand(64, 64)
        middle = target_pixels & (rows >= 3) & (rows < 64 - 5)
        edges = target_pixels & ((rows < 3) | (rows >= 64 - 5))
        assert torch.allclose(mixed.weights[i][middle], confident[i].expand(int(middle.sum())))
        assert bool((mixed.weights[i][edges] == 0).all())
    # the strong augmentation changed the images but kept their shape
    assert mixed.images.shape == data["source"]["image"].shape


def test_teacher_labels_without_dropout_or_drop_path() -> None:
    torch.manual_seed(0)
    module = DAFormerModule(**SMALL, drop_path_rate=0.5)
    data = batch()
    first = module.mixed_batch(data["source"], data["target"]).target_prob
    second = module.mixed_batch(data["source"], data["target"]).target_prob
    torch.testing.assert_close(first, second)
    module = DAFormerModule(**SMALL, drop_path_rate=0.5, self_training={"teacher_regularisation": "on"})
    first = module.mixed_batch(data["source"], data["target"]).target_prob
    second = module.mixed_batch(data["source"], data["target"]).target_prob
    assert not torch.allclose(first, second)


def test_step_terms_of_daformer_source_only_and_oracle() -> None:
    torch.manual_seed(0)
    logged: dict[str, torch.Tensor] = {}
    loss = quiet(DAFormerModule(**SMALL), logged).training_step(batch(), 0)
    assert {"train/loss_source", "train/loss_target", "train/pseudo_weight"} <= set(logged)
    assert torch.isclose(loss, logged["train/loss_source"] + logged["train/loss_target"])
    loss.backward()

    logged.clear()
    source_only = quiet(DAFormerModule(**SMALL, self_training={"enabled": False}), logged)
    loss = source_only.training_step(batch(), 0)
    assert {k for k in logged if k.startswith("train/loss_")} == {"train/loss_source"}
    assert source_only.method_callbacks() == []  # no teacher to follow

    logged.clear()
    plain = batch()["source"]
    quiet(DAFormerModule(**SMALL), logged).training_step(plain, 0)  # the full view: the oracle
    assert {k for k in logged if k.startswith("train/loss_")} == {"train/loss_source"}


def test_teacher_follows_daformers_ema_ramp() -> None:
    (callback,) = DAFormerModule(**SMALL, self_training={"ema_decay": 0.99}).method_callbacks()
    assert isinstance(callback, EMATeacherCallback)
    assert (callback.decay, callback.ramp_offset, callback.warmup_steps) == (0.99, 1, 0)
    assert not callback.copy_at_warmup_end


def test_feature_distance_follows_the_weights_file(tmp_path: Path) -> None:
    assert not DAFormerModule(**SMALL).uses_feature_distance
    with pytest.raises(
        ValueError, match=r"feature_distance\.enabled=true needs model\.init_args\.encoder_weights"
    ):
        DAFormerModule(**SMALL, feature_distance={"enabled": True})
    with pytest.raises(ValueError, match=r"thing_classes \[19\] outside 0..18"):
        DAFormerModule(**SMALL, feature_distance={"thing_classes": [5, 19]})
    weights = tmp_path / "mit.pth"
    torch.save(MiTEncoder("mit_b0", model_kwargs=ENCODER).state_dict(), weights)
    torch.manual_seed(0)
    module = DAFormerModule(**SMALL, encoder_weights=str(weights), drop_path_rate=0.0)
    assert module.uses_feature_distance and module.imagenet is not None
    assert not any(p.requires_grad for p in module.imagenet.parameters())
    logged: dict[str, torch.Tensor] = {}
    data = batch()
    data["source"]["mask"][:, 32:] = 13  # car: a thing class over whole bottleneck cells
    quiet(module, logged).training_step(data, 0)
    # the student starts as the ImageNet encoder: the distance is 0 before any update
    assert float(logged["train/loss_feature_distance"].detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in module.student.encoder.parameters():  # the student moves away
            p.add_(0.2 * torch.randn_like(p))
    quiet(module, logged).training_step(data, 0)
    assert float(logged["train/loss_feature_distance"].detach()) > 1e-4
    off = DAFormerModule(**SMALL, encoder_weights=str(weights), feature_distance={"enabled": False})
    assert off.imagenet is None


def test_evaluates_the_student_or_the_teacher() -> None:
    torch.manual_seed(0)
    module = DAFormerModule(**SMALL).eval()
    with torch.no_grad():
        module.student.head.classifier.bias.add_(1.0)  # student and teacher differ
        images = torch.randn(1, 3, 64, 64)
        student = module(images)
        module.options.evaluate = "teacher"
        teacher = module(images)
    assert not torch.allclose(student, teacher)


def test_u2pl_domain_adds_the_contrastive_term_with_target_negatives_only() -> None:
    logged: dict[str, torch.Tensor] = {}
    options = {"capacity": 64, "background_capacity": 128, "num_anchors": 8, "num_negatives": 4}
    options["min_valid_classes"] = 1
    pushed = {}
    for source_negatives in (False, True):
        torch.manual_seed(0)
        module = U2PLDomainModule(
            **SMALL, rep_channels=8, contrastive={**options, "labeled_negatives": source_negatives}
        )
        loss = quiet(module, logged).training_step(batch(), 0)
        loss.backward()
        assert "train/loss_contrastive" in logged and torch.isfinite(logged["train/loss_contrastive"])
        # lambda_c weighs the term once; the unweighted value is a diagnostic
        terms = ("train/loss_source", "train/loss_target")
        expected = sum(logged[k] for k in terms) + 0.1 * logged["train/loss_contrastive"]
        assert torch.isclose(loss, expected) and torch.isclose(logged["train/loss"], expected)
        assert module.contrastive is not None
        pushed[source_negatives] = int(module.contrastive.memory_bank.count.sum())
    # the source adds negatives by the rank rule only when asked
    assert pushed[True] > pushed[False] > 0


def test_bad_configuration_fails_at_start_naming_the_field() -> None:
    with pytest.raises(ValueError, match="anchor_set must be 'code'"):
        U2PLDomainModule(**SMALL, contrastive={"anchor_set": "paper"})
    with pytest.raises(ValueError, match="rep_channels = 0"):
        U2PLDomainModule(**SMALL, rep_channels=0)
    with pytest.raises(ValueError, match=r"self_training\.confidence_threshold"):
        DAFormerModule(**SMALL, self_training={"confidence_threshold": 1.5})
    module = DAFormerModule(**SMALL)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(supervision="semi"))  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"set data\.view to DomainView"):
        module.setup("fit")


def test_start_up_says_why_the_feature_distance_is_off(caplog) -> None:
    module = DAFormerModule(**SMALL)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(supervision="domain"))  # type: ignore[assignment]
    with caplog.at_level("INFO"):
        module.setup("fit")
    assert "ImageNet feature distance off (no model.init_args.encoder_weights" in caplog.text


def test_fit_from_the_cli_logs_the_target_metrics(synthetic, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = run_cli([
        "fit", "--config", str(DAFORMER), "--data.source.root", str(synthetic("gta5")),
        f"--data.init_args.view.init_args.target.root={synthetic('cityscapes')}",
        "--data.init_args.view.init_args.keep_target_masks=true",
        *tiny.DAFORMER, *tiny.CPU, "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=2",
    ])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss_source", "train/loss_target", "train/pseudo_accuracy", "val/miou"):
        assert key in metrics, key
