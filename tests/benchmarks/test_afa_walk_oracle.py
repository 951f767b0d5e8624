"""``benchmarks/afa_walk_oracle.py``: the ground truth at the walk's tokens and the affinities it compares."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers import load_benchmark
from wsss_lightning.methods import AFAModule
from wsss_lightning.pseudo_labels.affinity import WalkGrid
from wsss_lightning.pseudo_labels.cam import present_classes

ENCODER = {"embed_dims": [8, 16, 16, 32], "depths": [1, 1, 1, 2], "num_heads": [1, 1, 2, 2]}


def test_token_classes_sample_the_one_hot_mask_at_the_cell_centres_without_ignored_pixels():
    oracle = load_benchmark("afa_walk_oracle")
    labels = np.random.default_rng(0).integers(0, 3, (2, 16, 16))
    labels[0, :3, :3] = 255
    got = oracle.token_classes(torch.from_numpy(labels), WalkGrid((4, 4), (16, 16)), 3, 255)
    # NumPy: a 16 -> 4 bilinear resize with align_corners=False samples pixel 4k + 1.5, the mean of pixels
    # 4k + 1 and 4k + 2 on each axis
    onehot = (labels[:, None] == np.arange(3)[None, :, None, None]).astype(np.float64)
    centre = [4 * k + o for k in range(4) for o in (1, 2)]
    picked = onehot[:, :, centre][:, :, :, centre].reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))
    expected = picked / np.maximum(picked.sum(1, keepdims=True), 1e-6)
    np.testing.assert_allclose(got.numpy(), expected.reshape(2, 3, 16), atol=1e-6)
    assert got[0, :, 0].sum() == 0  # token (0, 0) samples only ignored pixels


def test_affinities_and_scores_of_an_untrained_model():
    oracle = load_benchmark("afa_walk_oracle")
    torch.manual_seed(0)
    model = AFAModule(encoder="mit_b0", encoder_kwargs=ENCODER, embed_dim=16).eval()
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[:, :32] = 5  # the top half one class, the bottom half background
    rgb = torch.rand(2, 3, 64, 64)
    images = (rgb - model.image_mean) / model.image_std
    classes = present_classes(torch.nn.functional.one_hot(torch.tensor([4, 4]), 20).float())
    cams, _, grid = model.cams_with_walk(images, classes, with_walk=False)
    pairs = oracle.affinities(model, images, masks, cams, classes, grid)
    assert set(pairs) == set(oracle.AFFINITIES)
    n = grid.size[0] * grid.size[1]
    for values in pairs.values():
        assert values.shape == (2, n, n) and 0 <= float(values.min()) and float(values.max()) <= 1 + 1e-6
    truth = pairs["ground truth"][0].view(*grid.size, *grid.size)
    assert float(truth[0, 0, 0, 1]) == 1.0  # two tokens inside the top half
    assert float(truth[0, 0, -1, 0]) == 0.0  # the top row against the bottom row
    assert set(pairs["head targets"].unique().tolist()) <= {0.0, 0.5, 1.0}
    assert bool((pairs["none"] == 1).all())
    scores, (same, other) = oracle.evaluate(model, rgb, masks)
    assert set(scores) == {"raw CAM", *oracle.AFFINITIES}
    assert all(0 <= v <= 1 for v in (*scores.values(), same, other))
