"""Thin ``nn.Module`` wrappers holding the options (and, for the contrastive loss, the state) of U2PL's losses.

The maths lives in :mod:`wsss_lightning.losses.functional` and :mod:`wsss_lightning.losses.contrastive`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from wsss_lightning.losses.contrastive import ContrastiveOutput, u2pl_contrastive_loss
from wsss_lightning.losses.functional import ohem_ce, symmetric_ce, unsupervised_loss
from wsss_lightning.pseudo_labels.memory_bank import CategoryMemoryBank
from wsss_lightning.pseudo_labels.prototypes import PrototypeBank

__all__ = ["OhemCrossEntropy", "SymmetricCrossEntropy", "U2PLContrastiveLoss", "U2PLUnsupervisedLoss"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SymmetricCrossEntropy(nn.Module):
    """``xi1 * CE + xi2 * RCE`` averaged over labelled pixels; see :func:`~.functional.symmetric_ce`."""

    def __init__(self, xi1: float = 1.0, xi2: float = 0.1, ignore_index: int = 255) -> None:
        super().__init__()
        self.xi1, self.xi2, self.ignore_index = xi1, xi2, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits (B, C, H, W)``, ``target (B, H, W)`` -> scalar."""
        return symmetric_ce(logits, target, self.xi1, self.xi2, self.ignore_index)


class OhemCrossEntropy(nn.Module):
    """OHEM cross-entropy (U2PL's Cityscapes supervised loss); see :func:`~.functional.ohem_ce`."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000, ignore_index: int = 255) -> None:
        super().__init__()
        if not 0.0 < thresh <= 1.0:
            raise ValueError(f"OhemCrossEntropy: thresh must be in (0, 1], got {thresh}")
        if min_kept < 0:
            raise ValueError(f"OhemCrossEntropy: min_kept must be >= 0, got {min_kept}")
        self.thresh, self.min_kept, self.ignore_index = thresh, min_kept, ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits (B, C, H, W)``, ``target (B, H, W)`` -> scalar."""
        return ohem_ce(logits, target, self.thresh, self.min_kept, self.ignore_index)


class U2PLUnsupervisedLoss(nn.Module):
    """U2PL's L_u with dynamic partition adjustment; see :func:`~.functional.unsupervised_loss`.

    Args:
        weight_mode: ``"adaptive"`` (``lambda_u = eta B H W / |reliable|``, paper Eq. 14 and code) or ``"mean"``.
        eta: base weight (1).
        loss_type: ``"ce"`` (U2PL) or ``"sce"`` (U2PL+ symmetric CE).
        xi1: CE weight of the symmetric CE (1).
        xi2: RCE weight of the symmetric CE (paper text 0.1; Table VII best 0.5).
        ignore_index: label of unlabelled pixels.
    """

    def __init__(
        self,
        weight_mode: Literal["adaptive", "mean"] = "adaptive",
        eta: float = 1.0,
        loss_type: Literal["ce", "sce"] = "ce",
        xi1: float = 1.0,
        xi2: float = 0.1,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if weight_mode not in ("adaptive", "mean"):
            raise ValueError(
                f"U2PLUnsupervisedLoss: weight_mode must be 'adaptive' or 'mean', got {weight_mode!r}"
            )
        if loss_type not in ("ce", "sce"):
            raise ValueError(f"U2PLUnsupervisedLoss: loss_type must be 'ce' or 'sce', got {loss_type!r}")
        self.weight_mode: Literal["adaptive", "mean"] = weight_mode
        self.loss_type: Literal["ce", "sce"] = loss_type
        self.eta, self.xi1, self.xi2, self.ignore_index = eta, xi1, xi2, ignore_index

    def forward(
        self, logits: Tensor, target: Tensor, prob_teacher: Tensor, percent_drop: float | Tensor
    ) -> Tensor:
        """``logits (B, C, H, W)``, pseudo-labels ``target (B, H, W)``, ``prob_teacher (B, C, H, W)`` -> scalar."""
        return unsupervised_loss(
            logits,
            target,
            prob_teacher,
            percent_drop,
            ignore_index=self.ignore_index,
            weight_mode=self.weight_mode,
            eta=self.eta,
            loss_type=self.loss_type,
            xi1=self.xi1,
            xi2=self.xi2,
        )


class U2PLContrastiveLoss(nn.Module):
    """U2PL's contrastive loss with its memory bank (and optional momentum prototypes) as submodules.

    The bank (and prototype bank) are buffers of this module, so they move with it to the training device
    and are saved in checkpoints. See :func:`~.contrastive.u2pl_contrastive_loss` for the maths, the
    paper-vs-code options and the effective weight (1/W in the released code).

    Args:
        num_classes: C.
        dim: representation dimension D (256).
        capacity: queue capacity per class (30,000).
        background_capacity: queue capacity of class 0 (50,000).
        bank_dtype: storage dtype of the queues (float32 as released; float16 halves the memory).
        num_anchors: M (256).
        num_negatives: N (50).
        delta_p: anchor probability threshold (0.3).
        delta_n: negative probability bound (1 = vacuous).
        low_rank: r_l (3).
        high_rank: r_h (20).
        temperature: T (0.5).
        negative_rule: ``"paper"`` (default) or ``"code"``.
        class_pairing: ``"matched"`` (default) or ``"shifted"`` (released bug).
        normalization: ``"present"`` (default, code) or ``"all"`` (paper).
        min_valid_classes: below this many valid classes the loss is 0 (2).
        momentum_prototype: use U2PL+ momentum prototypes as positives.
        prototype_momentum: their momentum (0.999).
        max_keys_per_step: keys enqueued per rank and step, shared fairly between classes (8192: about
            what the released code enqueues on VOC; fixed shapes, no host sync). None = every negative.
        ignore_index: label of unlabelled pixels.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int = 256,
        capacity: int = 30000,
        background_capacity: int | None = 50000,
        bank_dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        num_anchors: int = 256,
        num_negatives: int = 50,
        delta_p: float = 0.3,
        delta_n: float = 1.0,
        low_rank: int = 3,
        high_rank: int = 20,
        temperature: float = 0.5,
        negative_rule: Literal["paper", "code"] = "paper",
        class_pairing: Literal["matched", "shifted"] = "matched",
        normalization: Literal["present", "all"] = "present",
        min_valid_classes: int = 2,
        momentum_prototype: bool = False,
        prototype_momentum: float = 0.999,
        max_keys_per_step: int | None = 8192,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        smallest = min(capacity, background_capacity if background_capacity is not None else capacity)
        if smallest < num_negatives:
            raise ValueError(
                f"U2PLContrastiveLoss: queue capacity ({smallest}) must be >= num_negatives ({num_negatives})"
            )
        if negative_rule not in ("paper", "code"):
            raise ValueError(
                f"U2PLContrastiveLoss: negative_rule must be 'paper' or 'code', got {negative_rule!r}"
            )
        if class_pairing not in ("matched", "shifted"):
            raise ValueError(
                f"U2PLContrastiveLoss: class_pairing must be 'matched' or 'shifted', got {class_pairing!r}"
            )
        if normalization not in ("present", "all"):
            raise ValueError(
                f"U2PLContrastiveLoss: normalization must be 'present' or 'all', got {normalization!r}"
            )
        if not 1 <= low_rank < high_rank:
            raise ValueError(
                f"U2PLContrastiveLoss: need 1 <= low_rank < high_rank, got {low_rank}, {high_rank}"
            )
        if bank_dtype not in _DTYPES:
            raise ValueError(
                f"U2PLContrastiveLoss: bank_dtype must be one of {sorted(_DTYPES)}, got {bank_dtype!r}"
            )
        # Keys stored unit-norm: the loss only takes cosines, so the sampled negatives need no normalising.
        self.memory_bank = CategoryMemoryBank(
            num_classes, dim, capacity, background_capacity, dtype=_DTYPES[bank_dtype], normalize=True
        )
        self.prototype_bank = (
            PrototypeBank(num_classes, dim, prototype_momentum) if momentum_prototype else None
        )
        self.num_anchors, self.num_negatives = num_anchors, num_negatives
        self.delta_p, self.delta_n = delta_p, delta_n
        self.low_rank, self.high_rank, self.temperature = low_rank, high_rank, temperature
        self.negative_rule: Literal["paper", "code"] = negative_rule
        self.class_pairing: Literal["matched", "shifted"] = class_pairing
        self.normalization: Literal["present", "all"] = normalization
        self.min_valid_classes = min_valid_classes
        self.max_keys_per_step = max_keys_per_step
        self.ignore_index = ignore_index

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
        """Shapes as :func:`~.contrastive.u2pl_contrastive_loss`; pushes this step's keys to the bank."""
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
            num_anchors=self.num_anchors,
            num_negatives=self.num_negatives,
            delta_p=self.delta_p,
            delta_n=self.delta_n,
            low_rank=self.low_rank,
            high_rank=self.high_rank,
            temperature=self.temperature,
            negative_rule=self.negative_rule,
            class_pairing=self.class_pairing,
            normalization=self.normalization,
            min_valid_classes=self.min_valid_classes,
            prototype_bank=self.prototype_bank,
            max_keys_per_step=self.max_keys_per_step,
            ignore_index=self.ignore_index,
            generator=generator,
        )
