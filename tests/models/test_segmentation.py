import pytest
import torch

from wsss_lightning.models import build_segmentation_network, load_weights_file


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet"])
def test_forward_shape(arch):
    net = build_segmentation_network(arch, "resnet18", num_classes=5)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5, 64, 64)


def test_timm_encoder_by_name():
    net = build_segmentation_network("fpn", "tu-resnet10t", num_classes=3)
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(KeyError, match="deeplabv3plus"):
        build_segmentation_network("segnet", "resnet18", 3)


def test_unknown_encoder_is_named():
    with pytest.raises(ValueError, match="not_an_encoder"):
        build_segmentation_network("deeplabv3plus", "not_an_encoder", 3)


def test_local_weights_file_round_trip(tmp_path):
    src = build_segmentation_network("deeplabv3plus", "resnet18", 3)
    path = tmp_path / "encoder.pth"
    # wrapper prefixes as found in real checkpoints are stripped
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.encoder.state_dict().items()}}, path)
    dst = build_segmentation_network("deeplabv3plus", "resnet18", 3, encoder_weights=str(path))
    for (name, a), b in zip(src.encoder.state_dict().items(), dst.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_weights_file_of_other_architecture_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    net = build_segmentation_network("deeplabv3plus", "resnet18", 3)
    with pytest.raises(ValueError, match=r"only 0 of"):
        load_weights_file(net.encoder, path)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_weights_file(net.encoder, tmp_path / "missing.pth")


def test_any_input_size_is_padded_and_cropped_back():
    net = build_segmentation_network("deeplabv3plus", "resnet18", num_classes=4, output_stride=8).eval()
    assert net(torch.randn(1, 3, 77, 45)).shape == (1, 4, 77, 45)


def test_deeplabv2_sums_four_atrous_branches_at_stride_8() -> None:
    """DeepLab-v2 (the second stage of ASDT / RRM): ASPP-L, rates 6/12/18/24 summed, logits at the input size."""
    net = build_segmentation_network("deeplabv2", "resnet18", 5, output_stride=8)
    inner = net.net
    assert [b.dilation for b in inner.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x = torch.randn(2, 3, 64, 48)
    assert net(x).shape == (2, 5, 64, 48)
    features = inner.encoder(x)[-1]
    assert features.shape[-2:] == (8, 6)  # output stride 8
    expected = sum(branch(features) for branch in inner.branches)
    torch.testing.assert_close(
        inner(x),
        torch.nn.functional.interpolate(expected, size=(64, 48), mode="bilinear", align_corners=False),
    )
