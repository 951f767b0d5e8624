"""``benchmarks/afa_walk_oracle.py``: labels at the walk's tokens and the affinities it walks with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import load_benchmark
from wsss_lightning.methods import AFAModule
from wsss_lightning.methods.afa.options import AFALabelConfig
from wsss_lightning.metrics import SegmentationIoU
from wsss_lightning.models.token_grid import TokenGrid
from wsss_lightning.pseudo_labels.affinity import WalkGrid, propagated_cam_labels, radius_mask, walk_matrix
from wsss_lightning.pseudo_labels.cam import present_classes

ENCODER = {"embed_dims": [8, 16, 16, 32], "depths": [1, 1, 1, 2], "num_heads": [1, 1, 2, 2]}


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(B, C + 1, H, W)`` with the ignored pixels (255) in the last channel."""
    ids = np.where(labels == 255, num_classes, labels)
    return (ids[:, None] == np.arange(num_classes + 1)[None, :, None, None]).astype(np.float64)


@pytest.fixture
def labels() -> np.ndarray:
    labels = np.random.default_rng(0).integers(0, 3, (2, 16, 16))
    labels[0, :3, :3] = 255
    return labels


def test_token_classes_at_cell_centres_average_the_two_middle_pixels_of_each_cell(labels):
    oracle = load_benchmark("afa_walk_oracle")
    # the walk's input is 1.5x the label map (its scale); cell centres do not depend on it
    got = oracle.token_classes(torch.from_numpy(labels), WalkGrid((4, 4), (24, 24)), 3, 255)
    # NumPy: a 16 -> 4 bilinear resize with align_corners=False samples pixel 4k + 1.5
    centre = [4 * k + o for k in range(4) for o in (1, 2)]
    expected = _one_hot(labels, 3)[:, :, centre][:, :, :, centre].reshape(2, 4, 4, 2, 4, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(got.numpy(), expected.reshape(2, 4, 16), atol=1e-6)
    assert float(got[0, 3, 0]) == 1.0  # token (0, 0) samples only ignored pixels


def test_token_classes_at_encoder_positions_read_the_pixel_under_each_token(labels):
    oracle = load_benchmark("afa_walk_oracle")
    # stride 4 on the label map's size: token c at pixel 4c
    grid = WalkGrid((4, 4), (16, 16), TokenGrid(4.0, 0.0))
    got = oracle.token_classes(torch.from_numpy(labels), grid, 3, 255)
    expected = _one_hot(labels, 3)[:, :, ::4, ::4]
    np.testing.assert_allclose(got.numpy(), expected.reshape(2, 4, 16), atol=1e-6)


def test_affinities_walk_as_the_validation_and_score_an_untrained_model():
    oracle = load_benchmark("afa_walk_oracle")
    torch.manual_seed(0)
    labels = AFALabelConfig(radius=2)
    model = AFAModule(encoder="mit_b0", encoder_kwargs=ENCODER, embed_dim=16, labels=labels).eval()
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, :32] = 5  # the top half one class, the bottom half background
    rgb = torch.rand(2, 3, 64, 64)
    images = (rgb - model.image_mean) / model.image_std
    classes = present_classes(torch.nn.functional.one_hot(torch.tensor([4, 4]), 20).float())
    cams, walk, grid = model.cams_with_walk(images, classes)
    pairs = oracle.affinities(model, images, masks, cams, classes, grid)
    assert set(pairs) == set(oracle.AFFINITIES)
    # the learned affinity walks exactly as the validation's
    window = radius_mask(*grid.size, 2)
    torch.testing.assert_close(walk_matrix(pairs["learned"], mask=window, power=labels.walk_power), walk)
    n = grid.size[0] * grid.size[1]
    for values in pairs.values():
        assert values.shape == (2, n, n) and 0 <= float(values.min()) and float(values.max()) <= 1 + 1e-6
    truth = pairs["ground truth"][0].view(*grid.size, *grid.size)
    assert float(truth[0, 0, 0, 1]) == pytest.approx(1.0)  # two tokens inside the top half
    assert float(truth[0, 0, -1, 0]) == pytest.approx(0.0)  # the top row against the bottom row
    assert set(pairs["head targets, ignored 0.5"].unique().tolist()) <= {0.0, 0.5, 1.0}
    ignored = pairs["head targets, ignored 0.5"] == 0.5
    torch.testing.assert_close(
        pairs["head targets, ignored 0"], pairs["head targets, ignored 0.5"] * ~ignored
    )
    assert bool((pairs["none"] == 1).all())
    scores, learned = oracle.evaluate(model, rgb, masks)
    assert set(scores) == {"raw CAM", *oracle.AFFINITIES}
    assert set(learned) == {*oracle.PAIRS, "background share"}
    assert all(0 <= v <= 1 for v in (*scores.values(), *learned.values()))
    # same-class pairs are the background-background and the object pairs together, weighted by their counts
    share = learned["background share"]
    assert 0 < share < 1
    mixed = share * learned["background"] + (1 - share) * learned["object"]
    assert learned["same"] == pytest.approx(mixed, rel=1e-5) and learned["background"] != learned["object"]


def test_afa_validate_walks_the_plain_forwards_affinity_with_background_035_and_restores_the_options():
    oracle = load_benchmark("afa_walk_oracle")
    torch.manual_seed(0)
    model = AFAModule(
        encoder="mit_b0", encoder_kwargs=ENCODER, embed_dim=16, labels=AFALabelConfig(radius=2)
    ).eval()
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, :32] = 5
    rgb = torch.rand(2, 3, 64, 64)
    before = model.options.labels
    got = oracle.afa_validate_score(model, rgb, masks)
    assert model.options.labels is before
    # the same by hand: a model whose walk is the scale-1.0 affinity, background 0.35
    by_hand = AFAModule(
        encoder="mit_b0",
        encoder_kwargs=ENCODER,
        embed_dim=16,
        labels=AFALabelConfig(radius=2, propagation_scale=1.0),
    ).eval()
    by_hand.load_state_dict(model.state_dict())
    images = (rgb - model.image_mean) / model.image_std
    classes = present_classes(torch.nn.functional.one_hot(torch.tensor([4, 4]), 20).float())
    cams, walk, grid = by_hand.cams_with_walk(images, classes)
    assert grid.size == (4, 4)  # the 64-px input's own tokens, not the 1.5-scale ones
    metric = SegmentationIoU(model.num_classes, model.ignore_index)
    metric.update(propagated_cam_labels(cams, classes, walk, grid, 0.35), masks)
    assert got == pytest.approx(float(metric.compute()[0]))
