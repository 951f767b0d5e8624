"""Category-wise FIFO queues of negative keys (U2PL's memory bank) as device ring buffers.

U2PL keeps one FIFO queue of negative keys per class (U2PL+ Sec. 3.5.1, "Category-wise Memory Bank"): 30,000
keys per class and 50,000 for class 0 (``train_semi.py``), every rank holding an identical copy. The released
code stores each queue as a host tensor, concatenates the whole queue on every step and copies it to the GPU
to draw a few thousand rows (``dequeue_and_enqueue`` in ``u2pl/utils/utils.py``,
``compute_contra_memobank_loss`` in ``u2pl/utils/loss_helper.py``). Here all queues share one preallocated
``(sum(capacities) + 2, D)`` buffer on the module's device; a push is a handful of batched tensor ops and
sampling gathers only the drawn rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.host_reads import host_reads_allowed

__all__ = ["CategoryMemoryBank"]


# ``all_gather_into_tensor`` was renamed ``all_gather_single`` (the old name warns in recent releases).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class CategoryMemoryBank(nn.Module):
    """One FIFO queue of ``dim``-d keys per class, stored as preallocated ring buffers.

    Queue ``c`` occupies rows ``offsets[c] : offsets[c] + capacities[c]`` of the ``keys`` buffer. While a
    queue is not full its keys fill the prefix ``[0, count)`` of its segment in arrival order; once full,
    ``ptr[c]`` points at the oldest key, which the next push overwrites. Two extra rows follow the queues:
    a scratch row that receives the writes a push discards (padding rows and keys pushed out by newer keys
    of the same push), so a push never needs to know on the host how many keys it keeps, and a row of
    zeros that draws from an empty queue read.

    ``keys``, ``ptr`` and ``count`` are registered buffers: they follow the module to its device and are
    saved in checkpoints, so a resumed run continues with the same queues.

    Args:
        num_classes: number of queues C.
        dim: key dimension D (U2PL's representation head outputs 256).
        capacity: capacity of every queue except class 0 (U2PL: 30,000).
        background_capacity: capacity of class 0 (U2PL: 50,000 - background on VOC; the released code also
            uses it for class 0 on Cityscapes, "road"). ``None`` gives class 0 ``capacity`` too.
        capacities: explicit per-class capacities (length C); overrides the two arguments above.
        dtype: storage dtype of the keys (float32 as in U2PL; float16 halves the memory).
        normalize: store keys L2-normalised. For consumers that only take cosine similarities (U2PL's
            loss) this changes no result and saves normalising every sampled key.
    """

    keys: Tensor
    ptr: Tensor
    count: Tensor
    capacities: Tensor
    offsets: Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        capacity: int = 30000,
        background_capacity: int | None = 50000,
        capacities: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float32,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"CategoryMemoryBank: num_classes must be >= 1, got {num_classes}")
        if dim < 1:
            raise ValueError(f"CategoryMemoryBank: dim must be >= 1, got {dim}")
        if capacities is None:
            if capacity < 1:
                raise ValueError(f"CategoryMemoryBank: capacity must be >= 1, got {capacity}")
            if background_capacity is not None and background_capacity < 1:
                raise ValueError(
                    f"CategoryMemoryBank: background_capacity must be >= 1 or None, got {background_capacity}"
                )
            capacities = [capacity] * num_classes
            if background_capacity is not None:
                capacities[0] = background_capacity
        capacities = [int(c) for c in capacities]
        if len(capacities) != num_classes:
            raise ValueError(
                f"CategoryMemoryBank: capacities has {len(capacities)} entries, expected num_classes={num_classes}"
            )
        if min(capacities) < 1:
            raise ValueError(f"CategoryMemoryBank: every entry of capacities must be >= 1, got {capacities}")
        if not dtype.is_floating_point:
            raise ValueError(f"CategoryMemoryBank: dtype must be a floating-point dtype, got {dtype}")
        self.num_classes = num_classes
        self.dim = dim
        self.normalize = normalize
        self.capacity_list = tuple(capacities)
        total = sum(capacities)
        caps = torch.tensor(capacities, dtype=torch.long)
        self.register_buffer("keys", torch.zeros(total + 2, dim, dtype=dtype))
        self._scratch_row, self._zero_row = total, total + 1
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))
        # Derived from the constructor arguments, so not part of the checkpoint.
        self.register_buffer("capacities", caps, persistent=False)
        self.register_buffer("offsets", torch.cumsum(caps, 0) - caps, persistent=False)

    @property
    def min_capacity(self) -> int:
        """Smallest queue capacity (a host int: usable in argument checks without a device sync)."""
        return min(self.capacity_list)

    @property
    def total_capacity(self) -> int:
        """Keys held by all queues when full (a host int)."""
        return sum(self.capacity_list)

    @property
    def nbytes(self) -> int:
        """Bytes held by the key storage."""
        return self.keys.numel() * self.keys.element_size()

    @override
    def extra_repr(self) -> str:
        others = sorted(set(self.capacity_list[1:])) or [self.capacity_list[0]]
        cap = others[0] if len(others) == 1 else others
        return (
            f"num_classes={self.num_classes}, dim={self.dim}, capacity={cap}, "
            f"class0_capacity={self.capacity_list[0]}, dtype={self.keys.dtype}, normalize={self.normalize}, "
            f"memory={self.nbytes / 2**20:.1f} MiB"
        )

    def filled(self) -> Tensor:
        """Number of keys held per class, ``(C,)`` int64 on the bank's device."""
        return self.count.clone()

    @torch.no_grad()
    def reset(self) -> None:
        """Empty every queue."""
        self.keys.zero_()
        self.ptr.zero_()
        self.count.zero_()

    def queue(self, class_idx: int) -> Tensor:
        """Keys of one class in arrival order (oldest first), ``(count[c], D)``.

        For inspection and tests: it reads the fill count on the host (a device sync).
        """
        if not 0 <= class_idx < self.num_classes:
            raise ValueError(f"queue: class_idx must be in [0, {self.num_classes}), got {class_idx}")
        cap = self.capacity_list[class_idx]
        n = int(self.count[class_idx])
        start = (int(self.ptr[class_idx]) - n) % cap
        rows = int(self.offsets[class_idx]) + (start + torch.arange(n, device=self.keys.device)) % cap
        return self.keys[rows]

    def _check_keys(self, keys: Tensor, labels: Tensor, where: str, validate: bool = True) -> None:
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"{where}: keys must have shape (N, {self.dim}), got {tuple(keys.shape)}")
        if labels.ndim != 1 or labels.shape[0] != keys.shape[0]:
            raise ValueError(
                f"{where}: labels must have shape ({keys.shape[0]},) to match keys, got {tuple(labels.shape)}"
            )
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"{where}: labels must be an integer tensor, got {labels.dtype}")
        # Checking the range needs the values on the host: only done where that costs no device sync.
        if (
            validate
            and host_reads_allowed(labels.device)
            and labels.numel()
            and int(labels.max()) >= self.num_classes
        ):
            raise ValueError(
                f"{where}: labels must be in [0, {self.num_classes}) or negative (padding), "
                f"got max {int(labels.max())}"
            )

    @torch.no_grad()
    def push(
        self,
        keys: Tensor,
        labels: Tensor,
        normalized: bool = False,
        *,
        skipped: Tensor | None = None,
        validate: bool = True,
    ) -> None:
        """Append keys to their class queues; a full queue drops its oldest keys.

        Fully batched and free of host synchronisation: the keys are stably sorted by class, each key's
        rank within its class gives its slot ``(ptr + rank) % capacity``, and keys that a later key of the
        same push would overwrite (a class receiving more keys than its capacity keeps the newest) go to
        the scratch row instead. Negative labels mark padding and are dropped. Labels >= C are a caller
        error; on CPU they raise (unless ``validate=False``), on accelerators (where checking would need a
        sync) they are dropped.

        ``skipped`` accounts for keys a caller left out because newer keys of the same push overwrite them
        anyway (a class receiving more than its capacity): the queues, ``ptr`` and ``count`` end exactly as
        if those keys had been pushed too, in their place.

        Args:
            keys: ``(N, D)`` keys, in arrival order.
            labels: ``(N,)`` integer class of each key; negative = padding.
            normalized: the keys are already unit-norm, so a normalising bank stores them as they are.
            skipped: ``(C,)`` int64, per class the number of keys that came before ``keys`` in the stream
                and were left out; or ``(W, C)`` when ``keys`` is W equal consecutive segments (one per
                rank), row w counting the keys left out just before segment w.
            validate: check the label range on CPU (a host read); False for labels valid by construction.
        """
        self._check_keys(keys, labels, "CategoryMemoryBank.push", validate)
        n = keys.shape[0]
        if n == 0:
            return
        device = self.keys.device
        c = self.num_classes
        labels = labels.to(device=device, dtype=torch.long)
        valid = (labels >= 0) & (labels < c)
        # Sentinel class C sorts padding after every real class.
        lab = torch.where(valid, labels, c)
        sorted_lab, order = torch.sort(lab, stable=True)
        starts = torch.searchsorted(sorted_lab, torch.arange(c + 1, device=device))
        counts = starts[1:] - starts[:-1]  # keys received per class, (C,)
        cls = sorted_lab.clamp_max(c - 1)
        rank = torch.arange(n, device=device) - starts[sorted_lab]
        if skipped is not None:
            segments = skipped.reshape(-1, c).to(device=device, dtype=torch.long)
            if n % segments.shape[0]:
                raise ValueError(
                    f"CategoryMemoryBank.push: {n} keys do not split into {segments.shape[0]} equal segments"
                )
            # The keys left out before segment w come before every key of segments >= w.
            shift = segments.cumsum(0)
            rank = rank + shift[order // (n // segments.shape[0]), cls]
            counts = counts + segments.sum(0)
        cap = self.capacities[cls]
        keep = (sorted_lab < c) & (rank >= counts[cls] - cap)
        dest = self.offsets[cls] + (self.ptr[cls] + rank) % cap
        dest = torch.where(keep, dest, self._scratch_row)
        # Scatter the destinations back to input order so the keys themselves need not be permuted.
        dest_in_order = torch.empty_like(dest).scatter_(0, order, dest)
        if self.normalize and not normalized:
            keys = F.normalize(keys.float(), dim=1, eps=1e-8)
        self.keys.index_copy_(0, dest_in_order, keys.to(device=device, dtype=self.keys.dtype))
        self.ptr.copy_((self.ptr + counts) % self.capacities)
        self.count.copy_(torch.minimum(self.count + counts, self.capacities))

    @torch.no_grad()
    def gather_and_push(
        self,
        keys: Tensor,
        labels: Tensor,
        equal_sizes: bool = False,
        normalized: bool = False,
        *,
        max_size: int | None = None,
        skipped: Tensor | None = None,
        validate: bool = True,
    ) -> None:
        """Push every rank's keys on every rank, in rank order, so all ranks keep identical queues.

        Keys and labels travel in ONE ``all_gather`` of a packed ``(S, D + 1)`` tensor whose last column
        holds the integer label in the key's bytes; the collective moves raw bytes, so no value is ever
        reinterpreted as a float. Every rank pads its N keys to the common size S with label -1 rows, which
        the push drops. S is ``max_size`` when given (a bound on N, the same on every rank: no host sync),
        N with ``equal_sizes=True`` (every rank must pass the same N, as
        :func:`~wsss_lightning.methods.u2pl.contrastive.u2pl_contrastive_loss` does when it caps the keys
        per step), else the largest N, exchanged in one small ``all_gather`` and read on the host (one
        device sync). Without an initialised process group (or with one rank) this is :meth:`push`. It is
        a collective: every rank must call it the same number of times.

        Args:
            keys: ``(N, D)`` this rank's keys.
            labels: ``(N,)`` their classes; negative = padding.
            equal_sizes: promise that N is the same on every rank.
            normalized: the keys are already unit-norm (see :meth:`push`).
            max_size: a bound on N on every rank, the same on every rank.
            skipped: ``(C,)`` keys of each class this rank left out just before its ``keys`` (see
                :meth:`push`); gathered from every rank too.
            validate: see :meth:`push`.
        """
        self._check_keys(keys, labels, "CategoryMemoryBank.gather_and_push", validate)
        world = _world_size()
        if world == 1:
            self.push(keys, labels, normalized, skipped=skipped, validate=False)
            return
        device, dtype = self.keys.device, self.keys.dtype
        int_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
        n = keys.shape[0]
        if max_size is not None:
            if n > max_size:
                raise ValueError(f"CategoryMemoryBank.gather_and_push: {n} keys exceed max_size={max_size}")
            size = max_size
        elif equal_sizes:
            size = n
        else:
            local = torch.tensor([n], device=device, dtype=torch.long)
            sizes = torch.empty(world, device=device, dtype=torch.long)
            _all_gather_single(sizes, local)
            size = int(sizes.max())
        packed = torch.zeros(size, self.dim + 1, device=device, dtype=dtype)
        packed[:n, : self.dim] = keys.to(device=device, dtype=dtype)
        label_col = packed.view(int_dtype)[:, self.dim]  # integer writes into the key bytes
        label_col.fill_(-1)
        label_col[:n] = labels.to(device=device, dtype=int_dtype)
        gathered = torch.empty(world * size, self.dim + 1, device=device, dtype=dtype)
        _all_gather_single(gathered.view(torch.uint8), packed.view(torch.uint8))
        all_skipped = None
        if skipped is not None:
            local_skipped = skipped.to(device=device, dtype=torch.long).reshape(self.num_classes)
            all_skipped = torch.empty(world, self.num_classes, device=device, dtype=torch.long)
            _all_gather_single(all_skipped.view(-1), local_skipped)
        self.push(
            gathered[:, : self.dim],
            gathered.view(int_dtype)[:, self.dim].long(),
            normalized,
            skipped=all_skipped,
            validate=False,
        )

    def _gather(self, rows: Tensor) -> Tensor:
        """``keys[rows]`` for ``(A, N)`` rows; ``index_select`` is markedly faster than advanced indexing."""
        return self.keys.index_select(0, rows.reshape(-1)).view(*rows.shape, self.dim)

    def _sample_rows(
        self, classes: Tensor, num: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        """Rows of ``num`` uniform draws from each requested class's filled keys, and the class counts."""
        cnt = self.count[classes]
        u = torch.rand(
            classes.shape[0], num, generator=generator, device=self.keys.device, dtype=torch.float64
        )
        k = (u * cnt[:, None]).long()
        k = torch.minimum(k, (cnt - 1).clamp_min(0)[:, None])
        cap = self.capacities[classes]
        start = (self.ptr[classes] - cnt) % cap  # slot of the oldest key
        rows = self.offsets[classes][:, None] + (start[:, None] + k) % cap[:, None]
        return torch.where((cnt > 0)[:, None], rows, self._zero_row), cnt

    @torch.no_grad()
    def sample(self, classes: Tensor, num: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw keys uniformly with replacement from one queue per request.

        Draw ``j`` of request ``a`` is the key at position ``floor(u * count)`` of queue ``classes[a]`` in
        arrival order, with ``u`` the ``(A, num)`` float64 uniforms drawn from ``generator`` (which must
        live on the bank's device). Requests for an empty queue return zeros.

        Args:
            classes: ``(A,)`` int64 queue index per request.
            num: draws per request.
            generator: random generator on the bank's device; None uses the global one.

        Returns:
            ``(A, num, D)`` keys in the storage dtype.
        """
        return self._gather(self.sample_rows(classes, num, generator))

    @torch.no_grad()
    def sample_rows(self, classes: Tensor, num: int, generator: torch.Generator | None = None) -> Tensor:
        """The rows of ``keys`` that :meth:`sample` would return, ``(A, num)`` int64 (same draws).

        For consumers that gather the keys themselves, e.g. chunk by chunk with
        :func:`~wsss_lightning.methods.u2pl.gathered_dot.gathered_dot`.
        """
        if classes.ndim != 1:
            raise ValueError(f"sample_rows: classes must be 1-D (A,), got shape {tuple(classes.shape)}")
        if num < 1:
            raise ValueError(f"sample_rows: num must be >= 1, got {num}")
        classes = classes.to(device=self.keys.device, dtype=torch.long)
        rows, _ = self._sample_rows(classes, num, generator)
        return rows

    @torch.no_grad()
    def sample_negatives(
        self, neg_classes_mask: Tensor, num_negatives: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw keys uniformly with replacement from the union of several queues, per anchor.

        For anchor ``a`` the allowed keys are the filled slots of every queue ``c`` with
        ``neg_classes_mask[a, c]``; each of them is equally likely (a queue is picked in proportion to its
        fill count). Draw ``u`` maps to the ``floor(u * total)``-th allowed key, queues in class order and
        each queue in arrival order. Anchors with no allowed key get zeros.

        Args:
            neg_classes_mask: ``(A, C)`` bool, the queues each anchor may draw from.
            num_negatives: draws per anchor.
            generator: random generator on the bank's device; None uses the global one.

        Returns:
            ``(A, num_negatives, D)`` keys in the storage dtype.
        """
        if neg_classes_mask.ndim != 2 or neg_classes_mask.shape[1] != self.num_classes:
            raise ValueError(
                f"sample_negatives: neg_classes_mask must have shape (A, {self.num_classes}), "
                f"got {tuple(neg_classes_mask.shape)}"
            )
        if num_negatives < 1:
            raise ValueError(f"sample_negatives: num_negatives must be >= 1, got {num_negatives}")
        device = self.keys.device
        allowed = neg_classes_mask.to(device=device, dtype=torch.bool)
        weights = allowed.long() * self.count[None]  # (A, C)
        cum = weights.cumsum(1)
        total = cum[:, -1]
        u = torch.rand(
            allowed.shape[0], num_negatives, generator=generator, device=device, dtype=torch.float64
        )
        k = torch.minimum((u * total[:, None]).long(), (total - 1).clamp_min(0)[:, None])
        cls = torch.searchsorted(cum, k, right=True).clamp_max(self.num_classes - 1)  # (A, N)
        within = k - (cum.gather(1, cls) - weights.gather(1, cls))
        cap = self.capacities[cls]
        start = (self.ptr[cls] - self.count[cls]) % cap
        rows = self.offsets[cls] + (start + within) % cap
        return self._gather(torch.where((total > 0)[:, None], rows, self._zero_row))
