from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers import forbid_host_reads
from tests.pseudo_labels.test_cam import FakePAR, np_resize, par_case
from wsss_lightning.models.token_grid import TokenGrid
from wsss_lightning.pseudo_labels.affinity import (
    WalkGrid,
    labels_at_tokens,
    propagate_stack,
    propagated_cam_labels,
    radius_mask,
    random_walk,
    walk_matrix,
)
from wsss_lightning.pseudo_labels.cam import par_pseudo_labels, present_classes

# ----------------------------------------------------------------------------------------------------------
# NumPy references (per image, per pair)


def np_radius_mask(h: int, w: int, radius: int) -> np.ndarray:
    # AFA's window around each token: rows max(0, y - r) .. min(h, y + r + 1) - 1, the same for columns
    n = h * w
    out = np.zeros((n, n), dtype=bool)
    for i in range(n):
        y, x = divmod(i, w)
        for yy in range(max(0, y - radius), min(h, y + radius + 1)):
            for xx in range(max(0, x - radius), min(w, x + radius + 1)):
                out[i, yy * w + xx] = out[yy * w + xx, i] = True
    return out


def np_walk_matrix(aff: np.ndarray, mask: np.ndarray | None, power: float, eps: float, log_iter: int):
    b, n, _ = aff.shape
    out = np.zeros_like(aff)
    for k in range(b):
        p = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if mask is None or mask[i, j]:
                    p[i, j] = aff[k, i, j] ** power
        for j in range(n):
            total = sum(p[i, j] for i in range(n))
            for i in range(n):
                out[k, i, j] = p[i, j] / (total + eps)
        for _ in range(log_iter):
            out[k] = out[k] @ out[k]
    return out


def np_random_walk(probs: np.ndarray, walk: np.ndarray) -> np.ndarray:
    b, c, h, w = probs.shape
    flat = probs.reshape(b, c, h * w)
    out = np.zeros_like(flat)
    for k in range(b):
        for ch in range(c):
            for j in range(h * w):
                out[k, ch, j] = sum(flat[k, ch, i] * walk[k, i, j] for i in range(h * w))
    return out.reshape(b, c, h, w)


def np_softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_propagated_labels(cams, classes, walk, grid, background):
    """AFA's per-image procedure: present channels only, softmax at the grid, walk, upsample, argmax."""
    b, _, h, w = cams.shape
    out = np.zeros((b, h, w), dtype=np.int64)
    for i in range(b):
        keep = [j for j in range(classes.shape[1]) if classes[i, j] >= 0]
        ids = np.array([0] + [classes[i, j] + 1 for j in keep])
        small = np_resize(cams[i, keep], grid)
        stack = np.concatenate([np.full((1, *grid), background), small])
        probs = np_softmax(stack).reshape(len(ids), -1)
        walked = (probs @ walk[i]).reshape(len(ids), *grid)
        out[i] = ids[np_resize(walked, (h, w)).argmax(0)]
    return out


def random_walk_case(seed: int, b: int = 3, grid: tuple[int, int] = (4, 5)):
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    logits = torch.randn(b, n, n, generator=g, dtype=torch.float64) * 2
    return torch.sigmoid(logits), radius_mask(*grid, radius=2)


# ----------------------------------------------------------------------------------------------------------
# radius_mask, walk_matrix, random_walk


@pytest.mark.parametrize(("h", "w", "radius"), [(4, 5, 2), (3, 3, 1), (5, 4, 8), (1, 6, 3)])
def test_radius_mask_matches_numpy(h: int, w: int, radius: int) -> None:
    mask = radius_mask(h, w, radius)
    assert mask.dtype == torch.bool and mask.shape == (h * w, h * w)
    np.testing.assert_array_equal(mask.numpy(), np_radius_mask(h, w, radius))
    assert torch.equal(mask, mask.T) and mask.diagonal().all()
    with pytest.raises(ValueError, match="radius_mask: radius"):
        radius_mask(h, w, 0)
    with pytest.raises(ValueError, match="radius_mask: the grid"):
        radius_mask(0, w, 2)


def test_radius_mask_keeps_pairs_up_to_the_radius() -> None:
    mask = radius_mask(20, 20, 8)  # AFA: 320-pixel crops, radius 8
    centre = 10 * 20 + 10
    kept = mask[centre].view(20, 20).nonzero()
    assert kept[:, 0].min() == 2 and kept[:, 0].max() == 18  # |dy| <= 8
    assert kept[:, 1].min() == 2 and kept[:, 1].max() == 18
    assert mask[centre].sum() == 17 * 17


@pytest.mark.parametrize(
    ("power", "eps", "log_iterations", "masked"), [(2, 0.1, 0, True), (1, 1e-4, 2, False)]
)
def test_walk_matrix_matches_numpy(power: float, eps: float, log_iterations: int, masked: bool) -> None:
    aff, mask = random_walk_case(0)
    walk = walk_matrix(aff, mask if masked else None, power=power, eps=eps, log_iterations=log_iterations)
    ref = np_walk_matrix(aff.numpy(), mask.numpy() if masked else None, power, eps, log_iterations)
    assert walk.shape == aff.shape and walk.dtype == torch.float64
    np.testing.assert_allclose(walk.numpy(), ref, rtol=1e-10, atol=1e-12)
    if masked:
        assert (walk[:, ~mask] == 0).all()


def test_walk_matrix_is_detached_float32_and_takes_a_per_image_mask() -> None:
    aff, mask = random_walk_case(1)
    logits = torch.logit(aff).float().requires_grad_()
    walk = walk_matrix(torch.sigmoid(logits), mask)
    assert not walk.requires_grad and walk.dtype == torch.float32
    per_image = walk_matrix(torch.sigmoid(logits), mask.expand(3, -1, -1))
    torch.testing.assert_close(per_image, walk, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = walk_matrix(torch.sigmoid(logits), mask, log_iterations=1)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, walk_matrix(torch.sigmoid(logits), mask, log_iterations=1))
    with pytest.raises(ValueError, match="walk_matrix: walk must be"):
        walk_matrix(aff[0])
    with pytest.raises(ValueError, match="walk_matrix: mask must be"):
        walk_matrix(aff, mask[:-1, :-1])
    with pytest.raises(ValueError, match="walk_matrix: mask must be"):
        walk_matrix(aff, mask.float())


def test_random_walk_matches_numpy_and_images_are_independent() -> None:
    aff, mask = random_walk_case(2)
    walk = walk_matrix(aff, mask)
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(3, 4, 4, 5, generator=g, dtype=torch.float64).softmax(1)
    out = random_walk(probs, walk)
    assert out.shape == probs.shape
    np.testing.assert_allclose(out.numpy(), np_random_walk(probs.numpy(), walk.numpy()), atol=1e-12)
    for i in range(3):  # one image's walk does not depend on the others'
        torch.testing.assert_close(random_walk(probs[i : i + 1], walk[i : i + 1])[0], out[i])
    other = walk.clone()
    other[1:] = walk_matrix(torch.rand_like(aff[1:]))
    torch.testing.assert_close(random_walk(probs, other)[0], out[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="random_walk: probs"):
        random_walk(probs[0], walk)
    with pytest.raises(ValueError, match="random_walk: walk must be"):
        random_walk(probs, walk[:2])
    with pytest.raises(
        ValueError, match="random_walk: probs' grid 4x4 has 16 tokens but walk is over N = 20"
    ):
        random_walk(probs[..., :4], walk)


# ----------------------------------------------------------------------------------------------------------
# propagated_cam_labels


def cams_case(seed: int, size: tuple[int, int] = (16, 20)):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(3, 5, 4, 5, generator=g, dtype=torch.float64)
    cams = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    tags = torch.tensor([[1.0, 0, 1, 0, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    classes = present_classes(tags)  # K = 3, padded
    gathered = torch.gather(cams, 1, classes.clamp(min=0)[:, :, None, None].expand(-1, -1, *size))
    return gathered * (classes >= 0)[:, :, None, None], classes


def test_propagated_cam_labels_match_the_per_image_reference() -> None:
    cams, classes = cams_case(4)
    aff, mask = random_walk_case(5)
    walk = walk_matrix(aff, mask)
    labels = propagated_cam_labels(cams, classes, walk, (4, 5), background=0.35)
    ref = np_propagated_labels(cams.numpy(), classes.numpy(), walk.numpy(), (4, 5), 0.35)
    assert labels.dtype == torch.int64 and labels.shape == (3, 16, 20)
    np.testing.assert_array_equal(labels.numpy(), ref)
    assert (labels[1] == 0).all()  # no present class: background only
    assert set(np.unique(labels[0].numpy())) - {0} and set(np.unique(labels.numpy())) <= {0, 1, 2, 3, 5}
    # the walk matters: identity and learned affinities label differently
    plain = propagated_cam_labels(
        cams, classes, torch.eye(20, dtype=torch.float64).expand(3, -1, -1), (4, 5), 0.35
    )
    assert not torch.equal(plain, labels)
    for i in range(3):
        alone = propagated_cam_labels(cams[i : i + 1], classes[i : i + 1], walk[i : i + 1], (4, 5), 0.35)
        assert torch.equal(alone[0], labels[i])


def test_propagated_cam_labels_bad_shapes_name_the_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    cams, classes = cams_case(6)
    walk = walk_matrix(*random_walk_case(6))
    with pytest.raises(ValueError, match="propagated_cam_labels: cams"):
        propagated_cam_labels(cams[0], classes, walk, (4, 5), 0.35)
    with pytest.raises(ValueError, match="propagated_cam_labels: classes"):
        propagated_cam_labels(cams, classes[:, :2], walk, (4, 5), 0.35)
    with pytest.raises(ValueError, match="propagated_cam_labels: walk"):
        propagated_cam_labels(cams, classes, walk[:2], (4, 5), 0.35)
    with pytest.raises(ValueError, match="propagated_cam_labels: grid"):
        propagated_cam_labels(cams, classes, walk, (5, 5), 0.35)
    forbid_host_reads(monkeypatch)  # and nothing is read on the host
    propagated_cam_labels(cams, classes, walk, (4, 5), 0.35)


# ----------------------------------------------------------------------------------------------------------
# propagate_stack and par_pseudo_labels(propagate=...)


def test_propagate_stack_treats_neg_inf_channels_as_padding() -> None:
    g = torch.Generator().manual_seed(7)
    stack = torch.rand(3, 4, 12, 15, generator=g, dtype=torch.float64)
    stack[0, 3] = -math.inf
    stack[1, 2:] = -math.inf
    walk = walk_matrix(*random_walk_case(7))
    out = propagate_stack(walk, (4, 5))(stack)
    assert out.shape == stack.shape and out.dtype == stack.dtype and out.isfinite().all()
    assert (out[0, 3] == 0).all() and (out[1, 2:] == 0).all()
    # image 1 by hand: its two real channels only
    small = np_resize(stack[1, :2].numpy(), (4, 5))
    walked = (np_softmax(small).reshape(2, -1) @ walk[1].numpy()).reshape(2, 4, 5)
    np.testing.assert_allclose(out[1, :2].numpy(), np_resize(walked, (12, 15)), atol=1e-12)
    with pytest.raises(ValueError, match="propagate_stack: grid"):
        propagate_stack(walk, (5, 5))
    with pytest.raises(ValueError, match="propagate_stack: stack_logits"):
        propagate_stack(walk, (4, 5))(stack[:2])


@pytest.mark.parametrize(("size", "grid"), [((128, 128), (8, 8)), ((130, 97), (9, 7)), ((64, 48), (4, 3))])
def test_labels_at_tokens_read_the_pixel_of_each_token(size: tuple[int, int], grid: tuple[int, int]) -> None:
    labels = torch.randint(0, 21, (2, *size))
    labels[0, :3] = 255
    big_h, big_w = size
    h, w = grid
    # None: the released nearest resize, token c reads pixel floor(c * H / h)
    nearest = labels_at_tokens(labels, grid)
    torch.testing.assert_close(nearest, F.interpolate(labels[:, None].float(), size=grid)[:, 0].long())
    rows = [int(np.floor(c * big_h / h)) for c in range(h)]
    cols = [int(np.floor(c * big_w / w)) for c in range(w)]
    np.testing.assert_array_equal(nearest.numpy(), labels.numpy()[:, rows][:, :, cols])
    # a placement: the pixel nearest to where it puts the token (NumPy reference of its positions)
    for placement in (TokenGrid.cell_centres(16), TokenGrid(16, 0.0), TokenGrid(8, 3.5)):

        def nearest_pixel(tokens: int, pixels: int, p: TokenGrid = placement) -> list[int]:
            return [
                min(max(int(np.floor(p.origin + p.stride * c + 0.5)), 0), pixels - 1) for c in range(tokens)
            ]

        read = labels_at_tokens(labels, grid, placement)
        expected = labels.numpy()[:, nearest_pixel(h, big_h)][:, :, nearest_pixel(w, big_w)]
        np.testing.assert_array_equal(read.numpy(), expected)
        assert read.dtype == labels.dtype
    # the released placement of AFA's 16-pixel cells: the first pixel; cell centres: the 9th (16 c + 8)
    if size == (128, 128):
        np.testing.assert_array_equal(nearest.numpy(), labels.numpy()[:, ::16, ::16])
        centres = labels_at_tokens(labels, grid, TokenGrid.cell_centres(16))
        np.testing.assert_array_equal(centres.numpy(), labels.numpy()[:, 8::16, 8::16])


def test_labels_at_tokens_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="labels must be"):
        labels_at_tokens(torch.zeros(1, 1, 8, 8, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="grid must have"):
        labels_at_tokens(torch.zeros(1, 8, 8, dtype=torch.long), (0, 2))


def test_walk_grids_with_token_positions_sample_the_tokens_where_they_sit() -> None:
    g = torch.Generator().manual_seed(8)
    stack = torch.rand(2, 3, 64, 80, generator=g, dtype=torch.float64)
    stack[1, 2] = -math.inf
    walk = walk_matrix(*random_walk_case(7))[:2]
    # no positions: the cell-centre resize of the (h', w') grid
    torch.testing.assert_close(
        propagate_stack(walk, WalkGrid((4, 5)))(stack), propagate_stack(walk, (4, 5))(stack)
    )
    # tokens of a stride-16 padded-convolution network run on these 64 x 80 images: token c at pixel 16 c
    grid = WalkGrid((4, 5), (64, 80), TokenGrid(16.0))
    identity = torch.eye(20, dtype=torch.float64).expand(2, -1, -1)
    out = propagate_stack(identity, grid)(stack)
    torch.testing.assert_close(out[..., ::16, ::16], stack[..., ::16, ::16].softmax(1))
    walked = propagate_stack(walk, grid)(stack)
    small = stack[..., ::16, ::16].softmax(1)
    expected = (small.reshape(2, 3, 20) @ walk).reshape(2, 3, 4, 5)
    torch.testing.assert_close(walked[..., ::16, ::16], expected)
    # the same positions in the validation labels: on the token pixels they are the walked argmax
    cams, classes = cams_case(4)
    cams = F.interpolate(cams, size=(64, 80), mode="nearest")[:2]
    labels = propagated_cam_labels(cams, classes[:2], walk, grid, background=0.35)
    stacked = torch.cat([torch.full_like(cams[:, :1], 0.35), cams], 1)[..., ::16, ::16]
    stacked = stacked.masked_fill(
        torch.cat([classes[:2, :1] * 0 != 0, classes[:2] < 0], 1)[..., None, None], -math.inf
    )
    tokens = (stacked.softmax(1).reshape(2, -1, 20) @ walk).argmax(1).reshape(2, 4, 5)
    ids = torch.cat([classes.new_zeros((2, 1)), classes[:2].clamp(min=0) + 1], 1)
    assert torch.equal(labels[..., ::16, ::16], torch.gather(ids, 1, tokens.flatten(1)).view(2, 4, 5))
    with pytest.raises(ValueError, match="WalkGrid: token positions need the input_size"):
        WalkGrid((4, 5), None, TokenGrid(16.0))


def test_par_pseudo_labels_with_an_identity_walk_equal_the_softmax_path() -> None:
    images, cams, tags, high, box = par_case(12)
    grid = (16, 16)  # PAR's reduced size: the walk's grid needs no resize
    identity = torch.eye(256, dtype=torch.float64).expand(4, -1, -1)
    plain = par_pseudo_labels(FakePAR(), images, cams, tags, high, valid_box=box)
    walked = par_pseudo_labels(
        FakePAR(), images, cams, tags, high, valid_box=box, propagate=propagate_stack(identity, grid)
    )
    assert torch.equal(walked, plain)


def per_image_walked_reference(images, cams, tags, high, low, box, walk, grid):
    """Per image: present channels only, stack resized to the grid, softmax, walk, back, PAR, argmax."""
    b, _, h, w = cams.shape
    small = (h // 2, w // 2)
    out = torch.full((b, h, w), 255, dtype=torch.int64)
    for i in range(b):
        keys = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(tags[i] > 0)[:, 0] + 1])
        image = F.interpolate(images[i : i + 1], size=small, mode="bilinear", align_corners=False)
        cam = F.interpolate(cams[i : i + 1], size=small, mode="bilinear", align_corners=False)
        labels = []
        for bg in (float(high[i]), low):
            stack = torch.cat([torch.full_like(cam[:, :1], bg), cam], dim=1)[:, keys]
            probs = np_softmax(np_resize(stack[0].numpy(), grid)).reshape(len(keys), -1) @ walk[i].numpy()
            probs = torch.from_numpy(np_resize(probs.reshape(len(keys), *grid), small))[None]
            refined = F.interpolate(
                FakePAR()(image, probs), size=(h, w), mode="bilinear", align_corners=False
            )
            labels.append(keys[refined.argmax(dim=1)[0]])
        lab = labels[0].clone()
        lab[labels[0] == 0] = 255
        lab[(labels[0] == 0) & (labels[1] == 0)] = 0
        t, le, bo, r = box[i].tolist()
        out[i, t:bo, le:r] = lab[t:bo, le:r]
    return out


def test_par_pseudo_labels_with_a_walk_match_the_per_image_reference() -> None:
    images, cams, tags, high, box = par_case(13)
    g = torch.Generator().manual_seed(13)
    grid = (4, 4)  # 32-pixel crops at stride 8
    aff = torch.sigmoid(torch.randn(4, 16, 16, generator=g, dtype=torch.float64) * 3)
    walk = walk_matrix(aff, radius_mask(4, 4, 2))
    par = FakePAR()
    out = par_pseudo_labels(
        par, images, cams, tags, high, valid_box=box, propagate=propagate_stack(walk, grid)
    )
    assert par.channels == [2 * (1 + int((tags > 0).sum(1).max()))]  # still one PAR call
    ref = per_image_walked_reference(images, cams, tags, high, 0.25, box, walk, grid)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    assert not torch.equal(out, par_pseudo_labels(FakePAR(), images, cams, tags, high, valid_box=box))


def test_par_pseudo_labels_with_a_walk_per_cam_tensor_in_one_call() -> None:
    # AFA's refined and propagated labels of the same CAMs: one PAR call, each as if computed alone
    images, cams, tags, high, box = par_case(15)
    g = torch.Generator().manual_seed(15)
    walk = walk_matrix(torch.sigmoid(torch.randn(4, 16, 16, generator=g, dtype=torch.float64) * 3))
    par = FakePAR()
    refined, propagated = par_pseudo_labels(
        par, images, [cams, cams], tags, high, valid_box=box, propagate=[None, propagate_stack(walk, (4, 4))]
    )
    assert len(par.channels) == 1
    torch.testing.assert_close(refined, par_pseudo_labels(FakePAR(), images, cams, tags, high, valid_box=box))
    alone = par_pseudo_labels(
        FakePAR(), images, cams, tags, high, valid_box=box, propagate=propagate_stack(walk, (4, 4))
    )
    torch.testing.assert_close(propagated, alone)
    with pytest.raises(ValueError, match="propagate has 1 entries for 2 CAM tensors"):
        par_pseudo_labels(FakePAR(), images, [cams, cams], tags, high, propagate=[None])


def test_par_pseudo_labels_reject_a_propagate_of_the_wrong_shape() -> None:
    images, cams, tags, high, _ = par_case(14)

    def drop_a_channel(stack: Tensor) -> Tensor:
        return stack[:, 1:].softmax(1)

    with pytest.raises(ValueError, match="par_pseudo_labels: propagate must return"):
        par_pseudo_labels(FakePAR(), images, cams, tags, high, propagate=drop_a_channel)
