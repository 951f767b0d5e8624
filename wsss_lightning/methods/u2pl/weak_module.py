"""U2PL+ in the weakly supervised setting: AFA plus the contrastive loss with unreliable pixels as negatives.

Wang et al., "Using Unreliable Pseudo-Labels for Label-Efficient Semantic Segmentation" (U2PL+, IJCV 2024),
Sec. 3.5.2 and 4.3: the AFA baseline (:class:`~wsss_lightning.methods.afa.AFAModule`, image-level tags) with a
representation head on its segmentation head's fused features and the contrastive term of Eq. 29-31
(:func:`~wsss_lightning.methods.u2pl.weak.weak_contrastive_loss`): anchors where a tagged class's CAM score
exceeds beta, the class's momentum prototype as the positive, and as negatives the pixels where the class is
absent from the image or scores below beta, drawn from a category-wise memory bank. No code was released;
the open choices are options of :class:`~wsss_lightning.methods.u2pl.options.WeakContrastiveConfig`.

The setting is AFA's training with one more loss term, so the module extends AFA's (the one place where a
method builds on another method's module: the paper defines the setting as "AFA + L_c").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from typing_extensions import override

from wsss_lightning.methods.afa import AFAModule
from wsss_lightning.methods.u2pl.options import WeakContrastiveConfig
from wsss_lightning.methods.u2pl.weak import WeakContrastiveLoss
from wsss_lightning.models.afa import AFAOutput
from wsss_lightning.models.token_grid import pixels_to_tokens
from wsss_lightning.pseudo_labels.cam import box_mask


class U2PLWeakModule(AFAModule):
    """U2PL+ for image-level tags (the weakly supervised setting).

    Args:
        contrastive: the contrastive term, its memory bank and momentum prototypes (Eq. 29-31); with
            ``enabled: false`` the module trains exactly the AFA baseline (plus an unused representation head).
        rep_channels: width of the representation head (256, as the semi-supervised setting).
        **kwargs: the arguments of :class:`~wsss_lightning.methods.afa.AFAModule`.
    """

    def __init__(
        self, contrastive: WeakContrastiveConfig | None = None, rep_channels: int = 256, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.contrastive_start: int = self.options.contrastive.start_step

    @override
    def representation_channels(self) -> int:
        channels = int(self.options.rep_channels)
        if channels < 1:
            raise ValueError(f"U2PLWeakModule: rep_channels = {channels}; expected >= 1")
        return channels

    @override
    def configure_losses(self) -> None:
        cfg: WeakContrastiveConfig = self.options.contrastive
        self.contrastive: WeakContrastiveLoss | None = None
        if cfg.enabled:
            self.contrastive = WeakContrastiveLoss(self.num_classes, cfg, dim=self.representation_channels())
            # Every rank pushes the same gathered keys, so the banks are identical by construction: keep DDP
            # from broadcasting hundreds of MB of queue from rank 0 before every forward.
            self._ddp_params_and_buffers_to_ignore = [
                f"contrastive.memory_bank.{name}" for name, _ in self.contrastive.memory_bank.named_buffers()
            ]

    @override
    def boundaries(self) -> dict[str, int]:
        return {**super().boundaries(), "contrastive.start_step": self.options.contrastive.start_step}

    @override
    def apply_boundaries(self, steps: dict[str, int]) -> None:
        super().apply_boundaries(steps)
        self.contrastive_start = steps["contrastive.start_step"]

    @override
    def extra_loss(
        self,
        out: AFAOutput,
        cams: Tensor,
        classes: Tensor,
        box: Tensor,
        logs: dict[str, Tensor],
    ) -> Tensor | None:
        if self.contrastive is None or self.global_step < self.contrastive_start or out.rep is None:
            return None
        # CAM scores of the tagged classes at the representation grid (1/4 of the crop: the SegFormer head's
        # first-stage grid); class ids with background at 0, padding stays -1
        grid = (int(out.rep.shape[-2]), int(out.rep.shape[-1]))
        tokens = self.token_grid(float(self.net.encoder.reductions[0]))
        scores = pixels_to_tokens(cams, grid, cams.shape[-2:], tokens)
        ids = classes.where(classes < 0, classes + 1)
        # the padding of crops larger than the rescaled image holds no content: neither anchors nor negatives
        scale = (grid[0] / cams.shape[-2], grid[1] / cams.shape[-1])
        inside = box_mask("U2PLWeakModule", box, grid, scale)
        result = self.contrastive(out.rep, scores, ids, valid=inside)
        logs["train/loss_contrastive"] = result.loss
        logs["train/contrastive_classes"] = result.active_classes.sum().float()
        weighted: Tensor = self.options.contrastive.weight * result.loss
        return weighted
