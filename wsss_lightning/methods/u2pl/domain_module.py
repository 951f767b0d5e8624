"""U2PL+ in the domain-adaptive setting: DAFormer plus the contrastive loss with unreliable target pixels as negatives.

Wang et al., "Using Unreliable Pseudo-Labels for Label-Efficient Semantic Segmentation" (U2PL+, IJCV 2024),
Sec. 4.2 and Tables XI-XII: the DAFormer baseline (:class:`~wsss_lightning.methods.daformer.DAFormerModule`,
GTA5 -> Cityscapes) with U2PL's representation head on the decoder's fused 1/4 features and its contrastive
loss (Eq. 10, 21-28; :class:`~wsss_lightning.methods.u2pl.contrastive.U2PLContrastiveLoss`) over the source
crop (labelled) and the ClassMix crop (unlabelled: its target pixels carry the teacher's pseudo-labels). No code
was released; the open choices are options of :class:`~wsss_lightning.methods.u2pl.options.DomainContrastiveConfig`.

Each step adds, after DAFormer's losses:

1. the EMA teacher (train mode, regularisation off) sees the source and the mixed crop: probabilities and
   representations (as the semi-supervised setting's train-mode teacher sees its batch);
2. the entropy of its probabilities on the target pixels of the mixed crop splits them into the alpha^c_t %
   most reliable (anchors, prototypes) and the alpha^c_t % least reliable (negatives, by their rank band);
   pasted source pixels and the source crop are labelled, alpha^c_t = 20 (1 - t/T) over the iterations;
3. ``lambda_c * L_c`` joins the loss; the category-wise memory bank and the momentum prototypes are module
   buffers (in the checkpoint).

The setting is DAFormer's training with one more loss term, so the module extends DAFormer's (the paper defines
it as "DAFormer + L_c"), as the weakly supervised setting extends AFA's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from wsss_lightning.methods.daformer import DAFormerModule
from wsss_lightning.methods.daformer.module import MixedBatch
from wsss_lightning.methods.u2pl.contrastive import U2PLContrastiveLoss
from wsss_lightning.methods.u2pl.losses import downsample_labels, entropy_band_masks
from wsss_lightning.methods.u2pl.options import DomainContrastiveConfig
from wsss_lightning.models.resize import resize


class U2PLDomainModule(DAFormerModule):
    """U2PL+ for domain adaptation (the domain-adaptive setting).

    Args:
        contrastive: the contrastive term, its memory bank and momentum prototypes; with ``enabled: false`` the
            module trains exactly the DAFormer baseline (plus an unused representation head).
        rep_channels: width of the representation head (256, as the semi-supervised setting).
        **kwargs: the arguments of :class:`~wsss_lightning.methods.daformer.DAFormerModule`.
    """

    def __init__(
        self, contrastive: DomainContrastiveConfig | None = None, rep_channels: int = 256, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)

    @override
    def representation_channels(self) -> int | None:
        channels = int(self.options.rep_channels)
        if channels < 1:
            raise ValueError(f"U2PLDomainModule: rep_channels = {channels}; expected >= 1")
        return channels

    @override
    def configure_losses(self) -> None:
        cfg: DomainContrastiveConfig = self.options.contrastive
        if cfg.anchor_set != "code":
            raise ValueError(
                "U2PLDomainModule: contrastive.anchor_set must be 'code' (the lowest-entropy target pixels); "
                f"got {cfg.anchor_set!r}"
            )
        self.contrastive: U2PLContrastiveLoss | None = None
        if cfg.enabled and self.options.self_training.enabled:
            self.contrastive = U2PLContrastiveLoss(
                self.num_classes, cfg, dim=self.representation_channels() or 0, ignore_index=self.ignore_index
            )
            # Every rank pushes the same gathered keys, so the banks are identical by construction: keep DDP
            # from broadcasting hundreds of MB of queue from rank 0 before every forward.
            self._ddp_params_and_buffers_to_ignore = [
                f"contrastive.memory_bank.{name}" for name, _ in self.contrastive.memory_bank.named_buffers()
            ]

    def reliability_percent(self) -> float:
        """alpha^c_t = alpha^c_0 (1 - t / T) with t the optimizer step and T the run's steps."""
        progress = min(1.0, self.global_step / max(1, self.total_steps()))
        return float(self.options.contrastive.low_entropy_percent * (1.0 - progress))

    @override
    def extra_loss(
        self,
        source: dict[str, Tensor],
        out_source: dict[str, Tensor],
        mixed: MixedBatch,
        out_mixed: dict[str, Tensor],
        logs: dict[str, Tensor],
    ) -> Tensor | None:
        if self.contrastive is None:
            return None
        labels_s = source["mask"]
        n_s, size = labels_s.shape[0], labels_s.shape[-2:]
        with self._labelling_teacher() as teacher:
            teacher_out = teacher(torch.cat([source["image"], mixed.images]))
        prob = resize(teacher_out["pred"], size).softmax(1)
        # reliability bands over the target pixels of the mixed crop only (pasted pixels are labelled)
        target_labels = mixed.labels.masked_fill(mixed.pasted, self.ignore_index)
        alpha = self.reliability_percent()
        low, high = entropy_band_masks(prob[n_s:], target_labels, alpha, 100.0 - alpha, self.ignore_index)
        low = low | (mixed.pasted & (mixed.labels != self.ignore_index))
        rep = torch.cat([out_source["rep"], out_mixed["rep"]])
        grid = rep.shape[-2:]
        prob_small = teacher_out["pred"].softmax(1)
        result = self.contrastive(
            rep,
            teacher_out["rep"],
            downsample_labels(labels_s, grid),
            downsample_labels(mixed.labels, grid),
            resize(prob_small[:n_s], grid),
            resize(prob_small[n_s:], grid),
            downsample_labels(low.to(torch.uint8), grid).bool(),
            downsample_labels(high.to(torch.uint8), grid).bool(),
        )
        logs["train/loss_contrastive"] = result.loss
        logs["train/contrastive_classes"] = result.active_classes.sum().float()
        weighted: Tensor = self.options.contrastive.weight * result.loss
        return weighted
