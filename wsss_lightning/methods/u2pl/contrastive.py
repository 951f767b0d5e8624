"""U2PL's pixel-to-prototype contrastive loss with negatives from a category-wise memory bank.

U2PL+ Sec. 3.5.1 (Eq. 10, 15-28) and Eq. 18; released code ``compute_contra_memobank_loss`` in
``u2pl/utils/loss_helper.py``, called from ``train_semi.py``. One call: select this step's negative keys
per class, push them to the memory bank (all ranks), sample anchors per class, draw negatives from the bank,
InfoNCE against the class prototype. All C classes are processed at once with fixed shapes (classes absent
from the batch are computed and masked out), so there is no loop over classes, pixels or anchors and no
host sync. Everything after the masks (keys, prototypes, anchors, negatives, InfoNCE) is one core shared
with the weakly supervised loss (:mod:`wsss_lightning.methods.u2pl.weak`).

Paper-vs-code switches (default = published numbers unless the code behaviour is a bug):

* ``negative_rule`` - ``"paper"`` (default; Eq. 25-28) or ``"code"`` (released code,
  issue #171: the labeled term is empty and unlabeled negatives of c are pixels *pseudo-labelled c*).
* ``class_pairing`` - ``"matched"`` (default) or ``"shifted"``: the released code's index-mismatch bug
  (issue #111) pairing anchors/prototype of class i with the queue of the i-th present class.
* ``normalization`` - ``"present"`` (default, code: divide by the number of classes with a reliable pixel,
  counting skipped ones) or ``"all"`` (paper Eq. 10: divide by C).
* positives - batch prototypes (default, code) or momentum prototypes (U2PL+, pass a ``PrototypeBank``).
* the unlabeled anchor set is whatever low-entropy mask the caller passes (code: the alpha_t % lowest;
  paper: every reliable pixel), see :func:`~wsss_lightning.methods.u2pl.losses.entropy_band_masks`.

Effective weight (``train_semi.py``): the released code all-reduces L_c and divides by the world size W
before backward; ``all_reduce`` is not differentiable, so the gradient reaching each rank is (1/W) of its
local gradient and the contrastive weight relative to L_s and L_u is ``1/W`` - 1/4 for the VOC configs
(4 GPUs), 1/8 for Cityscapes (8 GPUs). This function returns the plain per-rank L_c; multiply it by
``loss_weight / W_ref`` (0.25 for VOC, 0.125 for Cityscapes) to match the released runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsss_lightning.host_reads import host_reads_allowed
from wsss_lightning.methods.u2pl.gathered_dot import gathered_dot
from wsss_lightning.methods.u2pl.memory_bank import CategoryMemoryBank
from wsss_lightning.methods.u2pl.options import BANK_DTYPES, ContrastiveConfig
from wsss_lightning.methods.u2pl.prototypes import PrototypeBank, class_centroids
from wsss_lightning.methods.u2pl.scratch import ScratchBuffers

__all__ = [
    "ContrastiveOutput",
    "U2PLContrastiveLoss",
    "select_negative_keys",
    "u2pl_contrastive_loss",
    "u2pl_negative_mask",
]


class ContrastiveOutput(NamedTuple):
    """Result of :func:`u2pl_contrastive_loss` and of the weakly supervised ``weak_contrastive_loss``.

    Attributes:
        loss: scalar L_c of this rank.
        keys: ``(K, D)`` this step's negative keys (teacher representations, detached) as pushed to the
            bank: without a key budget, the newest ``capacity`` negatives of each class (the older ones a
            push would overwrite at once are left out).
        key_labels: ``(K,)`` int64 queue of each key; -1 marks padding rows.
        valid_classes: ``(C,)`` bool, classes with at least one reliable (low-entropy) pixel (weakly
            supervised: with at least one anchor).
        active_classes: ``(C,)`` bool, classes that contributed a term to the loss.
    """

    loss: Tensor
    keys: Tensor
    key_labels: Tensor
    valid_classes: Tensor
    active_classes: Tensor


def _top_mask(prob: Tensor, k: int) -> Tensor:
    """``(B, C, h, w)`` bool: the class is among the k most likely of its pixel (rank < k, 0 = argmax)."""
    top = prob.topk(min(k, prob.shape[1]), dim=1).indices
    return torch.zeros_like(prob, dtype=torch.bool).scatter_(1, top, True)


def _band_mask(prob: Tensor, low_rank: int, high_rank: int) -> Tensor:
    """``(B, C, h, w)`` bool: ``low_rank <= rank < high_rank`` (0 = argmax), from one ranking per pixel."""
    top = prob.topk(min(high_rank, prob.shape[1]), dim=1).indices
    return torch.zeros_like(prob, dtype=torch.bool).scatter_(1, top[:, low_rank:], True)


def u2pl_negative_mask(
    labels_l: Tensor,
    labels_u: Tensor,
    prob_l: Tensor,
    prob_u: Tensor,
    high_mask_u: Tensor,
    low_rank: int = 3,
    high_rank: int = 20,
    delta_n: float = 1.0,
    negative_rule: Literal["paper", "code"] = "paper",
    ignore_index: int = 255,
    labeled_negatives: bool = True,
) -> Tensor:
    """Which pixel is a negative key of which class (U2PL+ Eq. 25-28; ``compute_contra_memobank_loss``).

    With ranks ``O(c)`` from the teacher probabilities (0 = most likely) and ``p(c) < delta_n``
    (``current_class_negative_threshold``; 1 makes it vacuous):

    * ``"paper"`` (Eq. 26-27): labeled pixel: ``y != c``, ``y`` labelled and ``O(c) < r_l``;
      unlabeled pixel: high entropy and ``r_l <= O(c) < r_h``.
    * ``"code"``: the released mask ``valid_high(c) & class_mask``, where ``valid_high(c)`` requires the
      (pseudo-)label to BE c - so the labeled term (which also needs ``y != c``) is always empty and the
      unlabeled term is high-entropy pixels pseudo-labelled c with ``r_l <= O(c) < r_h``.

    Args:
        labels_l: ``(B_l, h, w)`` ground truth.
        labels_u: ``(B_u, h, w)`` pseudo-labels.
        prob_l: ``(B_l, C, h, w)`` teacher probabilities on the labeled images.
        prob_u: ``(B_u, C, h, w)`` teacher probabilities on the unlabeled images.
        high_mask_u: ``(B_u, h, w)`` bool, high-entropy (unreliable) unlabeled pixels.
        low_rank: r_l.
        high_rank: r_h (clipped to C).
        delta_n: negatives need ``p(c) < delta_n``.
        negative_rule: ``"paper"`` or ``"code"``.
        ignore_index: label of unlabelled pixels.
        labeled_negatives: False: no labelled pixel is a negative (the domain-adaptive setting's default,
            where the negatives are the target's unreliable pixels).

    Returns:
        ``(B_l + B_u, C, h, w)`` bool.
    """
    num_classes = prob_l.shape[1]
    classes = torch.arange(num_classes, device=prob_l.device).view(1, -1, 1, 1)
    onehot_l = labels_l[:, None] == classes
    onehot_u = labels_u[:, None] == classes
    valid_l = (labels_l != ignore_index)[:, None]
    high_u = (high_mask_u & (labels_u != ignore_index))[:, None]
    top_l = _top_mask(prob_l, low_rank)
    band_u = _band_mask(prob_u, low_rank, high_rank)
    unsure_l, unsure_u = prob_l < delta_n, prob_u < delta_n
    if negative_rule == "paper":
        neg_l = valid_l & ~onehot_l & top_l & unsure_l
        neg_u = high_u & band_u & unsure_u
    elif negative_rule == "code":
        neg_l = (onehot_l & valid_l) & unsure_l & (top_l & ~onehot_l)
        neg_u = (onehot_u & high_u) & unsure_u & band_u
    else:
        raise ValueError(
            f"u2pl_negative_mask: negative_rule must be 'paper' or 'code', got {negative_rule!r}"
        )
    if not labeled_negatives:
        neg_l = torch.zeros_like(neg_l)
    return torch.cat([neg_l, neg_u], dim=0)


def _flat_positions(mask: Tensor) -> Tensor:
    """``(B, C, h, w)`` -> ``(C, B*h*w)`` so that a class row lists its pixels in (b, y, x) raster order."""
    return mask.transpose(0, 1).reshape(mask.shape[1], -1)


def _gather_pixels(rep: Tensor, pos: Tensor) -> Tensor:
    """Representations ``(..., D)`` at flat (b, y, x) positions ``pos`` (any shape) of ``rep (B, D, h, w)``."""
    hw = rep.shape[2] * rep.shape[3]
    # Indexing (b, :, s) in rep's own layout: its backward writes straight into a rep-shaped gradient,
    # where gathering from a (B, hw, D) view would cost a full transposed copy of it.
    return rep.flatten(2)[pos // hw, :, pos % hw]


def _capped_positions(
    flat: Tensor, max_keys_per_step: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Water-filling selection of ``max_keys_per_step`` (class, pixel) pairs (see :func:`select_negative_keys`)."""
    num_classes, num_pixels = flat.shape
    device = flat.device
    # No class can get more than T keys: random order within each class, first T of them.
    per_class = min(max_keys_per_step, num_pixels)
    scores = torch.rand(flat.shape, generator=generator, device=device)
    top = torch.where(flat, scores, -1.0).topk(per_class, dim=1)  # column j = rank j within the class
    classes = torch.arange(num_classes, device=device)[:, None]
    rank_key = torch.arange(per_class, device=device)[None] * num_classes + classes
    not_chosen = num_classes * per_class  # larger than every real key
    rank_key = torch.where(top.values >= 0, rank_key, not_chosen)
    total = min(max_keys_per_step, num_classes * per_class)
    picked = rank_key.flatten().topk(total, largest=False)
    kept = picked.values < not_chosen
    cls = picked.indices // per_class
    pos = top.indices.flatten()[picked.indices]
    labels = torch.where(kept, cls, -1)
    # Back to (class, raster) order; padding last.
    order = torch.argsort(torch.where(kept, cls, num_classes) * num_pixels + pos)
    pos, labels = pos[order], labels[order]
    if total < max_keys_per_step:
        pos = F.pad(pos, (0, max_keys_per_step - total))
        labels = F.pad(labels, (0, max_keys_per_step - total), value=-1)
    return pos, labels


def _newest_positions(
    flat: Tensor, capacities: Sequence[int], capacity_tensor: Tensor, compact: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """The negatives a push of all of them would keep: the newest ``min(n_c, cap_c)`` of each class.

    Fixed shapes, no host sync: class c owns ``min(P, cap_c)`` slots (``P`` pixels per class row, a host
    number), slot j holding the class's negative of rank ``max(n_c - cap_c, 0) + j`` in raster order, found
    by a binary search in the row-wise running count of negatives (rows offset so that the whole array is
    one sorted sequence). Slots past ``n_c`` get label -1 (position 0). With ``compact`` (where host reads
    cost nothing, :func:`~wsss_lightning.host_reads.host_reads_allowed`) class c owns ``min(n_c, cap_c)``
    slots instead, all used: the same keys without the padding, whose gather dominates at small grids.

    Args:
        flat: ``(C, P)`` bool negatives per class, raster order.
        capacities: the queue capacities (host ints).
        capacity_tensor: the same as a ``(C,)`` int64 tensor on ``flat``'s device.
        compact: size the slots by the negatives' counts, read on the host.

    Returns:
        ``(positions (M,), labels (M,), skipped (C,))`` with ``M = sum_c min(P, cap_c)`` (compact:
        ``sum_c min(n_c, cap_c)``), class-major and raster order within a class, and
        ``skipped = max(n_c - cap_c, 0)`` the negatives left out.
    """
    num_classes, num_pixels = flat.shape
    device = flat.device
    idx_dtype = torch.int32 if num_classes * (num_pixels + 1) < 2**31 else torch.int64
    cum = flat.cumsum(1, dtype=idx_dtype)  # (C, P): negatives up to and including each pixel
    n = cum[:, -1].long()
    skipped = (n - capacity_tensor).clamp_min(0)
    if compact:
        slots = torch.minimum(n, capacity_tensor)
        total = int(slots.sum())
    else:
        slots = capacity_tensor.clamp_max(num_pixels)
        total = sum(min(num_pixels, cap) for cap in capacities)
    slot_end = slots.cumsum(0)
    slot = torch.arange(total, device=device)
    cls = torch.searchsorted(slot_end, slot, right=True)
    rank = skipped[cls] + slot - (slot_end - slots)[cls]
    stride = num_pixels + 1  # row c of cum + c * stride lies in [c * stride, c * stride + P]: sorted overall
    offset = torch.arange(num_classes, device=device, dtype=idx_dtype)[:, None] * stride
    target = (cls * stride + rank + 1).to(idx_dtype)
    flat_index = torch.searchsorted((cum + offset).view(-1), target)
    pos = (flat_index - cls * num_pixels).clamp(0, num_pixels - 1)
    labels = torch.where(rank < n[cls], cls, -1)
    return torch.where(labels >= 0, pos, 0), labels, skipped


def _keys_at(
    rep_teacher: Tensor, pos: Tensor, normalize: bool, scratch: ScratchBuffers | None = None
) -> Tensor:
    """Detached teacher representations ``(K, D)`` at flat (b, y, x) positions ``pos`` (unit-norm if asked)."""
    rep_teacher = rep_teacher.detach()
    num_pixels = rep_teacher.shape[0] * rep_teacher.shape[2] * rep_teacher.shape[3]
    if pos.shape[0] <= num_pixels:  # e.g. a key budget: gather the few keys directly, normalise them
        keys = _gather_pixels(rep_teacher, pos)  # a fresh tensor
        return _unit_rows_(keys.float()) if normalize else keys
    # More keys than pixels (a pixel is the negative of up to r_h - r_l classes): one pixel-major copy,
    # normalised once per pixel, then contiguous row reads instead of D strided values per key.
    b, d, h, w = rep_teacher.shape
    dtype = torch.float32 if normalize else rep_teacher.dtype
    if scratch is None:
        pixels = rep_teacher.new_empty(b, h, w, d, dtype=dtype)
    else:  # the same shape every step: kept between steps
        pixels = scratch.get("pixels", (b, h, w, d), dtype, rep_teacher.device)
    pixels = pixels.copy_(rep_teacher.permute(0, 2, 3, 1)).view(-1, d)
    if normalize:
        _unit_rows_(pixels)
    return pixels.index_select(0, pos)


def select_negative_keys(
    rep_teacher: Tensor,
    negative_mask: Tensor,
    max_keys_per_step: int | None = 8192,
    generator: torch.Generator | None = None,
    normalize: bool = False,
) -> tuple[Tensor, Tensor]:
    """Keys to enqueue: the teacher representations at each class's negative pixels.

    Ordered by class, then raster order (b, y, x) within a class - the order in which the released code
    enqueues them. ``max_keys_per_step = T`` bounds the keys of one rank and step and shares them out
    fairly (water-filling): each class's negatives are put in a uniformly random order (scores from
    ``torch.rand((C, B*h*w), generator)``, highest first) and the T (class, pixel) pairs of lowest rank
    within their class are kept, ties between classes going to the lower class index. A class with fewer
    negatives than its fair share keeps them all; the others keep equal-sized uniform subsets. The output
    is padded with label -1 to exactly T rows: the same size on every rank and step, so no host sync and
    a single fixed-size gather. ``None`` keeps every negative (one host sync to count them), which is what
    the released code enqueues; :func:`u2pl_contrastive_loss` instead keeps, without a sync, the newest
    negatives of each class that fit in its queue - the ones such a push keeps.

    Args:
        rep_teacher: ``(B, D, h, w)`` teacher representations.
        negative_mask: ``(B, C, h, w)`` bool from :func:`u2pl_negative_mask`.
        max_keys_per_step: T, or None for all.
        generator: random generator on the tensors' device.
        normalize: return unit-norm keys (eps 1e-8), for a bank that stores them normalised.

    Returns:
        ``(keys, labels)``: ``(K, D)`` detached keys and ``(K,)`` int64 classes (-1 = padding); K = T when
        capped.
    """
    flat = _flat_positions(negative_mask)
    if max_keys_per_step is None:
        labels, pos = flat.nonzero(as_tuple=True)
    else:
        if max_keys_per_step < 1:
            raise ValueError(
                f"select_negative_keys: max_keys_per_step must be >= 1 or None, got {max_keys_per_step}"
            )
        pos, labels = _capped_positions(flat, max_keys_per_step, generator)
    return _keys_at(rep_teacher, pos, normalize), labels


def _unit_rows_(x: Tensor) -> Tensor:
    """Scales the rows of a float32 tensor to unit L2 norm in place (as ``F.normalize(x, dim=1, eps=1e-8)``)."""
    return x.div_(x.norm(dim=1, keepdim=True).clamp_min(1e-8))


def _sample_positions(mask: Tensor, num: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """``num`` uniform draws with replacement of True positions per row of ``mask (C, P)``.

    Draw ``u`` (float64 from ``generator``) selects the ``floor(u * n_c)``-th True entry of row c. Rows
    without a True entry return position 0. Returns ``(positions (C, num), n (C,))``.
    """
    cum = mask.cumsum(1, dtype=torch.int32)
    n = cum[:, -1]
    u = torch.rand(mask.shape[0], num, generator=generator, device=mask.device, dtype=torch.float64)
    k = torch.minimum((u * n[:, None]).long(), (n.long() - 1).clamp_min(0)[:, None])
    pos = torch.searchsorted(cum, (k + 1).to(torch.int32))
    return pos.clamp_max(mask.shape[1] - 1), n.long()


def u2pl_contrastive_loss(
    rep: Tensor,
    rep_teacher: Tensor,
    labels_l: Tensor,
    labels_u: Tensor,
    prob_l: Tensor,
    prob_u: Tensor,
    low_mask_u: Tensor,
    high_mask_u: Tensor,
    memory_bank: CategoryMemoryBank,
    options: ContrastiveConfig,
    *,
    prototype_bank: PrototypeBank | None = None,
    update_bank: bool = True,
    ignore_index: int = 255,
    generator: torch.Generator | None = None,
    scratch: ScratchBuffers | None = None,
) -> ContrastiveOutput:
    """U2PL contrastive loss L_c of one rank (U2PL+ Eq. 10, 21-28; ``compute_contra_memobank_loss``).

    Inputs are at the representation resolution (labels and masks nearest-downsampled), labeled images
    first. For every class c:

    * reliable pixels ``V_c`` = labeled pixels with ``y = c`` and unlabeled pixels with pseudo-label c in
      ``low_mask_u``; the class is *valid* if ``V_c`` is non-empty;
    * anchors: ``num_anchors`` student representations drawn with replacement from
      ``A_c = V_c ∩ {p_T(c) > delta_p}``;
    * positive: the prototype ``z_c+`` = mean teacher representation over ``V_c`` (not restricted by
      delta_p), or the momentum prototype of ``prototype_bank`` after updating it with that mean;
    * negatives: :func:`u2pl_negative_mask` pixels' teacher representations are pushed to queue c of
      ``memory_bank`` (``gather_and_push``: all ranks, before sampling, as in the code and Algorithm 1),
      then each anchor draws ``num_negatives`` keys uniformly with replacement from queue c;
    * ``loss_c = mean_i -log( e^{cos(z_i, z_c+)/T} / (e^{cos(z_i, z_c+)/T} + sum_j e^{cos(z_i, z_ij-)/T}) )``,
      skipped (adds 0) when ``A_c`` or the queue is empty.

    ``L_c = sum_c loss_c / |valid classes|`` (``normalization="present"``, code; skipped classes still
    count) or ``/ C`` (``"all"``, paper); 0 when fewer than ``min_valid_classes`` (2) classes are valid.
    With ``class_pairing="shifted"`` term i (i < |valid|) uses anchors and prototype of class i and the
    queue of the i-th valid class (the released code's bug).

    Effective weight: the released code's DDP reduction makes the weight of L_c relative to L_s and L_u
    equal to 1/W (0.25 VOC, 0.125 Cityscapes); see the module docstring.

    Random draws, in this order, from ``generator`` (on the tensors' device; None = global RNG): key
    subsampling scores ``(C, B*h*w)`` float32 (only if ``max_keys_per_step`` is set), anchor uniforms
    ``(C, num_anchors)`` float64, negative uniforms ``(C*num_anchors, num_negatives)`` float64.

    Memory: the ``(C, M, N, D)`` negatives (275 MB for VOC's C=21, M=256, N=50, D=256) are never held at
    once: :func:`~wsss_lightning.methods.u2pl.gathered_dot.gathered_dot` gathers them in chunks of 16,384 keys in forward and
    again in backward, keeping only their ``(C * M, N)`` bank rows.

    Args:
        rep: ``(B_l + B_u, D, h, w)`` student representations (gradient flows through the anchors).
        rep_teacher: ``(B_l + B_u, D, h, w)`` teacher representations.
        labels_l: ``(B_l, h, w)`` ground truth.
        labels_u: ``(B_u, h, w)`` pseudo-labels (after CutMix).
        prob_l: ``(B_l, C, h, w)`` teacher (train-mode) probabilities on the labeled images.
        prob_u: ``(B_u, C, h, w)`` teacher (train-mode) probabilities on the unlabeled images.
        low_mask_u: ``(B_u, h, w)`` bool reliable unlabeled pixels (anchors, prototypes).
        high_mask_u: ``(B_u, h, w)`` bool unreliable unlabeled pixels (negatives).
        memory_bank: the category-wise queues (C classes, D-d keys).
        options: anchors, negatives, ranks, temperature and the paper-vs-code switches
            (:class:`~wsss_lightning.methods.u2pl.options.ContrastiveConfig`; ``enabled`` and ``weight`` are the
            caller's).
        prototype_bank: momentum prototypes (U2PL+); None uses the batch prototypes.
        update_bank: push this step's keys before sampling; False leaves the bank to the caller.
        ignore_index: label of unlabelled pixels.
        generator: random generator.
        scratch: work tensors kept between calls (the pixel-major teacher copy, the gather buffer).

    Returns:
        :class:`ContrastiveOutput`.
    """
    b_l, b_u = labels_l.shape[0], labels_u.shape[0]
    batch, dim = rep.shape[:2]
    num_classes = prob_l.shape[1]
    grid = tuple(rep.shape[2:])
    expected = {
        "rep_teacher": (rep_teacher, (batch, dim, *grid)),
        "labels_l": (labels_l, (b_l, *grid)),
        "labels_u": (labels_u, (b_u, *grid)),
        "prob_l": (prob_l, (b_l, num_classes, *grid)),
        "prob_u": (prob_u, (b_u, num_classes, *grid)),
        "low_mask_u": (low_mask_u, (b_u, *grid)),
        "high_mask_u": (high_mask_u, (b_u, *grid)),
    }
    if rep.ndim != 4 or batch != b_l + b_u:
        raise ValueError(
            f"u2pl_contrastive_loss: rep must be (B_l + B_u, D, h, w) = ({b_l + b_u}, D, h, w), got {tuple(rep.shape)}"
        )
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"u2pl_contrastive_loss: {name} must have shape {shape}, got {tuple(tensor.shape)}"
            )
    device = rep.device
    with torch.no_grad():
        prob_l, prob_u = prob_l.detach().float(), prob_u.detach().float()
        labels = torch.cat([labels_l, labels_u]).long()
        low = torch.cat([labels_l != ignore_index, low_mask_u.bool() & (labels_u != ignore_index)])
        classes = torch.arange(num_classes, device=device).view(1, -1, 1, 1)
        valid_low = (labels[:, None] == classes) & low[:, None]  # (B, C, h, w)
        anchor_mask = valid_low & (torch.cat([prob_l, prob_u]) > options.delta_p)
        negative_mask = u2pl_negative_mask(
            labels_l,
            labels_u,
            prob_l,
            prob_u,
            high_mask_u.bool(),
            options.low_rank,
            options.high_rank,
            options.delta_n,
            options.negative_rule,
            ignore_index,
            options.labeled_negatives,
        )
    return _contrastive_from_masks(
        rep,
        rep_teacher,
        anchor_mask,
        valid_low,
        negative_mask,
        memory_bank,
        prototype_bank,
        _CoreOptions.of(options),
        update_bank=update_bank,
        generator=generator,
        scratch=scratch,
        caller="u2pl_contrastive_loss",
    )


class _CoreOptions(NamedTuple):
    """The values :func:`_contrastive_from_masks` reads (fields as in ``ContrastiveConfig``)."""

    num_anchors: int
    num_negatives: int
    temperature: float
    max_keys_per_step: int | None
    normalization: str
    min_valid_classes: int
    class_pairing: str = "matched"

    @classmethod
    def of(cls, options: object) -> _CoreOptions:
        """The fields of an options dataclass that has them (``class_pairing`` optional)."""
        return cls(**{name: getattr(options, name) for name in cls._fields if hasattr(options, name)})


def _contrastive_from_masks(
    rep: Tensor,
    key_rep: Tensor,
    anchor_mask: Tensor,
    centroid_mask: Tensor,
    negative_mask: Tensor,
    memory_bank: CategoryMemoryBank,
    prototype_bank: PrototypeBank | None,
    options: _CoreOptions,
    *,
    update_bank: bool = True,
    generator: torch.Generator | None = None,
    scratch: ScratchBuffers | None = None,
    caller: str = "contrastive loss",
) -> ContrastiveOutput:
    """The pixel-to-prototype InfoNCE once the setting has said which pixel plays which role.

    Shared by the semi-supervised loss (:func:`u2pl_contrastive_loss`) and the weakly supervised one
    (:func:`~wsss_lightning.methods.u2pl.weak.weak_contrastive_loss`): push this step's negative keys
    (``key_rep`` at ``negative_mask``) to the bank, positives from the centroids of ``key_rep`` over
    ``centroid_mask`` (momentum-averaged by ``prototype_bank`` if given), ``num_anchors`` anchors of
    ``rep`` per class drawn from ``anchor_mask``, ``num_negatives`` bank keys per anchor, InfoNCE, and the
    normalisation. A class is valid when its centroid mask is non-empty. Random draws in the order
    documented in :func:`u2pl_contrastive_loss`.

    Args:
        rep: ``(B, D, h, w)`` representations the gradient flows through (anchors).
        key_rep: ``(B, D, h, w)`` representations of the keys and centroids (used detached).
        anchor_mask: ``(B, C, h, w)`` bool anchor candidates.
        centroid_mask: ``(B, C, h, w)`` bool pixels averaged into the batch centroids.
        negative_mask: ``(B, C, h, w)`` bool negative keys of each class.
        memory_bank: the category-wise queues (C classes, D-d keys).
        prototype_bank: momentum prototypes; None uses the batch centroids.
        options: anchors, negatives, temperature, key budget, normalisation and class pairing.
        update_bank: push this step's keys before sampling.
        generator: random generator.
        scratch: work tensors kept between calls.
        caller: the public function named in error messages.

    Returns:
        :class:`ContrastiveOutput`.
    """
    num_anchors, num_negatives = options.num_anchors, options.num_negatives
    dim = rep.shape[1]
    num_classes = anchor_mask.shape[1]
    if memory_bank.num_classes != num_classes or memory_bank.dim != dim:
        raise ValueError(
            f"{caller}: memory_bank holds {memory_bank.num_classes} classes of {memory_bank.dim}-d "
            f"keys, inputs have {num_classes} classes of {dim}-d representations"
        )
    if memory_bank.min_capacity < num_negatives:
        raise ValueError(
            f"{caller}: memory_bank capacity ({memory_bank.min_capacity}) must be >= "
            f"num_negatives ({num_negatives})"
        )
    device = rep.device

    with torch.no_grad():
        key_rep = key_rep.detach()
        flat_negatives = _flat_positions(negative_mask)
        skipped = None
        if options.max_keys_per_step is None:
            # Every negative, as released, but only those the push keeps (at most a queue's capacity per
            # class): on accelerators in fixed-size slots, every rank padding to the bank's total capacity
            # under DDP; where host reads are free, sized by the counts.
            compact = host_reads_allowed(device)
            pos, key_labels, skipped = _newest_positions(
                flat_negatives, memory_bank.capacity_list, memory_bank.capacities, compact
            )
            # padded: every rank's keys fit the bank's total capacity; compact: the ranks' sizes are exchanged
            max_size = None if compact else memory_bank.total_capacity
        else:
            pos, key_labels = _capped_positions(flat_negatives, options.max_keys_per_step, generator)
            max_size = pos.shape[0]
        keys = _keys_at(key_rep, pos, memory_bank.normalize, scratch)
        if update_bank:
            memory_bank.gather_and_push(
                keys,
                key_labels,
                normalized=memory_bank.normalize,
                max_size=max_size,
                skipped=skipped,
                validate=False,
            )

        centroids, counts = class_centroids(key_rep, centroid_mask)
        positives = centroids if prototype_bank is None else prototype_bank.update(centroids, counts).clone()
        valid_classes = counts > 0
        num_valid = valid_classes.sum()
        if options.class_pairing == "matched":
            queue_class = torch.arange(num_classes, device=device)
            term_ok = valid_classes
        else:
            # Valid classes first, in increasing order: entry i is the code's valid_classes[i].
            queue_class = torch.argsort((~valid_classes).to(torch.uint8), stable=True)
            term_ok = torch.arange(num_classes, device=device) < num_valid
        anchor_pos, num_candidates = _sample_positions(_flat_positions(anchor_mask), num_anchors, generator)
        active = term_ok & (num_candidates > 0) & (memory_bank.count[queue_class] > 0)

        per_anchor_queue = queue_class[:, None].expand(num_classes, num_anchors).reshape(-1)
        negative_rows = memory_bank.sample_rows(per_anchor_queue, num_negatives, generator)
        positives = F.normalize(positives.float(), dim=-1, eps=1e-8)

    with torch.autocast(device_type=device.type, enabled=False):
        anchors = F.normalize(_gather_pixels(rep, anchor_pos).float(), dim=-1, eps=1e-8)  # (C, M, D)
        pos_logit = (anchors * positives[:, None]).sum(-1, keepdim=True)  # (C, M, 1)
        # <z_i, z_ij-> over the drawn keys, gathered chunk by chunk: the (C, M, N, D) negatives never exist.
        neg_logit = gathered_dot(
            anchors.view(-1, dim),
            memory_bank.keys,
            negative_rows,
            normalize=not memory_bank.normalize,
            scratch=scratch,
        ).view(num_classes, num_anchors, num_negatives)
        logits = torch.cat([pos_logit, neg_logit], dim=-1) / options.temperature
        per_anchor = torch.logsumexp(logits, dim=-1) - logits[..., 0]
        per_class = torch.where(active, per_anchor.mean(1), 0.0)
        denom = num_valid.clamp_min(1).float() if options.normalization == "present" else float(num_classes)
        loss = torch.where(num_valid >= options.min_valid_classes, per_class.sum() / denom, 0.0)
    return ContrastiveOutput(
        loss, keys, key_labels, valid_classes, active & (num_valid >= options.min_valid_classes)
    )


class U2PLContrastiveLoss(nn.Module):
    """U2PL's contrastive loss with its memory bank (and optional momentum prototypes) as submodules.

    The bank (and prototype bank) are buffers of this module, so they move with it to the training device
    and are saved in checkpoints. See :func:`u2pl_contrastive_loss` for the maths, the paper-vs-code options
    and the effective weight (1/W in the released code).

    Args:
        num_classes: C.
        options: the loss and bank options.
        dim: representation dimension D (256).
        ignore_index: label of unlabelled pixels.
    """

    def __init__(
        self, num_classes: int, options: ContrastiveConfig, dim: int = 256, ignore_index: int = 255
    ) -> None:
        super().__init__()
        self.options = options
        self.memory_bank = CategoryMemoryBank(
            num_classes,
            dim,
            options.capacity,
            options.background_capacity,
            dtype=BANK_DTYPES[options.bank_dtype],
            normalize=True,
        )
        self.prototype_bank = (
            PrototypeBank(num_classes, dim, options.prototype_momentum)
            if options.momentum_prototype
            else None
        )
        self.ignore_index = ignore_index
        # Per-step work tensors of the same shapes every step: kept, but outside the state dict.
        self.scratch = ScratchBuffers()

    def forward(
        self,
        rep: Tensor,
        rep_teacher: Tensor,
        labels_l: Tensor,
        labels_u: Tensor,
        prob_l: Tensor,
        prob_u: Tensor,
        low_mask_u: Tensor,
        high_mask_u: Tensor,
        generator: torch.Generator | None = None,
    ) -> ContrastiveOutput:
        """Shapes as :func:`u2pl_contrastive_loss`; pushes this step's keys to the bank."""
        return u2pl_contrastive_loss(
            rep,
            rep_teacher,
            labels_l,
            labels_u,
            prob_l,
            prob_u,
            low_mask_u,
            high_mask_u,
            self.memory_bank,
            self.options,
            prototype_bank=self.prototype_bank,
            ignore_index=self.ignore_index,
            generator=generator,
            scratch=self.scratch,
        )
