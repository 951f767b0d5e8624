"""U2PL / U2PL+: semi-supervised segmentation with unreliable pseudo-labels as contrastive negatives.

Wang et al., "Using Unreliable Pseudo-Labels for Label-Efficient Semantic Segmentation" (CVPR 2022 / U2PL+).
Each step (after a supervised-only warm-up):

1. the EMA teacher (eval mode) labels the clean unlabeled batch; CutMix mixes images, labels, confidences;
2. the student sees [labeled; mixed unlabeled]: supervised CE (OHEM + auxiliary head for Cityscapes) on
   the labeled part;
3. the teacher (train mode) sees the same batch; its entropy splits the pseudo-labels into reliable ones
   (unsupervised CE, the alpha_t % highest-entropy pixels dropped, adaptive weight) and unreliable ones;
4. unreliable pixels become class-wise negatives in a memory bank for a pixel-to-prototype contrastive loss;
5. the teacher follows the student by EMA (``EMATeacherCallback``); alpha_t anneals linearly with the epoch
   (``ScheduleCallback``).

With the ``full`` supervision view (a plain batch instead of ``{"labeled", "unlabeled"}``) the module trains
the same network on labels alone: the SupOnly baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.callbacks.schedule import ScheduleCallback
from wsss_lightning.callbacks.seeding import StepSeed
from wsss_lightning.losses.functional import (
    downsample_labels,
    entropy_band_masks,
    entropy_percentile_mask,
    ohem_ce,
    unsupervised_loss,
)
from wsss_lightning.losses.u2pl import ContrastiveLossConfig, U2PLContrastiveLoss
from wsss_lightning.methods.base import IMAGENET_MEAN, IMAGENET_STD, SegmentationMethod
from wsss_lightning.methods.config import InferenceConfig, OptimizerConfig
from wsss_lightning.models.deeplab import DeepLabV3PlusRep
from wsss_lightning.pseudo_labels.cutmix import apply_cutmix, cutmix_boxes
from wsss_lightning.pseudo_labels.prototypes import prototype_denoise
from wsss_lightning.teachers import EMATeacher


@dataclass
class ContrastiveConfig(ContrastiveLossConfig):
    """U2PL's contrastive term: the loss and bank options of :class:`ContrastiveLossConfig` plus how the
    method uses it (spec u2pl §3.7-3.8).

    Attributes:
        enabled: use the contrastive loss at all (SupOnly: false, and no memory bank is allocated).
        weight: lambda_c. The released code sets 1 but its DDP reduction divides the gradient by the number
            of GPUs W, so the effective weight of the published runs is 1/W: 0.25 for VOC (4 GPUs), 0.125 for
            Cityscapes (8 GPUs). The default is the VOC value.
        low_entropy_percent: alpha^c_0; anchors / prototypes of unlabeled images come from the alpha^c_t %
            lowest-entropy pixels and negatives from the alpha^c_t % highest (alpha^c_t anneals like alpha_t).
        anchor_set: ``code`` (the alpha^c_t % lowest-entropy pixels, released code and Table III) or ``paper``
            (every reliable pixel, Eq. 17 / 22).
    """

    enabled: bool = True
    weight: float = 0.25
    low_entropy_percent: float = 20.0
    anchor_set: Literal["code", "paper"] = "code"


def _up(x: Tensor, size: Sequence[int]) -> Tensor:
    # U2PL upsamples logits with align_corners=True; the network pads inputs so this is exact.
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class U2PLModule(SegmentationMethod):
    """U2PL (and U2PL+ options) for the ``semi`` supervision view; SupOnly with the ``full`` view.

    Args:
        encoder: timm encoder of the DeepLabV3+ (``resnet101s``: the deep-stem ResNet-101 of the reference;
            ``resnet101`` for torchvision-style ImageNet weights).
        encoder_weights: local ImageNet weights file for the encoder.
        output_stride: 8 (reference) or 16.
        multi_grid: layer4 multi-grid (2, 2, 4) as the reference; ``None`` for encoders with other depths.
        aux_weight: weight of the auxiliary layer3 head's loss (0.4 for Cityscapes; 0 builds no aux head).
        supervised_loss: ``ce`` (VOC) or ``ohem`` (Cityscapes: thresh 0.7, min_kept 100,000).
        ohem_thresh: OHEM probability threshold.
        ohem_min_kept: OHEM minimum kept pixels per batch.
        warmup_epochs: supervised-only epochs before the semi-supervised losses start (1 VOC, 0 Cityscapes).
        ema_decay: the teacher's maximum EMA decay (0.99); the decay ramps as min(1 - 1/(k+1), 0.99).
        teacher_copy_first_epoch: the teacher equals the student during the first semi-supervised epoch, as
            in the released code (spec §3.1).
        teacher_bn_from_student: at the end of the warm-up the teacher also takes the student's BN running
            statistics (the reference keeps the teacher's own, gathered by train-mode forwards of its
            never-updated weights during the warm-up).
        cutmix_prob: probability that a step mixes the unlabeled batch with CutMix (0.5).
        unsup_weight: weight of the unsupervised loss (1).
        drop_percent: alpha_0, the % of highest-entropy pseudo-labels dropped at the start (20; anneals to 0).
        adaptive_weight: U2PL's lambda_u = B*H*W / #reliable (Eq. 14); False uses the plain mean.
        unsup_loss: ``ce`` (U2PL) or ``sce`` (U2PL+ symmetric CE with ``sce_xi1``, ``sce_xi2``).
        sce_xi1: CE weight of the symmetric CE.
        sce_xi2: reverse-CE weight of the symmetric CE (paper text 0.1; Table VII best 0.5).
        prototypical_denoising: U2PL+ prototypical denoising of the teacher's pseudo-labels (needs
            ``contrastive.momentum_prototype``).
        contrastive: the contrastive loss and its memory bank.
        evaluate: network used for validation / test / predict: ``teacher`` (reference) or ``student``.
        num_classes: see :class:`SegmentationMethod`.
        ignore_index: see :class:`SegmentationMethod`.
        class_names: see :class:`SegmentationMethod`.
        image_mean: see :class:`SegmentationMethod`.
        image_std: see :class:`SegmentationMethod`.
        optim: see :class:`SegmentationMethod`; groups ``encoder`` (x1) and ``decoder`` (x10, VOC setting).
        inference: see :class:`SegmentationMethod`.
    """

    def __init__(
        self,
        encoder: str = "resnet101s",
        encoder_weights: str | None = None,
        output_stride: int = 8,
        multi_grid: Sequence[int] | None = (2, 2, 4),
        aux_weight: float = 0.0,
        supervised_loss: Literal["ce", "ohem"] = "ce",
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
        warmup_epochs: int = 1,
        ema_decay: float = 0.99,
        teacher_copy_first_epoch: bool = True,
        teacher_bn_from_student: bool = False,
        cutmix_prob: float = 0.5,
        unsup_weight: float = 1.0,
        drop_percent: float = 20.0,
        adaptive_weight: bool = True,
        unsup_loss: Literal["ce", "sce"] = "ce",
        sce_xi1: float = 1.0,
        sce_xi2: float = 0.1,
        prototypical_denoising: bool = False,
        contrastive: ContrastiveConfig | None = None,
        evaluate: Literal["teacher", "student"] = "teacher",
        num_classes: int = 21,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        optim: OptimizerConfig | None = None,
        inference: InferenceConfig | None = None,
    ) -> None:
        self.encoder_name, self.encoder_weights = encoder, encoder_weights
        self.output_stride, self.multi_grid = output_stride, tuple(multi_grid) if multi_grid else None
        self.aux_weight, self.supervised_loss = aux_weight, supervised_loss
        self.ohem_thresh, self.ohem_min_kept = ohem_thresh, ohem_min_kept
        self.warmup_epochs, self.ema_decay = warmup_epochs, ema_decay
        self.teacher_copy_first_epoch, self.cutmix_prob = teacher_copy_first_epoch, cutmix_prob
        self.teacher_bn_from_student = teacher_bn_from_student
        self.unsup_weight, self.drop_percent, self.adaptive_weight = (
            unsup_weight,
            drop_percent,
            adaptive_weight,
        )
        self.unsup_loss, self.sce_xi1, self.sce_xi2 = unsup_loss, sce_xi1, sce_xi2
        self.prototypical_denoising = prototypical_denoising
        self.contrastive_cfg = contrastive or ContrastiveConfig()
        self.evaluate = evaluate
        self._check_options()
        super().__init__(num_classes, ignore_index, class_names, image_mean, image_std, optim, inference)
        #: 1 -> 0 over training, set every epoch by the ScheduleCallback: alpha_t = drop_percent * anneal
        self.anneal = 1.0
        self.save_hyperparameters()

    def _check_options(self) -> None:
        checks = {
            "warmup_epochs": self.warmup_epochs >= 0,
            "ema_decay": 0.0 <= self.ema_decay <= 1.0,
            "cutmix_prob": 0.0 <= self.cutmix_prob <= 1.0,
            "drop_percent": 0.0 <= self.drop_percent < 100.0,
            "contrastive.low_entropy_percent": 0.0 <= self.contrastive_cfg.low_entropy_percent < 50.0,
            "aux_weight": self.aux_weight >= 0.0,
            "supervised_loss": self.supervised_loss in ("ce", "ohem"),
            "evaluate": self.evaluate in ("teacher", "student"),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name, None) for name in bad}
            raise ValueError(f"U2PLModule: invalid option(s) {values}; see the argument documentation")
        if self.prototypical_denoising and not self.contrastive_cfg.momentum_prototype:
            raise ValueError("U2PLModule: prototypical_denoising needs contrastive.momentum_prototype=true")

    # ------------------------------------------------------------------ construction
    @override
    def configure_models(self) -> None:
        self.student = DeepLabV3PlusRep(
            self.num_classes,
            encoder=self.encoder_name,
            encoder_weights=self.encoder_weights,
            output_stride=self.output_stride,
            multi_grid=self.multi_grid,
            aux=self.aux_weight > 0,
        )
        self.teacher = EMATeacher(self.student, params_only=True)

    @override
    def configure_losses(self) -> None:
        # The memory bank is large (650k x 256 floats for VOC): build it only when the loss is used.
        self.contrastive: U2PLContrastiveLoss | None = None
        if self.contrastive_cfg.enabled:
            self.contrastive = U2PLContrastiveLoss(
                self.num_classes, self.contrastive_cfg, ignore_index=self.ignore_index
            )
            # Every rank pushes the same gathered keys, so the banks are identical by construction: keep DDP
            # from broadcasting hundreds of MB of queue from rank 0 before every forward.
            self._ddp_params_and_buffers_to_ignore = [
                f"contrastive.memory_bank.{name}" for name, _ in self.contrastive.memory_bank.named_buffers()
            ]

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        return [
            StepSeed(),
            EMATeacherCallback(
                teacher_attr="teacher",
                student_attr="student",
                decay=self.ema_decay,
                ramp=True,
                warmup_epochs=self.warmup_epochs,
                copy_at_warmup_end=self.teacher_copy_first_epoch,
                copy_buffers_at_warmup_end=self.teacher_bn_from_student,
            ),
            # alpha_t = alpha_0 (1 - t / T) with t the epoch index (spec §3.6)
            ScheduleCallback("anneal", kind="linear", start=1.0, end=0.0, interval="epoch"),
        ]

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        groups = self.student.param_groups()
        return {"encoder": (groups["encoder"], 1.0), "decoder": (groups["decoder"], 10.0)}

    @override
    def forward(self, images: Tensor) -> Tensor:
        # the teacher is still untrained during the supervised-only warm-up of a fit (validate / test /
        # predict of a checkpoint always use the configured network)
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        warming_up = fitting and self.trainer.current_epoch < self.warmup_epochs
        use_teacher = self.evaluate == "teacher" and not warming_up
        net = self.teacher if use_teacher else self.student
        return net(images, with_rep=False)["pred"]

    # ------------------------------------------------------------------ losses
    def _supervised(self, out: dict[str, Tensor], labels: Tensor, count: int | None = None) -> Tensor:
        size = labels.shape[-2:]
        pred = _up(out["pred"][:count], size)
        if self.supervised_loss == "ohem":
            loss = ohem_ce(pred, labels, self.ohem_thresh, self.ohem_min_kept, self.ignore_index)
        else:
            loss = F.cross_entropy(pred, labels, ignore_index=self.ignore_index)
        if self.aux_weight > 0:
            aux = _up(out["aux"][:count], size)
            if self.supervised_loss == "ohem":
                aux_loss = ohem_ce(aux, labels, self.ohem_thresh, self.ohem_min_kept, self.ignore_index)
            else:
                aux_loss = F.cross_entropy(aux, labels, ignore_index=self.ignore_index)
            loss = loss + self.aux_weight * aux_loss
        return loss

    @torch.no_grad()
    def _pseudo_labels(self, images_u: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher (eval mode) on the clean unlabeled batch -> (confidence, label), both (B_u, H, W)."""
        out = self.teacher(images_u, with_rep=self.prototypical_denoising)
        prob = _up(out["pred"], images_u.shape[-2:]).softmax(1)
        bank = self.contrastive.prototype_bank if self.contrastive is not None else None
        if self.prototypical_denoising and bank is not None:
            prob = prototype_denoise(prob, out["rep"], bank.prototypes, prototype_valid=bank.initialized)
        return prob.max(1)

    def _contrastive(
        self,
        rep: Tensor,
        teacher: dict[str, Tensor],
        labels_l: Tensor,
        labels_u: Tensor,
        prob_u_large: Tensor,
    ) -> Tensor:
        cfg, n_l = self.contrastive_cfg, labels_l.shape[0]
        alpha_c = cfg.low_entropy_percent * self.anneal
        low_u, high_u = entropy_band_masks(
            prob_u_large, labels_u, alpha_c, 100.0 - alpha_c, self.ignore_index
        )
        if cfg.anchor_set == "paper":
            low_u = entropy_percentile_mask(
                prob_u_large, labels_u, self.drop_percent * self.anneal, self.ignore_index
            )
        size = rep.shape[-2:]
        prob_t = teacher["pred"].softmax(1)
        assert self.contrastive is not None
        out = self.contrastive(
            rep,
            teacher["rep"],
            downsample_labels(labels_l, size),
            downsample_labels(labels_u, size),
            prob_t[:n_l],
            prob_t[n_l:],
            downsample_labels(low_u.to(torch.uint8), size).bool(),
            downsample_labels(high_u.to(torch.uint8), size).bool(),
        )
        return out.loss

    # ------------------------------------------------------------------ training
    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if "labeled" not in batch:  # ``full`` view: the SupOnly baseline
            out = self.student(batch["image"], with_rep=False)
            loss = self._supervised(out, batch["mask"])
            self._log_losses(loss, {"train/loss_sup": loss}, batch["image"].shape[0])
            return loss
        images_l, labels_l = batch["labeled"]["image"], batch["labeled"]["mask"]
        images_u = batch["unlabeled"]["image"]
        if self.trainer.current_epoch < self.warmup_epochs:
            return self._warmup_step(images_l, labels_l)
        # ground truth of unlabeled images, only when the datamodule keeps it (keep_target_masks) for diagnostics
        return self._semi_step(images_l, labels_l, images_u, batch["unlabeled"].get("mask"))

    def _warmup_step(self, images_l: Tensor, labels_l: Tensor) -> Tensor:
        out = self.student(images_l)
        loss = self._supervised(out, labels_l)
        with torch.no_grad(), self.teacher.train_mode():
            self.teacher(images_l, with_rep=False)  # warms up the teacher's own BN statistics (spec §3.0)
        self.teacher.sync_buffers()  # the reference's SyncBN keeps them equal on every GPU
        self._log_losses(loss, {"train/loss_sup": loss}, images_l.shape[0])
        # every parameter stays in the graph, so DDP needs no find_unused_parameters
        return loss + 0.0 * out["rep"].sum()

    def _semi_step(
        self, images_l: Tensor, labels_l: Tensor, images_u: Tensor, truth_u: Tensor | None = None
    ) -> Tensor:
        n_l, size = images_l.shape[0], images_l.shape[-2:]
        conf_u, labels_u = self._pseudo_labels(images_u)
        diagnostics = {}
        if truth_u is not None:  # pixel accuracy of the teacher's pseudo-labels (never trained on)
            valid = truth_u != self.ignore_index
            correct = ((labels_u == truth_u) & valid).sum()
            diagnostics["train/pseudo_accuracy"] = correct / valid.sum().clamp(min=1)
        boxes = cutmix_boxes(
            images_u.shape[0], size[0], size[1], prob=self.cutmix_prob, device=images_u.device
        )
        images_u, labels_u, conf_u = apply_cutmix(images_u, labels_u, conf_u, boxes)

        both = torch.cat([images_l, images_u])
        out = self.student(both)
        loss_sup = self._supervised(out, labels_l, count=n_l)
        with torch.no_grad(), self.teacher.train_mode():
            teacher = self.teacher(both)  # train-mode teacher: entropy, ranks and keys (spec §3.5)
        self.teacher.sync_buffers()
        prob_u_large = _up(teacher["pred"][n_l:], size).softmax(1)
        loss_unsup = unsupervised_loss(
            _up(out["pred"][n_l:], size),
            labels_u,
            prob_u_large,
            self.drop_percent * self.anneal,
            ignore_index=self.ignore_index,
            weight_mode="adaptive" if self.adaptive_weight else "mean",
            loss_type=self.unsup_loss,
            xi1=self.sce_xi1,
            xi2=self.sce_xi2,
        )
        loss = loss_sup + self.unsup_weight * loss_unsup
        logs = {"train/loss_sup": loss_sup, "train/loss_unsup": loss_unsup}
        if self.contrastive is not None:
            loss_con = self._contrastive(out["rep"], teacher, labels_l, labels_u, prob_u_large)
            loss = loss + self.contrastive_cfg.weight * loss_con
            logs["train/loss_contrastive"] = loss_con
        else:
            loss = loss + 0.0 * out["rep"].sum()
        logs["train/pseudo_confidence"] = conf_u.mean()
        logs.update(diagnostics)
        self._log_losses(loss, logs, images_u.shape[0])
        return loss

    def _log_losses(self, loss: Tensor, parts: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict(parts, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
