"""Gaussian (bilateral) filtering in a joint position + colour feature space, in pure torch.

The dense-CRF loss (:mod:`wsss_lightning.losses.dense_crf`) needs ``W v`` for the fully connected Gaussian
affinity ``W_ij = exp(-½ ‖f_i − f_j‖²)`` between all pixels of an image, for ``K`` value channels at once.
Two implementations:

- :class:`PermutohedralLattice`: the permutohedral-lattice approximation of Adams, Baek and Davis, "Fast
  High-Dimensional Filtering Using the Permutohedral Lattice" (Eurographics 2010), following the scheme of
  Krähenbühl's dense-CRF code (``densecrf/src/permutohedral.cpp``), which is also what the C++ filter of
  Tang et al.'s regularized losses uses (github.com/meng-tang/rloss, ``pytorch/wrapper/bilateralfilter/``).
  O(N) per channel; ``W`` is approximated up to a content-dependent scale (0.54-0.58 of the exact sum on
  natural-like images, see the class docstring).
- :func:`exact_gaussian_filter`: the exact dense sum, chunked over query rows; O(N²), a reference for small
  images (and usable on a GPU).

Shapes: B images, N points (pixels) per image, d feature dimensions, K value channels, P points in all
(flat layout with a batch index per point), M lattice vertices.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import torch
from torch import Tensor

from wsss_lightning.host_reads import host_reads_allowed

__all__ = ["PermutohedralLattice", "bilateral_features", "exact_gaussian_filter"]

_INT64_LIMIT = 2**62
_SENTINEL = (
    _INT64_LIMIT  # key of the unused vertex slots of a padded lattice: above every key and neighbour key
)
_MAX_DIM = 15  # the rank order of a simplex is kept as d base-(d+1) digits in an int64


def bilateral_features(images: Tensor, sigma_xy: float, sigma_rgb: float) -> Tensor:
    """Per-pixel features ``(x/σ_xy, y/σ_xy, R/σ_rgb, G/σ_rgb, B/σ_rgb)`` of the bilateral kernel.

    With these features ``exp(-½ ‖f_i − f_j‖²) = exp(-‖p_i − p_j‖²/(2σ_xy²) − ‖I_i − I_j‖²/(2σ_rgb²))``, the
    appearance kernel of the dense CRF (x = column, y = row, in pixels of the given grid), as rloss's
    ``bilateralfilter.cpp`` builds them.

    Args:
        images: ``(B, 3, H, W)`` RGB images (any real dtype; 0..255 for the usual σ_rgb).
        sigma_xy: spatial standard deviation in pixels of this grid (> 0).
        sigma_rgb: colour standard deviation in intensity units (> 0).

    Returns:
        ``(B, H*W, 5)`` float32 features (float64 for float64 images), pixels in row-major order.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"bilateral_features: images must be (B, 3, H, W); got {tuple(images.shape)}")
    if not (sigma_xy > 0 and sigma_rgb > 0):
        raise ValueError(
            f"bilateral_features: sigma_xy and sigma_rgb must be > 0; got {sigma_xy}, {sigma_rgb}"
        )
    dtype = images.dtype if images.dtype == torch.float64 else torch.float32
    b, _, h, w = images.shape
    feats = torch.empty(b, h, w, 5, dtype=dtype, device=images.device)
    feats[..., 0] = torch.arange(w, dtype=dtype, device=images.device).div_(sigma_xy)
    feats[..., 1] = torch.arange(h, dtype=dtype, device=images.device).div_(sigma_xy)[:, None]
    feats[..., 2:] = images.to(dtype).permute(0, 2, 3, 1) / sigma_rgb
    return feats.reshape(b, h * w, 5)


def exact_gaussian_filter(features: Tensor, values: Tensor, chunk_rows: int = 4096) -> Tensor:
    """Exact dense Gaussian filter ``out_i = Σ_j exp(-½ ‖f_i − f_j‖²) v_j`` within each image (j = i included).

    Squared distances come from one batched matrix product per chunk (``‖a‖² + ‖b‖² − 2 a·b`` on features
    centred per image, clamped at 0), so at most ``chunk_rows × N`` kernel entries exist at a time, never
    ``N × N``: the query rows of all images are processed ``max(1, chunk_rows // B)`` per image at a time.
    Differentiable by autograd when an input requires grad (the chunks' kernels are then kept for backward;
    the dense-CRF loss calls it without grad).

    Args:
        features: ``(B, N, d)`` features (already divided by their standard deviations).
        values: ``(B, N, K)`` values to filter.
        chunk_rows: query rows (summed over the batch) per chunk; memory ``≈ 4 · chunk_rows · N`` bytes.

    Returns:
        ``(B, N, K)`` filtered values, in the dtype of ``features``.
    """
    if features.ndim != 3 or values.ndim != 3 or features.shape[:2] != values.shape[:2]:
        raise ValueError(
            "exact_gaussian_filter: expected features (B, N, d) and values (B, N, K) of the same B, N; "
            f"got {tuple(features.shape)} and {tuple(values.shape)}"
        )
    if chunk_rows < 1:
        raise ValueError(f"exact_gaussian_filter: chunk_rows must be >= 1; got {chunk_rows}")
    feats = features - features.mean(dim=1, keepdim=True)
    vals = values.to(feats.dtype)
    b, n, _ = feats.shape
    sq = feats.square().sum(-1)  # (B, N)
    out = torch.empty(b, n, vals.shape[2], dtype=feats.dtype, device=feats.device)
    rows = max(1, chunk_rows // max(b, 1))
    keys_t = feats.transpose(1, 2)
    differentiable = torch.is_grad_enabled() and (feats.requires_grad or vals.requires_grad)
    chunks = []
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        # ‖f_i − f_j‖² = ‖f_i‖² + ‖f_j‖² − 2 f_i·f_j, clamped at 0 against round-off.
        base = sq[:, start:stop, None] + sq[:, None, :]
        sq_dist = torch.baddbmm(base, feats[:, start:stop], keys_t, beta=1.0, alpha=-2.0)
        if differentiable:  # autograd keeps every chunk's kernel for backward
            chunks.append(torch.bmm(sq_dist.clamp(min=0.0).mul(-0.5).exp(), vals))
        else:
            torch.bmm(sq_dist.clamp_(min=0.0).mul_(-0.5).exp_(), vals, out=out[:, start:stop])
    return torch.cat(chunks, 1) if differentiable else out


def _csr(crow: Tensor, col: Tensor, val: Tensor, shape: tuple[int, int]) -> Tensor:
    """A sparse CSR matrix, built without invariant checks (the caller's indices are valid by construction)."""
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": a one-off notice, not actionable here.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


def _spmm(matrix: Tensor, dense: Tensor, out: Tensor | None = None) -> Tensor:
    """``matrix @ dense`` for a sparse CSR ``matrix``, written into ``out`` (new if None) without zero-filling it."""
    if out is None:
        out = torch.empty(matrix.shape[0], dense.shape[1], dtype=dense.dtype, device=dense.device)
    return torch.addmm(out, matrix, dense, beta=0.0, out=out)


def _group_sorted(
    keys: Tensor, *, int32: bool, exact: bool, fill: int, tiebreak: Tensor | None = None
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """Sort non-negative int64 ``keys`` and group equal ones: ``(unique, counts, inverse, order)``.

    ``order`` (n,) is the permutation that sorts the keys (members of one group contiguous), ``inverse`` (n,)
    the group of each key, ``counts`` (G,) the group sizes and ``unique`` the sorted distinct keys (G,), int64
    (with ``tiebreak``: ``[keys, tiebreak]`` of each group, grouped by the pair in lexicographic order, two
    stable sorts, no combined key that could overflow). Groups are the runs of the sorted keys: a "first of
    run" flag per sorted key and their cumulative sum, the group id. With ``exact`` G is the number of groups,
    read on the host (no synchronisation on the CPU); otherwise G = n, a fixed upper bound: the groups fill
    the first slots and the unused ones keep ``fill`` (keys) / 0 (tiebreak, counts), without a host read.
    ``int32`` sorts the keys as int32 (they must fit), about twice as fast on CPU.
    """
    n = keys.shape[0]
    if tiebreak is None:
        sorted_keys, order = torch.sort(keys.to(torch.int32) if int32 else keys)
        sorted_all = [sorted_keys]
    else:
        by_tie = torch.sort(tiebreak, stable=True).indices
        sorted_keys, by_key = torch.sort(keys.index_select(0, by_tie), stable=True)
        order = by_tie.index_select(0, by_key)
        sorted_all = [sorted_keys, tiebreak.index_select(0, order)]
    first = torch.ones(n, dtype=torch.bool, device=keys.device)
    for s in sorted_all:
        if s is sorted_all[0]:
            torch.ne(s[1:], s[:-1], out=first[1:])
        else:
            first[1:] |= s[1:] != s[:-1]
    group_sorted = torch.cumsum(first, 0) - 1
    inverse = torch.empty_like(group_sorted).scatter_(0, order, group_sorted)
    if exact:  # CPU: reading the sizes is no synchronisation
        unique = [s[first].to(torch.int64) for s in sorted_all]
        counts = torch.bincount(group_sorted, minlength=unique[0].shape[0])
        return unique, counts, inverse, order
    unique = [
        torch.full((n,), fill if i == 0 else 0, dtype=torch.int64, device=keys.device).scatter_(
            0, group_sorted, s.to(torch.int64)
        )
        for i, s in enumerate(sorted_all)
    ]
    counts = torch.zeros(n, dtype=torch.int64, device=keys.device)
    counts.scatter_add_(0, group_sorted, torch.ones_like(group_sorted))
    return unique, counts, inverse, order


class PermutohedralLattice:
    """Permutohedral lattice of a set of feature vectors, to filter values with ``≈ exp(-½ ‖f_i − f_j‖²)``.

    Adams, Baek and Davis (Eurographics 2010), in the variant of Krähenbühl's ``permutohedral.cpp`` that
    rloss's ``bilateralfilter`` uses: features are scaled by ``sqrt(2/3)(d+1)`` and embedded in the
    hyperplane ``Σ y = 0`` of ``R^{d+1}`` (``y = E f``); each point falls in one simplex of the lattice
    ``A*_d`` (remainder-0 vertex by rounding to multiples of d+1, vertex order by the rank of the
    coordinates' residuals) and carries d+1 barycentric weights. :meth:`filter` splats the values onto the
    simplex vertices with those weights, blurs along each of the d+1 lattice directions with the kernel
    ``[½, 1, ½]`` (missing neighbours count as 0), and slices back with the same weights times
    ``α = 1 / (1 + 2^-d)``.

    Everything is batched and stays on the features' device: lattice vertices are hashed as int64 keys
    (image index, d lattice coordinates, remainder), so the images of a batch share one construction but never
    interact. Points are first grouped by their simplex (one sort of P keys; neighbouring pixels mostly share
    one), and only the U distinct simplices generate vertex keys (one sort of (d+1)·U keys; int32 sorts when
    the key space allows). Splat (M × P) and slice (P × M) are sparse CSR matrices with d+1 entries per point,
    built from the sorts without sorting the (d+1)·P entries; the blur gathers each vertex's two neighbours
    per axis, found by binary search of their keys (computed arithmetically from the vertex's key) among the
    sorted keys. The lattice is built once and filters any number of channels together (an ``(M, K)``
    tensor).

    Host synchronisation: none on the padded layout (``padded``, the default on every device but the CPU), as
    a training step on an accelerator requires. Key bounds and strides stay device tensors; groups of equal
    sorted keys are found by "first of run" flags and their cumulative sum, never by boolean indexing,
    ``nonzero`` or ``unique``; buffers have fixed upper-bound sizes: P simplex slots and M = (d+1)·P vertex
    slots, the used ones first, the unused ones keyed by a sentinel (above every key) with no splat entry, no
    neighbour and value 0, so the filtered values are those of the compact layout up to summation order. Cost:
    the blur runs over all (d+1)·P slots, so the (M+1, K) lattice buffers (two) take 2·(d+1)·P·K·4 bytes in
    float32 (793 MB for 12 × 256² pixels and 21 channels, against 4 MB compact) and the neighbour table
    2·(d+1)²·P·4 bytes (226 MB there; int32 indices). A key space beyond 63 bits cannot raise there without a
    host read: the filtered values are NaN instead. On the CPU, where reading a size is no synchronisation,
    the default compact layout reads the bounds and the group counts and allocates the M vertices only (M ≈
    P/35 on the benchmark's images).

    Scale (d = 5 position + colour features, measured by ``benchmarks/dense_crf_loss.py`` and the tests):
    the response to a point at the point itself is about 0.5 instead of 1 (``W_ii`` 0.53 on average inside
    an image, 0.44-0.79 by position in the simplex; 0.46 on average for isolated points), and on natural-like images ``W v`` is 0.54 (32 px
    images) to 0.58 (256 px) of the exact Gaussian sum, with a correlation above 0.99. The approximation is
    not exactly symmetric (the d+1 blurs do not commute): ``uᵀWv`` and ``vᵀWu`` differ by up to about 1 %.

    Args:
        features: ``(B, N, d)`` features, or ``(P, d)`` with ``batch_index``; finite, floating point,
            1 <= d <= 15. Points of different images never interact.
        batch_index: ``(P,)`` integer image index in ``[0, num_images)`` of each point of flat ``features``, in
            any order (``None`` for batched features).
        num_images: number of images for flat ``features``; default ``batch_index.max() + 1``.
        group_simplices: group the points by simplex before hashing vertices (faster when many points share a
            simplex, as the pixels of an image do; results are identical either way).
        padded: sync-free layout with fixed upper-bound sizes (see above); default
            :attr:`padded_default`, or when that is None, True on every device but the CPU. Without
            ``num_images``, flat features read ``batch_index.max()`` on the host (a synchronisation): pass it.

    Attributes:
        dim: feature dimension d.
        num_points: P, the number of points (``B·N`` for batched features).
        num_vertices: M, the number of lattice vertices of all images together (compact layout) or of
            vertex slots, (d+1)·P (padded layout).
        padded: whether the layout is the padded one.
        padded_default: class-wide default of ``padded`` (None: by device).

    Raises:
        ValueError: on malformed shapes, or when the features span too many lattice cells for 63-bit keys
            (standard deviations far below a pixel or an intensity level; use the exact filter then), on
            the compact layout (the padded one filters to NaN instead).
    """

    padded_default: ClassVar[bool | None] = None  # None: padded on every device but the CPU

    def __init__(
        self,
        features: Tensor,
        batch_index: Tensor | None = None,
        num_images: int | None = None,
        *,
        group_simplices: bool = True,
        padded: bool | None = None,
    ) -> None:
        if not features.is_floating_point():
            raise ValueError(f"PermutohedralLattice: features must be floating point; got {features.dtype}")
        if batch_index is None:
            if features.ndim != 3:
                raise ValueError(
                    "PermutohedralLattice: features must be (B, N, d), or (P, d) with batch_index; "
                    f"got {tuple(features.shape)}"
                )
            b, n, d = features.shape
            self.batch_shape: tuple[int, ...] = (b, n)
            flat = features.reshape(b * n, d)
            images = torch.arange(b, device=features.device)[:, None].expand(b, n).reshape(-1)
            num = b
        else:
            if features.ndim != 2 or batch_index.shape != features.shape[:1]:
                raise ValueError(
                    "PermutohedralLattice: flat features must be (P, d) with batch_index (P,); "
                    f"got {tuple(features.shape)} and {tuple(batch_index.shape)}"
                )
            self.batch_shape = (features.shape[0],)
            flat = features
            images = batch_index.to(torch.int64)
            if num_images is None:
                num_images = int(images.max()) + 1 if images.numel() else 1
            num = num_images
        d = flat.shape[1]
        if not 1 <= d <= _MAX_DIM:
            raise ValueError(f"PermutohedralLattice: feature dimension must be 1..{_MAX_DIM}; got {d}")
        self.dim = d
        self.num_points = flat.shape[0]
        self.dtype = flat.dtype
        self.device = flat.device
        self.alpha = 1.0 / (1.0 + 2.0**-d)
        self.padded = self.default_padded(self.device) if padded is None else padded
        self._overflow: Tensor | None = None
        if self.num_points == 0:
            self.num_vertices = 0
            return
        self._build(flat, images, max(num, 1), group_simplices)

    @classmethod
    def default_padded(cls, device: torch.device) -> bool:
        """Whether lattices on ``device`` take the padded layout by default: :attr:`padded_default`, or not on CPU."""
        return cls.padded_default if cls.padded_default is not None else not host_reads_allowed(device)

    # ------------------------------------------------------------------------------------------------ build
    def _embedding(self) -> Tensor:
        """``(d+1, d)`` matrix ``E`` (scale included): elevated = E f, on the plane Σ y = 0."""
        d = self.dim
        inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
        scale = [inv_std / math.sqrt((i + 2) * (i + 1)) for i in range(d)]
        emb = torch.zeros(d + 1, d, dtype=torch.float64)
        for j in range(d + 1):
            for i in range(j, d):
                emb[j, i] = scale[i]
            if j >= 1:
                emb[j, j - 1] = -j * scale[j - 1]
        return emb.to(self.dtype).to(self.device)

    def _build(self, flat: Tensor, images: Tensor, num_images: int, group_simplices: bool) -> None:
        d, p, dev, exact = self.dim, self.num_points, self.device, not self.padded
        d1 = d + 1
        # Coordinates of the points on rows, (d+1, P): every step below is a few passes over contiguous rows.
        # Elevate onto the hyperplane and find the remainder-0 vertex y0 = (d+1) q (rounding ties down).
        resid = (self._embedding() @ flat.t()).div_(d1)  # elevated / (d+1)
        q = resid.sub(0.5).ceil_()  # small integers, kept in floating point until the keys
        resid.sub_(q)  # (elevated − y0) / (d+1), in [-½, ½]
        shift = q.sum(0).to(torch.int8)  # Σ y0 / (d+1), within ±(d+1)
        # rank_i = #{j > i: r_j > r_i} + #{j < i: r_j >= r_i} (Krähenbühl's pairwise count).
        rank = torch.zeros(d1, p, dtype=torch.int8, device=dev)
        for i in range(d):
            for j in range(i + 1, d1):
                smaller = resid[i] < resid[j]
                rank[i] += smaller
                rank[j] += ~smaller
        # Bring y0 back onto the plane: ranks shifted outside [0, d] wrap, moving that coordinate by ±(d+1).
        rank += shift
        wrap = (rank < 0).to(torch.int8)
        wrap -= (rank > d).to(torch.int8)
        rank += wrap * d1
        wrap_f = wrap.to(q.dtype)
        q += wrap_f
        resid -= wrap_f
        bary = self._barycentric(resid)  # (d+1, P)
        del resid, wrap, wrap_f

        # Key layout: image, d lattice coordinates q_0..q_{d-1} (y0_d = −Σ y0_i is implied), offset to >= 0
        # with room for the vertices' −1 and the blur neighbours' ±1, and the remainder r as last digit. The
        # bounds, ranges and strides stay device tensors (no host read on the padded path).
        lo = q[:d].amin(1).to(torch.int64).sub_(2)  # (d,)
        ranges = q[:d].amax(1).to(torch.int64).sub_(lo).add_(2)  # (d,)
        cell_strides = torch.ones(d, dtype=torch.int64, device=dev)  # of q_i in a key without r
        if d > 1:
            cell_strides[:-1] = ranges[1:].flip(0).cumprod(0).flip(0)
        image_stride = cell_strides[0] * ranges[0]
        codes = d1**d
        if exact:  # host values, no synchronisation on the CPU
            space = num_images * math.prod(ranges.tolist()) * d1
            if space >= _INT64_LIMIT:
                raise ValueError(
                    "PermutohedralLattice: the features span too many lattice cells for 63-bit vertex keys "
                    f"(key space {space:.3g}); standard deviations this small need the exact filter"
                )
        else:  # checked in float64 without a host read: filter() returns NaN if the keys overflow
            log_space = ranges.to(torch.float64).log2().sum() + math.log2(num_images * d1)
            self._overflow = log_space >= math.log2(_INT64_LIMIT) - 1e-9
            space = _INT64_LIMIT  # unknown on the host: int64 sorts
        self._cell_strides = cell_strides
        # Remainder-0 vertex of each point, as a key without the remainder digit.
        base = images * image_stride - (lo * cell_strides).sum()
        for i in range(d):
            base.add_(q[i].to(torch.int64).mul_(cell_strides[i]))
        del q
        # Rank order of the first d coordinates (the last is implied) as base-(d+1) digits.
        code = rank[0].to(torch.int16 if codes < 2**15 else torch.int64)
        for i in range(1, d):
            code.mul_(d1).add_(rank[i])
        del rank

        # Group points by simplex (remainder-0 vertex, rank order): neighbouring pixels mostly share one. U is
        # the number of distinct simplices (exact), or P with the unused simplex slots at the end (padded).
        if group_simplices and exact and space * codes < _INT64_LIMIT:
            (simplex_keys,), counts, point_simplex, order = _group_sorted(
                base * codes + code, int32=space // d1 * codes < 2**31, exact=True, fill=0
            )
            s_base, s_code = simplex_keys.div(codes, rounding_mode="floor"), simplex_keys.remainder(codes)
        elif group_simplices and not exact:
            (s_base, s_code), counts, point_simplex, order = _group_sorted(
                base, int32=False, exact=False, fill=0, tiebreak=code
            )
        else:
            counts = torch.ones(p, dtype=torch.int64, device=dev)
            point_simplex = order = torch.arange(p, device=dev)
            s_base, s_code = base, code.to(torch.int64)
        del base, code
        u = counts.shape[0]

        # Vertex r of a simplex: y_i = y0_i + r − (d+1)[rank_i > d − r]; keys of the (d+1)·U slots, r-major.
        r = torch.arange(d1, device=dev)
        v_key = (s_base * d1)[None] + r[:, None]  # (d+1, U)
        for i in reversed(range(d)):
            s_rank = s_code.remainder(d1)
            s_code = s_code.div(d1, rounding_mode="floor")
            v_key.sub_((s_rank[None] > (d - r)[:, None]).to(torch.int64) * (cell_strides[i] * d1))
        if not exact:  # unused simplex slots: sentinel keys, sorted after every vertex (one padding group)
            v_key = torch.where(counts[None] > 0, v_key, _SENTINEL)
        (v_keys,), v_counts, slot_vertex, slot_order = _group_sorted(
            v_key.reshape(-1), int32=space < 2**31, exact=exact, fill=_SENTINEL
        )
        del v_key
        m = v_keys.shape[0]
        self.num_vertices = m
        self._keys = v_keys

        idx = torch.int32 if d1 * p < 2**31 - 1 else torch.int64
        # Splat (M × P): row m holds, slot after slot (the slots of vertex m are contiguous in slot_order), the
        # points of the slot's simplex with their weight for the slot's remainder r. In the (d+1, P) table of
        # (point, weight) pairs with points in simplex order, entry r·P + position, each slot is one run of
        # consecutive entries: the runs are concatenated by a cumulative sum of ones with a jump per run.
        # Unused slots (padded path) are empty runs, all after the real ones: their jumps land in a spare
        # last step that is not used.
        starts = torch.cumsum(counts, 0) - counts  # (U,) first position of each simplex in `order`
        slot_s, slot_r = slot_order % u, torch.div(slot_order, u, rounding_mode="floor")
        run_len = counts[slot_s]
        run_first = slot_r * p + starts[slot_s]  # table entry where each run starts
        run_end = torch.cumsum(run_len, 0)
        jumps = run_first.clone()
        jumps[1:] -= run_first[:-1] + run_len[:-1] - 1
        steps = torch.ones(d1 * p + (0 if exact else 1), dtype=idx, device=dev)
        steps[run_end - run_len] = jumps.to(idx)
        entries = torch.cumsum(steps[: d1 * p], 0, dtype=idx)
        del steps, jumps
        crow = torch.zeros(m + 1, dtype=idx, device=dev)
        crow[1:] = run_end[torch.cumsum(v_counts, 0) - 1]
        table_points = order.to(idx).repeat(d1)
        table_weights = bary.index_select(1, order).reshape(-1)
        self._splat = _csr(
            crow, table_points.index_select(0, entries), table_weights.index_select(0, entries), (m, p)
        )
        del entries, table_points, table_weights
        # Slice: point i reads its d+1 vertices with its barycentric weights  (P × M).
        simplex_vertices = slot_vertex.to(idx).reshape(d1, u).t().contiguous()  # (U, d+1)
        col3 = simplex_vertices.index_select(0, point_simplex).reshape(-1)
        crow3 = torch.arange(0, d1 * p + 1, d1, dtype=idx, device=dev)
        self._slice = _csr(crow3, col3, bary.t().reshape(-1), (p, m))

        self._neighbours = self._find_neighbours()

    @staticmethod
    def _barycentric(resid: Tensor) -> Tensor:
        """``(d+1, P)`` barycentric weights of the vertices r = 0..d from the residuals ``(d+1, P)``.

        With ``u`` the residuals in ascending order (the coordinate of rank d − t at position t, which is
        the sorted order), ``b_0 = 1 + u_0 − u_d`` and ``b_t = u_t − u_{t−1}``. The sort is an odd-even
        transposition network (d+1 rounds of element-wise min / max), cheaper than a per-point sort.
        """
        d1 = resid.shape[0]
        u = list(resid.unbind(0))
        for rnd in range(d1):
            for i in range(rnd % 2, d1 - 1, 2):
                u[i], u[i + 1] = torch.minimum(u[i], u[i + 1]), torch.maximum(u[i], u[i + 1])
        bary = torch.empty_like(resid)
        torch.sub(u[0], u[-1], out=bary[0]).add_(1.0)
        for t in range(1, d1):
            torch.sub(u[t], u[t - 1], out=bary[t])
        return bary

    def _find_neighbours(self) -> Tensor:
        """``(d+1, 2, M)`` indices of each vertex's two blur neighbours per axis (``M`` where missing).

        Indices are int32 when they fit. Along axis j the neighbours are ``y ± (−1, …, −1, d, −1, …, −1)`` (d
        at j; for j = d, the implicit coordinate y_d). In the key that moves the remainder by ∓1 and,
        depending on whether the remainder wraps, coordinate j or all the others by ±1: a constant offset per
        case (device scalars), so neighbour keys are computed from the vertex keys without decoding (the
        layout leaves room for the ±1), and found by binary search in the sorted keys. Unused slots (sentinel
        keys) have no neighbours and are no one's.
        """
        d, m = self.dim, self.num_vertices
        strides = self._cell_strides * (d + 1)  # of q_i in a vertex key
        total = strides.sum()
        rem = self._keys % (d + 1)
        used = self._keys < _SENTINEL if self.padded else None
        small = m < 2**31 - 1
        out = torch.empty(d + 1, 2, m, dtype=torch.int32 if small else torch.int64, device=self.device)
        for axis in range(d + 1):
            own = strides[axis] if axis < d else torch.zeros_like(total)
            others = total - own
            # Side 0: y_k − 1, y_j + d (remainder r − 1; r = 0 wraps to d). Side 1: the opposite.
            cases = ((rem == 0, own - 1, d - others), (rem == d, 1 - own, others - d))
            for side, (wraps, step, wrap_step) in enumerate(cases):
                nkey = self._keys + torch.where(wraps, wrap_step, step)
                pos = torch.searchsorted(self._keys, nkey, out_int32=small).clamp_(max=m - 1)
                found = self._keys.index_select(0, pos) == nkey
                if used is not None:
                    found &= used
                out[axis, side] = torch.where(found, pos, m)
        return out

    # ----------------------------------------------------------------------------------------------- filter
    def filter(self, values: Tensor) -> Tensor:
        """Filter ``values`` with the lattice's approximation of ``Σ_j exp(-½ ‖f_i − f_j‖²) v_j``.

        Args:
            values: ``(B, N, K)`` for batched features or ``(P, K)`` for flat ones.

        Returns:
            The filtered values, same shape, in the features' dtype.
        """
        if values.ndim != len(self.batch_shape) + 1 or tuple(values.shape[:-1]) != self.batch_shape:
            raise ValueError(
                f"PermutohedralLattice.filter: values must be {self.batch_shape} + (K,), the features' points "
                f"with K channels; got {tuple(values.shape)}"
            )
        k = values.shape[-1]
        vals = values.reshape(self.num_points, k).to(self.dtype).contiguous()
        if self.num_points == 0:
            return torch.zeros(values.shape, dtype=self.dtype, device=self.device)
        m = self.num_vertices
        lattice = torch.zeros(m + 1, k, dtype=self.dtype, device=self.device)  # last row: missing neighbour
        _spmm(self._splat, vals, out=lattice[:m])
        blurred = torch.zeros_like(lattice)
        for axis in range(self.dim + 1):
            n1, n2 = self._neighbours[axis]
            torch.add(lattice.index_select(0, n1), lattice.index_select(0, n2), out=blurred[:m])
            blurred[:m].mul_(0.5).add_(lattice[:m])
            lattice, blurred = blurred, lattice
        out = _spmm(self._slice, lattice[:m]).mul_(self.alpha)
        if self._overflow is not None:  # padded path: NaN instead of a host-side check of the key space
            out.masked_fill_(self._overflow, math.nan)
        return out.reshape(values.shape)
