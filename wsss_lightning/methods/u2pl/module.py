"""U2PL / U2PL+: semi-supervised segmentation with unreliable pseudo-labels as contrastive negatives.

Wang et al., "Semi-Supervised Semantic Segmentation Using Unreliable Pseudo-Labels" (CVPR 2022) and "Using
Unreliable Pseudo-Labels for Label-Efficient Semantic Segmentation" (U2PL+, IJCV 2024); reference code
``Haochen-Wang409/U2PL`` (``train_semi.py``, ``train_sup.py``, ``u2pl/utils/loss_helper.py``). Each step (after a supervised-only warm-up):

1. the EMA teacher (eval mode) labels the clean unlabeled batch; CutMix mixes images, labels, confidences;
2. the student sees [labeled; mixed unlabeled]: supervised CE (OHEM + auxiliary head for Cityscapes) on
   the labeled part;
3. the teacher (train mode) sees the same batch; its entropy splits the pseudo-labels into reliable ones
   (unsupervised CE, the alpha_t % highest-entropy pixels dropped, adaptive weight) and unreliable ones;
4. unreliable pixels become class-wise negatives in a memory bank for a pixel-to-prototype contrastive loss;
5. the teacher follows the student by EMA (``EMATeacherCallback``); alpha_t anneals linearly with the epoch
   (``ScheduleCallback``).

A run shorter than the schedule (``--trainer.max_steps 3``, ``fast_dev_run``) scales the warm-up into it, so the
semi-supervised losses still train, and anneals alpha_t over the epochs the run has (see ``setup``).

Given a plain batch instead of ``{"labeled", "unlabeled"}`` (``SemiView(labeled_only=True)``, i.e.
``configs/u2pl/suponly.yaml``, or the ``full`` view) the module trains the same network on labels alone: the
SupOnly baseline (``train_sup.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.callbacks.schedule import ScheduleCallback, fit_to_run, run_length
from wsss_lightning.losses.segmentation import ohem_ce
from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.u2pl.contrastive import ContrastiveOutput, U2PLContrastiveLoss
from wsss_lightning.methods.u2pl.cutmix import apply_cutmix, cutmix_boxes
from wsss_lightning.methods.u2pl.losses import (
    SortedValues,
    downsample_labels,
    entropy_band_masks,
    entropy_percentile_mask,
    oracle_pseudo_labels,
    teacher_entropy,
    unsupervised_loss,
)
from wsss_lightning.methods.u2pl.options import (
    ContrastiveConfig,
    SupervisedLossConfig,
    TeacherConfig,
    UnsupervisedConfig,
)
from wsss_lightning.methods.u2pl.prototypes import prototype_denoise
from wsss_lightning.metrics import pseudo_label_accuracy
from wsss_lightning.models.deeplab import DeepLabV3PlusRep
from wsss_lightning.models.resize import resize
from wsss_lightning.ops import channel_max
from wsss_lightning.teachers import EMATeacher


class U2PLModule(SegmentationMethod):
    """U2PL (and U2PL+ options) for the ``semi`` view; SupOnly on a plain batch (``SemiView(labeled_only=True)``).

    Args:
        encoder: timm encoder of the DeepLabV3+ (``resnet101s``: the deep-stem ResNet-101 of the reference;
            ``resnet101`` for torchvision-style ImageNet weights).
        encoder_weights: local ImageNet weights file for the encoder.
        output_stride: 8 (reference) or 16.
        multi_grid: layer4 multi-grid (2, 2, 4) as the reference; ``None`` for encoders with other depths.
        warmup_epochs: supervised-only epochs before the semi-supervised losses start (1 VOC, 0 Cityscapes).
        supervised: the supervised loss (CE, or OHEM with the auxiliary head for Cityscapes).
        teacher: the EMA teacher.
        unsupervised: pseudo-labels, CutMix and the unsupervised loss (U2PL+ symmetric CE, prototypical
            denoising).
        contrastive: the contrastive loss and its memory bank.
        evaluate: network used for validation / test / predict: ``teacher`` (reference) or ``student``.
        **kwargs: the arguments of :class:`SegmentationMethod` (``optim`` groups ``encoder`` (x1) and ``decoder``
            (x10, VOC setting)).
    """

    def __init__(
        self,
        encoder: str = "resnet101s",
        encoder_weights: str | None = None,
        output_stride: int = 8,
        multi_grid: Sequence[int] | None = (2, 2, 4),
        warmup_epochs: int = 1,
        supervised: SupervisedLossConfig | None = None,
        teacher: TeacherConfig | None = None,
        unsupervised: UnsupervisedConfig | None = None,
        contrastive: ContrastiveConfig | None = None,
        evaluate: Literal["teacher", "student"] = "teacher",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: 1 -> 0 over training, set every epoch by the ScheduleCallback: alpha_t = drop_percent * anneal
        self.anneal = 1.0
        #: supervised-only epochs this fit trains: ``warmup_epochs``, or scaled into a shorter run (see setup)
        self.warmup_epochs: int = self.options.warmup_epochs

    # ------------------------------------------------------------------ construction
    @override
    def configure_models(self) -> None:
        hp = self.options
        self.check_choices(evaluate=("teacher", "student"))
        if hp.warmup_epochs < 0:
            raise ValueError(f"U2PLModule: warmup_epochs = {hp.warmup_epochs}; expected >= 0")
        if hp.unsupervised.prototypical_denoising and not hp.contrastive.momentum_prototype:
            raise ValueError(
                "U2PLModule: unsupervised.prototypical_denoising needs contrastive.momentum_prototype=true"
            )
        self.student = DeepLabV3PlusRep(
            self.num_classes,
            encoder=hp.encoder,
            encoder_weights=hp.encoder_weights,
            output_stride=hp.output_stride,
            multi_grid=tuple(hp.multi_grid) if hp.multi_grid else None,
            aux=hp.supervised.aux_weight > 0,
        )
        self.teacher = EMATeacher(self.student, params_only=True)

    @override
    def configure_losses(self) -> None:
        # The memory bank is large (650k x 256 floats for VOC): build it only when the loss is used.
        self.contrastive: U2PLContrastiveLoss | None = None
        if self.options.contrastive.enabled:
            self.contrastive = U2PLContrastiveLoss(
                self.num_classes, self.options.contrastive, ignore_index=self.ignore_index
            )
            # Every rank pushes the same gathered keys, so the banks are identical by construction: keep DDP
            # from broadcasting hundreds of MB of queue from rank 0 before every forward.
            self._ddp_params_and_buffers_to_ignore = [
                f"contrastive.memory_bank.{name}" for name, _ in self.contrastive.memory_bank.named_buffers()
            ]

    @override
    def method_callbacks(self) -> list[L.Callback]:
        teacher = self.options.teacher
        # the warm-up and the anneal's span are fitted to the run in setup, once its length is known
        self._teacher_schedule = EMATeacherCallback(
            teacher_attr="teacher",
            student_attr="student",
            decay=teacher.ema_decay,
            ramp=True,
            warmup_epochs=self.options.warmup_epochs,
            copy_at_warmup_end=teacher.copy_first_epoch,
            copy_buffers_at_warmup_end=teacher.bn_from_student,
        )
        # alpha_t = alpha_0 (1 - t / T) with t the epoch index (U2PL+ Eq. 13)
        self._anneal_schedule = ScheduleCallback(
            "anneal", kind="linear", start=1.0, end=0.0, interval="epoch"
        )
        return [self._teacher_schedule, self._anneal_schedule]

    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        epochs = run_length(self.trainer, "epoch")
        if epochs is not None and epochs > 0:
            self._fit_schedule(epochs)
        view = getattr(getattr(self.trainer, "datamodule", None), "view", None)
        oracle = self._oracle()
        if oracle and not getattr(view, "keep_target_masks", False):
            raise ValueError(
                f"model.init_args.unsupervised.{oracle} needs the unlabeled images' ground truth: set "
                "data.init_args.view.init_args.keep_target_masks: true (SemiView)"
            )

    def _oracle(self) -> str:
        """The name of the oracle diagnostic switched on, or ``""``."""
        unsup = self.options.unsupervised
        return "oracle_labels" if unsup.oracle_labels else "oracle_filter" if unsup.oracle_filter else ""

    def _fit_schedule(self, epochs: int) -> None:
        """Scale the warm-up into a run of ``epochs`` epochs shorter than it; anneal alpha_t over the run.

        A warm-up as long as the run (``--trainer.max_steps 3`` on a 12-epoch config, ``fast_dev_run``) would
        train the supervised loss alone: it is scaled by :func:`fit_to_run`, which reports the change in
        one line; one that fits is left as configured. alpha_t's ``T`` is the run's epochs, also when
        ``max_steps`` ends the run before ``max_epochs``. The saved hyper-parameters keep the configured values.
        """
        old = {"warmup_epochs": self.options.warmup_epochs}
        new = fit_to_run(type(self).__name__, "epoch", epochs, old)
        self.warmup_epochs = new["warmup_epochs"]
        self._teacher_schedule.warmup_epochs = self.warmup_epochs
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and 0 < epochs < max_epochs:
            self._anneal_schedule.retime(0, epochs)

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
        use_teacher = self.options.evaluate == "teacher" and not warming_up
        net = self.teacher if use_teacher else self.student
        out: dict[str, Tensor] = net(images, with_rep=False)
        return out["pred"]

    # ------------------------------------------------------------------ losses
    def _supervised(self, out: dict[str, Tensor], labels: Tensor, count: int | None = None) -> Tensor:
        cfg: SupervisedLossConfig = self.options.supervised

        def loss(logits: Tensor) -> Tensor:
            logits = resize(logits[:count], labels.shape[-2:], align_corners=True)
            if cfg.loss == "ohem":
                return ohem_ce(logits, labels, cfg.ohem_thresh, cfg.ohem_min_kept, self.ignore_index)
            return F.cross_entropy(logits, labels, ignore_index=self.ignore_index)

        if cfg.aux_weight > 0:
            return loss(out["pred"]) + cfg.aux_weight * loss(out["aux"])
        return loss(out["pred"])

    @torch.no_grad()
    def _pseudo_labels(self, images_u: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher (eval mode) on the clean unlabeled batch -> (confidence, label), both (B_u, H, W)."""
        denoise = self.options.unsupervised.prototypical_denoising
        out = self.teacher(images_u, with_rep=denoise)
        prob = resize(out["pred"], images_u.shape[-2:], align_corners=True).softmax(1)
        bank = self.contrastive.prototype_bank if self.contrastive is not None else None
        if denoise and bank is not None:
            prob = prototype_denoise(prob, out["rep"], bank.prototypes, prototype_valid=bank.initialized)
        return channel_max(prob)

    def _contrastive(
        self,
        rep: Tensor,
        teacher: dict[str, Tensor],
        labels_l: Tensor,
        labels_u: Tensor,
        prob_u_large: Tensor,
        entropy: SortedValues | None = None,
    ) -> Tensor:
        """Contrastive loss; ``entropy`` is the step's :func:`teacher_entropy` of ``prob_u_large``."""
        cfg, n_l = self.options.contrastive, labels_l.shape[0]
        if entropy is None:
            entropy = teacher_entropy(prob_u_large, labels_u, self.ignore_index)
        alpha_c = cfg.low_entropy_percent * self.anneal
        low_u, high_u = entropy_band_masks(
            prob_u_large, labels_u, alpha_c, 100.0 - alpha_c, self.ignore_index, entropy
        )
        if cfg.anchor_set == "paper":
            low_u = entropy_percentile_mask(
                prob_u_large,
                labels_u,
                self.options.unsupervised.drop_percent * self.anneal,
                self.ignore_index,
                entropy,
            )
        size = rep.shape[-2:]
        prob_t = teacher["pred"].softmax(1)
        assert self.contrastive is not None
        out: ContrastiveOutput = self.contrastive(
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
        if "labeled" not in batch:  # labeled images only: the SupOnly baseline
            out = self.student(batch["image"], with_rep=False)
            loss = self._supervised(out, batch["mask"])
            self._log_losses(loss, {"train/loss_sup": loss}, batch["image"].shape[0])
            return loss
        images_l, labels_l = batch["labeled"]["image"], batch["labeled"]["mask"]
        images_u = batch["unlabeled"]["image"]
        if self.trainer.current_epoch < self.warmup_epochs:
            return self._warmup_step(images_l, labels_l)
        # ground truth of unlabeled images, kept only by SemiView(keep_target_masks=True), for diagnostics
        return self._semi_step(images_l, labels_l, images_u, batch["unlabeled"].get("mask"))

    def _warmup_step(self, images_l: Tensor, labels_l: Tensor) -> Tensor:
        out: dict[str, Tensor] = self.student(images_l)
        loss = self._supervised(out, labels_l)
        with torch.no_grad(), self.teacher.train_mode():
            self.teacher(images_l, with_rep=False)  # warms up the teacher's own BN statistics (train_semi.py)
        self.teacher.sync_buffers()  # the reference's SyncBN keeps them equal on every GPU
        self._log_losses(loss, {"train/loss_sup": loss}, images_l.shape[0])
        # every parameter stays in the graph, so DDP needs no find_unused_parameters
        return loss + 0.0 * out["rep"].sum()

    def _semi_step(
        self, images_l: Tensor, labels_l: Tensor, images_u: Tensor, truth_u: Tensor | None = None
    ) -> Tensor:
        n_l, size, unsup = images_l.shape[0], images_l.shape[-2:], self.options.unsupervised
        conf_u, labels_u = self._pseudo_labels(images_u)
        diagnostics = {}
        if truth_u is not None:  # pixel accuracy of the teacher's pseudo-labels (never trained on)
            diagnostics["train/pseudo_accuracy"] = pseudo_label_accuracy(labels_u, truth_u, self.ignore_index)
        if oracle := self._oracle():  # diagnostics only
            if truth_u is None:
                raise ValueError(
                    f"model.init_args.unsupervised.{oracle}: the unlabeled batch has no 'mask' "
                    "(SemiView(keep_target_masks=True) keeps it)"
                )
            labels_u = oracle_pseudo_labels(labels_u, truth_u, unsup, self.ignore_index)
        boxes = cutmix_boxes(
            images_u.shape[0], size[0], size[1], prob=unsup.cutmix_prob, device=images_u.device
        )
        images_u, labels_u, conf_u = apply_cutmix(images_u, labels_u, conf_u, boxes)

        both = torch.cat([images_l, images_u])
        out = self.student(both)
        loss_sup = self._supervised(out, labels_l, count=n_l)
        with torch.no_grad(), self.teacher.train_mode():
            teacher = self.teacher(both)  # train-mode teacher: entropy, ranks and keys (train_semi.py)
        self.teacher.sync_buffers()
        prob_u_large = resize(teacher["pred"][n_l:], size, align_corners=True).softmax(1)
        # One entropy map, sorted once, serves every threshold of the step (unsupervised and contrastive).
        entropy = teacher_entropy(prob_u_large, labels_u, self.ignore_index)
        loss_unsup = unsupervised_loss(
            resize(out["pred"][n_l:], size, align_corners=True),
            labels_u,
            prob_u_large,
            unsup.drop_percent * self.anneal,
            unsup,
            self.ignore_index,
            entropy,
        )
        loss: Tensor = loss_sup + unsup.weight * loss_unsup
        logs = {"train/loss_sup": loss_sup, "train/loss_unsup": loss_unsup}
        if self.contrastive is not None:
            loss_con = self._contrastive(out["rep"], teacher, labels_l, labels_u, prob_u_large, entropy)
            loss = loss + self.options.contrastive.weight * loss_con
            logs["train/loss_contrastive"] = loss_con
        else:
            loss = loss + 0.0 * out["rep"].sum()
        logs["train/pseudo_confidence"] = conf_u.mean()
        logs.update(diagnostics)
        self._log_losses(loss, logs, images_u.shape[0])
        return loss

    def _log_losses(self, loss: Tensor, parts: dict[str, Tensor], batch_size: int) -> None:
        self.log_dict(parts, batch_size=batch_size)
        self.log("train/loss", loss, batch_size=batch_size)
        self.log_progress_loss(loss, batch_size, parts)
