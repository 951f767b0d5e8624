"""AFA: affinity from attention, end-to-end weakly supervised segmentation from image-level tags.

Ru et al., "Learning Affinity from Attention: End-to-End Weakly-Supervised Semantic Segmentation with
Transformers" (CVPR 2022); released code ``rulixiang/afa`` (``scripts/dist_train_voc.py``). One MiT network
(:class:`~wsss_lightning.models.afa.AFANetwork`); each step (paper Sec. 3, as ``dist_train_voc.py`` runs it):

1. the network classifies the crop (multi-label soft margin, Eq. 1), predicts a segmentation and, from the
   attention of its last blocks, the affinity between every pair of last-stage tokens (Eq. 2-3);
2. multi-scale + flip CAMs of the present classes (no gradient), with the predicted affinity of one scale;
3. after the CAM warm-up: PAR-refined CAM pseudo-labels with an ignored band between the low and high
   background scores (Sec. 3.4); their pairs within a radius become affinity labels (Eq. 4) and the affinity
   loss trains the attention (Eq. 5);
4. the segmentation head learns from the refined CAM label, and later from the label that a random walk with
   the learned affinity propagates (Eq. 6-7; Sec. 3.3), then PAR-refines;
5. loss ``cls + 0.1 seg + 0.1 aff`` (Eq. 8).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.callbacks.schedule import fit_to_run, run_length
from wsss_lightning.losses.affinity import affinity_loss
from wsss_lightning.losses.segmentation import balanced_seg_ce, classification_loss
from wsss_lightning.methods.afa.options import AFALabelConfig, AFALossWeights, AFAPhaseConfig
from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.tags import ImageTagsMixin
from wsss_lightning.metrics import SegmentationIoU, pseudo_label_accuracy
from wsss_lightning.models.afa import AFANetwork, AFAOutput
from wsss_lightning.models.par import PAR
from wsss_lightning.models.resize import resize
from wsss_lightning.models.token_grid import TokenGrid
from wsss_lightning.pseudo_labels.affinity import (
    WalkGrid,
    labels_at_tokens,
    propagate_stack,
    propagated_cam_labels,
    radius_mask,
    walk_matrix,
)
from wsss_lightning.pseudo_labels.cam import (
    affinity_labels,
    cam_labels_eval,
    multiscale_cams,
    par_pseudo_labels,
)


class AFAModule(ImageTagsMixin, SegmentationMethod):
    """AFA for the ``image`` supervision view (image-level tags).

    Args:
        encoder: MiT encoder name (``mit_b1``, the paper's; ``mit_b0`` .. ``mit_b5``).
        encoder_weights: local ImageNet weights file of the encoder (``mit_b1.pth``).
        encoder_kwargs: architecture overrides (``embed_dims``, ``depths``, ``num_heads``, ...) for a small
            encoder trained from scratch.
        encoder_strides: patch-embedding strides of the four stages: AFA's ``[4, 2, 2, 1]`` keeps the last
            stage at 1/16; ``[4, 2, 1, 1]`` keeps it at 1/8 (a finer token grid for small images).
        attention_blocks: last-stage blocks whose attention logits feed the affinity head (2).
        scaled_attention: feed the affinity head ``q·kᵀ·scale`` (the softmax's input); default ``False``, the
            released encoder's unscaled ``q·kᵀ`` (``rulixiang/afa``, ``wetr/mix_transformer.py``).
        affinity_init: the affinity head's weight init: ``released`` (``wetr/model_attn_aff.py``: normal, std
            ``√(1/3)``) or ``pytorch`` (PyTorch's default, about 4x smaller for mit_b1's 16 channels).
        embed_dim: SegFormer head width (256).
        pooling: classification pooling, ``gmp`` (released code) or ``gap``.
        drop_path_rate: stochastic depth of the encoder (0.1).
        phases: the warm-up and the switch to propagated labels.
        labels: CAM scales, thresholds, PAR and random-walk settings.
        loss_weights: weights of the classification, segmentation and affinity losses.
        seg_loss: ``balanced`` (background and foreground pixels weigh half each, as ToCo / DuPL, which
            build on AFA's training code) or ``ce`` (plain cross-entropy).
        **kwargs: the arguments of :class:`SegmentationMethod` (``num_classes`` with background; ``optim``
            groups ``backbone`` (x1), ``backbone_norm`` (x0: the released optimizer keeps the encoder's
            norm layers fixed) and ``head`` (x10)).
    """

    def __init__(
        self,
        encoder: str = "mit_b1",
        encoder_weights: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        encoder_strides: tuple[int, int, int, int] = (4, 2, 2, 1),
        attention_blocks: int = 2,
        embed_dim: int = 256,
        pooling: Literal["gmp", "gap"] = "gmp",
        drop_path_rate: float = 0.1,
        scaled_attention: bool = False,
        affinity_init: Literal["released", "pytorch"] = "released",
        phases: AFAPhaseConfig | None = None,
        labels: AFALabelConfig | None = None,
        loss_weights: AFALossWeights | None = None,
        seg_loss: Literal["balanced", "ce"] = "balanced",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: the phase boundaries training follows: ``phases``, or scaled into a shorter run (see setup)
        self.phases: AFAPhaseConfig = self.options.phases

    # ------------------------------------------------------------------ construction
    def representation_channels(self) -> int:
        """Width of the network's representation head (0: none); U2PL+ WS adds one."""
        return 0

    @override
    def configure_models(self) -> None:
        hp = self.options
        self.check_choices(
            pooling=("gmp", "gap"), seg_loss=("balanced", "ce"), affinity_init=("released", "pytorch")
        )
        try:
            self.net = AFANetwork(
                self.num_classes,
                encoder=hp.encoder,
                weights=hp.encoder_weights,
                encoder_kwargs=hp.encoder_kwargs,
                strides=hp.encoder_strides,
                attention_blocks=hp.attention_blocks,
                embed_dim=hp.embed_dim,
                pooling=hp.pooling,
                drop_path_rate=hp.drop_path_rate,
                rep_channels=self.representation_channels(),
                scaled_attention=hp.scaled_attention,
                affinity_init=hp.affinity_init,
            )
        except (ValueError, FileNotFoundError) as err:  # name the module's options, not the encoder's
            raise type(err)(
                f"{type(self).__name__}: model.init_args.encoder / encoder_weights / encoder_kwargs / "
                f"encoder_strides / attention_blocks: {err}"
            ) from err
        self.par = PAR(hp.labels.par_dilations, hp.labels.par_iterations)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # A checkpoint from before ``scaled_attention`` existed was trained with the scaled logits: keep them.
        saved = checkpoint.get("hyper_parameters")
        if saved is not None and "scaled_attention" not in saved:
            if not self.net.encoder.scaled_attention:
                rank_zero_warn(
                    f"{type(self).__name__}: the checkpoint predates model.init_args.scaled_attention and was "
                    "trained with the affinity head reading q·kᵀ·scale; it keeps that input "
                    "(scaled_attention: true)"
                )
            self.net.encoder.scaled_attention = True
            self.hparams["scaled_attention"] = True

    @override
    def configure_metrics(self) -> None:
        super().configure_metrics()
        # raw CAM, affinity-propagated CAM and the training pseudo-labels
        self.val_outputs = nn.ModuleDict(
            {
                kind: SegmentationIoU(self.num_classes, self.ignore_index)
                for kind in ("cam", "aff_cam", "pseudo")
            }
        )

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        groups = self.net.param_groups()
        return {"backbone": (groups["backbone"], 1.0), "backbone_norm": (groups["backbone_norm"], 0.0),
                "head": (groups["head"], 10.0)}  # fmt: skip

    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        steps = run_length(self.trainer)
        if steps is not None:
            # a schedule longer than the run (--trainer.max_steps 10 on a 20k config) is scaled into it, and
            # fit_to_run says so in one line; the saved hyper-parameters keep the configured values
            self.apply_boundaries(fit_to_run(type(self).__name__, "step", steps, self.boundaries()))

    def boundaries(self) -> dict[str, int]:
        """The configured step boundaries of the schedule, by option name."""
        ph = self.options.phases
        return {"phases.seg_start": ph.seg_start, "phases.propagation_start": ph.propagation_start}

    def apply_boundaries(self, steps: dict[str, int]) -> None:
        """Train with these boundaries (:meth:`boundaries`' names), e.g. scaled into a short run."""
        self.phases = dataclasses.replace(
            self.options.phases,
            seg_start=steps["phases.seg_start"],
            propagation_start=steps["phases.propagation_start"],
        )

    # ------------------------------------------------------------------ inference
    @override
    def forward(self, images: Tensor) -> Tensor:
        return self.net.segment(images)

    @torch.no_grad()
    def cams_with_walk(
        self, images: Tensor, classes: Tensor, with_walk: bool = True
    ) -> tuple[Tensor, Tensor | None, WalkGrid]:
        """Multi-scale CAMs of the present classes and the random-walk matrix of one scale's affinity.

        Returns:
            ``cams`` ``(B, K, H, W)`` in ``[0, 1]``, ``walk`` ``(B, N, N)`` (None unless ``with_walk``) and
            its token grid.
        """
        cfg = self.options.labels
        b, _, h, w = images.shape
        wanted = (int(cfg.walk_scale * h), int(cfg.walk_scale * w))
        kept: list[tuple[Tensor, tuple[int, int]]] = []

        def cam_fn(x: Tensor) -> tuple[Tensor]:
            cam, affinity = self.net.cams_and_affinity(x)
            if not kept and tuple(x.shape[-2:]) == wanted:
                # the un-flipped images of the walk's scale, and their token grid
                kept.append((affinity[:b], (int(cam.shape[-2]), int(cam.shape[-1]))))
            return (cam,)

        tokens = self.token_grid(self.net.stride)
        (cams,) = multiscale_cams(cam_fn, images, cfg.scales, 1, classes, tokens=tokens)
        affinity, size = kept[0]
        grid = WalkGrid(size, wanted, tokens)
        if not with_walk:
            return cams, None, grid
        walk = walk_matrix(
            torch.sigmoid(affinity),
            mask=self._radius_mask(size, affinity.device),
            power=cfg.walk_power,
            log_iterations=cfg.walk_log_iterations,
        )
        return cams, walk, grid

    def token_grid(self, stride: float) -> TokenGrid | None:
        """Where the tokens of a stride-``stride`` map of the network sit (``labels.token_positions``).

        MiT's stages put token ``c`` on pixel ``stride * c`` (the SegFormer head's output is on the first
        stage's grid, but its deeper stages are upsampled onto it as cell centres); None is the released code's
        cell-centre resize.
        """
        if self.options.labels.token_positions != "encoder":
            return None
        return TokenGrid(stride, self.net.token_grid.origin)

    def _affinity_target_grid(self) -> TokenGrid | None:
        """Where the affinity loss reads each token's label (``labels.affinity_targets``); None: nearest."""
        if self.options.labels.affinity_targets == "nearest":
            return None
        return self.token_grid(self.net.stride) or TokenGrid.cell_centres(self.net.stride)

    def _radius_mask(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        # training crops share one grid; evaluation images of many sizes must not grow the cache
        cache: dict[tuple[Any, ...], Tensor] = self.__dict__.setdefault("_radius_masks", {})
        key = (grid, str(device))
        if key not in cache:
            if len(cache) >= 4:
                cache.clear()
            cache[key] = radius_mask(grid[0], grid[1], self.options.labels.radius, device=device)
        return cache[key]

    def refined_labels(
        self,
        images01: Tensor,
        cams: Tensor,
        classes: Tensor,
        box: Tensor | None,
        walk: tuple[Tensor, WalkGrid] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """PAR-refined pseudo-labels (B, H, W) and, with ``walk`` = (matrix, grid), the propagated ones.

        Both come from one PAR call (one image kernel): the propagated stacks go through the random walk
        (Sec. 3.3) instead of the softmax before the refinement.
        """
        cfg = self.options.labels
        maps = [cams] if walk is None else [cams, cams]
        propagate = [None] if walk is None else [None, propagate_stack(*walk)]
        labels = par_pseudo_labels(
            self.par,
            images01,
            maps,
            None,
            cfg.high,
            low=cfg.low,
            valid_box=box,
            downscale=cfg.par_downscale,
            classes=classes,
            propagate=propagate,
        )
        return labels[0], (labels[1] if walk is not None else None)

    # ------------------------------------------------------------------ training
    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, box = batch["image"], batch["valid_box"]
        tags, classes = self._fg_tags(batch), self._classes(batch)
        t, ph, w = self.global_step, self.phases, self.options.loss_weights
        out = self.net(images)
        logs: dict[str, Tensor] = {}
        loss_cls = classification_loss(out.cls_logits, tags)
        loss: Tensor = w.cls * loss_cls
        logs["train/loss_cls"] = loss_cls
        if t >= ph.seg_start:
            loss = loss + self._affinity_and_segmentation(batch, out, classes, box, logs)
        else:  # keeps every head in the graph, so DDP needs no find_unused_parameters
            loss = loss + self._unused_heads(out)
        logs["train/loss"] = loss
        self.log_dict(logs, batch_size=images.shape[0], prog_bar=False)
        self.log_progress_loss(loss, images.shape[0], logs)
        return loss

    def _unused_heads(self, out: AFAOutput) -> Tensor:
        """0 times every output that no loss uses yet."""
        total = out.seg_logits.sum() + out.affinity_logits.sum()
        if out.rep is not None:
            total = total + out.rep.sum()
        return 0.0 * total

    def _affinity_and_segmentation(
        self, batch: dict[str, Any], out: AFAOutput, classes: Tensor, box: Tensor, logs: dict[str, Tensor]
    ) -> Tensor:
        images = batch["image"]
        size = images.shape[-2:]
        t, w = self.global_step, self.options.loss_weights
        images01 = self.denormalize(images)
        with torch.no_grad():
            propagating = self.options.labels.target == "pseudo" and t >= self.phases.propagation_start
            # the walk matrix only once the propagated labels are the target
            cams, walk, grid = self.cams_with_walk(images, classes, with_walk=propagating)
            labels, propagated = self.refined_labels(
                images01, cams, classes, box, None if walk is None else (walk, grid)
            )
            target = (
                self._mask_target(batch, "labels.target") if self.options.labels.target == "mask" else labels
            )
            if propagated is not None:
                target = propagated
            # affinity labels: the refined label at each token of the training pass's grid
            train_grid = (int(out.features.shape[-2]), int(out.features.shape[-1]))
            tokens = labels_at_tokens(labels, train_grid, self._affinity_target_grid()).long()
            pairs = affinity_labels(
                tokens, self.ignore_index, radius=self.options.labels.radius, diagonal="positive"
            )
            if "mask" in batch:  # ground truth of the image view: a diagnostic (a target only for "mask")
                logs["train/pseudo_accuracy"] = pseudo_label_accuracy(
                    target, batch["mask"], self.ignore_index
                )
        balance = self.options.labels.affinity_balance == "affinitynet"
        loss_aff = affinity_loss(
            out.affinity_logits, pairs, background=tokens.flatten(1) == 0 if balance else None
        )
        seg_logits = resize(out.seg_logits, size)
        if self.options.seg_loss == "balanced":
            loss_seg = balanced_seg_ce(seg_logits, target, self.ignore_index)
        else:
            loss_seg = F.cross_entropy(seg_logits, target, ignore_index=self.ignore_index)
        logs["train/loss_aff"] = loss_aff
        logs["train/loss_seg"] = loss_seg
        loss: Tensor = w.aff * loss_aff + w.seg * loss_seg
        extra = self.extra_loss(out, cams, classes, box, logs)
        if extra is not None:
            loss = loss + extra
        elif out.rep is not None:
            loss = loss + 0.0 * out.rep.sum()
        return loss

    def extra_loss(
        self,
        out: AFAOutput,
        cams: Tensor,
        classes: Tensor,
        box: Tensor,
        logs: dict[str, Tensor],
    ) -> Tensor | None:
        """A further loss term after the warm-up (None: none); U2PL+ WS adds its contrastive loss here.

        Args:
            out: the training forward.
            cams: ``(B, K, H, W)`` multi-scale CAMs of the present ``classes`` (no gradient).
            classes: ``(B, K)`` present foreground classes (1-based ids minus one, -1 = padding).
            box: ``(B, 4)`` the crops' valid boxes (top, left, bottom, right) in crop pixels.
            logs: values to log.
        """
        return None

    # ------------------------------------------------------------------ validation
    def _val_metric(self, kind: str) -> SegmentationIoU:
        return cast(SegmentationIoU, self.val_outputs[kind])

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        images, masks = batch["image"], batch["mask"]
        classes = self._classes(batch)
        cfg = self.options.labels
        cams, walk, grid = self.cams_with_walk(images, classes)
        assert walk is not None
        self._val_metric("cam").update(cam_labels_eval(cams, None, cfg.background, classes=classes), masks)
        self._val_metric("aff_cam").update(
            propagated_cam_labels(cams, classes, walk, grid, cfg.background), masks
        )
        pseudo, _ = self.refined_labels(self.denormalize(images), cams, classes, None)
        # pseudo-label mIoU over the pixels the pseudo-labels keep (the rest are ignored in training)
        kept = pseudo != self.ignore_index
        self._val_metric("pseudo").update(
            torch.where(kept, pseudo, 0), torch.where(kept, masks, self.ignore_index)
        )

    @override
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        for kind, metric in self.val_outputs.items():
            self._log_iou("val", cast(SegmentationIoU, metric), kind)


__all__ = ["AFAModule"]
