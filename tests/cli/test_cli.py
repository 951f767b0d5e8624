"""End-to-end ``wsss fit / validate / test / predict`` on every synthetic layout with a tiny network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.methods import tiny
from wsss_lightning.cli import run_cli
from wsss_lightning.data.datasets.base import DataError
from wsss_lightning.runs import experiment_folder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LAYOUTS = {"voc": "voc", "coco": "coco", "cityscapes": "cityscapes", "gta5": "gta5"}

TINY = [
    "--model.init_args.encoder=resnet18",
    "--model.init_args.inference.test_scales=[0.75,1.0]",
    "--data.init_args.transform.crop_size=64",
    "--data.init_args.loader.batch_size=2",
    *tiny.CPU,
]


def tiny_args(config: Path, root: Path, steps: int = 2) -> list[str]:
    # street scenes use sliding-window evaluation: shrink the 769-pixel window to the tiny images
    window = ["--model.init_args.inference.window=48", "--model.init_args.inference.stride=32"]
    return [
        "--config", str(config), "--data.source.root", str(root), *TINY, *(window if "window:" in config.read_text() else []),
        f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=2",
    ]  # fmt: skip


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fit_validate_test_predict(layout, synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = synthetic(layout)
    config = CONFIGS / "supervised" / f"{layout}.yaml"
    cli = run_cli(["fit", *tiny_args(config, root)])
    assert cli.trainer.global_step == 2
    assert "val/miou" in cli.trainer.callback_metrics
    ckpt = next(Path("outputs").rglob("last.ckpt"))

    cli = run_cli(["validate", *tiny_args(config, root), f"--ckpt_path={ckpt}"])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/miou"]) <= 1.0

    # test and predict go through multi-scale inference and the dense CRF in its process pool
    crf = ["--model.init_args.inference.crf.enabled=true", "--model.init_args.inference.crf.workers=2"]
    cli = run_cli(
        ["test", *tiny_args(config, root), f"--ckpt_path={ckpt}", "--trainer.limit_test_batches=2", *crf]
    )
    assert "test/miou" in cli.trainer.callback_metrics
    assert cli.model.inference.crf.enabled  # not replaced by the checkpoint's hyper-parameters

    out = tmp_path / "predictions"
    run_cli([
        "predict", *tiny_args(config, root), f"--ckpt_path={ckpt}", "--trainer.limit_predict_batches=2", *crf,
        "--trainer.callbacks+=wsss_lightning.callbacks.PredictionWriter",
        f"--trainer.callbacks.output_dir={out}",
    ])  # fmt: skip
    written = sorted(out.rglob("*.png"))
    assert len(written) >= 2
    pred = np.asarray(Image.open(written[0]))
    # street scenes are written as Cityscapes label ids (0..33), for the benchmark server
    street = layout in ("cityscapes", "gta5")
    assert pred.ndim == 2 and pred.max() < (34 if street else cli.datamodule.num_classes)


def _stacks() -> list[tuple[str, ...]]:
    """Every configuration the README names: each base config alone, each U2PL split on its base with and
    without the SupOnly fragment, the 800-image SupOnly on every mask, Seminar's evaluation fragment on both
    stages, ASDT's ResNet-101 fragment, and the trainer / logger fragments stacked on a base."""
    fragments = ("trainer", "logger", "splits")
    bases = sorted(
        p.relative_to(CONFIGS).as_posix()
        for p in CONFIGS.rglob("*.yaml")
        if p.parent.name not in fragments
        and not p.stem.endswith(("suponly", "all_labeled"))
        and p.stem not in ("eval_center_crop", "r101")
    )
    stacks: list[tuple[str, ...]] = [(b,) for b in bases]
    for split in sorted((CONFIGS / "u2pl" / "splits").glob("*.yaml")):
        base = "u2pl/cityscapes.yaml" if split.stem.startswith("cityscapes") else "u2pl/voc.yaml"
        stacks.append((base, f"u2pl/splits/{split.name}"))
        stacks.append((base, f"u2pl/splits/{split.name}", "u2pl/suponly.yaml"))
    stacks += [
        (f"u2pl/{name}.yaml", "u2pl/suponly.yaml", f"u2pl/{name}_suponly.yaml")
        for name in ("synthetic_voc_1_8", "synthetic_voc800_1_8")
    ]
    stacks.append((*stacks[-1], "u2pl/synthetic_voc800_all_labeled.yaml"))  # its full-mask ceiling
    stacks += [("supervised/voc.yaml", f"{kind}/{f.name}") for kind in ("trainer", "logger")
               for f in sorted((CONFIGS / kind).glob("*.yaml"))]  # fmt: skip
    stacks += [("u2pl/voc.yaml", "u2pl/splits/voc_92.yaml", "trainer/ddp.yaml", "logger/wandb.yaml")]
    stacks += [
        (f"seminar/{stage}.yaml", "seminar/eval_center_crop.yaml")
        for stage in ("voc_ancillary", "voc_primary")
    ]
    stacks += [("asdt/voc.yaml", "asdt/r101.yaml")]
    return stacks


@pytest.mark.parametrize("stack", _stacks(), ids="+".join)
def test_print_config_for_every_shipped_config(stack, capsys):
    args = [arg for config in stack for arg in ("--config", str(CONFIGS / config))]
    with pytest.raises(SystemExit) as exc:
        run_cli(["fit", *args, "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    view = printed["data"]["init_args"]["view"]
    for config in stack:  # each fragment's values reach the resolved configuration
        if "/splits/" in config:
            lists = yaml.safe_load((CONFIGS / config).read_text())["data"]["init_args"]["view"]["init_args"]
            assert view["init_args"]["labeled_list"] == lists["labeled_list"]
        if config.endswith("eval_center_crop.yaml"):
            transform = printed["data"]["init_args"]["transform"]
            assert transform["eval_short_side"] == transform["eval_center_crop"] == 513
        if config.endswith("suponly.yaml"):
            assert view["init_args"]["labeled_only"] is True
            assert printed["model"]["init_args"]["contrastive"]["enabled"] is False


def _full_size_bases() -> list[str]:
    """The base configs of the real data sets (not the synthetic ones or the quickstart, not fragments)."""
    return [s[0] for s in _stacks() if len(s) == 1 and "synthetic" not in s[0] and s[0] != "quickstart.yaml"]


@pytest.mark.parametrize("config", _full_size_bases())
def test_every_full_size_config_states_the_global_batch(config):
    """The learning rate of a published config belongs to a global batch: every full-size config names it, so
    that ``fit`` can check devices x nodes x batch size x accumulation against it on any number of GPUs."""
    loaded = yaml.safe_load((CONFIGS / config).read_text())
    model = loaded["model"]["init_args"]
    loader = loaded["data"]["init_args"].get("loader", {})
    stated = model.get("global_batch_size", loader.get("global_batch_size"))
    assert isinstance(stated, int) and stated >= 1, f"{config}: no global_batch_size"


@pytest.mark.parametrize("primary", ["seminar/voc_primary.yaml", "seminar/synthetic_voc_primary.yaml"])
def test_a_primary_config_defaults_to_the_checkpoint_its_ancillary_config_writes(primary):
    """``wsss fit -c <ancillary>`` writes its first run to ``<experiment>/version_0``; the primary stage's default
    ``ancillary_checkpoint`` is that run's last checkpoint, so the two README commands chain without an override."""
    ancillary = primary.replace("_primary", "_ancillary")
    assert (CONFIGS / ancillary).is_file()
    default = yaml.safe_load((CONFIGS / primary).read_text())["model"]["init_args"]["ancillary_checkpoint"]
    written = Path(experiment_folder([f"configs/{ancillary}"])) / "version_0" / "checkpoints" / "last.ckpt"
    assert Path(default) == written


def test_data_root_override_reaches_the_datamodule(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    cli = run_cli(
        [
            "fit",
            *tiny_args(CONFIGS / "supervised" / "synthetic_voc.yaml", root)[:4],
            "--trainer.fast_dev_run=1",
            *TINY,
        ]
    )
    assert Path(cli.datamodule.root) == root
    # linked from the datamodule into the method
    assert cli.model.num_classes == cli.datamodule.num_classes == 21
    assert cli.model.class_names == list(cli.datamodule.class_names)


def test_normalisation_is_linked_from_the_datamodule(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    cli = run_cli([
        "fit", *tiny_args(CONFIGS / "supervised" / "synthetic_voc.yaml", root)[:4], "--trainer.fast_dev_run=1", *TINY,
        "--data.init_args.transform.mean=[0.5,0.5,0.5]", "--data.init_args.transform.std=[0.25,0.25,0.25]",
    ])  # fmt: skip
    assert cli.model.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert cli.model.image_std.flatten().tolist() == [0.25, 0.25, 0.25]


def test_checkpoint_hyperparameters_fill_in_but_never_override(synthetic, tmp_path, monkeypatch, caplog):
    """``--ckpt_path FILE`` takes the model options the run does not set from the checkpoint; whatever the
    config files or the command line set wins, and the differences are reported."""
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    config = CONFIGS / "supervised" / "voc.yaml"
    run_cli(["fit", *tiny_args(config, root), "--model.init_args.inference.flip_merge=max"])
    ckpt = next(Path("outputs").rglob("last.ckpt"))

    cli = run_cli(["validate", *tiny_args(config, root), f"--ckpt_path={ckpt}"])
    assert cli.model.inference.flip_merge == "max"  # from the checkpoint: the config does not set it

    with caplog.at_level("INFO"):
        cli = run_cli(
            [
                "validate",
                *tiny_args(config, root),
                f"--ckpt_path={ckpt}",
                "--model.init_args.inference.flip=false",
                "--model.init_args.inference.merge=max",
            ]
        )
    assert not cli.model.inference.flip and cli.model.inference.merge == "max"
    assert cli.model.inference.flip_merge == "max"
    assert "model.init_args.inference.flip: False (checkpoint: True)" in caplog.text
    assert "model.init_args.inference.merge: 'max' (checkpoint: 'sum')" in caplog.text


def test_fit_refuses_an_empty_val_split(synthetic, tmp_path, monkeypatch):
    """An empty split stops the fit at set-up, naming its list file (it used to skip validation silently)."""
    monkeypatch.chdir(tmp_path)
    root = synthetic("voc")
    empty = tmp_path / "empty_val.txt"
    empty.write_text("")
    args = [
        "fit",
        *tiny_args(CONFIGS / "supervised" / "synthetic_voc.yaml", root),
        f"--data.init_args.source.val_split={empty}",
    ]
    with pytest.raises(DataError, match=r"empty_val\.txt of voc split .* lists no samples"):
        run_cli(args)
