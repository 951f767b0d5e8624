"""The device dense CRF (batched mean-field over the permutohedral lattice) against pydensecrf2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import NoSyncMode, forbid_host_reads
from tests.losses.test_dense_crf import natural_like, smooth_probs
from wsss_lightning.inference.crf import CRFParams, dense_crf
from wsss_lightning.inference.device_crf import mean_field_crf, mean_field_labels
from wsss_lightning.losses.bilateral import PermutohedralLattice

#: DuPL's evaluation CRF (the default) and the deeplab-style one RRM / ASDT use for their labels
PARAMS = {
    "dupl": CRFParams(),
    "deeplab": CRFParams(
        gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=80, bilateral_srgb=13, bilateral_compat=10
    ),
}


def scene(b: int, h: int, w: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8-valued RGB images (B, 3, H, W) and noisy probabilities that follow their regions, (B, C, H, W)."""
    images, regions = natural_like(b, h, w, seed)
    g = torch.Generator().manual_seed(seed)
    evidence = 2.0 * torch.nn.functional.one_hot(regions % c, c).permute(0, 3, 1, 2)
    logits = smooth_probs(b, c, h, w, seed).log() + evidence + torch.randn(b, c, h, w, generator=g)
    return images.round(), logits.softmax(1)


def reference(images: torch.Tensor, probs: torch.Tensor, params: CRFParams) -> np.ndarray:
    """pydensecrf2's marginals, image by image, (B, C, H, W)."""
    rgb = images.permute(0, 2, 3, 1).to(torch.uint8).numpy()
    return np.stack([dense_crf(rgb[i], probs[i].numpy(), params) for i in range(len(rgb))])


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize("seed", [0, 1])
def test_labels_agree_with_pydensecrf(name: str, seed: int) -> None:
    """≥ 98 % of the pixels get pydensecrf2's label (measured: 100 %, marginals within 0.005)."""
    params = PARAMS[name]
    images, probs = scene(2, 72, 96, 6, seed)
    expected = reference(images, probs, params)
    marginals = mean_field_crf(images, probs, params)
    assert marginals.shape == probs.shape and marginals.dtype == torch.float32
    torch.testing.assert_close(marginals.sum(1), torch.ones(2, 72, 96))
    labels = marginals.argmax(1).numpy()
    assert (labels == expected.argmax(1)).mean() >= 0.98
    assert np.abs(marginals.numpy() - expected).max() < 0.05
    # the CRF did something: a sizeable share of the labels changed
    assert (labels != probs.argmax(1).numpy()).mean() > 0.2


def test_zero_iterations_is_the_unary_softmax() -> None:
    images, probs = scene(1, 20, 24, 4, 3)
    probs = probs.clamp_min(1e-3)
    out = mean_field_crf(images, probs, CRFParams(iterations=0))
    torch.testing.assert_close(out, probs / probs.sum(1, keepdim=True))


def test_padded_batch_equals_each_image_alone() -> None:
    """An image padded into a bigger batch (sizes given) is refined as on its own: padding sends no message."""
    images, probs = scene(2, 40, 50, 5, 4)
    small_img, small_probs = images[1:, :, :30, :36], probs[1:, :, :30, :36]
    batch_img, batch_probs = images.clone(), probs.clone()
    batch_img[1, :, 30:], batch_img[1, :, :, 36:] = 255.0, 0.0  # padding of any colour
    sizes = torch.tensor([[40, 50], [30, 36]])
    batched = mean_field_crf(batch_img, batch_probs, sizes=sizes)
    torch.testing.assert_close(batched[1:, :, :30, :36], mean_field_crf(small_img, small_probs))
    torch.testing.assert_close(batched[:1], mean_field_crf(images[:1], probs[:1]))
    assert mean_field_labels(batch_img, batch_probs, sizes=sizes).dtype == torch.int64


def test_sync_free_on_the_padded_lattice(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the accelerators' padded lattice the whole CRF reads nothing on the host (sizes included)."""
    images, probs = scene(2, 16, 20, 3, 5)
    sizes = torch.tensor([[16, 20], [12, 15]])
    expected = mean_field_crf(images, probs, sizes=sizes)
    monkeypatch.setattr(PermutohedralLattice, "padded_default", True)
    with monkeypatch.context() as patch, NoSyncMode():  # type: ignore[no-untyped-call]
        forbid_host_reads(patch)
        out = mean_field_crf(images, probs, sizes=sizes)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_bad_shapes_name_the_argument() -> None:
    images, probs = scene(1, 8, 8, 3, 6)
    with pytest.raises(ValueError, match="images must be"):
        mean_field_crf(images[:, :2], probs)
    with pytest.raises(ValueError, match="probs must be"):
        mean_field_crf(images, probs[..., :7])
    with pytest.raises(ValueError, match="sizes must be"):
        mean_field_crf(images, probs, sizes=torch.tensor([8, 8]))
