"""U2PL+'s contrastive loss for image-level labels (weakly supervised setting).

U2PL+ Sec. 3.5.2 (Eq. 29-31); the paper releases no code for this setting. With CAM scores ``M^c`` in
[0, 1] and image-level tags ``y^c``, for every class c:

* anchors (Eq. 29): pixels of images tagged with c where ``M^c > beta``;
* positive (Eq. 30, Eq. 18): the momentum prototype of c, moved towards the mean of the anchors'
  representations. The baseline (AFA) has no teacher, so keys and centroids are the network's own
  representations, detached;
* negatives (Eq. 31): pixels with ``y^c = 0`` or ``M^c < beta``, pushed to queue c of the category memory
  bank; each anchor then draws N keys from queue c.

The InfoNCE, key budget, sampling and normalisation are the semi-supervised loss's
(:func:`~wsss_lightning.methods.u2pl.contrastive.u2pl_contrastive_loss`), shared through one core.

Background has no CAM: its score is ``M^0 = 1 - max_c M^c`` over the image's foreground classes (absent
classes score 0), so with ``beta = 0.55`` its anchors are the pixels whose best foreground score is below
0.45 - AFA's background score - and every image counts as tagged with background.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from wsss_lightning.host_reads import host_reads_allowed
from wsss_lightning.methods.u2pl.contrastive import ContrastiveOutput, _contrastive_from_masks, _CoreOptions
from wsss_lightning.methods.u2pl.memory_bank import CategoryMemoryBank
from wsss_lightning.methods.u2pl.options import BANK_DTYPES, WeakContrastiveConfig
from wsss_lightning.methods.u2pl.prototypes import PrototypeBank
from wsss_lightning.methods.u2pl.scratch import ScratchBuffers

__all__ = ["WeakContrastiveLoss", "weak_contrastive_loss", "weak_contrastive_masks"]

_NEGATIVE_RULES = ("both", "absent", "low")


def _check_cams(cams: Tensor, classes: Tensor, num_classes: int, where: str) -> None:
    if cams.ndim != 4 or classes.ndim != 2 or tuple(classes.shape) != tuple(cams.shape[:2]):
        raise ValueError(
            f"{where}: cams must be (B, K, h, w) and classes (B, K); "
            f"got cams {tuple(cams.shape)}, classes {tuple(classes.shape)}"
        )
    if classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise ValueError(f"{where}: classes must be an integer tensor, got {classes.dtype}")
    if num_classes < 2:
        raise ValueError(f"{where}: num_classes must be >= 2 (background and a class), got {num_classes}")
    # The value check reads the tensor; on accelerators bad indices are dropped as padding instead.
    if host_reads_allowed(classes.device):
        bad = (classes != -1) & ((classes < 1) | (classes >= num_classes))
        if bool(bad.any()):
            raise ValueError(
                f"{where}: classes holds foreground class indices 1..{num_classes - 1} or -1 (padding); "
                f"got {sorted(set(classes[bad].tolist()))}"
            )


def weak_contrastive_masks(
    cams: Tensor,
    classes: Tensor,
    num_classes: int,
    beta: float,
    negatives: Literal["both", "absent", "low"] = "both",
    background: bool = True,
    valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Anchor and negative pixels of every class from CAMs and image-level tags (U2PL+ Eq. 29, 31).

    Channel k of image b is the CAM of class ``classes[b, k]``, one of the image's tags; a class listed
    twice takes the larger score. Classes not listed for an image are absent from it (``y^c = 0``). Pixels
    scoring exactly beta are neither anchors nor low-score negatives.

    * anchors of c: ``y^c = 1`` and ``M^c > beta``;
    * negatives of c: ``"both"`` (Eq. 31) ``y^c = 0`` or ``M^c < beta``; ``"absent"`` only ``y^c = 0``;
      ``"low"`` only ``y^c = 1`` and ``M^c < beta`` (Table XIV's rows; the tagged-image restriction keeps
      "low" from also taking every absent-class pixel, whose score is 0).
    * background (class 0, ``background=True``): ``M^0 = 1 - max`` of the image's foreground scores and
      ``y^0 = 1`` for every image, so it has no absent-class negatives; ``background=False`` leaves class 0
      without anchors or negatives.

    Args:
        cams: ``(B, K, h, w)`` CAM scores in [0, 1] of each image's tagged classes, at the representation grid.
        classes: ``(B, K)`` integer class index (1..C-1) of each channel; -1 marks padding channels.
        num_classes: C, background included.
        beta: the score threshold, in (0, 1).
        negatives: ``"both"``, ``"absent"`` or ``"low"``.
        background: include class 0.
        valid: ``(B, h, w)`` bool, the pixels of real image content (not the padding of a crop larger than
            the rescaled image); None = every pixel. Pixels outside are neither anchors nor negatives.

    Returns:
        ``(anchor_mask, negative_mask)``, each ``(B, C, h, w)`` bool.
    """
    where = "weak_contrastive_masks"
    _check_cams(cams, classes, num_classes, where)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"{where}: beta must be a CAM score in (0, 1), got {beta!r}")
    if negatives not in _NEGATIVE_RULES:
        raise ValueError(f"{where}: negatives must be one of {_NEGATIVE_RULES}, got {negatives!r}")
    b, k, h, w = cams.shape
    # Column C collects padding (and, on accelerators, invalid indices): it is dropped below.
    index = torch.where((classes >= 1) & (classes < num_classes), classes, num_classes).long()
    scores = cams.detach().float()
    dense = scores.new_zeros(b, num_classes + 1, h, w)
    dense = dense.scatter_reduce(1, index[:, :, None, None].expand(b, k, h, w), scores, "amax")
    tags = torch.zeros(b, num_classes + 1, dtype=torch.bool, device=cams.device).scatter_(1, index, True)
    tags = tags[:, :num_classes]
    tags[:, 0] = background
    dense = dense[:, :num_classes]
    # Absent classes score 0 here, so the max over all foreground columns is over the image's own classes.
    dense[:, 0] = 1.0 - dense[:, 1:].amax(1)
    tagged = tags[:, :, None, None]
    anchor_mask = tagged & (dense > beta)
    absent = ~tagged.expand_as(anchor_mask)
    low = tagged & (dense < beta)
    negative_mask = {"both": absent | low, "absent": absent, "low": low}[negatives]
    if not background:
        negative_mask[:, 0] = False
    if valid is not None:
        if tuple(valid.shape) != (b, h, w):
            raise ValueError(f"{where}: valid must be (B, h, w) = {(b, h, w)}, got {tuple(valid.shape)}")
        inside = valid.bool()[:, None]
        anchor_mask, negative_mask = anchor_mask & inside, negative_mask & inside
    return anchor_mask, negative_mask


def weak_contrastive_loss(
    rep: Tensor,
    cams: Tensor,
    classes: Tensor,
    memory_bank: CategoryMemoryBank,
    prototype_bank: PrototypeBank | None,
    options: WeakContrastiveConfig,
    generator: torch.Generator | None = None,
    scratch: ScratchBuffers | None = None,
    valid: Tensor | None = None,
) -> ContrastiveOutput:
    """U2PL+'s weakly supervised contrastive loss L_c of one rank (Eq. 29-31 with the InfoNCE of Eq. 10).

    Masks from :func:`weak_contrastive_masks`; keys and batch centroids are ``rep.detach()``. This step's
    negative keys go to ``memory_bank`` (all ranks) before the negatives are drawn; the centroid of a class
    is the mean over its anchors and moves its prototype in ``prototype_bank`` (batch centroids when
    None). ``loss_c = mean_i -log(e^{cos(z_i, z_c+)/T} / (e^{cos(z_i, z_c+)/T} + sum_j e^{cos(z_i, z_ij-)/T}))``
    over ``num_anchors`` anchors drawn with replacement; classes without anchors or with an empty queue
    add 0; ``L_c = sum_c loss_c / |classes with anchors|`` (``normalization="present"``) or ``/ C``
    (``"all"``), 0 when fewer than ``min_valid_classes`` classes have anchors. Random draws, in order, from
    ``generator``: key subsampling scores ``(C, B*h*w)`` float32 (only with ``max_keys_per_step``), anchor
    uniforms ``(C, num_anchors)`` and negative uniforms ``(C*num_anchors, num_negatives)`` float64.

    Args:
        rep: ``(B, D, h, w)`` representations (gradient flows through the anchors only).
        cams: ``(B, K, h, w)`` CAM scores in [0, 1] of the tagged classes at the representation grid.
        classes: ``(B, K)`` class index (1..C-1) of each CAM channel, -1 = padding.
        memory_bank: the category-wise queues (C classes, D-d keys).
        prototype_bank: momentum prototypes (Eq. 30); None uses the batch centroids.
        options: :class:`~wsss_lightning.methods.u2pl.options.WeakContrastiveConfig` (``enabled``,
            ``weight`` and ``start_step`` are the caller's).
        generator: random generator on the tensors' device (None: the global one).
        scratch: work tensors kept between calls.
        valid: ``(B, h, w)`` bool pixels of real image content (see :func:`weak_contrastive_masks`).

    Returns:
        :class:`~wsss_lightning.methods.u2pl.contrastive.ContrastiveOutput`; ``valid_classes`` are the
        classes with anchors.
    """
    where = "weak_contrastive_loss"
    num_classes = memory_bank.num_classes
    if rep.ndim != 4 or tuple(cams.shape[:1]) + tuple(cams.shape[2:]) != (rep.shape[0], *rep.shape[2:]):
        raise ValueError(
            f"{where}: rep must be (B, D, h, w) and cams (B, K, h, w) on the same grid; "
            f"got rep {tuple(rep.shape)}, cams {tuple(cams.shape)}"
        )
    with torch.no_grad():
        anchor_mask, negative_mask = weak_contrastive_masks(
            cams, classes, num_classes, options.beta, options.negatives, options.background, valid
        )
    return _contrastive_from_masks(
        rep,
        rep.detach(),
        anchor_mask,
        anchor_mask,  # Eq. 30: the batch centroid is the mean over the anchors
        negative_mask,
        memory_bank,
        prototype_bank,
        _CoreOptions.of(options),
        generator=generator,
        scratch=scratch,
        caller=where,
    )


class WeakContrastiveLoss(nn.Module):
    """The weakly supervised contrastive loss with its memory bank and momentum prototypes as submodules.

    Both banks are buffers of this module: they move with it to the training device and are saved in
    checkpoints. Without ``background`` class 0's queue is never filled and gets the smallest allowed
    capacity. See :func:`weak_contrastive_loss` for the maths.

    Args:
        num_classes: C, background included.
        options: the loss and bank options.
        dim: representation dimension D.
    """

    def __init__(self, num_classes: int, options: WeakContrastiveConfig, dim: int = 256) -> None:
        super().__init__()
        self.options = options
        background_capacity = options.background_capacity if options.background else options.num_negatives
        self.memory_bank = CategoryMemoryBank(
            num_classes,
            dim,
            options.capacity,
            background_capacity,
            dtype=BANK_DTYPES[options.bank_dtype],
            normalize=True,
        )
        self.prototype_bank = PrototypeBank(num_classes, dim, options.prototype_momentum)
        # Per-step work tensors of the same shapes every step: kept, but outside the state dict.
        self.scratch = ScratchBuffers()

    def forward(
        self,
        rep: Tensor,
        cams: Tensor,
        classes: Tensor,
        generator: torch.Generator | None = None,
        valid: Tensor | None = None,
    ) -> ContrastiveOutput:
        """Shapes as :func:`weak_contrastive_loss`; pushes this step's keys to the bank."""
        return weak_contrastive_loss(
            rep,
            cams,
            classes,
            self.memory_bank,
            self.prototype_bank,
            self.options,
            generator=generator,
            scratch=self.scratch,
            valid=valid,
        )
