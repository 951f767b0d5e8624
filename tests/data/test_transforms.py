"""Training / evaluation pipelines: alignment, padding, valid box, normalisation, reproducibility."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from wsss_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    box_from_applied_params,
    box_from_valid_mask,
    denormalize_to_uint8,
    eval_transform,
    normalize_to_tensor,
)

# One distinct colour per class, so the image alone tells which class a pixel belongs to.
COLOURS = np.array([[0, 0, 0], [250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], dtype=np.uint8)


def planted_sample(h: int = 60, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image of solid class-coloured rectangles and its mask (class 0 = black background)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=np.uint8)
    for cls in range(1, len(COLOURS)):
        y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
        mask[y : y + rng.integers(8, 20), x : x + rng.integers(8, 30)] = cls
    return COLOURS[mask], mask


def class_from_colour(image: np.ndarray) -> np.ndarray:
    """Nearest planted colour of every pixel -> its class."""
    dist = ((image[:, :, None, :].astype(np.int32) - COLOURS[None, None].astype(np.int32)) ** 2).sum(-1)
    return dist.argmin(-1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return denormalize_to_uint8(image).permute(1, 2, 0).numpy()


def test_geometry_keeps_image_and_mask_aligned_exactly_without_rescale() -> None:
    image, mask = planted_sample()
    tf = TrainTransform((48, 96), scale_range=(1.0, 1.0), hflip_p=0.5, record_params=True)
    flipped = 0
    for seed in range(20):
        out = tf(image, mask, clicks=mask, seed=seed)
        top, left, bottom, right = out["valid_box"].tolist()
        got = to_uint8(out["image"])[top:bottom, left:right]
        m = out["mask"].numpy()[top:bottom, left:right]
        np.testing.assert_array_equal(class_from_colour(got), m)
        np.testing.assert_array_equal(out["clicks"].numpy(), out["mask"].numpy())
        flipped += any(name == "HorizontalFlip" for name, _ in out["applied_transforms"])
    assert 0 < flipped < 20
    assert out["image"].shape == (3, 48, 96) and out["image"].dtype == torch.float32
    assert out["mask"].dtype == torch.int64 and out["valid_box"].dtype == torch.int64


def test_rescaled_patches_coincide_with_mask() -> None:
    image, mask = planted_sample(80, 100)
    tf = TrainTransform(64, scale_range=(0.5, 2.0))
    for seed in range(10):
        out = tf(image, mask, seed=seed)
        top, left, bottom, right = out["valid_box"].tolist()
        got = class_from_colour(to_uint8(out["image"])[top:bottom, left:right])
        m = out["mask"].numpy()[top:bottom, left:right]
        # bilinear image vs nearest mask differ only on a one-pixel rim of each patch
        assert (got == m).mean() > 0.95


@pytest.mark.parametrize("pad_position", ["random", "top_left", "center"])
def test_padding_fills_mask_255_image_0_and_box_matches_params(pad_position: str) -> None:
    image, mask = planted_sample(30, 40)
    tf = TrainTransform(
        64,
        scale_range=(0.5, 1.5),
        pad_position=pad_position,  # type: ignore[arg-type]
        record_params=True,
    )
    for seed in range(30):
        out = tf(image, mask, clicks=np.full_like(mask, 255), seed=seed)
        box = tuple(out["valid_box"].tolist())
        assert box == box_from_applied_params(out["applied_transforms"], (64, 64))
        top, left, bottom, right = box
        inside = np.zeros((64, 64), dtype=bool)
        inside[top:bottom, left:right] = True
        assert (out["mask"].numpy()[~inside] == 255).all()
        assert (to_uint8(out["image"]).reshape(-1, 3)[~inside.reshape(-1)] == 0).all()
        # the planted background is black too, so check the content via the mask instead
        assert (out["mask"].numpy()[inside] != 255).all()
        if pad_position == "top_left":
            assert top == 0 and (left == 0 or right == 64)  # flip mirrors the left-anchored content


def test_mask_pad_value_zero_reproduces_u2pl_but_clicks_stay_255() -> None:
    image, mask = planted_sample(20, 20)
    clicks = np.full_like(mask, 255)
    clicks[5, 5] = 1
    tf = TrainTransform(48, scale_range=(1.0, 1.0), mask_pad_value=0)
    out = tf(image, mask + 1, clicks=clicks, seed=0)  # shift labels so 0 appears only in the padding
    top, left, bottom, right = out["valid_box"].tolist()
    m = out["mask"].numpy()
    assert (m == 0).sum() == 48 * 48 - (bottom - top) * (right - left)
    assert (out["clicks"].numpy() != 255).sum() == 1


def test_valid_box_full_crop_without_padding_and_analytic_agreement() -> None:
    image, mask = planted_sample(200, 300)
    tf = TrainTransform(64, scale_range=(0.8, 1.5), record_params=True)
    for seed in range(20):
        out = tf(image, mask, seed=seed)
        assert out["valid_box"].tolist() == [0, 0, 64, 64]
        assert box_from_applied_params(out["applied_transforms"], (64, 64)) == (0, 0, 64, 64)


def test_box_from_valid_mask_edge_cases() -> None:
    valid = np.zeros((5, 6), dtype=bool)
    assert box_from_valid_mask(valid) == (0, 0, 0, 0)
    valid[1:3, 2:5] = True
    assert box_from_valid_mask(valid) == (1, 2, 3, 5)


def test_seed_makes_calls_reproducible_and_children_independent() -> None:
    image, mask = planted_sample()
    tf = TrainTransform(32, color_jitter=0.4, blur_p=0.5, grayscale_p=0.5, hflip_p=0.5, record_params=True)
    a, b = tf(image, mask, seed=7), tf(image, mask, seed=7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], tf(image, mask, seed=8)["image"])
    # Compose.set_random_seed gives every child the same seed; ours must not tie the coin tosses together.
    decisions = set()
    for seed in range(40):
        names = {name for name, _ in tf(image, mask, seed=seed)["applied_transforms"]}
        decisions.add(("HorizontalFlip" in names, "ToGray" in names, "GaussianBlur" in names))
    assert len(decisions) >= 6


def test_normalisation_and_roundtrip() -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    t = normalize_to_tensor(image)
    expected = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert t.shape == (3, 7, 9) and t.dtype == torch.float32
    np.testing.assert_array_equal(denormalize_to_uint8(t).permute(1, 2, 0).numpy(), image)
    custom = normalize_to_tensor(image, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert custom.min() >= -1 and custom.max() <= 1


def test_eval_transform_short_side() -> None:
    image, mask = planted_sample(40, 80)
    out = eval_transform()(image, mask)
    assert out["image"].shape == (3, 40, 80) and out["mask"].shape == (40, 80)
    np.testing.assert_array_equal(out["mask"].numpy(), mask)
    resized = eval_transform(short_side=20)(image, mask)
    assert resized["image"].shape == (3, 20, 40) and resized["mask"].shape == (20, 40)
    assert set(np.unique(resized["mask"].numpy())) <= set(np.unique(mask))
    assert "mask" not in eval_transform()(image)


def test_eval_transform_center_crop_after_short_side() -> None:
    image, mask = planted_sample(40, 80)
    resized = eval_transform(short_side=20)(image, mask)  # 20 x 40
    out = eval_transform(short_side=20, center_crop=20)(image, mask)
    assert out["image"].shape == (3, 20, 20) and out["mask"].shape == (20, 20)
    # the centre square of the resized sample: columns 10..29
    torch.testing.assert_close(out["image"], resized["image"][:, :, 10:30])
    assert torch.equal(out["mask"], resized["mask"][:, 10:30])
    assert "mask" not in eval_transform(short_side=20, center_crop=20)(image)
    # portrait images are cropped vertically; a crop smaller than the short side crops both sides
    tall = eval_transform(short_side=24, center_crop=16)(image.transpose(1, 0, 2), mask.T)
    assert tall["image"].shape == (3, 16, 16)
    full = eval_transform(short_side=24)(image.transpose(1, 0, 2), mask.T)["mask"]  # 48 x 24
    assert torch.equal(tall["mask"], full[16:32, 4:20])


def test_center_crop_offsets_round_half_to_even_like_fixscalecrop() -> None:
    tf = EvalTransform(short_side=8, center_crop=8)
    assert tf.crop_box(8, 8) == (0, 0, 8, 8)
    assert tf.crop_box(8, 9) == (0, 0, 8, 8)  # round(0.5) = 0
    assert tf.crop_box(8, 11) == (0, 2, 8, 10)  # round(1.5) = 2
    assert tf.crop_box(13, 8) == (2, 0, 10, 8)  # round(2.5) = 2
    assert EvalTransform().crop_box(5, 7) == (0, 0, 5, 7)  # no crop: the whole image
    with pytest.raises(ValueError, match=r"center_crop: the image is 7x9, smaller than the 8x8 crop"):
        tf.crop_box(7, 9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"center_crop": 0, "short_side": 8}, r"center_crop: expected a positive int or None, got 0"),
        ({"center_crop": 8.0, "short_side": 8}, r"center_crop: expected a positive int or None, got 8\.0"),
        ({"center_crop": 8}, r"center_crop: a 8 x 8 centre crop needs short_side >= 8 .*got short_side=None"),
        ({"center_crop": 8, "short_side": 7}, r"center_crop: .*got short_side=7"),
    ],
)
def test_center_crop_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        eval_transform(**kwargs)


def test_bad_arguments_name_the_field() -> None:
    image, mask = planted_sample()
    with pytest.raises(ValueError, match="mask"):
        TrainTransform(32)(image, mask[:10])
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform((32, 32, 3))
    with pytest.raises(ValueError, match="mask_pad_value"):
        TrainTransform(32, mask_pad_value=300)
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform(32, scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="color_jitter"):
        TrainTransform(32, color_jitter=(0.1, 0.2))
    with pytest.raises(ValueError, match="image"):
        normalize_to_tensor(image[:, :, 0])


def test_click_points_mode_keeps_one_pixel_clicks_on_their_class() -> None:
    image, mask = planted_sample(80, 100, seed=3)
    clicks = np.full_like(mask, 255)
    for cls in range(1, len(COLOURS)):
        ys, xs = np.nonzero(mask == cls)
        if ys.size:
            clicks[int(np.median(ys)), int(np.median(xs))] = cls
    n_clicks = int((clicks != 255).sum())
    as_mask = TrainTransform(48, scale_range=(1.0, 1.0), click_mode="mask")
    as_points = TrainTransform(48, scale_range=(1.0, 1.0), click_mode="points")
    for seed in range(5):  # without rescaling both modes agree exactly
        assert torch.equal(
            as_mask(image, mask, clicks, seed=seed)["clicks"],
            as_points(image, mask, clicks, seed=seed)["clicks"],
        )
    tf = TrainTransform(64, scale_range=(0.3, 3.0), click_mode="points")
    for seed in range(10):
        out = tf(image, mask, clicks, seed=seed)
        c, m = out["clicks"].numpy(), out["mask"].numpy()
        on = c != 255
        assert on.sum() <= n_clicks
        np.testing.assert_array_equal(c[on], m[on])  # each click stays on its own class
    # a crop larger than the scaled image (at most 200x250) keeps every click, as exactly one pixel
    whole = TrainTransform(256, scale_range=(0.3, 2.5), click_mode="points")
    for seed in range(5):
        assert int((whole(image, mask, clicks, seed=seed)["clicks"] != 255).sum()) == n_clicks
