"""ASDTModule: the network's heads and groups, the step's losses and teachers, pseudo masks, bad configuration.

Exact resume (with the PW phase), DDP and bf16 are checked for every method by ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import adam_steps
from tests.methods import tiny
from wsss_lightning.cli import run_cli
from wsss_lightning.methods import ASDTModule, PWWaveConfig, ReliableLabelConfig, TeachingConfig
from wsss_lightning.methods.asdt import labels as asdt_labels
from wsss_lightning.methods.asdt.network import ASDTNetwork, head_reach_warning
from wsss_lightning.models.resnet38 import ResNet38

REPO = Path(__file__).resolve().parents[3]
SYNTHETIC = REPO / "configs" / "asdt" / "synthetic_voc.yaml"
TINY = [*tiny.CPU, *tiny.ASDT, "--trainer.limit_val_batches=1", "--trainer.val_check_interval=4"]


def small(**kwargs: Any) -> ASDTModule:
    kwargs.setdefault("labels", ReliableLabelConfig(cam_scales=(1.0, 0.5)))
    model = ASDTModule(encoder="resnet18", seg_width=8, num_classes=5, **kwargs)
    model.configure_models()
    return model


def batch(b: int = 2, size: int = 32, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    tags = torch.zeros(b, 5)
    tags[:, 0] = 1
    tags[0, 1] = tags[1, 3] = 1
    return {
        "image": torch.randn(b, 3, size, size, generator=g),
        "tags": tags,
        "valid_box": torch.tensor([[0, 0, size, size], [0, 0, size - 8, size]]),
        "size": torch.tensor([[size, size], [size - 8, size]]),
        "name": [f"img{i}" for i in range(b)],
    }


def test_network_heads_shapes_and_frozen_batchnorm() -> None:
    net = ASDTNetwork(5, encoder="resnet18", seg_width=8).train()
    out = net(torch.randn(2, 3, 64, 64))
    assert out.class_logits.shape == (2, 4) and out.cams.shape == (2, 4, 8, 8)  # output stride 8
    assert out.seg_teacher.shape == out.student.shape == (2, 5, 8, 8)
    assert (out.cams >= 0).all()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    assert all(not p.requires_grad for m in norms for p in m.parameters())
    # seg-teacher and student: same architecture, separate weights; class-teacher without bias
    assert net.seg_teacher[0].weight.data_ptr() != net.student[0].weight.data_ptr()
    assert net.classifier.bias is None and net.seg_teacher[0].dilation == (12, 12)


def test_rrm_parameter_groups_and_biases_without_weight_decay() -> None:
    model = small(optim={"name": "sgd", "lr": 0.001, "weight_decay": 1e-5})  # type: ignore[arg-type]
    groups = {g["name"]: g for g in model.build_optimizer().param_groups}
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(
        {"backbone": 0.001, "head": 0.01, "head_bias": 0.02}  # timm ResNet convs have no bias: group empty
    )
    assert groups["head_bias"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 1e-5
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in groups.values() for p in g["params"]}


def test_resnet38_backbone_and_its_classifier_from_the_weights_file(tmp_path) -> None:
    backbone = ResNet38()
    fc8 = torch.randn(20, 4096, 1, 1)
    path = tmp_path / "res38_cls.pth"
    torch.save({**backbone.state_dict(), "fc8.weight": fc8}, path)
    net = ASDTNetwork(21, encoder="resnet38", encoder_weights=str(path), seg_width=8)
    torch.testing.assert_close(net.classifier.weight, fc8)  # RRM's class-teacher starts pretrained
    torch.testing.assert_close(
        net.backbone.state_dict()["conv1a.weight"], backbone.state_dict()["conv1a.weight"]
    )
    with pytest.raises(ValueError, match=r"fc8\.weight"):
        ASDTNetwork(6, encoder="resnet38", encoder_weights=str(path), seg_width=8)


def test_student_target_follows_the_active_teacher() -> None:
    model = small()
    rgb = torch.rand(2, 3, 32, 32) * 255
    cams = torch.rand(2, 4, 32, 32)
    tags = batch()["tags"][:, 1:]
    ct_label = torch.randint(0, 5, (2, 32, 32))
    p_st = torch.rand(2, 5, 32, 32).softmax(1)
    model.active_teacher = "class"
    assert model.student_target(rgb, cams, tags, ct_label, p_st) is ct_label
    model.active_teacher = "seg"
    expected = asdt_labels.seg_teacher_labels(rgb, p_st, tags, crf=asdt_labels.RRM_TRAIN_CRF)
    torch.testing.assert_close(model.student_target(rgb, cams, tags, ct_label, p_st), expected)
    for mode in ("max", "mean"):
        model.active_teacher = mode
        expected = asdt_labels.dual_teacher_labels(rgb, cams, tags, p_st, mode)  # type: ignore[arg-type]
        torch.testing.assert_close(model.student_target(rgb, cams, tags, ct_label, p_st), expected)


def test_training_step_sums_the_three_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small()
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(model, "log_dict", lambda values, **_: logged.update(values))
    monkeypatch.setattr(model, "log_progress_loss", lambda *a, **k: None)
    model.active_teacher = "seg"
    loss = model.training_step(batch(), 0)
    parts = ("train/loss_cls", "train/loss_ce_st", "train/loss_str_st", "train/loss_ce_s", "train/loss_str_s")
    torch.testing.assert_close(loss, sum(logged[k] for k in parts))
    # row I (RRM): the seg-teacher's terms are off
    rrm = small(teaching=TeachingConfig(mode="class"))
    rrm.load_state_dict(model.state_dict())
    monkeypatch.setattr(rrm, "log_dict", lambda values, **_: logged.update(values))
    monkeypatch.setattr(rrm, "log_progress_loss", lambda *a, **k: None)
    rrm.active_teacher = "class"
    loss_one = rrm.training_step(batch(), 0)
    student_only = ("train/loss_cls", "train/loss_ce_s", "train/loss_str_s")
    torch.testing.assert_close(loss_one, sum(logged[k] for k in student_only))
    assert loss.requires_grad and 0.0 <= float(logged["train/reliable_fraction"]) <= 1.0
    loss.backward()  # type: ignore[no-untyped-call]
    assert model.net.student[2].weight.grad is not None and model.net.classifier.weight.grad is not None


def test_warmup_trains_the_class_teacher_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small(warmup_steps=5)
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(model, "log_dict", lambda values, **_: logged.update(values))
    monkeypatch.setattr(model, "log_progress_loss", lambda *a, **k: None)
    loss = model.training_step(batch(), 0)
    torch.testing.assert_close(loss, logged["train/loss_cls"])
    assert set(logged) == {"train/loss_cls", "train/loss"}


@pytest.mark.parametrize(("mode", "seg_teacher_steps"), [("alternate", 1), ("class", 0)])
def test_the_optimizer_skips_the_heads_a_step_does_not_train(
    mode: str, seg_teacher_steps: int, synthetic, tmp_path, monkeypatch
) -> None:
    """Two warm-up steps, then one full step: AdamW has counted the classifier's three steps, the student's one,
    and the seg-teacher's one (none in row I), so the heads' first update is a fresh AdamW's."""
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    cli = run_cli(
        ["fit", "--config", str(SYNTHETIC), "--data.source.root", str(root), *TINY, "--trainer.max_steps=3",
         "--model.init_args.warmup_steps=2", f"--model.init_args.teaching.mode={mode}",
         "--trainer.limit_val_batches=0"]
    )  # fmt: skip
    optimizer, net = cli.trainer.optimizers[0], cli.model.net
    assert adam_steps(optimizer, net.classifier) == {3}
    assert adam_steps(optimizer, net.student) == {1}
    assert adam_steps(optimizer, net.seg_teacher) == {seg_teacher_steps}


def test_a_dilation_past_the_crops_feature_map_is_named_at_the_first_batch(
    synthetic, tmp_path, monkeypatch
) -> None:
    # a tap at offset d reads features of an n-token map only where n > d: 64 px -> 8 tokens
    assert head_reach_warning(7, (64, 64)) is None
    message = head_reach_warning(8, (64, 72))
    assert (
        message is not None and "dilation 8 does not fit the 8×9" in message and "at least 65 px" in message
    )
    assert head_reach_warning(12, (321, 321)) is None  # RRM's 41×41 map
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    args = ["fit", "--config", str(SYNTHETIC), "--data.source.root", str(root), *TINY, "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0"]  # fmt: skip
    with pytest.warns(UserWarning, match="model.init_args.dilation 12 does not fit the 8×8"):
        run_cli(args)


def test_predict_writes_pseudo_masks_of_the_tags() -> None:
    model = small().eval()
    data = batch()
    with torch.no_grad():
        out = model.predict_step(data, 0)
        p_st, p_s = model._probs(model.net(data["image"]), (32, 32))
        expected = asdt_labels.pseudo_masks(
            model.denormalize(data["image"]) * 255, p_st, p_s, data["tags"][:, 1:]
        )
    assert out["name"] == data["name"]
    assert out["masks"][1].shape == (24, 32)
    torch.testing.assert_close(torch.as_tensor(out["masks"][0]).long(), expected[0])
    present = {0, 1}  # image 0: background and class 1 only
    assert set(out["masks"][0].ravel().tolist()) <= present
    del data["tags"]
    with pytest.raises(KeyError, match="predict: evaluate"):
        model.predict_step(data, 0)


def test_fit_logs_every_output_and_predict_writes_train_set_psms(synthetic, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    cli = run_cli(
        ["fit", "--config", str(SYNTHETIC), "--data.source.root", str(root), *TINY, "--trainer.max_steps=4",
         "--model.init_args.validate_psm=true"]
    )  # fmt: skip
    metrics = cli.trainer.callback_metrics
    for key in ("train/loss_ce_s", "train/ct_label_accuracy", "schedule/pw_class_teacher", "val/miou"):
        assert key in metrics, key
    for output in ("seg_teacher", "student", "max", "ct_label", "psm"):
        assert 0.0 <= float(metrics[f"val/{output}/miou"]) <= 1.0, output
    ckpt = next(Path("outputs").rglob("last.ckpt"))
    out = tmp_path / "psm"
    run_cli([
        "predict", "--config", str(SYNTHETIC), "--data.source.root", str(root), *TINY, f"--ckpt_path={ckpt}",
        "--trainer.limit_predict_batches=1", "--trainer.callbacks+=wsss_lightning.callbacks.PredictionWriter",
        f"--trainer.callbacks.output_dir={out}",
    ])  # fmt: skip
    assert sorted(out.rglob("*.png")), "no pseudo mask written"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model.init_args.encoder=not_a_net"], "model.init_args.encoder"),
        (["--model.init_args.encoder_weights=missing.pth"], "encoder_weights"),
        (["--model.init_args.pw.tau=1.0"], "pw.tau"),
        (["--model.init_args.teaching.mode=both"], "teaching.mode"),
        (["--model.init_args.labels.cam_quantile=1.5"], "labels.cam_quantile"),
        (["--model.init_args.evaluate=teacher"], "evaluate"),
        (["--model.init_args.warmup_steps=-1"], "warmup_steps"),
        (["--data.init_args.view=wsss_lightning.data.FullView"], "TagsView"),
    ],
)
def test_bad_configuration_fails_naming_the_field(
    extra: list[str], message: str, synthetic, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    with pytest.raises((ValueError, KeyError, FileNotFoundError, SystemExit)) as err:
        run_cli(
            [
                "fit",
                "--config",
                str(SYNTHETIC),
                "--data.source.root",
                str(root),
                *TINY,
                "--trainer.max_steps=1",
                *extra,
            ]
        )
    assert message in str(err.value) or err.type is SystemExit, str(err.value)


def test_option_groups_are_the_exported_dataclasses() -> None:
    model = small(pw=PWWaveConfig(period=10, tau=2.0), teaching=TeachingConfig(mode="seg"))
    assert model.options.pw.period == 10 and model.options.teaching.mode == "seg"
    callback = model.method_callbacks()[0]
    assert (callback.period, callback.tau, callback.mode) == (10, 2.0, "seg")  # type: ignore[attr-defined]


def test_class_teacher_cams_average_the_scales_and_flips() -> None:
    """RRM: the scales' CAMs averaged on the training grid, absent classes zeroed, upsampled, max-normalised."""
    from wsss_lightning.models.resize import resize

    for flip in (False, True):
        labels = ReliableLabelConfig(cam_scales=(1.0, 0.5), cam_flip=flip)
        assert labels.token_positions == "cell_centres"  # RRM's resizes are the default
        model = small(labels=labels).eval()
        images = torch.randn(2, 3, 32, 32)
        tags = batch()["tags"][:, 1:]
        with torch.no_grad():
            base = model.net.cams(images)
            passes = [base, resize(model.net.cams(resize(images, (16, 16))), (4, 4))]
            if flip:
                passes += [model.net.cams(images.flip(-1)).flip(-1)]
                passes += [resize(model.net.cams(resize(images, (16, 16)).flip(-1)).flip(-1), (4, 4))]
            mean = torch.stack(passes).mean(0) * tags[:, :, None, None]
            expected = asdt_labels.normalise_by_max(resize(mean, (32, 32)))
            torch.testing.assert_close(model.class_teacher_cams(images, base, tags), expected)


def test_class_teacher_cams_at_token_positions_average_the_resampled_scales_and_flips() -> None:
    """With ``encoder`` positions (token c at pixel 8 c) each scale is resampled to the crop, then averaged."""
    from wsss_lightning.models.resize import resize
    from wsss_lightning.models.token_grid import TokenGrid, tokens_to_pixels

    grid = TokenGrid(8.0, 0.0)
    for flip in (False, True):
        labels = ReliableLabelConfig(cam_scales=(1.0, 0.5), cam_flip=flip, token_positions="encoder")
        model = small(labels=labels).eval()
        assert model.net.token_grid == grid
        images = torch.randn(2, 3, 32, 32)
        tags = batch()["tags"][:, 1:]
        with torch.no_grad():
            half = resize(images, (16, 16))
            base = model.net.cams(images)
            passes = [
                tokens_to_pixels(base, (32, 32), (32, 32), grid),
                tokens_to_pixels(model.net.cams(half), (32, 32), (16, 16), grid),
            ]
            if flip:
                passes += [
                    tokens_to_pixels(model.net.cams(images.flip(-1)), (32, 32), (32, 32), grid).flip(-1)
                ]
                passes += [tokens_to_pixels(model.net.cams(half.flip(-1)), (32, 32), (16, 16), grid).flip(-1)]
            expected = asdt_labels.normalise_by_max(torch.stack(passes).mean(0) * tags[:, :, None, None])
            cams = model.class_teacher_cams(images, base, tags)
            torch.testing.assert_close(cams, expected)


def test_head_logits_follow_the_cams_token_placement() -> None:
    """The seg heads' logits land where the CAMs do: token c at pixel 8 c (``encoder``) or 8 c + 3.5 (RRM)."""
    import numpy as np

    from wsss_lightning.models.resize import resize
    from wsss_lightning.models.token_grid import TokenGrid, tokens_to_pixels

    grid = TokenGrid(8.0, 0.0)
    images = torch.randn(2, 3, 32, 40)
    for placement in ("cell_centres", "encoder"):
        model = small(labels=ReliableLabelConfig(token_positions=placement), evaluate="student").eval()
        with torch.no_grad():
            out = model.net(images)
            seg_teacher, student = model.head_logits(out, (32, 40))
            logits = model(images)
        tokens = out.student.double().numpy()
        if placement == "cell_centres":
            torch.testing.assert_close(student, resize(out.student, (32, 40)))
            torch.testing.assert_close(logits, out.student)  # the caller upsamples, as RRM
            continue

        # plain NumPy bilinear sampling at token coordinate (pixel / 8), clamped to the border tokens
        def axis(pixels: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            q = np.clip(np.arange(pixels) / 8.0, 0, n - 1)
            lo = np.floor(q).astype(int)
            hi = np.minimum(lo + 1, n - 1)
            return lo, hi, q - lo

        (r0, r1, wr), (c0, c1, wc) = axis(32, tokens.shape[2]), axis(40, tokens.shape[3])
        rows = tokens[:, :, r0] * (1 - wr)[:, None] + tokens[:, :, r1] * wr[:, None]
        expected = rows[..., c0] * (1 - wc) + rows[..., c1] * wc
        np.testing.assert_allclose(student.double().numpy(), expected, atol=1e-5)
        assert seg_teacher.shape == student.shape == (2, model.num_classes, 32, 40)
        torch.testing.assert_close(seg_teacher, tokens_to_pixels(out.seg_teacher, (32, 40), (32, 40), grid))
        torch.testing.assert_close(logits, student)  # forward already at the input's size


def test_encoder_positions_train_validate_and_predict(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``encoder`` positions a training step reaches every head, and multi-scale inference keeps the size."""
    model = small(labels=ReliableLabelConfig(cam_scales=(1.0, 0.5), token_positions="encoder"))
    monkeypatch.setattr(model, "log_dict", lambda values, **_: None)
    monkeypatch.setattr(model, "log_progress_loss", lambda *a, **k: None)
    model.active_teacher = "seg"
    model.training_step(batch(), 0).backward()  # type: ignore[no-untyped-call]
    assert model.net.student[2].weight.grad is not None and model.net.seg_teacher[2].weight.grad is not None
    model.eval()
    model.inference.test_scales = (1.0, 0.75)
    with torch.no_grad():
        logits = model.predict_logits(batch()["image"][:, :, :30, :26], test_time=True)
        out = model.predict_step(batch(), 0)
    assert logits.shape == (2, model.num_classes, 30, 26) and bool(torch.isfinite(logits).all())
    assert out["masks"][1].shape == (24, 32)


def test_pydensecrf_backend_gives_the_device_crfs_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """``labels.crf_backend: pydensecrf`` (the reference, pool of processes) labels as the device CRF does."""
    from wsss_lightning.inference.crf import CRFPostProcessor

    g = torch.Generator().manual_seed(3)
    rgb = torch.rand(2, 3, 1, 1, generator=g).expand(2, 3, 40, 48).clone() * 255
    rgb[:, :, 10:30, 12:36] = torch.tensor([200.0, 40.0, 40.0])[:, None, None]
    rgb = (rgb + torch.randn(2, 3, 40, 48, generator=g) * 3).clamp(0, 255).round()
    cams = torch.zeros(2, 4, 40, 48)
    cams[:, 0, 8:32, 10:38] = torch.rand(2, 24, 28, generator=g)
    cams = asdt_labels.normalise_by_max(cams)
    tags = torch.zeros(2, 4)
    tags[:, 0] = 1
    pool = asdt_labels.PoolCRF(CRFPostProcessor(num_workers=0))
    device = asdt_labels.class_teacher_labels(rgb, cams, tags)
    host = asdt_labels.class_teacher_labels(rgb, cams, tags, crf_fn=pool)
    assert (device == host).float().mean() >= 0.98
    p = torch.rand(2, 5, 40, 48, generator=g).softmax(1)
    sizes = torch.tensor([[40, 48], [30, 40]])
    a = asdt_labels.pseudo_masks(rgb, p, p, tags, sizes=sizes)
    b = asdt_labels.pseudo_masks(rgb, p, p, tags, sizes=sizes, crf_fn=pool)
    assert (a == b).float().mean() >= 0.98
    model = small(labels=ReliableLabelConfig(cam_scales=(1.0, 0.5), crf_backend="pydensecrf", crf_workers=0))
    assert isinstance(model.label_crf, asdt_labels.PoolCRF)
    monkeypatch.setattr(model, "log_dict", lambda *a, **k: None)
    monkeypatch.setattr(model, "log_progress_loss", lambda *a, **k: None)
    model.active_teacher = "seg"
    assert torch.isfinite(model.training_step(batch(), 0))
    with pytest.raises(ValueError, match=r"labels\.crf_backend"):
        ReliableLabelConfig(crf_backend="gpu")  # type: ignore[arg-type]
