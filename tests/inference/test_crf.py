from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from wsss_lightning.inference.crf import CRFParams, CRFPostProcessor, crf_labels, dense_crf

EDGE = 32


def planted(shift: int = 6, seed: int = 0, height: int = 48, width: int = 64) -> tuple[np.ndarray, ...]:
    """A red | blue image split at column EDGE, and class-1 probabilities blurred and shifted right."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float64)
    image[:, :EDGE] = (200, 40, 40)
    image[:, EDGE:] = (40, 60, 200)
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((height, width), np.int64)
    truth[:, EDGE:] = 1
    p1 = 1 / (1 + np.exp(-(np.arange(width) - (EDGE + shift)) / 4.0))
    probs = np.broadcast_to(np.stack([1 - p1, p1])[:, None, :], (2, height, width)).astype(np.float32)
    return image, probs, truth


def boundary_error(labels: np.ndarray) -> float:
    """Mean distance (pixels) per row between the first class-1 column and the true edge."""
    return float(np.abs((labels == 1).argmax(axis=1) - EDGE).mean())


def miou(labels: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([((labels == c) & (truth == c)).sum() / ((labels == c) | (truth == c)).sum() for c in (0, 1)])
    )


def test_crf_snaps_blurred_boundary_to_colour_edge() -> None:
    image, probs, truth = planted()
    before = probs.argmax(0)
    refined = dense_crf(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    after = crf_labels(image, probs)
    assert after.dtype == np.uint8
    np.testing.assert_array_equal(after, refined.argmax(0))
    assert boundary_error(after) < boundary_error(before) - 3
    assert miou(after, truth) > miou(before, truth) + 0.1


def test_default_params_are_dupl() -> None:
    assert CRFParams() == CRFParams(
        iterations=10,
        gaussian_sxy=1,
        gaussian_compat=1,
        bilateral_sxy=121,
        bilateral_srgb=5,
        bilateral_compat=4,
    )
    with pytest.raises(ValueError, match="bilateral_srgb"):
        CRFParams(bilateral_srgb=0)


def test_bad_inputs_are_named() -> None:
    image, probs, _ = planted()
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="image size"):
        dense_crf(image[:10], probs)
    with pytest.raises(ValueError, match="2 images but 1"):
        CRFPostProcessor()([image, image], [probs])


def test_missing_pydensecrf_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, probs, _ = planted()
    with pytest.raises(ImportError, match=r"pydensecrf2.*gcc"):
        dense_crf(image, probs)


def test_pool_equals_in_process() -> None:
    batch = [planted(shift=s, seed=s) for s in (2, 4, 6, 8)]
    images = [b[0] for b in batch]
    probs = np.stack([b[1] for b in batch])  # one (B, C, H, W) array also works
    expected = CRFPostProcessor(num_workers=0)(images, probs)
    with CRFPostProcessor(num_workers=2) as crf:
        got = crf(images, list(probs))
        again = crf(np.stack(images), probs)  # the pool and its shared-memory arena are reused
        crf.transport = "pickle"
        pickled = crf(images, probs)
        assert crf._executor is not None
        clone = pickle.loads(pickle.dumps(crf))  # picklable; the copy gets its own pool later
        assert clone._executor is None
    assert crf._executor is None
    for a, *others in zip(expected, got, again, pickled, strict=True):
        for b in others:
            np.testing.assert_array_equal(a, b)
