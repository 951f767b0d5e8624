"""The base class's handling of arguments: option groups, saved hyper-parameters, checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from wsss_lightning.methods import (
    ContrastiveConfig,
    CRFConfig,
    InferenceConfig,
    SupervisedModule,
    U2PLModule,
    UnsupervisedConfig,
)


def _save(model: L.LightningModule, path) -> None:
    """A checkpoint as Lightning writes it: weights and hyper-parameters."""
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
         "pytorch-lightning_version": L.__version__},
        path,
    )  # fmt: skip


def test_option_groups_left_none_become_their_defaults() -> None:
    model = SupervisedModule(encoder="resnet18", num_classes=3)
    assert isinstance(model.options.inference, InferenceConfig) and model.inference is model.options.inference
    assert model.options.optim.lr == 0.01


def test_a_checkpoint_of_a_python_built_module_loads_weights_only_and_rebuilds_it(tmp_path) -> None:
    model = U2PLModule(
        encoder="resnet18", multi_grid=None, num_classes=5,
        unsupervised=UnsupervisedConfig(drop_percent=10.0), contrastive=ContrastiveConfig(enabled=False),
        inference=InferenceConfig(test_scales=(0.5, 1.0), crf=CRFConfig(enabled=True, workers=0)),
    )  # fmt: skip
    path = tmp_path / "model.ckpt"
    _save(model, path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["unsupervised"]["drop_percent"] == 10.0
    loaded = U2PLModule.load_from_checkpoint(path)
    assert loaded.options.unsupervised == UnsupervisedConfig(drop_percent=10.0)
    assert loaded.inference.crf == CRFConfig(enabled=True, workers=0)  # nested groups rebuilt too
    assert loaded.contrastive is None and loaded.num_classes == 5
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


def test_option_groups_given_as_dicts_are_validated_like_the_dataclasses() -> None:
    model = SupervisedModule(encoder="resnet18", num_classes=3, optim={"name": "adamw", "lr": 1e-3})  # type: ignore[arg-type]
    assert model.optim.name == "adamw"
    with pytest.raises(ValueError, match=r"optim\.lr"):
        SupervisedModule(encoder="resnet18", num_classes=3, optim={"lr": -1.0})  # type: ignore[arg-type]


def test_test_time_crf_backends_agree_on_a_padded_batch() -> None:
    """``inference.crf.backend: device`` refines like pydensecrf2, per image, cropped to each image's size."""
    torch.manual_seed(0)
    model = SupervisedModule(encoder="resnet18", num_classes=4).eval()
    images = torch.randn(2, 3, 64, 80)
    images[1, :, 48:], images[1, :, :, 60:] = 0.0, 0.0
    sizes = torch.tensor([[64, 80], [48, 60]])
    masks = {}
    for backend in ("pydensecrf", "device"):
        model.inference.crf = CRFConfig(enabled=True, backend=backend, workers=0)  # type: ignore[arg-type]
        with torch.no_grad():
            masks[backend] = model.predict_masks(images, sizes)
    for reference, device in zip(masks["pydensecrf"], masks["device"], strict=True):
        assert device.shape == reference.shape and device.dtype == torch.long
        assert (device == reference).float().mean() >= 0.98
    with pytest.raises(ValueError, match=r"inference\.crf\.backend"):
        CRFConfig(backend="gpu")  # type: ignore[arg-type]
