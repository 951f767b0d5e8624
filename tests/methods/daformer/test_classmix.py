"""ClassMix masks and mixing against loop-based NumPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss_lightning.methods.daformer.classmix import class_mix_masks, mix


def _labels(seed: int, b: int = 4, h: int = 6, w: int = 7, num_classes: int = 5) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=(b, h, w))
    labels[rng.random(labels.shape) < 0.15] = 255
    labels[0] = np.where(labels[0] > 1, 255, 0)  # image 0 holds only class 0 and ignore
    return torch.from_numpy(labels)


def _check_mask_numpy(labels: np.ndarray, mask: np.ndarray, per_image: bool) -> None:
    """The mask is the pixels of a class set of the right size, drawn from the right candidates."""
    batch_classes = set(np.unique(labels).tolist())
    for i in range(labels.shape[0]):
        own = set(np.unique(labels[i]).tolist())
        candidates = (own - {255}) if per_image else batch_classes
        chosen = set(np.unique(labels[i][mask[i]]).tolist())
        assert chosen <= candidates
        # a pixel is in the mask exactly when its class was chosen
        for c in own:
            in_mask = mask[i][labels[i] == c]
            assert in_mask.all() or not in_mask.any()
        if per_image:
            assert len(chosen) == math.ceil(len(candidates) / 2)
        else:
            assert len(chosen) <= math.ceil(len(candidates) / 2)


@pytest.mark.parametrize("per_image", [True, False])
def test_masks_select_half_of_the_classes(per_image: bool) -> None:
    for seed in range(20):
        labels = _labels(seed)
        g = torch.Generator().manual_seed(seed)
        mask = class_mix_masks(labels, 5, generator=g, per_image=per_image)
        assert mask.dtype == torch.bool and mask.shape == labels.shape
        _check_mask_numpy(labels.numpy(), mask.numpy(), per_image)


def test_per_image_never_pastes_ignore() -> None:
    labels = _labels(3)
    for seed in range(10):
        mask = class_mix_masks(labels, 5, generator=torch.Generator().manual_seed(seed))
        assert not mask[labels == 255].any()


def test_batch_mode_draws_from_the_batch_classes() -> None:
    """The reference's draw: image 0 (classes {0, 255}) can get classes it lacks, and 255."""
    labels = _labels(0)
    ignore_pasted = empty = False
    counts = []
    for seed in range(200):
        mask = class_mix_masks(labels, 5, generator=torch.Generator().manual_seed(seed), per_image=False)
        ignore_pasted |= bool(mask[labels == 255].any())
        empty |= not bool(mask[0].any())
        # the batch holds 6 labels (0..4 and 255): 3 are drawn per image
        counts.append(len({int(c) for c in labels[1][mask[1]].unique()}))
    assert ignore_pasted and empty
    assert max(counts) == 3


def test_draw_is_uniform_over_subsets() -> None:
    """Each 2-of-4 subset of one image's classes comes up about equally often."""
    labels = torch.tensor([[[0, 1, 2, 3]]])
    g = torch.Generator().manual_seed(0)
    seen: dict[tuple[int, ...], int] = {}
    for _ in range(1200):
        mask = class_mix_masks(labels, 4, generator=g)
        key = tuple(int(c) for c in labels[mask])
        seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 6
    assert all(150 < n < 250 for n in seen.values())


def test_deterministic_with_generator() -> None:
    labels = _labels(1)
    a = class_mix_masks(labels, 5, generator=torch.Generator().manual_seed(7))
    b = class_mix_masks(labels, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_single_class_image_is_pasted_whole() -> None:
    labels = torch.full((2, 3, 3), 4)
    labels[1] = 255
    mask = class_mix_masks(labels, 5, generator=torch.Generator().manual_seed(0))
    assert mask[0].all() and not mask[1].any()


def test_bad_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="int64"):
        class_mix_masks(torch.zeros(2, 3, 3, dtype=torch.int32), 5)
    with pytest.raises(ValueError, match="ignore_index"):
        class_mix_masks(torch.zeros(2, 3, 3, dtype=torch.long), 5, ignore_index=3)


def test_mix_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((2, 4, 5)) < 0.5
    src_img, trg_img = rng.random((2, 2, 3, 4, 5)).astype(np.float32)
    src_lbl, trg_lbl = rng.integers(0, 9, size=(2, 2, 4, 5))
    expected_img = np.empty_like(src_img)
    expected_lbl = np.empty_like(src_lbl)
    for i in range(2):
        for y in range(4):
            for x in range(5):
                pick = mask[i, y, x]
                expected_img[i, :, y, x] = src_img[i, :, y, x] if pick else trg_img[i, :, y, x]
                expected_lbl[i, y, x] = src_lbl[i, y, x] if pick else trg_lbl[i, y, x]
    m = torch.from_numpy(mask)
    out_img = mix(m, torch.from_numpy(src_img), torch.from_numpy(trg_img))
    out_lbl = mix(m, torch.from_numpy(src_lbl), torch.from_numpy(trg_lbl))
    assert out_img.dtype == torch.float32 and out_lbl.dtype == torch.int64
    np.testing.assert_array_equal(out_img.numpy(), expected_img)
    np.testing.assert_array_equal(out_lbl.numpy(), expected_lbl)


def test_mix_rejects_mismatched_shapes() -> None:
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="source and target"):
        mix(mask, torch.zeros(2, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="source must be"):
        mix(mask, torch.zeros(2, 4, 4), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="mask must be bool"):
        mix(mask.float(), torch.zeros(2, 4, 5), torch.zeros(2, 4, 5))


@pytest.mark.parametrize("per_image", [True, False])
def test_masks_match_numpy_draw_with_the_same_scores(per_image: bool) -> None:
    """Replaying the generator's scores: the k smallest-scored candidate classes, looped in NumPy."""
    labels = _labels(5)
    b, c = labels.shape[0], 5
    scores = torch.rand((b, c + 1), generator=torch.Generator().manual_seed(11)).numpy()
    mask = class_mix_masks(
        labels, c, generator=torch.Generator().manual_seed(11), per_image=per_image
    ).numpy()
    lab = labels.numpy()
    batch = sorted(set(np.unique(lab).tolist()))
    for i in range(b):
        candidates = sorted(set(np.unique(lab[i]).tolist()) - {255}) if per_image else batch
        slot = [c if k == 255 else k for k in candidates]  # 255 uses the last score column
        order = sorted(range(len(candidates)), key=lambda j: scores[i, slot[j]])
        chosen = [candidates[j] for j in order[: (len(candidates) + 1) // 2]]
        expected = np.zeros(lab[i].shape, dtype=bool)
        for y in range(lab.shape[1]):
            for x in range(lab.shape[2]):
                expected[y, x] = lab[i, y, x] in chosen
        np.testing.assert_array_equal(mask[i], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to observe host syncs")
@pytest.mark.parametrize("per_image", [True, False])
def test_cuda_matches_cpu_without_host_sync(per_image: bool) -> None:
    labels = _labels(2)
    expected = class_mix_masks(labels, 5, generator=torch.Generator().manual_seed(1), per_image=per_image)
    cuda_labels = labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mask = class_mix_masks(
            cuda_labels, 5, generator=torch.Generator().manual_seed(1), per_image=per_image
        )
        mixed = mix(mask, cuda_labels, torch.zeros_like(cuda_labels))
        class_mix_masks(cuda_labels, 5, generator=torch.Generator("cuda").manual_seed(1), per_image=per_image)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(mask.cpu(), expected)
    assert torch.equal(mixed.cpu(), torch.where(expected, labels, 0))
