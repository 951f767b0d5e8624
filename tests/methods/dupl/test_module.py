"""DuPLModule through the CLI on synthetic VOC: every phase, bad configuration.

Exact resume and DDP are checked for every method by ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import adam_steps
from tests.methods import tiny
from wsss_lightning.cli import run_cli

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "dupl" / "voc.yaml"

TINY = [
    *tiny.DUPL,
    *tiny.CPU,
    "--model.init_args.inference.crf.enabled=false",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=3",
]


def args(root: Path, steps: int = 6) -> list[str]:
    return ["--config", str(CONFIG), "--data.source.root", str(root), *TINY, f"--trainer.max_steps={steps}"]


def test_fit_runs_every_phase_and_logs_cam_pseudo_and_seg_miou(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *args(synthetic("voc"))])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 6
    for key in ("train/loss_cls", "train/loss_ptc", "train/loss_dis", "train/loss_seg", "train/loss_reg",
                "train/noise_fraction", "train/pseudo_accuracy1", "train/threshold_high", "val/miou",
                "val/best_subnet", "train/noise_precision", "train/noise_recall",
                "train/fg_label_error"):  # fmt: skip
        assert key in metrics, key
    for output in ("seg1", "seg2", "cam1", "cam2", "pseudo1", "pseudo2", "seg_kept1", "seg_kept2"):
        assert 0.0 <= float(metrics[f"val/{output}/miou"]) <= 1.0, output
    # the cosine descent ran: the last step's thresholds sit at the per-class end values (0.55 / hard 0.70)
    thresholds = cli.model.class_thresholds
    names = cli.model.class_names[1:]
    assert thresholds[names.index("person")] == pytest.approx(0.55)
    assert thresholds[names.index("aeroplane")] == pytest.approx(0.70)
    # test: the recorded better sub-net, multi-scale + flip
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert 0.0 <= results["test/miou"] <= 1.0


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (["--model.init_args.backbone=no_such_vit"], "backbone"),
        (["--model.init_args.threshold.start=1.5"], "threshold.start"),
        (["--model.init_args.threshold.low=0.8"], "threshold"),
        (["--model.init_args.threshold.hard_classes=[unicorn]"], "hard_classes"),
        (["--model.init_args.phases.noise_filter_start=0"], "noise_filter_start"),
        (["--model.init_args.strong_view.confidence=2"], "strong_view.confidence"),
        (["--model.init_args.global_batch_size=4"], "global_batch_size"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_field(override, field, synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, SystemExit)) as err:
        run_cli(["fit", *args(synthetic("voc")), *override])
    text = str(err.value) + str(err.value.__context__)
    assert field in text, text


def test_evaluation_uses_the_configured_or_best_subnet():
    from wsss_lightning.methods import DuPLModule

    kwargs = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 1, "img_size": 32}, "aux_layer": 0,
              "head_channels": 8}  # fmt: skip
    images = torch.randn(1, 3, 40, 56)  # not a multiple of the patch: padded, then cropped back
    for evaluate, index in (("1", 0), ("2", 1)):
        model = DuPLModule(evaluate=evaluate, **kwargs).eval()
        with torch.no_grad():
            out = model(images)
        assert out.shape == (1, 21, 40, 56)
        expected = model.students[index].segment(torch.nn.functional.pad(images, (0, 8, 0, 8)))
        expected = torch.nn.functional.interpolate(expected, size=(48, 64), mode="bilinear")[..., :40, :56]
        torch.testing.assert_close(out, expected)
    model = DuPLModule(evaluate="best", **kwargs).eval()
    model.best_subnet.fill_(1)
    assert model.eval_subnet() == 1


def _tiny_dupl(**overrides):
    from wsss_lightning.methods import DuPLModule

    kwargs = {"backbone": "vit_tiny_patch16_224", "backbone_kwargs": {"depth": 2, "patch_size": 8, "img_size": 64},
              "aux_layer": 0, "head_channels": 8, **overrides}  # fmt: skip
    return DuPLModule(**kwargs)


def test_cams_from_the_training_forward_and_of_present_classes_give_todays_labels():
    """The un-flipped scale-1.0 CAMs taken from the training forward's tokens equal a separate pass, and
    CAMs / labels of each image's present classes equal those of all classes (every step is per channel)."""
    from wsss_lightning.pseudo_labels.cam import (
        multiscale_cams,
        par_pseudo_labels,
        present_classes,
        threshold_labels,
    )

    torch.manual_seed(0)
    model = _tiny_dupl().train()
    images = torch.randn(3, 3, 64, 64)
    tags = torch.zeros(3, 20)
    tags[0, [2, 7]] = 1
    tags[1, 14] = 1
    tags[2, [0, 5, 19]] = 1
    classes = present_classes(tags)
    images01 = model.denormalize(images)
    high, box = torch.tensor([0.6, 0.7, 0.55]), torch.tensor([[0, 0, 64, 64], [0, 0, 56, 64], [8, 0, 64, 48]])
    for k in range(2):
        student = model.student(k)
        out = student(images)
        with torch.no_grad():
            reused = model._cams(k, images, classes, out)
            separate = model._cams(k, images, classes)
            full = multiscale_cams(student.cams, images, model.options.cam.scales, pad_to=model.patch_size)
        for a, b, f in zip(reused, separate, full, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # batch 2B vs B: float order only
            gathered = torch.gather(f, 1, classes.clamp(min=0)[:, :, None, None].expand(-1, -1, 64, 64))
            torch.testing.assert_close(b, gathered * (classes >= 0)[:, :, None, None], rtol=0, atol=1e-6)
        expected = par_pseudo_labels(model.par, images01, full[0], tags, high, 0.25, box, 2)
        assert torch.equal(model._pseudo_labels(images01, [reused[0]], classes, high, box)[0], expected)
        small_full = torch.nn.functional.interpolate(full[1], size=(8, 8), mode="bilinear")
        small = torch.nn.functional.interpolate(reused[1], size=(8, 8), mode="bilinear")
        expected = threshold_labels(small_full, tags, high, 0.25, box, 8 / 64)
        assert torch.equal(threshold_labels(small, None, high, 0.25, box, 8 / 64, classes=classes), expected)


def test_reusing_the_training_pass_is_refused_for_stochastic_backbones():
    kwargs = {"depth": 2, "patch_size": 8, "img_size": 64, "drop_path_rate": 0.1}
    with pytest.raises(ValueError, match=r"cam\.reuse_training_pass=false"):
        _tiny_dupl(backbone_kwargs=kwargs)
    from wsss_lightning.methods.dupl.options import CAMConfig

    model = _tiny_dupl(backbone_kwargs=kwargs, cam=CAMConfig(reuse_training_pass=False))
    assert model.student(0).stochastic


def test_mask_target_trains_both_segmentation_heads_on_the_ground_truth():
    """``seg_target="mask"``: the segmentation loss is each sub-net's loss against the batch's masks (no
    pseudo-labels are made), and a batch without masks fails naming the option."""
    from wsss_lightning.losses.segmentation import balanced_seg_ce

    torch.manual_seed(0)
    model = _tiny_dupl(seg_target="mask", noise_filter={"enabled": False}).train()
    images = torch.randn(2, 3, 64, 64)
    masks = torch.randint(0, 21, (2, 64, 64))
    masks[0, :4] = 255
    seg_logits = [torch.randn(2, 21, 64, 64) for _ in range(2)]

    def no_pseudo_labels(*_args, **_kwargs):
        raise AssertionError("pseudo-labels made for a mask target")

    model._pseudo_labels = no_pseudo_labels  # type: ignore[method-assign]
    logs: dict[str, torch.Tensor] = {}
    batch = {"image": images, "mask": masks}
    model._segmentation(model.denormalize(images), [], seg_logits, None, None, None, batch, logs)
    expected = sum(balanced_seg_ce(s, masks, 255) for s in seg_logits)
    torch.testing.assert_close(logs["train/loss_seg"], expected)
    assert not any(key.startswith("train/pseudo_accuracy") for key in logs)
    with pytest.raises(ValueError, match=r"seg_target = 'mask' with noise_filter.enabled"):
        _tiny_dupl(seg_target="mask")  # the filter would drop ground-truth pixels
    with pytest.raises(KeyError, match=r"seg_target = 'mask'.*diagnostic_masks"):
        model._segmentation(
            model.denormalize(images), [], seg_logits, None, None, None, {"image": images}, {}
        )


def test_the_optimizer_leaves_the_seg_heads_alone_until_the_segmentation_phase(
    synthetic, tmp_path, monkeypatch
):
    """Segmentation from step 3 (t > seg_start = 2) of 5: AdamW has counted five steps of the backbone and two of
    each seg head, so the heads' first update is a fresh AdamW's, as the official code's (no gradient before)."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        ["fit", *args(synthetic("voc"), steps=5), "--model.init_args.phases.seg_start=2",
         "--model.init_args.phases.noise_filter_start=4", "--trainer.limit_val_batches=0"]
    )  # fmt: skip
    optimizer = cli.trainer.optimizers[0]
    for student in cli.model.students:
        assert adam_steps(optimizer, student.seg_head) == {2}
        assert adam_steps(optimizer, student.backbone) == {5}
