"""Thin ``nn.Module`` wrappers holding the options (and, for the contrastive loss, the state) of U2PL's losses.

The maths lives in :mod:`wsss_lightning.losses.functional` and :mod:`wsss_lightning.losses.contrastive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from wsss_lightning.losses.contrastive import ContrastiveOutput, u2pl_contrastive_loss
from wsss_lightning.losses.functional import ohem_ce, symmetric_ce, unsupervised_loss
from wsss_lightning.pseudo_labels.memory_bank import CategoryMemoryBank
from wsss_lightning.pseudo_labels.prototypes import PrototypeBank

__all__ = [
    "ContrastiveLossConfig",
    "OhemCrossEntropy",
    "SymmetricCrossEntropy",
    "U2PLContrastiveLoss",
    "U2PLUnsupervisedLoss",
]

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


@dataclass
class ContrastiveLossConfig:
    """Options of U2PL's contrastive loss and its memory bank (spec u2pl §3.7, §5.2).

    Attributes:
        capacity: queue capacity per class (30,000).
        background_capacity: queue capacity of class 0 (50,000).
        bank_dtype: storage dtype of the queues (float32 as released; float16 halves the memory).
        num_anchors: M anchors per class (256).
        num_negatives: N negatives per anchor (50).
        delta_p: anchor threshold on the teacher probability of the class (0.3).
        delta_n: negatives need a teacher probability below this (1 = vacuous, as released).
        low_rank: r_l (3).
        high_rank: r_h (20).
        temperature: tau (0.5).
        negative_rule: ``paper`` (Eq. 25-28, default as the spec recommends) or ``code`` (released code,
            issue #171: only pixels pseudo-labelled c become negatives of c).
        class_pairing: ``matched`` (correct) or ``shifted`` (the released code's index-mismatch bug, #111).
        normalization: divide by the number of ``present`` classes (code) or by ``all`` C (paper Eq. 10).
        min_valid_classes: below this many valid classes the loss is 0 (2, as released).
        momentum_prototype: U2PL+ momentum prototypes as positives instead of batch means.
        prototype_momentum: their momentum (0.999).
        max_keys_per_step: keys enqueued per rank and step, shared fairly between classes (fixed shapes, no
            host sync); ``None`` (default) enqueues every negative pixel as the released code does (one host
            sync per step for the count).
    """

    capacity: int = 30000
    background_capacity: int | None = 50000
    bank_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_anchors: int = 256
    num_negatives: int = 50
    delta_p: float = 0.3
    delta_n: float = 1.0
    low_rank: int = 3
    high_rank: int = 20
    temperature: float = 0.5
    negative_rule: Literal["paper", "code"] = "paper"
    class_pairing: Literal["matched", "shifted"] = "matched"
    normalization: Literal["present", "all"] = "present"
    min_valid_classes: int = 2
    momentum_prototype: bool = False
    prototype_momentum: float = 0.999
    max_keys_per_step: int | None = None

    def __post_init__(self) -> None:
        smallest = min(self.capacity, self.background_capacity or self.capacity)
        if smallest < self.num_negatives:
            raise ValueError(
                f"contrastive: queue capacity ({smallest}) must be >= num_negatives ({self.num_negatives})"
            )
        choices = {
            "negative_rule": ("paper", "code"),
            "class_pairing": ("matched", "shifted"),
            "normalization": ("present", "all"),
            "bank_dtype": tuple(_DTYPES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"contrastive: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 1 <= self.low_rank < self.high_rank:
            raise ValueError(
                f"contrastive: need 1 <= low_rank < high_rank, got {self.low_rank}, {self.high_rank}"
            )


class U2PLContrastiveLoss(nn.Module):
    """U2PL's contrastive loss with its memory bank (and optional momentum prototypes) as submodules.

    The bank (and prototype bank) are buffers of this module, so they move with it to the training device
    and are saved in checkpoints. See :func:`~.contrastive.u2pl_contrastive_loss` for the maths, the
    paper-vs-code options and the effective weight (1/W in the released code).

    Args:
        num_classes: C.
        config: the loss and bank options (defaults as released, see :class:`ContrastiveLossConfig`).
        dim: representation dimension D (256).
        ignore_index: label of unlabelled pixels.
    """

    def __init__(
        self,
        num_classes: int,
        config: ContrastiveLossConfig | None = None,
        dim: int = 256,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.config = cfg = config or ContrastiveLossConfig()
        self.memory_bank = CategoryMemoryBank(
            num_classes,
            dim,
            cfg.capacity,
            cfg.background_capacity,
            dtype=_DTYPES[cfg.bank_dtype],
            normalize=True,
        )
        self.prototype_bank = (
            PrototypeBank(num_classes, dim, cfg.prototype_momentum) if cfg.momentum_prototype else None
        )
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
        cfg = self.config
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
            num_anchors=cfg.num_anchors,
            num_negatives=cfg.num_negatives,
            delta_p=cfg.delta_p,
            delta_n=cfg.delta_n,
            low_rank=cfg.low_rank,
            high_rank=cfg.high_rank,
            temperature=cfg.temperature,
            negative_rule=cfg.negative_rule,
            class_pairing=cfg.class_pairing,
            normalization=cfg.normalization,
            min_valid_classes=cfg.min_valid_classes,
            prototype_bank=self.prototype_bank,
            max_keys_per_step=cfg.max_keys_per_step,
            ignore_index=self.ignore_index,
            generator=generator,
        )
