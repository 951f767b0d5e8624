from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from tests.helpers import NoSyncMode, forbid_host_reads
from wsss_lightning.host_reads import accelerator_paths
from wsss_lightning.methods.dupl import noise_filter
from wsss_lightning.methods.dupl.noise_filter import GMM1D, adaptive_noise_filter, fit_gmm_1d, gmm_posteriors
from wsss_lightning.methods.dupl.options import NoiseFilterConfig

IGNORE = 255


# ----------------------------------------------------------------------------------------------------------
# Synthetic loss maps and the scikit-learn reference


def synthetic_map(
    rng: np.random.Generator, size: int, kind: str, outliers: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A ``(size, size)`` float32 per-pixel CE loss map and its int64 pseudo-label.

    Foreground: one to three elliptic objects (classes 1..20) with an ignore band around them. Losses:
    background ``|N(0.2, 0.3)|``, clean foreground ``|N(0.3, 0.3)|``; ``kind="bimodal"`` puts noisy losses
    ``N(3, 0.8)`` on a blob covering 10-40 % of the foreground; ``"unimodal"`` has clean losses only;
    ``"few"`` is one small object (fewer candidates than the filter needs); ``"empty"`` has no foreground.
    ``outliers`` is the fraction of foreground pixels given very large losses (6-12).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    labels = np.zeros((size, size), np.int64)
    ellipse = np.full((size, size), np.inf)
    if kind != "empty":
        for _ in range(1 if kind == "few" else int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0.3, 0.7, 2) * size
            ry, rx = rng.uniform(*((0.07, 0.1) if kind == "few" else (0.2, 0.35)), 2) * size
            e = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
            labels[e < 1.0] = rng.integers(1, 21)
            ellipse = np.minimum(ellipse, e)
        labels[(ellipse >= 1.0) & (ellipse < 1.12)] = IGNORE
    loss = np.abs(rng.normal(0.2, 0.3, (size, size)))
    fg = (labels != 0) & (labels != IGNORE)
    loss[fg] = np.abs(rng.normal(0.3, 0.3, fg.sum()))
    if kind == "bimodal":
        fy, fx = np.nonzero(fg)
        seed = rng.integers(fy.size)
        k = int(rng.uniform(0.1, 0.4) * fy.size)
        near = np.argsort((fy - fy[seed]) ** 2 + (fx - fx[seed]) ** 2, kind="stable")[:k]
        loss[fy[near], fx[near]] = np.clip(rng.normal(3.0, 0.8, k), 0.0, None)
    if outliers:
        wild = fg & (rng.random((size, size)) < outliers)
        loss[wild] = rng.uniform(6.0, 12.0, wild.sum())
    loss[labels == IGNORE] = 0.0  # DuPL's CE with ignore_index, reduction none
    return loss.astype(np.float32), labels


def sklearn_noise_mask(loss: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """DuPL's per-image filter (DuPL Sec. 3.3, Eq. 6-7; `train_final_voc.py`) with scikit-learn: the (H, W) bool mask of dropped pixels."""
    foreground = (labels != 0) & (labels != IGNORE)
    candidates = loss[foreground]
    candidates = candidates[candidates > 0.1]
    if candidates.size <= 1000:
        return np.zeros(labels.shape, bool)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(candidates.reshape(-1, 1))
    means = gmm.means_.ravel()
    if abs(means[0] - means[1]) <= 1.0:
        return np.zeros(labels.shape, bool)
    posterior = gmm.predict_proba(loss.reshape(-1, 1))[:, int(np.argmax(means))].reshape(labels.shape)
    return (posterior > 0.95) & foreground


def sklearn_fit(values: np.ndarray, **kwargs: float) -> GaussianMixture:
    gmm = GaussianMixture(n_components=2, random_state=0, **kwargs)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gmm.fit(values.reshape(-1, 1))


def sorted_params(means: np.ndarray, variances: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(3, 2) parameters with the components ordered by mean (component order is arbitrary)."""
    order = np.argsort(means.ravel())
    return np.stack([means.ravel()[order], variances.ravel()[order], weights.ravel()[order]])


def two_populations(rng: np.random.Generator, n: int, w0: float) -> np.ndarray:
    n0 = int(w0 * n)
    return np.concatenate([rng.normal(0.5, 0.25, n0), rng.normal(4.0, 0.8, n - n0)]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# The filter against the scikit-learn reference


@pytest.mark.parametrize(
    ("size", "kinds"),
    [
        (
            96,
            ["bimodal"] * 6
            + ["bimodal-outliers", "unimodal", "unimodal", "unimodal-outliers", "few", "empty"],
        ),
        (224, ["bimodal", "bimodal-outliers", "unimodal"]),
    ],
)
def test_filter_agrees_with_sklearn(size: int, kinds: list[str]) -> None:
    rng = np.random.default_rng(size)
    maps = [synthetic_map(rng, size, k.split("-")[0], 0.003 if "outliers" in k else 0.0) for k in kinds]
    losses = torch.from_numpy(np.stack([m[0] for m in maps]))
    labels = torch.from_numpy(np.stack([m[1] for m in maps]))
    filtered, noise = adaptive_noise_filter(losses, labels)

    reference = np.stack([sklearn_noise_mask(*m) for m in maps])
    noise_np = noise.numpy()
    foreground = (labels.numpy() != 0) & (labels.numpy() != IGNORE)
    agreement_fg = (noise_np == reference)[foreground].mean()
    agreement_all = (noise_np == reference).mean()
    print(
        f"\n{size}x{size}: noise decisions agree with scikit-learn on {100 * agreement_fg:.4f} % of the "
        f"foreground pixels ({100 * agreement_all:.4f} % of all pixels); "
        f"{int(reference.sum())} reference / {int(noise_np.sum())} flagged"
    )
    assert agreement_fg >= 0.99
    # the same maps are filtered at all, and the test data exercises both outcomes
    filtered_maps = np.asarray(noise_np.any(axis=(1, 2)))
    np.testing.assert_array_equal(filtered_maps, reference.any(axis=(1, 2)))
    assert filtered_maps.any() and not filtered_maps.all()
    for i, kind in enumerate(kinds):
        if kind in ("unimodal", "few", "empty"):
            assert not filtered_maps[i], kind
        if kind.startswith("bimodal"):
            assert filtered_maps[i], kind
    # labels: flagged pixels become ignore, everything else untouched
    np.testing.assert_array_equal(filtered.numpy(), np.where(noise_np, IGNORE, labels.numpy()))
    assert filtered.dtype == labels.dtype


def test_background_and_ignore_are_never_flagged() -> None:
    rng = np.random.default_rng(1)
    loss, labels = synthetic_map(rng, 96, "bimodal")
    # background and ignore pixels with losses that the noise component would explain
    loss[labels == 0] = rng.normal(3.0, 0.5, (labels == 0).sum()).clip(0.2)
    loss[labels == IGNORE] = 3.0
    losses, labels_t = torch.from_numpy(loss[None]), torch.from_numpy(labels[None])
    filtered, noise = adaptive_noise_filter(losses, labels_t)
    assert noise.any()
    assert not noise[labels_t == 0].any() and not noise[labels_t == IGNORE].any()
    assert (filtered[labels_t == 0] == 0).all()
    # the fit only sees foreground: the same map with quiet background gives the same decisions
    quiet = loss.copy()
    quiet[labels == 0] = 0.05
    _, noise_quiet = adaptive_noise_filter(torch.from_numpy(quiet[None]), labels_t)
    assert torch.equal(noise, noise_quiet)


def test_gates_min_pixels_and_min_gap() -> None:
    rng = np.random.default_rng(2)
    loss, labels = synthetic_map(rng, 96, "bimodal")
    losses, labels_t = torch.from_numpy(loss[None]), torch.from_numpy(labels[None])
    candidates = int(((labels != 0) & (labels != IGNORE) & (loss > 0.1)).sum())
    # strictly more than min_pixels candidates are needed
    assert adaptive_noise_filter(losses, labels_t, NoiseFilterConfig(min_pixels=candidates - 1))[1].any()
    assert not adaptive_noise_filter(losses, labels_t, NoiseFilterConfig(min_pixels=candidates))[1].any()
    # the means are about 2.6 apart
    assert adaptive_noise_filter(losses, labels_t, NoiseFilterConfig(min_gap=2.0))[1].any()
    assert not adaptive_noise_filter(losses, labels_t, NoiseFilterConfig(min_gap=3.5))[1].any()
    # a higher posterior threshold drops fewer pixels; min_loss changes the candidates
    n95 = int(adaptive_noise_filter(losses, labels_t)[1].sum())
    assert int(adaptive_noise_filter(losses, labels_t, NoiseFilterConfig(posterior=0.999))[1].sum()) < n95
    assert not adaptive_noise_filter(losses, labels_t, NoiseFilterConfig(posterior=1.0))[1].any()
    assert not adaptive_noise_filter(losses, labels_t, NoiseFilterConfig(min_loss=10.0))[1].any()


def test_filter_handles_other_ignore_index_and_label_dtype() -> None:
    rng = np.random.default_rng(3)
    loss, labels = synthetic_map(rng, 96, "bimodal")
    labels = np.where(labels == IGNORE, -1, labels).astype(np.int32)
    filtered, noise = adaptive_noise_filter(
        torch.from_numpy(loss[None]), torch.from_numpy(labels[None]), ignore_index=-1
    )
    assert filtered.dtype == torch.int32 and noise.any()
    assert (filtered[noise] == -1).all()
    reference = sklearn_noise_mask(loss, np.where(labels == -1, IGNORE, labels))
    assert (noise[0].numpy() == reference).mean() > 0.99


# ----------------------------------------------------------------------------------------------------------
# fit_gmm_1d / gmm_posteriors


def test_fit_matches_sklearn_parameters_on_separated_data() -> None:
    rng = np.random.default_rng(4)
    sizes, weights = [3000, 5000, 1500, 4000], [0.8, 0.5, 0.3, 0.65]
    width = max(sizes) + 500
    values = torch.full((len(sizes), width), float("nan"))  # padding content must not matter
    valid = torch.zeros(len(sizes), width, dtype=torch.bool)
    rows = []
    for i, (n, w0) in enumerate(zip(sizes, weights, strict=True)):
        row = two_populations(rng, n, w0)
        cols = torch.from_numpy(rng.choice(width, n, replace=False))
        values[i, cols] = torch.from_numpy(row)
        valid[i, cols] = True
        rows.append(row)
    gmm = fit_gmm_1d(values, valid)
    assert all(t.shape == (len(sizes), 2) and t.dtype == torch.float32 for t in gmm)
    for i, row in enumerate(rows):
        ref = sklearn_fit(row, max_iter=10, tol=1e-2, reg_covar=5e-4)
        expected = sorted_params(ref.means_, ref.covariances_, ref.weights_)
        got = sorted_params(gmm.means[i].numpy(), gmm.variances[i].numpy(), gmm.weights[i].numpy())
        np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-4)
    torch.testing.assert_close(gmm.weights.sum(1), torch.ones(len(sizes)))


def test_initialisation_matches_sklearn_kmeans_on_separated_data() -> None:
    rng = np.random.default_rng(10)
    rows = np.stack([two_populations(rng, 3000, w) for w in (0.2, 0.5, 0.9)])
    gmm = fit_gmm_1d(torch.from_numpy(rows), torch.ones(rows.shape, dtype=torch.bool), max_iter=0)
    for i, row in enumerate(rows):
        ref = sklearn_fit(row, max_iter=0, reg_covar=5e-4)  # the k-means initialisation only
        expected = sorted_params(ref.means_, ref.covariances_, ref.weights_)
        got = sorted_params(gmm.means[i].numpy(), gmm.variances[i].numpy(), gmm.weights[i].numpy())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("max_iter", [1, 2, 5, 10])
def test_em_iterations_match_sklearn_from_the_same_start(max_iter: int) -> None:
    # overlapping components and a large reg_covar in float64: EM moves for many iterations, so every
    # E-step, M-step and the stopping rule must match scikit-learn started from our initialisation
    rng = np.random.default_rng(5)
    rows = np.stack(
        [
            np.concatenate([rng.normal(0.0, 1.0, 3000), rng.normal(2.5, 0.7, 2000)]),
            np.concatenate([rng.normal(1.0, 0.5, 1000), rng.normal(2.0, 0.6, 4000)]),
        ]
    )
    values, valid = torch.from_numpy(rows), torch.ones(rows.shape, dtype=torch.bool)
    start = fit_gmm_1d(values, valid, max_iter=0, reg_covar=0.05)
    gmm = fit_gmm_1d(values, valid, max_iter=max_iter, tol=1e-3, reg_covar=0.05)
    assert gmm.means.dtype == torch.float64
    for i, row in enumerate(rows):
        ref = GaussianMixture(
            n_components=2,
            max_iter=max_iter,
            tol=1e-3,
            reg_covar=0.05,
            weights_init=start.weights[i].numpy(),
            means_init=start.means[i].numpy()[:, None],
            precisions_init=1.0 / start.variances[i].numpy()[:, None, None],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ref.fit(row[:, None])
        got = np.stack([gmm.means[i].numpy(), gmm.variances[i].numpy(), gmm.weights[i].numpy()])
        expected = np.stack([ref.means_.ravel(), ref.covariances_.ravel(), ref.weights_])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_padding_does_not_change_the_fit() -> None:
    rng = np.random.default_rng(6)
    row = torch.from_numpy(two_populations(rng, 2000, 0.7))
    alone = fit_gmm_1d(row[None], torch.ones(1, row.numel(), dtype=torch.bool))
    # the same values scattered in a wider row, padding holding zeros, huge values and NaN
    width = 6000
    cols = torch.from_numpy(rng.choice(width, row.numel(), replace=False))
    values = torch.from_numpy(rng.uniform(-50, 50, (3, width)).astype(np.float32))
    values[1] = 0.0
    values[2, ::7] = float("nan")
    valid = torch.zeros(3, width, dtype=torch.bool)
    values[:, cols] = row
    valid[:, cols] = True
    padded = fit_gmm_1d(values, valid)
    for got, expected in zip(padded, alone, strict=True):
        torch.testing.assert_close(got, expected.expand(3, 2), rtol=1e-4, atol=1e-5)


def test_converged_rows_stop_changing() -> None:
    rng = np.random.default_rng(7)
    values = torch.from_numpy(np.stack([two_populations(rng, 3000, 0.6), two_populations(rng, 3000, 0.4)]))
    valid = torch.ones_like(values, dtype=torch.bool)
    ten, fifty = fit_gmm_1d(values, valid, max_iter=10), fit_gmm_1d(values, valid, max_iter=50)
    for a, b in zip(ten, fifty, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # with tol=0 the iteration keeps moving
    assert not torch.equal(
        fit_gmm_1d(values, valid, max_iter=3, tol=0.0).means,
        fit_gmm_1d(values, valid, max_iter=1, tol=0.0).means,
    )


def test_degenerate_rows_stay_finite() -> None:
    values = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0],  # no valid value
            [5.0, float("nan"), 0.0, 0.0],  # one valid value
            [2.0, 2.0, 2.0, 9.0],  # constant valid values
            [0.1, 0.2, 3.0, 3.1],  # a normal row beside them
        ]
    )
    valid = torch.tensor([[False] * 4, [True, False, False, False], [True, True, True, False], [True] * 4])
    gmm = fit_gmm_1d(values, valid)
    for t in gmm:
        assert torch.isfinite(t).all()
    assert (gmm.variances >= 5e-4 * 0.999).all()
    torch.testing.assert_close(gmm.weights.sum(1), torch.ones(4))
    post = gmm_posteriors(values.nan_to_num(), gmm)
    assert torch.isfinite(post).all()
    # maps without candidates: nothing flagged, no NaN anywhere
    losses = torch.rand(3, 16, 16)
    labels = torch.zeros(3, 16, 16, dtype=torch.long)
    labels[1] = IGNORE
    labels[2, :2, :2] = 4
    filtered, noise = adaptive_noise_filter(losses, labels, NoiseFilterConfig(min_pixels=0))
    assert not noise.any() and torch.equal(filtered, labels)


def test_posteriors_match_sklearn_predict_proba() -> None:
    rng = np.random.default_rng(8)
    refs = [
        sklearn_fit(two_populations(rng, 2000, w).astype(np.float64), max_iter=10, tol=1e-2, reg_covar=5e-4)
        for w in (0.3, 0.7)
    ]
    gmm = GMM1D(
        means=torch.tensor(np.stack([r.means_.ravel() for r in refs])),
        variances=torch.tensor(np.stack([r.covariances_.ravel() for r in refs])),
        weights=torch.tensor(np.stack([r.weights_ for r in refs])),
    )
    x = rng.uniform(-1.0, 8.0, (2, 5, 7))
    post = gmm_posteriors(torch.from_numpy(x), gmm)
    assert post.shape == (2, 5, 7, 2)
    for i, ref in enumerate(refs):
        expected = ref.predict_proba(x[i].reshape(-1, 1)).reshape(5, 7, 2)
        np.testing.assert_allclose(post[i].numpy(), expected, atol=1e-12, rtol=1e-9)


def test_half_precision_losses_and_requires_grad() -> None:
    rng = np.random.default_rng(9)
    loss, labels = synthetic_map(rng, 96, "bimodal")
    reference = adaptive_noise_filter(torch.from_numpy(loss[None]), torch.from_numpy(labels[None]))[1]
    grad_loss = torch.from_numpy(loss[None]).requires_grad_()
    assert torch.equal(adaptive_noise_filter(grad_loss, torch.from_numpy(labels[None]))[1], reference)
    half = adaptive_noise_filter(torch.from_numpy(loss[None]).half(), torch.from_numpy(labels[None]))[1]
    assert (half == reference).float().mean() > 0.99


def test_reduction_without_gemm_gives_the_same_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # the multiply-and-sum reduction used off the CPU, exercised here on the CPU
    rng = np.random.default_rng(11)
    values = torch.from_numpy(np.stack([two_populations(rng, 3000, w) for w in (0.3, 0.6)]))
    valid = torch.from_numpy(rng.random(values.shape) < 0.8)
    with_gemm = fit_gmm_1d(values, valid)
    monkeypatch.setattr(noise_filter, "_use_gemm", lambda device: False)
    without = fit_gmm_1d(values, valid)
    for a, b in zip(with_gemm, without, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_packed_candidates_give_the_same_filter() -> None:
    """On the CPU the candidates are packed to the front of their rows; the accelerators' padded rows give
    the same mixtures and the same decisions."""
    rng = np.random.default_rng(17)
    maps = [synthetic_map(rng, 96, kind) for kind in ("bimodal", "bimodal", "unimodal", "empty")]
    losses = torch.from_numpy(np.stack([m[0] for m in maps]))
    labels = torch.from_numpy(np.stack([m[1] for m in maps]))
    options = NoiseFilterConfig(min_pixels=10)
    packed = adaptive_noise_filter(losses, labels, options)
    valid = (labels != 0) & (labels != IGNORE)
    assert valid.sum((1, 2)).max() < 0.75 * 96 * 96  # the CPU path does pack these rows
    fits = fit_gmm_1d(losses.view(4, -1), valid.view(4, -1))
    with accelerator_paths():
        padded = adaptive_noise_filter(losses, labels, options)
        padded_fits = fit_gmm_1d(losses.view(4, -1), valid.view(4, -1))
    assert torch.equal(packed[0], padded[0]) and torch.equal(packed[1], padded[1])
    for a, b in zip(fits, padded_fits, strict=True):
        # float32 sums in another order: tight for the two-population rows; a one-population row's split is
        # ill-conditioned and moves by ~0.2 %
        torch.testing.assert_close(a[:2], b[:2], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a[2:], b[2:], rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("use_gemm", [True, False])
def test_filter_does_not_synchronise(monkeypatch: pytest.MonkeyPatch, use_gemm: bool) -> None:
    """No op reads a value back to the host or has a data-dependent output size (``tests.helpers``), on
    the GEMM path of the CPU and on the elementwise path used elsewhere."""
    rng = np.random.default_rng(13)
    maps = [synthetic_map(rng, 64, kind) for kind in ("bimodal", "unimodal", "empty")]
    losses = torch.from_numpy(np.stack([m[0] for m in maps]))
    labels = torch.from_numpy(np.stack([m[1] for m in maps]))
    options = NoiseFilterConfig(min_pixels=10)
    monkeypatch.setattr(noise_filter, "_use_gemm", lambda device: use_gemm)
    # the accelerators' path (no packing of the candidates), checked on the CPU
    with monkeypatch.context() as patch, accelerator_paths(), NoSyncMode():
        forbid_host_reads(patch)
        filtered, noise = adaptive_noise_filter(losses, labels, options)
    assert noise[0].any() and not noise[1:].any()
    assert torch.equal(filtered, torch.where(noise, IGNORE, labels))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(12)
    maps = [synthetic_map(rng, 96, kind) for kind in ("bimodal", "bimodal", "unimodal", "empty")]
    losses = torch.from_numpy(np.stack([m[0] for m in maps]))
    labels = torch.from_numpy(np.stack([m[1] for m in maps]))
    _, cpu_noise = adaptive_noise_filter(losses, labels)
    cuda_filtered, cuda_noise = adaptive_noise_filter(losses.cuda(), labels.cuda())
    assert cuda_noise.is_cuda and cuda_filtered.is_cuda
    assert (cuda_noise.cpu() == cpu_noise).float().mean() > 0.9999
    assert torch.equal(cuda_noise.cpu().any(2).any(1), cpu_noise.any(2).any(1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": torch.zeros(4)}, "values"),
        ({"values": torch.zeros(2, 4, dtype=torch.long)}, "values"),
        ({"valid": torch.ones(2, 4)}, "valid"),
        ({"valid": torch.ones(2, 5, dtype=torch.bool)}, "valid"),
        ({"max_iter": -1}, "max_iter"),
        ({"kmeans_iter": -1}, "kmeans_iter"),
        ({"tol": -1.0}, "tol"),
        ({"reg_covar": -1.0}, "reg_covar"),
        ({"num_bins": 1}, "num_bins"),
    ],
)
def test_fit_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"values": torch.zeros(2, 4), "valid": torch.ones(2, 4, dtype=torch.bool), **kwargs}
    with pytest.raises(ValueError, match=match):
        fit_gmm_1d(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss_maps": torch.zeros(2, 4)}, "loss_maps"),
        ({"loss_maps": torch.zeros(2, 4, 4, dtype=torch.long)}, "loss_maps"),
        ({"labels": torch.zeros(2, 4, 5, dtype=torch.long)}, "labels"),
        ({"labels": torch.zeros(2, 4, 4)}, "labels"),
        ({"posterior": 1.5}, "posterior"),
        ({"min_pixels": -1}, "min_pixels"),
        ({"min_gap": -0.5}, "min_gap"),
    ],
)
def test_filter_rejects_bad_input(kwargs: dict, match: str) -> None:
    options = {k: kwargs.pop(k) for k in ("posterior", "min_pixels", "min_gap") if k in kwargs}
    args = {"loss_maps": torch.zeros(2, 4, 4), "labels": torch.zeros(2, 4, 4, dtype=torch.long), **kwargs}
    with pytest.raises(ValueError, match=match):
        adaptive_noise_filter(**args, options=NoiseFilterConfig(**options))


def test_posteriors_reject_mismatched_mixture() -> None:
    gmm = GMM1D(torch.zeros(3, 2), torch.ones(3, 2), torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match=r"gmm\.means"):
        gmm_posteriors(torch.zeros(2, 5), gmm)
