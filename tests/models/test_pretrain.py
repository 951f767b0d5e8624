"""The pretrained starting point: a generated classification task whose encoder loads into the methods."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from wsss_lightning.data.cli import main as wsss_data
from wsss_lightning.data.pretrain_task import PretrainConfig
from wsss_lightning.models.deeplabv3plus import DeepLabV3Plus
from wsss_lightning.models.mit import MiTEncoder
from wsss_lightning.models.pretrain import _augment, _normalise, pretrain_encoder, pretrained_path
from wsss_lightning.models.weights import load_weights_file

TINY = PretrainConfig(num_images=24, image_size=32, crop=24, steps=3, batch_size=4)


def test_weights_load_into_the_dilated_segmentation_encoder_and_are_reused(tmp_path) -> None:
    path = pretrain_encoder(TINY, tmp_path, verbose=False)
    assert path == pretrained_path(TINY, tmp_path) and path.is_file()
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["steps"] == 3 and 0.0 <= info["held_out_tag_f1"] <= 1.0
    # every encoder tensor is in the file: the stride-32 classifier's weights fit the stride-16 DeepLabV3+
    network = DeepLabV3Plus(21, encoder="resnet18", output_stride=16, multi_grid=(1, 2))
    assert load_weights_file(network.encoder, path) == []
    saved = torch.load(path, weights_only=True)
    torch.testing.assert_close(network.encoder.state_dict()["conv1.weight"], saved["conv1.weight"])
    # a second call with the same arguments reuses the file
    mtime = path.stat().st_mtime_ns
    assert pretrain_encoder(TINY, tmp_path, verbose=False) == path and path.stat().st_mtime_ns == mtime


def test_an_interrupted_save_leaves_no_weights_file(tmp_path, monkeypatch) -> None:
    def interrupted(state: object, file: object) -> None:
        with open(file, "wb") as f:  # type: ignore[call-overload]
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain_encoder(TINY, tmp_path, verbose=False)
    assert not pretrained_path(TINY, tmp_path).exists()  # the next call trains again instead of loading it
    assert not [p for p in tmp_path.rglob("*") if ".pth" in p.name]  # nor its staged copy
    monkeypatch.undo()
    assert pretrain_encoder(TINY, tmp_path, verbose=False).is_file()


def test_the_cli_writes_the_same_file(tmp_path, capsys) -> None:
    args = ["pretrain-encoder", "--out", str(tmp_path), "--num-images", "24", "--image-size", "32"]
    args += ["--crop", "24", "--steps", "3", "--batch-size", "4", "--threads", "1"]
    assert wsss_data(args) == 0
    assert pretrained_path(TINY, tmp_path).is_file()
    assert "pretrained resnet18" in capsys.readouterr().out


SMALL_MIT = '{"embed_dims": [8, 16, 16, 32], "depths": [1, 1, 1, 2], "num_heads": [1, 1, 2, 2]}'


def test_a_mit_loads_into_afa_s_encoder_with_the_last_stage_at_one_sixteenth(tmp_path) -> None:
    config = PretrainConfig(
        encoder="mit_b0", architecture=SMALL_MIT, num_images=24, image_size=32, crop=32, steps=2, batch_size=4
    )
    path = pretrain_encoder(config, tmp_path, verbose=False)
    assert path.name.startswith("mit_b0_arch") and path.is_file()
    saved = torch.load(path, weights_only=True)
    assert "patch_embed1.proj.weight" in saved and "block4.1.attn.kv.weight" in saved  # the release's names
    assert not any(key.startswith(("backbone.", "head.")) for key in saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a tensor missing from the file would warn
        encoder = MiTEncoder(
            "mit_b0", weights=path, strides=(4, 2, 2, 1), attention_blocks=2,
            model_kwargs=json.loads(SMALL_MIT),
        )  # fmt: skip
    torch.testing.assert_close(encoder.backbone.block4[1].attn.kv.weight, saved["block4.1.attn.kv.weight"])
    # another architecture is another file
    other = PretrainConfig(
        **{**config.__dict__, "architecture": SMALL_MIT.replace("[1, 1, 1, 2]", "[1, 1, 2, 2]")}
    )
    assert pretrained_path(other, tmp_path) != path


@pytest.mark.parametrize("architecture", ["[1, 2]", "{embed_dims: 3}"])
def test_a_malformed_architecture_names_the_field(architecture: str) -> None:
    with pytest.raises(ValueError, match="pretrain architecture"):
        PretrainConfig(encoder="mit_b0", architecture=architecture)


def test_crops_are_windows_of_the_images_and_flips_mirror_them() -> None:
    images = torch.randint(0, 256, (16, 3, 20, 20), dtype=torch.uint8)
    crops = _augment(images, 12, torch.Generator().manual_seed(0))
    assert crops.shape == (16, 3, 12, 12)
    for crop, image in zip(crops, _normalise(images), strict=True):
        windows = image.unfold(1, 12, 1).unfold(2, 12, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 12, 12)
        found = [(w - c).abs().amax() < 1e-6 for w in windows for c in (crop, crop.flip(2))]
        assert any(found)


@pytest.mark.parametrize(
    ("field", "value"), [("steps", 0), ("num_images", 0), ("crop", 200), ("lr", 0.0), ("batch_size", 0)]
)
def test_bad_arguments_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"pretrain {field}"):
        PretrainConfig(**{field: value})  # type: ignore[arg-type]
