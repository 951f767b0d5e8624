"""AFAModule and U2PLWeakModule through the CLI on synthetic VOC: every phase, bad configuration, the labels.

Exact resume and DDP are checked for every method by ``tests/methods/test_contract.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.methods import tiny
from wsss_lightning.cli import run_cli
from wsss_lightning.methods import AFAModule, U2PLWeakModule, WeakContrastiveConfig
from wsss_lightning.methods.afa import module as afa_module
from wsss_lightning.methods.afa.options import AFALabelConfig
from wsss_lightning.models.token_grid import TokenGrid
from wsss_lightning.pseudo_labels.cam import present_classes

REPO = Path(__file__).resolve().parents[3]
AFA = REPO / "configs" / "afa" / "voc.yaml"
U2PL_WEAK = REPO / "configs" / "u2pl" / "voc_weak.yaml"

TINY = [
    *tiny.CPU,
    "--model.init_args.inference.crf.enabled=false",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=4",
]
ENCODER = {"embed_dims": [8, 16, 16, 32], "depths": [1, 1, 1, 2], "num_heads": [1, 1, 2, 2]}


def args(config: Path, root: Path, extra: tuple[str, ...], steps: int = 4) -> list[str]:
    return [
        "--config", str(config), "--data.source.root", str(root), *extra, *TINY, f"--trainer.max_steps={steps}",
    ]  # fmt: skip


def test_fit_runs_every_phase_and_logs_cam_propagated_cam_pseudo_and_seg_miou(
    synthetic, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    calls: list[list[bool]] = []
    real = afa_module.par_pseudo_labels

    def spy(*a: Any, **k: Any) -> Any:
        calls.append([walk is not None for walk in k["propagate"]])
        return real(*a, **k)

    monkeypatch.setattr(afa_module, "par_pseudo_labels", spy)
    cli = run_cli(["fit", *args(AFA, synthetic("voc"), tiny.AFA)])
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 4
    for key in ("train/loss_cls", "train/loss_seg", "train/loss_aff", "train/pseudo_accuracy", "val/miou"):
        assert key in metrics, key
    for output in ("cam", "aff_cam", "pseudo"):
        assert 0.0 <= float(metrics[f"val/{output}/miou"]) <= 1.0, output
    # one PAR call per step: the sanity check's validation: refined labels; step 0: CAM only (no labels);
    # step 1: refined labels; steps 2, 3: refined (affinity targets) + propagated (segmentation target); the
    # validation at step 4
    assert calls == [[False], [False], [False, True], [False, True], [False]], calls
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert 0.0 <= results["test/miou"] <= 1.0


@pytest.mark.parametrize("balance", ["afa", "affinitynet"])
@pytest.mark.parametrize("method", ["afa", "u2pl_weak"])
def test_affinity_balance_reaches_the_affinity_loss(method, balance, synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokens: list[torch.Tensor] = []
    seen: list[Any] = []
    real_labels, real_loss = afa_module.affinity_labels, afa_module.affinity_loss

    def labels_spy(token_labels: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        tokens.append(token_labels)
        return real_labels(token_labels, *a, **k)

    def loss_spy(logits: torch.Tensor, pairs: torch.Tensor, background: Any = None) -> torch.Tensor:
        seen.append(background)
        return real_loss(logits, pairs, background=background)

    monkeypatch.setattr(afa_module, "affinity_labels", labels_spy)
    monkeypatch.setattr(afa_module, "affinity_loss", loss_spy)
    config, extra = (AFA, tiny.AFA) if method == "afa" else (U2PL_WEAK, tiny.U2PL_WEAK)
    run_cli(
        [
            "fit",
            *args(config, synthetic("voc"), extra),
            f"--model.init_args.labels.affinity_balance={balance}",
        ]
    )
    assert seen and len(seen) == len(tokens), (len(seen), len(tokens))
    for token_labels, background in zip(tokens, seen, strict=True):
        if balance == "afa":
            assert background is None
        else:  # the tokens whose refined label is the background class (0): not ignored (255), not objects
            torch.testing.assert_close(background, token_labels.flatten(1) == 0)
    if balance == "affinitynet":
        kinds = torch.cat([t.flatten() for t in tokens]).unique().tolist()
        assert 0 in kinds and len(kinds) > 1, kinds  # background and other tokens were both labelled


@pytest.mark.parametrize("targets", ["nearest", "token_positions"])
@pytest.mark.parametrize("method", ["afa", "u2pl_weak"])
def test_affinity_targets_choose_the_pixel_each_token_reads(
    method, targets, synthetic, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    placements: list[Any] = []
    read: list[torch.Tensor] = []
    paired: list[torch.Tensor] = []
    real_read, real_labels = afa_module.labels_at_tokens, afa_module.affinity_labels

    def read_spy(labels: torch.Tensor, grid: tuple[int, int], placement: Any = None) -> torch.Tensor:
        placements.append(placement)
        read.append(real_read(labels, grid, placement))
        return read[-1]

    def labels_spy(token_labels: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
        paired.append(token_labels)
        return real_labels(token_labels, *a, **k)

    monkeypatch.setattr(afa_module, "labels_at_tokens", read_spy)
    monkeypatch.setattr(afa_module, "affinity_labels", labels_spy)
    config, extra = (AFA, tiny.AFA) if method == "afa" else (U2PL_WEAK, tiny.U2PL_WEAK)
    cli = run_cli(
        [
            "fit",
            *args(config, synthetic("voc"), extra),
            f"--model.init_args.labels.affinity_targets={targets}",
        ]
    )
    assert read and len(read) == len(paired), (len(read), len(paired))
    # the tokens read are the ones the affinity targets are made of
    for tokens, pairs_of in zip(read, paired, strict=True):
        torch.testing.assert_close(tokens.long(), pairs_of)
    stride = cli.model.net.stride
    for placement in placements:
        # the default token placement (cell centres) is where the CAM and the walk put the tokens
        assert placement == (None if targets == "nearest" else TokenGrid.cell_centres(stride))


def test_u2pl_weak_adds_the_contrastive_term_and_fills_its_bank(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *args(U2PL_WEAK, synthetic("voc"), tiny.U2PL_WEAK)])
    metrics = cli.trainer.callback_metrics
    assert "train/loss_contrastive" in metrics
    model = cli.model
    assert isinstance(model, U2PLWeakModule)
    assert int(model.contrastive.memory_bank.count.sum()) > 0
    assert bool(model.contrastive.prototype_bank.initialized.any())


def test_contrastive_disabled_allocates_no_bank_and_adds_no_term(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        [
            "fit",
            *args(U2PL_WEAK, synthetic("voc"), tiny.U2PL_WEAK, steps=2),
            "--model.init_args.contrastive.enabled=false",
        ]
    )
    assert cli.model.contrastive is None
    assert "train/loss_contrastive" not in cli.trainer.callback_metrics


@pytest.mark.parametrize(
    ("config", "extra", "override", "field"),
    [
        (AFA, tiny.AFA, ["--model.init_args.encoder=mit_b9"], "mit_b9"),
        (AFA, tiny.AFA, ["--model.init_args.attention_blocks=3"], "attention_blocks"),
        (AFA, tiny.AFA, ["--model.init_args.attention_blocks=0"], "attention_blocks"),
        (AFA, tiny.AFA, ["--model.init_args.labels.low=0.7"], "labels.low"),
        (AFA, tiny.AFA, ["--model.init_args.labels.propagation_scale=2.0"], "labels.propagation_scale"),
        (AFA, tiny.AFA, ["--model.init_args.phases.propagation_start=0"], "phases.propagation_start"),
        (AFA, tiny.AFA, ["--model.init_args.encoder_weights=/no/such/mit_b1.pth"], "/no/such/mit_b1.pth"),
        (U2PL_WEAK, tiny.U2PL_WEAK, ["--model.init_args.contrastive.beta=1.5"], "contrastive.beta"),
        (U2PL_WEAK, tiny.U2PL_WEAK, ["--model.init_args.contrastive.beta=0"], "contrastive.beta"),
        (U2PL_WEAK, tiny.U2PL_WEAK, ["--model.init_args.rep_channels=0"], "rep_channels"),
        (AFA, tiny.AFA, ["--model.init_args.affinity_init=xavier"], "affinity_init"),
        (AFA, tiny.AFA, ["--model.init_args.labels.affinity_balance=psa"], "labels.affinity_balance"),
        (AFA, tiny.AFA, ["--model.init_args.labels.affinity_targets=centre"], "labels.affinity_targets"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_field(
    config, extra, override, field, synthetic, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError, SystemExit)) as err:
        run_cli(["fit", *args(config, synthetic("voc"), extra), *override])
    text = str(err.value) + str(err.value.__context__)
    assert field in text, text


def _tiny_model(cls: type[AFAModule] = AFAModule, **kwargs: Any) -> AFAModule:
    return cls(encoder="mit_b0", encoder_kwargs=ENCODER, embed_dim=16, **kwargs)


@pytest.mark.parametrize("placement", ["cell_centres", "encoder"])
def test_walk_comes_from_the_largest_scale_and_the_cams_of_the_present_classes(placement):
    torch.manual_seed(0)
    model = _tiny_model(labels=AFALabelConfig(token_positions=placement)).eval()
    images = torch.randn(2, 3, 64, 64)
    tags = torch.zeros(2, 20)
    tags[0, [3, 7]] = 1
    tags[1, 11] = 1
    classes = present_classes(tags)
    cams, walk, grid = model.cams_with_walk(images, classes)
    assert cams.shape == (2, 2, 64, 64)
    assert grid.size == (6, 6) and grid.input_size == (96, 96)  # 96-px inputs (scale 1.5) at 1/16
    # the released code's cell-centre resize (the default), or MiT's padded convolutions: token c at pixel 16 c
    assert grid.tokens == (None if placement == "cell_centres" else TokenGrid(16.0, 0.0))
    assert walk.shape == (2, 36, 36)
    assert float(cams[1, 1].abs().max()) == 0.0  # the padding channel of the one-class image
    # the walk's affinity is the network's on the 1.5-scale images
    _, affinity = model.net.cams_and_affinity(
        torch.nn.functional.interpolate(images, size=(96, 96), mode="bilinear")
    )
    expected = torch.sigmoid(affinity) ** 2 * model._radius_mask(grid.size, images.device)
    expected = expected / (expected.sum(1, keepdim=True) + 0.1)
    torch.testing.assert_close(walk, expected)


def test_parameter_groups_cover_every_parameter_once_with_norm_layers_apart():
    model = _tiny_model(
        U2PLWeakModule, rep_channels=8, contrastive=WeakContrastiveConfig(capacity=64, num_negatives=4)
    )
    groups = model.param_groups()
    ids = [id(p) for params, _ in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(model.net.parameters()))
    assert groups["backbone_norm"][1] == 0.0 and groups["head"][1] == 10.0
    assert groups["backbone_norm"][0] and all(p.ndim == 1 for p in groups["backbone_norm"][0])
    rep_ids = {id(p) for p in model.net.rep_head.parameters()}
    assert rep_ids <= {id(p) for p in groups["head"][0]}


def test_ground_truth_target_needs_masks(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyError, match="diagnostic_masks"):
        run_cli(
            ["fit", *args(AFA, synthetic("voc"), tiny.AFA, steps=2), "--model.init_args.labels.target=mask",
             "--model.init_args.phases.seg_start=0", "--data.init_args.view.init_args.diagnostic_masks=false"]
        )  # fmt: skip


def test_checkpoint_from_before_the_attention_option_keeps_the_scaled_attention():
    """A checkpoint without ``scaled_attention`` in its hyper-parameters was trained with ``q·kᵀ·scale``."""
    old = _tiny_model()
    assert not old.net.encoder.scaled_attention  # the released input is the default
    with pytest.warns(UserWarning, match="predates model.init_args.scaled_attention"):
        old.on_load_checkpoint({"hyper_parameters": {"num_classes": 21}})
    assert old.net.encoder.scaled_attention and old.hparams["scaled_attention"]
    new = _tiny_model()
    new.on_load_checkpoint({"hyper_parameters": {"num_classes": 21, "scaled_attention": False}})
    assert not new.net.encoder.scaled_attention
