from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.helpers import NoSyncMode, forbid_host_reads
from wsss_lightning.pseudo_labels.cam import (
    affinity_labels,
    cam_labels_eval,
    image_thresholds,
    multiscale_cams,
    normalize_cams,
    par_pseudo_labels,
    present_classes,
    threshold_labels,
)

HAS_PAR = importlib.util.find_spec("wsss_lightning.models.par") is not None


# ----------------------------------------------------------------------------------------------------------
# NumPy references


def np_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., H, W) with half-pixel centres (align_corners=False, no antialias)."""

    def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, ly = axis_weights(x.shape[-2], size[0])
    c0, c1, lx = axis_weights(x.shape[-1], size[1])
    rows = x[..., r0, :] * (1 - ly)[:, None] + x[..., r1, :] * ly[:, None]
    return rows[..., c0] * (1 - lx) + rows[..., c1] * lx


def np_normalize(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            m = x[b, c] - x[b, c].min()
            out[b, c] = m / (m.max() + 1e-5)
    return out


def np_threshold_labels(cams, tags, high, low, box=None):
    b, _, h, w = cams.shape
    out = np.full((b, h, w), 255, dtype=np.int64)
    for i in range(b):
        valid = cams[i] * tags[i][:, None, None]
        v, c = valid.max(0), valid.argmax(0) + 1
        lab = c.copy()
        lab[v <= high[i]] = 255
        lab[v <= low] = 0
        if box is None:
            out[i] = lab
        else:
            t, le, bo, r = box[i]
            out[i, t:bo, le:r] = lab[t:bo, le:r]  # slicing clamps like the reference code
    return out


# ----------------------------------------------------------------------------------------------------------
# normalize_cams


def test_normalize_cams_matches_numpy_and_range() -> None:
    g = torch.Generator().manual_seed(0)
    cams = torch.randn(3, 4, 16, 16, generator=g, dtype=torch.float64) * 5 + 2
    cams[1, 2] = 3.0  # a constant map becomes all zeros, not NaN
    out = normalize_cams(cams)
    np.testing.assert_allclose(out.numpy(), np_normalize(cams.numpy()), rtol=0, atol=1e-12)
    assert out.min() >= 0 and out.max() < 1
    assert (out[1, 2] == 0).all()
    assert torch.allclose(
        out.amax(dim=(-2, -1))[0], torch.full((4,), 1 - 1e-5, dtype=torch.float64), atol=1e-6
    )
    with pytest.raises(ValueError, match="cams"):
        normalize_cams(cams[0])


# ----------------------------------------------------------------------------------------------------------
# multiscale_cams


class FakeCamNet:
    """Raw CAMs from a fixed 1x1 conv + a position ramp (so the flip matters), pooled to stride 2."""

    def __init__(self, num_classes: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(2, num_classes, 3))
        self.ramp = rng.normal(size=(2, num_classes))
        self.calls: list[tuple[int, ...]] = []

    def maps_np(self, x: np.ndarray) -> list[np.ndarray]:
        n, _, h, w = x.shape
        out = []
        for k in range(2):
            m = np.einsum("kc,nchw->nkhw", self.w[k], x)
            m = m + self.ramp[k][None, :, None, None] * (np.arange(w) / w)[None, None, None, :]
            out.append(m.reshape(n, -1, h // 2, 2, w // 2, 2).mean(axis=(3, 5)))
        return out

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls.append(tuple(x.shape))
        cam, aux = self.maps_np(x.numpy())
        return torch.from_numpy(cam), torch.from_numpy(aux)


def np_multiscale(net: FakeCamNet, images: np.ndarray, scales, pad_to: int = 1):
    _, _, h, w = images.shape
    totals: list[np.ndarray] = [np.zeros((images.shape[0], net.w.shape[1], h, w))] * 2
    for s in scales:
        hs, ws = int(s * h), int(s * w)
        totals_s = []
        for flip in (False, True):
            x = np_resize(images, (hs, ws))
            if flip:
                x = x[..., ::-1]
            hp, wp = -(-hs // pad_to) * pad_to, -(-ws // pad_to) * pad_to
            x = np.pad(x, ((0, 0), (0, 0), (0, hp - hs), (0, wp - ws)))
            maps = []
            for m in net.maps_np(np.ascontiguousarray(x)):
                if (hp, wp) != (hs, ws):
                    m = np_resize(m, (hp, wp))[..., :hs, :ws]
                m = np_resize(m, (h, w))
                maps.append(m[..., ::-1] if flip else m)
            totals_s.append(maps)
        for k in range(2):
            totals[k] = totals[k] + np.maximum(np.maximum(totals_s[0][k], totals_s[1][k]), 0)
    return np_normalize(totals[0]), np_normalize(totals[1])


@pytest.mark.parametrize(("size", "pad_to"), [(16, 1), (18, 4)])
def test_multiscale_cams_matches_hand_loop(size: int, pad_to: int) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, size, size, generator=g, dtype=torch.float64)
    net = FakeCamNet()
    cams, aux = multiscale_cams(net, images, scales=(1.0, 0.5, 1.5), pad_to=pad_to)
    ref_cams, ref_aux = np_multiscale(net, images.numpy(), (1.0, 0.5, 1.5), pad_to)
    assert cams.shape == aux.shape == (3, 4, size, size)
    np.testing.assert_allclose(cams.numpy(), ref_cams, atol=1e-9)
    np.testing.assert_allclose(aux.numpy(), ref_aux, atol=1e-9)
    # one call per scale on the batch stacked with its flip; padded to the multiple when asked
    expected = [
        (6, 3, -(-int(s * size) // pad_to) * pad_to, -(-int(s * size) // pad_to) * pad_to)
        for s in (1, 0.5, 1.5)
    ]
    assert net.calls == expected
    assert not torch.equal(cams, aux)


def test_multiscale_cams_flip_changes_the_result_and_padding_is_a_noop_on_multiples() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    net = FakeCamNet(seed=3)
    plain = multiscale_cams(net, images, scales=(1.0,))
    padded = multiscale_cams(net, images, scales=(1.0,), pad_to=8)
    assert torch.equal(plain[0], padded[0]) and torch.equal(plain[1], padded[1])
    # without the flip branch the result differs (the ramp is not flip-symmetric)
    cam, _ = net(images)
    no_flip = normalize_cams(
        torch.relu(F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False))
    )
    assert not torch.allclose(no_flip, plain[0])
    with pytest.raises(ValueError, match="scales"):
        multiscale_cams(net, images, scales=())
    with pytest.raises(ValueError, match="cam_fn"):
        multiscale_cams(lambda x: (x[:1], x[:1]), images)


# ----------------------------------------------------------------------------------------------------------
# thresholds and labels


def test_image_thresholds_per_class_ends() -> None:
    class_thr = torch.tensor([0.70, 0.55, 0.55, 0.70, 0.60])
    tags = torch.tensor(
        [[0, 1, 0, 0, 0], [0, 1, 1, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]],
        dtype=torch.float32,
    )
    out = image_thresholds(class_thr, tags)
    ref = [class_thr.numpy()[t > 0].max() if t.any() else class_thr.numpy().max() for t in tags.numpy()]
    np.testing.assert_allclose(out.numpy(), ref)
    np.testing.assert_allclose(out.numpy(), [0.55, 0.60, 0.70, 0.70, 0.70])
    with pytest.raises(ValueError, match="tags"):
        image_thresholds(class_thr, tags[:, :3])


def random_case(seed: int, b: int = 3, c: int = 4, size: int = 16) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, c, size // 4, size // 4, generator=g, dtype=torch.float64)
    cams = normalize_cams(F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False))
    tags = (torch.rand(b, c, generator=g) < 0.5).double()
    tags[0, :2] = 1.0
    tags[-1] = 0.0  # an image without tags
    return cams, tags


def test_threshold_labels_matches_numpy_with_boxes() -> None:
    cams, tags = random_case(3)
    high = torch.tensor([0.7, 0.55, 0.6], dtype=torch.float64)
    box = torch.tensor([[0, 0, 16, 16], [2, 3, 11, 16], [5, 0, 16, 9]])
    out = threshold_labels(cams, tags, high, low=0.25, valid_box=box)
    ref = np_threshold_labels(cams.numpy(), tags.numpy(), high.numpy(), 0.25, box.numpy())
    assert out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), ref)
    assert set(np.unique(ref)) >= {0, 1, 255}
    # a scalar high equals the same value per image
    np.testing.assert_array_equal(
        threshold_labels(cams, tags, 0.6).numpy(), threshold_labels(cams, tags, torch.full((3,), 0.6)).numpy()
    )
    assert (out[2] != 255).sum() == (out[2] == 0).sum()  # untagged image: background or ignore only
    with pytest.raises(ValueError, match="high"):
        threshold_labels(cams, tags, torch.ones(2))
    with pytest.raises(ValueError, match="valid_box"):
        threshold_labels(cams, tags, 0.7, valid_box=box[:, :3])


def test_threshold_labels_box_scale_vs_token_grid_bug() -> None:
    """A 448-pixel box on a 28x28 map: scaled properly vs applied as is (the released behaviour)."""
    cams, tags = random_case(4, size=28)
    box = torch.tensor([[100, 0, 448, 448], [17, 3, 430, 445], [0, 0, 300, 448]])
    fixed = threshold_labels(cams, tags, 0.7, valid_box=box, box_scale=28 / 448)
    bug = threshold_labels(cams, tags, 0.7, valid_box=box, box_scale=None)
    plain = threshold_labels(cams, tags, 0.7).numpy()
    # bug path = NumPy slicing with the unscaled box: row 100 >= 28 ignores the whole first map
    np.testing.assert_array_equal(
        bug.numpy(), np_threshold_labels(cams.numpy(), tags.numpy(), [0.7] * 3, 0.25, box)
    )
    assert (bug[0] == 255).all() and not (fixed[0] == 255).all()
    # outward rounding: top/left floored, bottom/right ceiled (100/16 = 6.25 -> 6, 430/16 = 26.9 -> 27)
    scaled = np.array([[6, 0, 28, 28], [1, 0, 27, 28], [0, 0, 19, 28]])
    np.testing.assert_array_equal(
        fixed.numpy(), np_threshold_labels(cams.numpy(), tags.numpy(), [0.7] * 3, 0.25, scaled)
    )
    np.testing.assert_array_equal(fixed[0, 6:].numpy(), plain[0, 6:])
    # a box already on a multiple of the stride maps exactly (448 * 28/448 = 28, no extra cell)
    full = threshold_labels(
        cams, tags, 0.7, valid_box=torch.tensor([[0, 0, 448, 448]] * 3), box_scale=28 / 448
    )
    np.testing.assert_array_equal(full.numpy(), plain)


def test_cam_labels_eval_matches_numpy() -> None:
    cams, tags = random_case(5)
    out = cam_labels_eval(cams, tags, bg_threshold=0.5).numpy()
    ref_all = np.where(cams.numpy().max(1) > 0.5, cams.numpy().argmax(1) + 1, 0)
    np.testing.assert_array_equal(cam_labels_eval(cams, None, 0.5).numpy(), ref_all)
    masked = cams.numpy() * tags.numpy()[:, :, None, None]
    np.testing.assert_array_equal(out, np.where(masked.max(1) > 0.5, masked.argmax(1) + 1, 0))
    assert (out[2] == 0).all() and 255 not in out


def test_affinity_labels_matches_numpy() -> None:
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g)
    labels[labels == 2] = 255
    out = affinity_labels(labels)
    flat = labels.flatten(1).numpy()
    n = flat.shape[1]
    ref = np.empty((2, n, n), dtype=np.int64)
    for b in range(2):
        for i in range(n):
            for j in range(n):
                if i == j or flat[b, i] == 255 or flat[b, j] == 255:
                    ref[b, i, j] = 255
                else:
                    ref[b, i, j] = int(flat[b, i] == flat[b, j])
    assert out.dtype == torch.int64 and out.shape == (2, 20, 20)
    np.testing.assert_array_equal(out.numpy(), ref)
    assert torch.equal(out, out.transpose(1, 2))
    assert (torch.diagonal(out, dim1=1, dim2=2) == 255).all()
    assert {0, 1, 255} <= set(np.unique(ref))


# ----------------------------------------------------------------------------------------------------------
# par_pseudo_labels


class FakePAR(nn.Module):
    """Image-dependent smoothing with PAR's interface; every channel is refined independently."""

    def __init__(self) -> None:
        super().__init__()
        self.channels: list[int] = []

    def forward(self, image: Tensor, masks: Tensor) -> Tensor:
        self.channels.append(masks.shape[1])
        masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=True)
        weight = 0.5 + image.mean(dim=1, keepdim=True)
        for _ in range(3):
            masks = F.avg_pool2d(F.pad(masks * weight, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return masks


def per_image_reference(par, images, cams, tags, high, low, box, downscale=2):
    """The released per-image procedure: explicit present channels, softmax, PAR, argmax, id lookup."""
    b, _, h, w = cams.shape
    small = (h // downscale, w // downscale)
    out = torch.full((b, h, w), 255, dtype=torch.int64)
    for i in range(b):
        keys = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(tags[i] > 0)[:, 0] + 1])
        image = F.interpolate(images[i : i + 1], size=small, mode="bilinear", align_corners=False)
        cam = F.interpolate(cams[i : i + 1], size=small, mode="bilinear", align_corners=False)
        labels = []
        for bg in (float(high[i]), low):
            stack = torch.cat([torch.full_like(cam[:, :1], bg), cam], dim=1)[:, keys].softmax(dim=1)
            refined = F.interpolate(par(image, stack), size=(h, w), mode="bilinear", align_corners=False)
            labels.append(keys[refined.argmax(dim=1)[0]])
        lab = labels[0].clone()
        lab[labels[0] == 0] = 255
        lab[(labels[0] == 0) & (labels[1] == 0)] = 0
        t, le, bo, r = box[i].tolist()
        out[i, t:bo, le:r] = lab[t:bo, le:r]
    return out


def par_case(seed: int, dtype: torch.dtype = torch.float64):
    cams, tags = random_case(seed, b=4, c=5, size=32)
    tags[1] = torch.tensor([1.0, 1, 0, 1, 1])  # most classes present: K = 4
    g = torch.Generator().manual_seed(seed + 100)
    images = torch.rand(4, 3, 32, 32, generator=g, dtype=torch.float64)
    high = torch.tensor([0.7, 0.55, 0.6, 0.65], dtype=torch.float64)
    box = torch.tensor([[0, 0, 32, 32], [3, 5, 30, 32], [0, 0, 20, 25], [8, 0, 32, 32]])
    return images.to(dtype), cams.to(dtype), tags.to(dtype), high.to(dtype), box


def test_par_pseudo_labels_matches_per_image_reference() -> None:
    images, cams, tags, high, box = par_case(7)
    par = FakePAR()
    out = par_pseudo_labels(par, images, cams, tags, high, low=0.25, valid_box=box)
    k = int((tags > 0).sum(1).max())
    assert par.channels == [2 * (1 + k)]  # both stacks in one call, K = max present count
    ref = per_image_reference(FakePAR(), images, cams, tags, high, 0.25, box)
    assert out.dtype == torch.int64 and out.shape == (4, 32, 32)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    values = set(np.unique(out.numpy()))
    assert 255 in values and 0 in values and len(values - {0, 255}) >= 2
    # labels are background, ignore or a present class
    for i in range(4):
        allowed = {0, 255} | {c + 1 for c in np.nonzero(tags[i].numpy() > 0)[0]}
        assert set(np.unique(out[i].numpy())) <= allowed
    assert (out[3] != 255).sum() == (out[3] == 0).sum()  # no tags: no foreground
    assert (out[1, :3] == 255).all() and (out[2, :, 25:] == 255).all()


def test_par_pseudo_labels_without_any_present_class_and_float_high() -> None:
    images, cams, _, _, _ = par_case(8)
    tags = torch.zeros(4, 5, dtype=cams.dtype)
    par = FakePAR()
    out = par_pseudo_labels(par, images, cams, tags, 0.7)
    assert par.channels == [4] and (out == 0).all()  # K >= 1 (one padding channel): the bg plane wins
    images, cams, tags, _, box = par_case(9)
    a = par_pseudo_labels(FakePAR(), images, cams, tags, 0.6, valid_box=box)
    b = par_pseudo_labels(
        FakePAR(), images, cams, tags, torch.full((4,), 0.6, dtype=cams.dtype), valid_box=box
    )
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="images"):
        par_pseudo_labels(FakePAR(), images[:, :, :16], cams, tags, 0.6)


@pytest.mark.skipif(not HAS_PAR, reason="wsss_lightning.models.par not available")
def test_par_pseudo_labels_with_real_par_matches_per_image_reference() -> None:
    from wsss_lightning.models.par import PAR

    images, cams, tags, high, box = par_case(10, dtype=torch.float32)
    par = PAR(dilations=(1, 2, 4), num_iter=5)
    out = par_pseudo_labels(par, images, cams, tags, high, low=0.25, valid_box=box)
    ref = per_image_reference(par, images, cams, tags, high, 0.25, box)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    assert len(set(np.unique(out.numpy())) - {0, 255}) >= 2


def test_par_pseudo_labels_of_several_networks_share_one_par_call() -> None:
    images, cams, tags, high, box = par_case(11)
    other = torch.flip(cams, dims=(-1,))  # a second network's CAMs of the same images
    par = FakePAR()
    both = par_pseudo_labels(par, images, [cams, other], tags, high, low=0.25, valid_box=box)
    k = int((tags > 0).sum(1).max())
    assert par.channels == [4 * (1 + k)]  # one kernel for both networks
    for out, single in zip(both, (cams, other), strict=True):
        expected = par_pseudo_labels(FakePAR(), images, single, tags, high, low=0.25, valid_box=box)
        np.testing.assert_array_equal(out.numpy(), expected.numpy())


# ----------------------------------------------------------------------------------------------------------
# present classes: the same labels from maps of each image's present classes only


def test_present_classes_lists_each_images_classes_ascending_padded() -> None:
    tags = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 1]])
    expected = [[1, 3, 4], [-1, -1, -1], [0, -1, -1], [2, 4, -1]]
    assert present_classes(tags).tolist() == expected
    assert present_classes(torch.zeros(2, 3)).tolist() == [[-1], [-1]]  # K >= 1
    rng = np.random.default_rng(0)
    tags = torch.from_numpy((rng.random((6, 20)) < 0.15).astype(np.float32))
    got = present_classes(tags)
    for row, t in zip(got.tolist(), tags.numpy(), strict=True):
        real = np.nonzero(t > 0)[0].tolist()
        assert row == real + [-1] * (got.shape[1] - len(real))
    with pytest.raises(ValueError, match="present_classes: tags must be"):
        present_classes(torch.zeros(3))


def _gathered(maps: Tensor, classes: Tensor) -> Tensor:
    index = classes.clamp(min=0)[:, :, None, None].expand(-1, -1, *maps.shape[-2:])
    return torch.gather(maps, 1, index) * (classes >= 0)[:, :, None, None]


@pytest.mark.parametrize(("size", "pad_to"), [(16, 1), (18, 4)])
def test_multiscale_cams_of_present_classes_equal_the_full_maps(size: int, pad_to: int) -> None:
    g = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, size, size, generator=g, dtype=torch.float64)
    tags = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]])
    classes = present_classes(tags)
    full = multiscale_cams(FakeCamNet(), images, pad_to=pad_to)
    some = multiscale_cams(FakeCamNet(), images, pad_to=pad_to, classes=classes)
    for f, s in zip(full, some, strict=True):
        assert s.shape == (3, 3, size, size)
        torch.testing.assert_close(s, _gathered(f, classes), rtol=0, atol=1e-12)


def test_multiscale_cams_reuse_the_unflipped_scale_one_maps() -> None:
    g = torch.Generator().manual_seed(6)
    images = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    net = FakeCamNet()
    given = net(images)
    net.calls.clear()
    reused = multiscale_cams(net, images, scales=(1.0, 0.5), unflipped=given)
    assert net.calls == [(2, 3, 16, 16), (4, 3, 8, 8)]  # scale 1.0: the flipped half only
    for a, b in zip(reused, multiscale_cams(FakeCamNet(), images, scales=(1.0, 0.5)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unflipped maps need a scale of 1\.0"):
        multiscale_cams(net, images, scales=(0.5,), unflipped=given)
    with pytest.raises(ValueError, match="multiple of pad_to = 3"):
        multiscale_cams(net, images, pad_to=3, unflipped=given)


def test_labels_from_present_class_maps_equal_the_full_path() -> None:
    images, cams, tags, high, box = par_case(12)
    classes = present_classes(tags)
    some = _gathered(cams, classes)
    full = par_pseudo_labels(FakePAR(), images, [cams, cams.flip(-1)], tags, high, valid_box=box)
    par = FakePAR()
    got = par_pseudo_labels(par, images, [some, some.flip(-1)], None, high, valid_box=box, classes=classes)
    assert par.channels == [4 * (1 + classes.shape[1])]
    for a, b in zip(full, got, strict=True):
        assert torch.equal(a, b)
    expected = threshold_labels(cams, tags, high, 0.3, valid_box=box, box_scale=0.5)
    assert torch.equal(
        threshold_labels(some, None, high, 0.3, valid_box=box, box_scale=0.5, classes=classes), expected
    )
    assert torch.equal(cam_labels_eval(some, None, 0.4, classes=classes), cam_labels_eval(cams, tags, 0.4))
    with pytest.raises(ValueError, match="classes must be"):
        cam_labels_eval(some, None, classes=classes[:, :1])
    with pytest.raises(ValueError, match="needs tags"):
        par_pseudo_labels(FakePAR(), images, cams, None, high)


def test_present_class_labels_read_nothing_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    images, cams, tags, high, box = par_case(13, dtype=torch.float32)
    classes = present_classes(tags)
    some = _gathered(cams, classes)
    with monkeypatch.context() as patch, NoSyncMode():  # type: ignore[no-untyped-call]
        forbid_host_reads(patch)
        par_pseudo_labels(FakePAR(), images, some, None, high, valid_box=box, classes=classes)
        threshold_labels(some, None, high, 0.3, valid_box=box, box_scale=(0.5, 0.25), classes=classes)
        multiscale_cams(FakeTorchCamNet(), images, scales=(1.0, 0.5), classes=classes)


class FakeTorchCamNet:
    """Torch-only raw CAMs (the NumPy one reads the images on the host)."""

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = F.avg_pool2d(x, 2)
        maps = torch.cat([pooled, pooled.flip(1) * 2.0 - 1.0], dim=1)[:, :5]
        return maps, maps.flip(-1)


# ----------------------------------------------------------------------------------------------------------
# affinity_labels with a radius window and a positive diagonal (AFA); multiscale_cams of 1 or 3 maps


@pytest.mark.parametrize(
    ("radius", "diagonal"), [(2, "positive"), (2, "ignore"), (None, "positive"), (8, "positive")]
)
def test_affinity_labels_with_radius_and_diagonal_match_numpy(radius: int | None, diagonal: str) -> None:
    g = torch.Generator().manual_seed(16)
    labels = torch.randint(0, 4, (2, 4, 5), generator=g)
    labels[labels == 3] = 255
    out = affinity_labels(labels, radius=radius, diagonal=diagonal)  # type: ignore[arg-type]
    flat = labels.flatten(1).numpy()
    ref = np.empty((2, 20, 20), dtype=np.int64)
    for b in range(2):
        for i in range(20):
            for j in range(20):
                (yi, xi), (yj, xj) = divmod(i, 5), divmod(j, 5)
                outside = radius is not None and (abs(yi - yj) > radius or abs(xi - xj) > radius)
                if flat[b, i] == 255 or flat[b, j] == 255 or outside or (i == j and diagonal == "ignore"):
                    ref[b, i, j] = 255
                else:
                    ref[b, i, j] = int(flat[b, i] == flat[b, j])
    np.testing.assert_array_equal(out.numpy(), ref)
    assert torch.equal(out, out.transpose(1, 2))
    if diagonal == "positive":  # a token is its own positive pair unless it is ignored
        diag = torch.diagonal(out, dim1=1, dim2=2)
        assert torch.equal(diag, torch.where(labels.flatten(1) == 255, 255, 1))


def test_affinity_labels_reject_bad_options() -> None:
    labels = torch.zeros(1, 3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="affinity_labels: diagonal"):
        affinity_labels(labels, diagonal="zero")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="affinity_labels: radius"):
        affinity_labels(labels, radius=0)


class ManyMapNet:
    """One map ``(cam,)``, or three ``(cam, aux_cam, cam of a second net)``."""

    def __init__(self, maps: int) -> None:
        self.first, self.second, self.maps = FakeCamNet(seed=0), FakeCamNet(seed=1), maps

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        cam, aux = self.first(x)
        return (cam,) if self.maps == 1 else (cam, aux, self.second(x)[0])


@pytest.mark.parametrize("maps", [1, 3])
def test_multiscale_cams_of_one_or_three_maps_match_the_hand_loop(maps: int) -> None:
    g = torch.Generator().manual_seed(17)
    images = torch.randn(2, 3, 20, 20, generator=g, dtype=torch.float64)
    net = ManyMapNet(maps)
    out = multiscale_cams(net, images, pad_to=4)
    first = np_multiscale(FakeCamNet(seed=0), images.numpy(), (1.0, 0.5, 1.5), 4)
    second = np_multiscale(FakeCamNet(seed=1), images.numpy(), (1.0, 0.5, 1.5), 4)
    expected = [first[0]] if maps == 1 else [first[0], first[1], second[0]]
    assert isinstance(out, tuple) and len(out) == maps
    for got, ref in zip(out, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-9)
    tags = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])
    classes = present_classes(tags)
    some = multiscale_cams(net, images, pad_to=4, classes=classes)
    assert len(some) == maps
    for full, gathered in zip(out, some, strict=True):
        torch.testing.assert_close(gathered, _gathered(full, classes))
    # the un-flipped scale-1 maps are reused for any number of maps
    unflipped = net(images)
    reused = multiscale_cams(net, images, pad_to=4, unflipped=unflipped)
    for full, again in zip(out, reused, strict=True):
        torch.testing.assert_close(again, full)


def test_multiscale_cams_reject_a_bare_map_and_mismatched_unflipped_maps() -> None:
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    net = FakeCamNet()
    with pytest.raises(ValueError, match="cam_fn must return a tuple of one or more maps"):
        multiscale_cams(lambda x: net(x)[0], images)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="unflipped must hold one map per map of cam_fn"):
        multiscale_cams(net, images, unflipped=net(images)[:1])  # type: ignore[arg-type]

    calls = iter([2, 3, 3])

    def changing(x: Tensor) -> tuple[Tensor, ...]:
        return net(x) + (net(x)[0],) * (next(calls) - 2)

    with pytest.raises(ValueError, match="cam_fn must return a tuple of 2 maps at every scale"):
        multiscale_cams(changing, images)
