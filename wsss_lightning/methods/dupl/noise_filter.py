"""Adaptive noise filtering of pseudo-labels with per-image two-component 1-D Gaussian mixtures (DuPL).

DuPL (paper Sec. 3.3, Eq. 6-7; ``train_final_voc.py``) fits, for every image and sub-net, a two-component
Gaussian mixture to the per-pixel cross-entropy losses of the foreground pixels with scikit-learn on the
CPU, and drops (sets to ignore) the foreground pixels that the high-loss component explains with posterior
above 0.95. Here all images are fitted at once: each image's candidate losses are one row of a padded
``(N, M)`` tensor with a validity mask, and k-means initialisation plus EM run batched on the tensor's
device without host synchronisation.

The EM follows ``sklearn.mixture.GaussianMixture(n_components=2, covariance_type="full")``: k-means hard
assignments as the initial responsibilities, ``reg_covar`` added to every variance, and a row stops after
the iteration in which its mean log-likelihood per sample changed by less than ``tol``. The E-step
responsibilities and the M-step sums are exact over the values. Two auxiliary quantities are computed
from a fine histogram of each row that keeps the exact count, sum and sum of squares of every bin:

* the k-means initialisation (scikit-learn's k-means++ is randomly seeded and cannot be matched bit for bit;
  Lloyd's algorithm on the bins reaches the same split up to the bin width);
* the mean log-likelihood that drives the stopping rule, integrated per bin to second order around the bin
  mean (error far below ``tol``).

In one dimension a component's log-density is a quadratic in ``x``, so the log-odds between the two
components is one quadratic, the responsibilities are its sigmoid, and the M-step needs only sums of
``r * (1, x, x^2)``. On the CPU an EM iteration is three passes over the ``(valid, x, x^2)`` features of the
values: a batched GEMM for the log-odds, an in-place sigmoid and a batched GEMM for the sums (elsewhere the
log-odds take three elementwise passes and the sums a multiply-and-sum). On the CPU each row's candidate
values are first packed to its front (a third of a DuPL crop's pixels), so those passes skip the rest.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from wsss_lightning.host_reads import host_reads_allowed
from wsss_lightning.methods.dupl.options import NoiseFilterConfig

__all__ = ["GMM1D", "adaptive_noise_filter", "fit_gmm_1d", "gmm_posteriors"]

_LOG_2PI = math.log(2.0 * math.pi)


class GMM1D(NamedTuple):
    """Parameters of N independent two-component 1-D Gaussian mixtures.

    Attributes:
        means: ``(N, 2)`` component means.
        variances: ``(N, 2)`` component variances (``reg_covar`` included).
        weights: ``(N, 2)`` mixing weights; rows sum to 1.
    """

    means: Tensor
    variances: Tensor
    weights: Tensor


def _weighted_sums(weights: Tensor, feats: Tensor) -> Tensor:
    """``out[n, k, f] = sum_m weights[n, k, m] * feats[n, f, m]``.

    Args:
        weights: ``(N, K, M)``.
        feats: ``(N, F, M)``.

    Returns:
        ``(N, K, F)``.
    """
    if _use_gemm(weights.device):
        # One batched GEMM reads each operand once: the fastest reduction on the CPU.
        return torch.bmm(weights, feats.transpose(1, 2))
    return (weights.unsqueeze(2) * feats.unsqueeze(1)).sum(dim=-1)


def _use_gemm(device: torch.device) -> bool:
    """Whether :func:`_weighted_sums` may use a batched GEMM on ``device``.

    Only on the CPU: on a GPU a GEMM may run in reduced precision (TF32 under
    ``torch.set_float32_matmul_precision("high")``), which would spoil the variance of a tight component,
    while a multiply-and-sum is plain float32 and, at these shapes, memory-bound anyway.
    """
    return device.type == "cpu"


def _params_from_sums(
    stats0: Tensor, totals: Tensor, reg_covar: float, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Component parameters from responsibility-weighted moments, as scikit-learn's M-step.

    Args:
        stats0: ``(N, 3)`` sums of ``r0 * (1, x, x^2)`` over the valid values, ``r0`` = component-0
            responsibility.
        totals: ``(N, 3)`` sums of ``(1, x, x^2)`` over the valid values.
        reg_covar: added to both variances.
        eps: machine epsilon of the compute dtype (scikit-learn adds ``10 * eps`` to the soft counts).

    Returns:
        means, variances, soft counts ``nk``, each ``(N, 2)``.
    """
    sums = torch.stack([stats0, totals - stats0], dim=1)  # (N, 2, 3): component 1 takes the rest
    raw_n, s1, s2 = sums.unbind(-1)
    nk = raw_n + 10.0 * eps
    means = s1 / nk
    # sum r (x - mu)^2 = S2 - 2 mu S1 + mu^2 N; rounding can make it slightly negative for a collapsed
    # component, hence the clamp before the regulariser.
    scatter = (s2 - 2.0 * means * s1 + means * means * raw_n).clamp_min(0.0)
    return means, scatter / nk + reg_covar, nk


def _log_odds_coefficients(
    means: Tensor, variances: Tensor, weights: Tensor, centre: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of ``log(w0 N(x|0)) - log(w1 N(x|1)) = a t^2 + b t + c`` with ``t = x - centre``.

    Args:
        means: ``(N, 2)``.
        variances: ``(N, 2)``.
        weights: ``(N, 2)``.
        centre: ``(N,)`` point the quadratic is expanded around (keeps the coefficients small).

    Returns:
        ``a``, ``b``, ``c``, each ``(N,)``.
    """
    u = means - centre.unsqueeze(-1)
    prec = variances.reciprocal()
    log_norm = weights.log() - 0.5 * variances.log() - 0.5 * u * u * prec  # constant term of log(w N)
    a = -0.5 * (prec[:, 0] - prec[:, 1])
    b = u[:, 0] * prec[:, 0] - u[:, 1] * prec[:, 1]
    c = log_norm[:, 0] - log_norm[:, 1]
    return a, b, c


def _quadratic(t: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a t^2 + b t + c`` per row by Horner's scheme; ``t`` is ``(N, ...)``, coefficients ``(N,)``."""
    shape = (-1,) + (1,) * (t.dim() - 1)
    return torch.addcmul(b.view(shape), a.view(shape), t).mul_(t).add_(c.view(shape))


def _quadratic_of_feats(feats: Tensor, a: Tensor, b: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """``out[n, 0, m] = a x^2 + b x + c`` at valid entries from ``feats[n] = (valid, x, x^2)``; 0 elsewhere.

    Args:
        feats: ``(N, 3, M)`` ``(valid, x, x^2)`` with zeros where invalid.
        a: ``(N,)``.
        b: ``(N,)``.
        c: ``(N,)``.
        out: ``(N, 1, M)`` buffer, returned.
    """
    if _use_gemm(feats.device):
        # one batched GEMM: a single pass over the features instead of three elementwise passes
        return torch.bmm(torch.stack([c, b, a], dim=-1).unsqueeze(1), feats, out=out)
    valid_f, xs, xs2 = feats.unbind(1)
    r = out[:, 0]
    torch.mul(xs2, a.unsqueeze(1), out=r).addcmul_(xs, b.unsqueeze(1)).addcmul_(valid_f, c.unsqueeze(1))
    return out


def _histogram(feats: Tensor, lo: Tensor, hi: Tensor, num_bins: int) -> Tensor:
    """Per-row histogram over ``[lo, hi]`` keeping each bin's exact count, sum and sum of squares.

    Args:
        feats: ``(N, 3, M)`` ``(valid, x, x^2)`` with zeros where invalid (so invalid entries add nothing
            to whichever bin they fall in).
        lo: ``(N,)`` lower end of the range.
        hi: ``(N,)`` upper end.
        num_bins: number of equal-width bins.

    Returns:
        ``(N, 3, num_bins)`` sums of ``(1, x, x^2)`` per bin.
    """
    xs = feats[:, 1]
    span = hi - lo
    scale = torch.where(span > 0, num_bins / span.clamp_min(torch.finfo(span.dtype).tiny), 0.0).unsqueeze(1)
    # (x - lo) * scale; invalid entries (x = 0) land in the bin of 0 and add zeros there. The position is
    # >= 0 up to rounding and the int conversion truncates towards zero: only the top needs a clamp.
    position = torch.addcmul(-lo.unsqueeze(1) * scale, xs, scale).clamp_max_(num_bins - 1)
    index = position.long()
    hist = feats.new_zeros(feats.shape[0], 3, num_bins)
    return hist.scatter_add_(2, index.unsqueeze(1).expand_as(feats), feats)


def _scatter_about_mean(sums: Tensor) -> Tensor:
    """``sum (x - mean)^2`` from ``(..., 3)`` sums of ``(1, x, x^2)``; 0 for empty sets."""
    return sums[..., 2] - sums[..., 1] * sums[..., 1] / sums[..., 0].clamp_min(1.0)


def _two_means_lower_stats(hist: Tensor, lo: Tensor, hi: Tensor, totals: Tensor, kmeans_iter: int) -> Tensor:
    """Moments of the lower cluster of a batched 1-D k-means with two centres, on binned values.

    Lloyd's algorithm runs from two starts per row, (min, max) and (mean - std, mean + std), and the
    partition with the lower inertia is kept. scikit-learn's k-means++ with Lloyd run to convergence lands on
    the global optimum of this 1-D problem on loss maps, and one deterministic start does not: from
    (min, max) a few very large losses capture the upper centre and stay a cluster of their own, while from
    (mean - std, mean + std) a sparse outlier cluster that is optimal is never reached. In 1-D Lloyd keeps
    the centres ordered, so the upper cluster is the values above the midpoint; a bin is assigned as a
    whole, by its mean.

    Args:
        hist: ``(N, 3, B)`` per-bin sums of ``(1, x, x^2)``.
        lo: ``(N,)`` smallest valid value.
        hi: ``(N,)`` largest valid value.
        totals: ``(N, 3)`` sums of ``(1, x, x^2)`` over all valid values.
        kmeans_iter: Lloyd steps.

    Returns:
        ``(N, 3)`` sums of ``(1, x, x^2)`` over the lower cluster.
    """
    count, s1, s2 = totals.unbind(-1)
    safe_count = count.clamp_min(1.0)
    mean = s1 / safe_count
    std = (s2 / safe_count - mean * mean).clamp_min(0.0).sqrt()
    centres = torch.stack(
        [torch.stack([lo, hi], -1), torch.stack([mean - std, mean + std], -1)], 1
    )  # (N,2,2)
    bin_means = (hist[:, 1] / hist[:, 0].clamp_min(1.0)).unsqueeze(1)  # (N, 1, B); empty bins hold zeros
    tot = totals.unsqueeze(1)

    def upper_sums(centres: Tensor) -> Tensor:
        """``(N, 2, 3)`` sums over the bins nearer to centre 1 (ties go to centre 0)."""
        upper = (bin_means > centres.mean(dim=-1, keepdim=True)).to(hist.dtype)
        return _weighted_sums(upper, hist)

    for _ in range(kmeans_iter):
        up = upper_sums(centres)
        down = tot - up
        new = torch.stack([down[..., 1] / down[..., 0], up[..., 1] / up[..., 0]], dim=-1)
        # An empty cluster keeps its centre (scikit-learn relocates it; only constant rows get here).
        centres = torch.where(torch.stack([down[..., 0], up[..., 0]], dim=-1) > 0, new, centres)

    up = upper_sums(centres)
    down = tot - up
    # sum of squared distances to the cluster means, per start
    inertia = _scatter_about_mean(down) + _scatter_about_mean(up)
    best = inertia.argmin(dim=1)  # (N,); ties keep the (min, max) start
    return down.gather(1, best.view(-1, 1, 1).expand(-1, 1, 3)).squeeze(1)


class _BinnedValues(NamedTuple):
    """Per-bin count ``n``, mean ``m`` and scatter ``sum (x - m)^2`` of a histogram, each ``(N, B)``."""

    counts: Tensor
    means: Tensor
    scatters: Tensor

    @classmethod
    def from_hist(cls, hist: Tensor) -> _BinnedValues:
        n, s1, s2 = hist.unbind(1)
        m = s1 / n.clamp_min(1.0)  # empty bins: mean 0, no weight
        return cls(n, m, (s2 - s1 * m).clamp_min(0.0))


def _binned_log_likelihood(bins: _BinnedValues, means: Tensor, variances: Tensor, weights: Tensor) -> Tensor:
    """Sum over the binned values of ``g(x) = log p(x)``, to second order around each bin mean.

    ``sum_{x in bin} g(x) ~ n g(m) + g''(m) / 2 * sum (x - m)^2`` with ``m`` the bin mean (the first-order
    term vanishes there). The error per value is of the order ``|g'''| width^3``: negligible against the
    ``tol`` of the stopping rule.

    Args:
        bins: per-bin statistics, each ``(N, B)``.
        means: ``(N, 2)``.
        variances: ``(N, 2)``.
        weights: ``(N, 2)``.

    Returns:
        ``(N,)`` log-likelihood sums.
    """
    mu, var, w = means.unsqueeze(-1), variances.unsqueeze(-1), weights.unsqueeze(-1)  # (N, 2, 1)
    z = (bins.means.unsqueeze(1) - mu) / var  # (N, 2, B): (x - mu) / v
    # log(w_k N(x | k)) = log w_k - (log 2 pi + log v_k) / 2 - z_k^2 v_k / 2
    log_wn = torch.addcmul(w.log() - 0.5 * (_LOG_2PI + var.log()), z * z, var, value=-0.5)
    g = torch.logsumexp(log_wn, dim=1)  # (N, B)
    r = torch.softmax(log_wn, dim=1)  # responsibilities
    rz = r * z
    # g'' = sum_k r_k (z_k^2 - 1 / v_k) - (sum_k r_k z_k)^2
    curvature = (rz * z - r / var).sum(dim=1) - rz.sum(dim=1).square()
    return (bins.counts * g).sum(dim=1) + 0.5 * (curvature * bins.scatters).sum(dim=1)


def fit_gmm_1d(
    values: Tensor,
    valid: Tensor,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    kmeans_iter: int = 10,
    num_bins: int = 1024,
) -> GMM1D:
    """Fit N independent two-component 1-D Gaussian mixtures, each to the valid entries of one row.

    Mirrors ``GaussianMixture(n_components=2, max_iter, tol, reg_covar)`` of scikit-learn per row:

    1. k-means with two centres: ``kmeans_iter`` Lloyd steps from (min, max) and from
       (mean - std, mean + std) of the row, on a ``num_bins`` histogram; the partition with the lower
       inertia is kept;
    2. initial weights / means / variances (+ ``reg_covar``) from those hard assignments;
    3. up to ``max_iter`` EM iterations (E-step, then M-step with ``reg_covar`` added to the variances),
       exact over the values; a row stops changing after the iteration in which its mean log-likelihood per
       sample (evaluated in the E-step, from the histogram) moved by less than ``tol``.

    All rows run the full ``max_iter`` iterations (converged rows are frozen by masking), so nothing is
    read back to the host. Component 0 starts as the lower k-means cluster.

    Args:
        values: ``(N, M)`` floating values; entries where ``valid`` is False are ignored (they may hold
            anything, NaN included).
        valid: ``(N, M)`` bool mask of the values each mixture is fitted to. A row with fewer than two
            valid values gets a finite but meaningless mixture.
        max_iter: EM iterations, ``>= 0`` (0: the k-means initialisation).
        tol: convergence threshold on the change of the mean log-likelihood, ``>= 0``.
        reg_covar: added to every variance, ``>= 0``.
        kmeans_iter: Lloyd steps of the initialisation, ``>= 0``.
        num_bins: bins per row of the histogram behind the initialisation and the stopping rule, ``>= 2``.

    Returns:
        ``GMM1D`` with ``(N, 2)`` means, variances and weights in the compute dtype (float64 for float64
        input, float32 otherwise).

    Raises:
        ValueError: on bad shapes, dtypes or settings.
    """
    if values.dim() != 2 or not values.is_floating_point():
        raise ValueError(
            f"fit_gmm_1d: values must be a floating (N, M) tensor, got {values.dtype} {tuple(values.shape)}"
        )
    if valid.shape != values.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"fit_gmm_1d: valid must be a bool tensor of shape {tuple(values.shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    for name, value, low in (
        ("max_iter", max_iter, 0),
        ("kmeans_iter", kmeans_iter, 0),
        ("num_bins", num_bins, 2),
    ):
        if value < low:
            raise ValueError(f"fit_gmm_1d: {name} must be >= {low}, got {value}")
    if tol < 0:
        raise ValueError(f"fit_gmm_1d: tol must be >= 0, got {tol}")
    if reg_covar < 0:
        raise ValueError(f"fit_gmm_1d: reg_covar must be >= 0, got {reg_covar}")

    return _fit(values, valid, max_iter, tol, reg_covar, kmeans_iter, num_bins)[0]


def _fit(
    values: Tensor,
    valid: Tensor,
    max_iter: int,
    tol: float,
    reg_covar: float,
    kmeans_iter: int,
    num_bins: int,
) -> tuple[GMM1D, Tensor]:
    """:func:`fit_gmm_1d` without the argument checks; also returns the ``(N,)`` valid counts."""
    if host_reads_allowed(values.device):
        values, valid = _packed(values, valid)
    # Half-precision values would make the moment sums (sums of x^2 over ~10^5 values) useless.
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    eps = torch.finfo(dtype).eps
    n_rows, n_cols = values.shape
    feats = values.new_empty((n_rows, 3, n_cols), dtype=dtype)  # rows (valid, x, x^2), zeros where invalid
    valid_f, xs, xs2 = feats.unbind(1)
    valid_f.copy_(valid)
    # Multiply instead of masking (a masked select is several times slower on the CPU); invalid inf / NaN
    # entries turn into NaN and are then zeroed.
    torch.mul(values.detach(), valid_f, out=xs).nan_to_num_(nan=0.0)
    count, total = feats[:, :2].sum(dim=2).unbind(1)
    safe_count = count.clamp_min(1.0)
    # Work around each row's mean: the moments then stay well conditioned (variance = E[x^2] - mu^2).
    shift = total / safe_count
    xs.addcmul_(valid_f, shift.unsqueeze(1), value=-1.0)  # x - shift where valid, 0 elsewhere
    torch.mul(xs, xs, out=xs2)
    totals = torch.cat([count.unsqueeze(1), feats[:, 1:].sum(dim=2)], dim=1)  # (N, 3)
    # Centred values have min <= 0 <= max, so the zeros at invalid entries do not change the row's range.
    lo, hi = xs.amin(dim=1), xs.amax(dim=1)
    hist = _histogram(feats, lo, hi, num_bins)
    bins = _BinnedValues.from_hist(hist)

    lower_stats = _two_means_lower_stats(hist, lo, hi, totals, kmeans_iter)  # cluster 0 = component 0
    means, variances, nk = _params_from_sums(lower_stats, totals, reg_covar, eps)
    weights = nk / safe_count.unsqueeze(1)  # scikit-learn's initialisation divides by n_samples

    done = torch.zeros_like(count, dtype=torch.bool)
    prev_ll = torch.full_like(count, -torch.inf)
    zero = torch.zeros_like(count)
    resp = feats.new_empty((n_rows, 1, n_cols))
    for _ in range(max_iter):
        # E-step: r0 = sigmoid(log(w0 N0) - log(w1 N1)), a quadratic in x.
        a, b, c = _log_odds_coefficients(means, variances, weights, zero)
        _quadratic_of_feats(feats, a, b, c, out=resp).sigmoid_()
        stats0 = _weighted_sums(resp, feats).squeeze(1)  # (N, 3); invalid entries have zero features
        ll = _binned_log_likelihood(bins, means, variances, weights) / safe_count

        # M-step
        new_means, new_variances, nk = _params_from_sums(stats0, totals, reg_covar, eps)
        new_weights = nk / nk.sum(dim=1, keepdim=True)

        # Rows that converged in an earlier iteration keep their parameters (scikit-learn stops there).
        keep = done.unsqueeze(1)
        means = torch.where(keep, means, new_means)
        variances = torch.where(keep, variances, new_variances)
        weights = torch.where(keep, weights, new_weights)
        converged_now = (ll - prev_ll).abs() < tol
        prev_ll = torch.where(done, prev_ll, ll)
        done = done | converged_now

    return GMM1D(means=means + shift.unsqueeze(1), variances=variances, weights=weights), count


def _packed(values: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's valid values moved to its front, the rows cut to the longest: ``(values, valid)``.

    The EM passes then cover the candidates only (DuPL's foreground pixels above the loss floor: about a
    third of a crop) instead of every pixel. Reads the longest row's length on the host: CPU only.
    """
    counts = valid.sum(dim=1)
    width = max(int(counts.max()), 1) if counts.numel() else 1
    if width > 0.75 * values.shape[1]:  # little to gain
        return values, valid
    packed_valid = torch.arange(width, device=values.device) < counts.unsqueeze(1)
    packed = values.new_zeros((values.shape[0], width))
    # both masks run in row-major order: row n's values fill row n's front
    packed.masked_scatter_(packed_valid, values.masked_select(valid))
    return packed, packed_valid


def _check_gmm(gmm: GMM1D, n: int, fn: str) -> None:
    for name, t in zip(GMM1D._fields, gmm, strict=True):
        if t.shape != (n, 2):
            raise ValueError(f"{fn}: gmm.{name} must have shape ({n}, 2), got {tuple(t.shape)}")


def gmm_posteriors(x: Tensor, gmm: GMM1D) -> Tensor:
    """Posterior responsibilities of both components for every entry of ``x`` (``predict_proba``).

    Args:
        x: ``(N, ...)`` floating values; row ``n`` is evaluated under mixture ``n``.
        gmm: mixtures with ``(N, 2)`` parameters.

    Returns:
        ``(N, ..., 2)`` posteriors in the mixture's dtype; the last axis sums to 1.

    Raises:
        ValueError: if ``x`` is not floating or the parameter shapes do not match its first dimension.
    """
    if x.dim() < 1 or not x.is_floating_point():
        raise ValueError(
            f"gmm_posteriors: x must be a floating (N, ...) tensor, got {x.dtype} {tuple(x.shape)}"
        )
    _check_gmm(gmm, x.shape[0], "gmm_posteriors")
    centre = gmm.means.mean(dim=1)
    a, b, c = _log_odds_coefficients(gmm.means, gmm.variances, gmm.weights, centre)
    shape = (-1,) + (1,) * (x.dim() - 1)
    d = _quadratic(x.to(gmm.means.dtype) - centre.view(shape), a, b, c)
    return torch.stack([torch.sigmoid(d), torch.sigmoid(-d)], dim=-1)


def adaptive_noise_filter(
    loss_maps: Tensor, labels: Tensor, options: NoiseFilterConfig | None = None, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """DuPL's adaptive noise filtering (ANF) of pseudo-labels, all maps at once.

    Per map: the candidates are the foreground pixels (label neither 0 nor ``ignore_index``) whose loss
    exceeds ``options.min_loss``. A map is filtered only if it has more than ``options.min_pixels`` candidates
    and the two-component mixture fitted to the candidate losses (:func:`fit_gmm_1d`) has means further apart
    than ``options.min_gap``. Then the component with the larger mean is the noise component, its posterior
    is evaluated for every pixel of the map, and foreground pixels with posterior above ``options.posterior``
    become ``ignore_index``. Background is never filtered (paper Eqs. 6-7, Sec. 3.3).

    In DuPL, N is the batch of both sub-nets together and map ``k`` is sub-net ``k``'s pseudo-label with
    the cross-entropy of sub-net ``k``'s own segmentation logits against it.

    Args:
        loss_maps: ``(N, H, W)`` floating per-pixel losses of each map's own prediction against its
            pseudo-label (ignored pixels may hold anything, e.g. 0); used detached.
        labels: ``(N, H, W)`` integer pseudo-labels (0 background, 1..C foreground, ``ignore_index``).
        options: the filter's thresholds and EM settings (``enabled`` is the caller's); defaults as the
            paper and the released code.
        ignore_index: label of ignored pixels.

    Returns:
        ``(filtered_labels, noise_mask)``: labels with the noisy pixels set to ``ignore_index`` (same
        dtype as ``labels``) and the ``(N, H, W)`` bool mask of those pixels.

    Raises:
        ValueError: on mismatched shapes, wrong dtypes or settings out of range.
    """
    if torch.is_autocast_enabled(loss_maps.device.type):
        # the GMM's EM (variances, log-likelihoods) is float32 maths: autocast off, the losses in float32
        with torch.autocast(loss_maps.device.type, enabled=False):
            return adaptive_noise_filter(loss_maps.float(), labels, options, ignore_index)
    if loss_maps.dim() != 3 or not loss_maps.is_floating_point():
        raise ValueError(
            f"adaptive_noise_filter: loss_maps must be a floating (N, H, W) tensor, "
            f"got {loss_maps.dtype} {tuple(loss_maps.shape)}"
        )
    if (
        labels.shape != loss_maps.shape
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            f"adaptive_noise_filter: labels must be an integer tensor of shape {tuple(loss_maps.shape)}, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    options = options or NoiseFilterConfig()
    min_pixels, min_gap, posterior_threshold = options.min_pixels, options.min_gap, options.posterior
    n = loss_maps.shape[0]
    losses = loss_maps.detach().reshape(n, -1)
    flat_labels = labels.reshape(n, -1)
    foreground = (flat_labels != 0) & (flat_labels != ignore_index)
    candidates = foreground & (losses > options.min_loss)
    gmm, count = _fit(
        losses,
        candidates,
        max_iter=options.max_iter,
        tol=options.tol,
        reg_covar=options.reg_covar,
        kmeans_iter=10,
        num_bins=1024,
    )

    mu0, mu1 = gmm.means.unbind(1)
    active = (count > min_pixels) & ((mu0 - mu1).abs() > min_gap)
    # posterior > p  <=>  log-odds > logit(p); maps that are not filtered get an unreachable threshold.
    if posterior_threshold <= 0.0:
        logit = -math.inf
    elif posterior_threshold >= 1.0:
        logit = math.inf
    else:
        logit = math.log(posterior_threshold) - math.log1p(-posterior_threshold)
    threshold = torch.where(active, logit, math.inf).to(gmm.means.dtype)
    # Log-odds of the noise component (larger mean) against the other: flip the sign when it is component 1.
    sign = torch.where(mu0 > mu1, 1.0, -1.0).to(gmm.means.dtype)
    centre = 0.5 * (mu0 + mu1)
    a, b, c = _log_odds_coefficients(gmm.means, gmm.variances, gmm.weights, centre)
    # log-odds > threshold  <=>  sign (a t^2 + b t + c) - threshold > 0: the threshold joins the constant
    # term, and the quadratic takes three passes over the pixels (t, a t + b, (a t + b) t + c).
    t = losses.to(centre.dtype) - centre.unsqueeze(1)
    excess = torch.addcmul((sign * b).unsqueeze(1), (sign * a).unsqueeze(1), t)
    torch.addcmul((sign * c - threshold).unsqueeze(1), excess, t, out=excess)
    noise_mask = (excess > 0).logical_and_(foreground).view_as(loss_maps)
    return labels.masked_fill(noise_mask, ignore_index), noise_mask
