"""Seminar Learning: click-supervised segmentation with a mean teacher and a student-student seminar.

Chen, Wang, Chen, Zhen, Zheng, Ji, Shao, "Seminar Learning for Click-Level Weakly Supervised Semantic
Segmentation" (ICCV 2021). No code was released; the paper builds on the regularized-loss trainer
``meng-tang/rloss`` (``pytorch/pytorch-deeplab_v3_plus/train_withdensecrfloss.py``, §4.2). One run of this module
is one stage:

* **ancillary stage** (``ancillary_checkpoint=None``), Eq. 5: partial CE on the clicks (Eq. 2) + λ_pCons(e) ·
  pixel consistency with an EMA teacher run on the same batch (Eq. 1, 3) + the dense-CRF loss (Eq. 4);
* **primary stage** (``ancillary_checkpoint`` = the ancillary stage's checkpoint), Eq. 7: the same plus CE to the
  heterogeneous pseudo-labels that the frozen ancillary student (eval mode) gives on the same augmented batch
  at every step (Eq. 6). The primary starts from the same initialisation as the ancillary (ImageNet backbone,
  fresh head from another seed, fresh learning-rate schedule, §3.1-3.2); its student is the output model.

Chaining a further stage is the same command with the primary's checkpoint as the ancillary. A run shorter than
the consistency ramp (``--trainer.max_steps 10``, ``fast_dev_run``) scales the ramp into it (see ``setup``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.callbacks.schedule import ScheduleCallback, fit_to_run, run_length
from wsss_lightning.losses.dense_crf import DenseCRFLoss
from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.seminar.ancillary import FIELD, ancillary_student_state
from wsss_lightning.methods.seminar.losses import consistency_mse, partial_ce, pseudo_label_ce
from wsss_lightning.methods.seminar.options import (
    ConsistencyConfig,
    DenseCRFLossConfig,
    PartialCEConfig,
    PseudoLabelConfig,
)
from wsss_lightning.models.deeplabv3plus import DeepLabV3Plus
from wsss_lightning.ops import channel_argmax
from wsss_lightning.pseudo_labels.cam import box_mask
from wsss_lightning.teachers import EMATeacher, FrozenNetwork


class SeminarModule(SegmentationMethod):
    """Seminar Learning for the ``click`` view (``ClickView``): one stage per run.

    Args:
        encoder: timm encoder of the DeepLabV3+ (``resnet101``: torchvision's layout, as rloss).
        encoder_weights: local ImageNet weights file for the encoder (torchvision ``resnet101-5d3b4d8f.pth``).
        output_stride: 16 (rloss's default) or 8.
        multi_grid: DeepLab multi-grid of the last stage ((1, 2, 4): dilations 2 / 4 / 8 at stride 16).
        aspp_dilations: ASPP rates ((6, 12, 18) at stride 16).
        decoder_channels: width of the ASPP and the decoder (256 in the reference; smaller for CPU-sized runs).
        ancillary_checkpoint: checkpoint of a finished Seminar stage; its student becomes the frozen ancillary
            and this run is the primary stage. ``None``: this run is the ancillary stage. Read when the fit
            starts; a resumed fit takes the ancillary from its own checkpoint instead.
        partial_ce: the partial cross-entropy (Eq. 2).
        consistency: the EMA teacher and the pixel consistency loss (Eq. 1, 3).
        crf_loss: the dense-CRF loss (Eq. 4).
        pseudo: the heterogeneous pseudo-label loss (Eq. 6, primary stage).
        evaluate: network used for validation / test / predict: ``student`` (reported in the paper, Table 3
            note) or ``teacher``.
        **kwargs: the arguments of :class:`SegmentationMethod` (``optim`` groups ``backbone`` (x1) and ``head``
            (x10, rloss's ``get_10x_lr_params``)).
    """

    #: primary stage: whether the ancillary's weights were read (checkpointed, so a resumed fit skips the file)
    ancillary_loaded: Tensor

    def __init__(
        self,
        encoder: str = "resnet101",
        encoder_weights: str | None = None,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        aspp_dilations: Sequence[int] = (6, 12, 18),
        decoder_channels: int = 256,
        ancillary_checkpoint: str | None = None,
        partial_ce: PartialCEConfig | None = None,
        consistency: ConsistencyConfig | None = None,
        crf_loss: DenseCRFLossConfig | None = None,
        pseudo: PseudoLabelConfig | None = None,
        evaluate: Literal["student", "teacher"] = "student",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        #: 0 -> 1 over the first ``consistency.ramp_epochs`` epochs, set by the ScheduleCallback
        self.consistency_ramp = 0.0

    # ------------------------------------------------------------------ construction
    def _network(self, pretrained: bool = True) -> DeepLabV3Plus:
        hp = self.options
        return DeepLabV3Plus(
            self.num_classes,
            encoder=hp.encoder,
            encoder_weights=hp.encoder_weights if pretrained else None,
            output_stride=hp.output_stride,
            multi_grid=hp.multi_grid,
            aspp_dilations=hp.aspp_dilations,
            channels=hp.decoder_channels,
        )

    @override
    def configure_models(self) -> None:
        self.check_choices(evaluate=("student", "teacher"))
        cons = self.options.consistency
        if self.options.evaluate == "teacher" and cons.weight == 0 and cons.teacher_mode == "train":
            raise ValueError(
                "SeminarModule: evaluate = 'teacher' with consistency.weight = 0 and teacher_mode = 'train': that "
                "teacher never runs in train mode, so its BN statistics stay at their initial values; evaluate "
                "the student or set consistency.teacher_mode = 'eval' (BN statistics averaged from the student)"
            )
        self.student = self._network()
        # Eq. 1: teacher and student start identical. A train-mode teacher averages parameters only and keeps BN
        # statistics of its own train-mode forwards (mean-teacher convention, MT main.py); an eval-mode teacher
        # never runs in train mode, so it averages the student's BN statistics with its parameters
        self.teacher = EMATeacher(self.student, params_only=cons.teacher_mode == "train")
        self.ancillary: FrozenNetwork | None = None
        path = self.options.ancillary_checkpoint
        if path is not None:
            if not isinstance(path, str) or not path:
                raise ValueError(f"{FIELD}: expected a checkpoint path or null, got {path!r}")
            # weights arrive when the fit starts (or from this run's checkpoint); built here so that a checkpoint
            # of the primary stage loads without the ancillary's file
            self.ancillary = FrozenNetwork(self._network(pretrained=False))
            self.register_buffer("ancillary_loaded", torch.tensor(False))
            # frozen and identical on every rank: DDP must neither register nor broadcast it
            self._ddp_params_and_buffers_to_ignore = [
                f"ancillary.{name}" for name, _ in self.ancillary.named_parameters()
            ] + [f"ancillary.{name}" for name, _ in self.ancillary.named_buffers()]

    @override
    def configure_losses(self) -> None:
        crf = self.options.crf_loss
        self.dense_crf = (
            DenseCRFLoss(crf.weight, crf.sigma_rgb, crf.sigma_xy, crf.scale, crf.kernel, crf.calibration)
            if crf.enabled
            else None
        )

    @override
    def method_callbacks(self) -> list[L.Callback]:
        cons = self.options.consistency
        # fitted to the run in setup, once its length is known
        self._ramp_schedule = ramp = (
            ScheduleCallback(
                "consistency_ramp",
                kind="linear",
                start=0.0,
                end=1.0,
                total_steps=cons.ramp_epochs,
                interval="epoch",
            )
            if cons.ramp_epochs > 0
            else ScheduleCallback("consistency_ramp", kind="constant", start=1.0)
        )
        return [
            # Eq. 1: a_t = min(1 - 1/t, alpha) after optimizer step t = 1, 2, ...: from step 1, no warm-up or copy
            EMATeacherCallback(
                teacher_attr="teacher",
                student_attr="student",
                decay=cons.ema_decay,
                ramp=True,
                warmup_steps=0,
                copy_at_warmup_end=False,
            ),
            ramp,
        ]

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        groups = self.student.param_groups()
        return {"backbone": (groups["backbone"], 1.0), "head": (groups["head"], 10.0)}

    @override
    def forward(self, images: Tensor) -> Tensor:
        net = self.teacher if self.options.evaluate == "teacher" else self.student
        logits: Tensor = net(images)
        return logits

    # ------------------------------------------------------------------ start-up checks
    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = getattr(self._trainer, "datamodule", None)
        supervision = getattr(datamodule, "supervision", None)
        if supervision is not None and supervision != "click":
            raise ValueError(
                f"SeminarModule trains on clicks: set data.view to ClickView (data.init_args.view), got the "
                f"{supervision!r} view"
            )
        epochs = run_length(self.trainer, "epoch")
        if epochs is not None and epochs > 0:
            self._fit_schedule(epochs)

    def _fit_schedule(self, epochs: int) -> None:
        """Scale the consistency ramp into a run of ``epochs`` epochs that ends before the ramp does.

        λ_pCons(e) reaches its weight at epoch ``ramp_epochs``; a run that ends first (``--trainer.max_steps 10``
        on a 16-epoch config, ``fast_dev_run``) never trains with it. The ramp is scaled by
        :func:`fit_to_run` (to 0: the full weight from the start, as ``ramp_epochs = 0`` configures) and the
        change is reported in one line; a ramp that completes within the run is left as configured. The saved
        hyper-parameters keep the configured value.
        """
        old = {"consistency.ramp_epochs": self.options.consistency.ramp_epochs}
        new = fit_to_run(type(self).__name__, "epoch", epochs, old)
        if new == old:
            return
        ramp = new["consistency.ramp_epochs"]
        if ramp > 0:
            self._ramp_schedule.retime(0, ramp)
        else:  # what method_callbacks builds for ramp_epochs = 0
            self._ramp_schedule.kind, self._ramp_schedule.start = "constant", 1.0

    @override
    def on_fit_start(self) -> None:
        if self.ancillary is None or bool(self.ancillary_loaded):
            return  # ancillary stage, or a resumed primary stage whose checkpoint held the ancillary
        method = f"{SeminarModule.__module__}.{SeminarModule.__qualname__}"
        state = ancillary_student_state(self.options.ancillary_checkpoint, method, self.num_classes)
        try:
            self.ancillary.module.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"{FIELD}: {self.options.ancillary_checkpoint} holds a different network than this run's "
                f"(encoder / output_stride / multi_grid / aspp_dilations must match): {err}"
            ) from err
        self.ancillary_loaded.fill_(True)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def _teacher_probs(self, images: Tensor, mode: str) -> Tensor:
        """Softmax of the EMA teacher on the student's batch (Eq. 3's T), without gradient."""
        if mode == "eval":
            logits: Tensor = self.teacher(images)
            return logits.float().softmax(1)
        with self.teacher.train_mode():
            logits = self.teacher(images)
        probs = logits.float().softmax(1)
        self.teacher.sync_buffers()  # identical teacher BN statistics on every DDP rank
        return probs

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if "clicks" not in batch:
            raise KeyError(
                f"SeminarModule: the training batch has no 'clicks' (keys {sorted(batch)}); use the ClickView"
            )
        images, clicks = batch["image"], batch["clicks"]
        region = box_mask("SeminarModule", batch["valid_box"], (images.shape[-2], images.shape[-1]))
        opts = self.options

        logits = self.student(images)
        probs = logits.float().softmax(1)
        loss: Tensor = partial_ce(
            logits, clicks, batch_average=opts.partial_ce.batch_average, ignore_index=self.ignore_index
        )
        logs = {"train/loss_pce": loss}

        cons = opts.consistency
        # no teacher pass while its weight is 0 (the ramp's first epoch; the "pCE" / "pCE + CRF" rows of Table 3)
        if cons.weight > 0 and self.consistency_ramp > 0:
            teacher_probs = self._teacher_probs(images, cons.teacher_mode)
            loss_cons = consistency_mse(
                probs, teacher_probs, region if cons.exclude_padding else None, reduction=cons.reduction
            )
            loss = loss + cons.weight * self.consistency_ramp * loss_cons
            logs["train/loss_consistency"] = loss_cons

        if self.dense_crf is not None:
            loss_crf = self.dense_crf(self.denormalize(images) * 255.0, probs, region)
            loss = loss + loss_crf
            logs["train/loss_crf"] = loss_crf

        if self.ancillary is not None:
            with torch.no_grad():
                pseudo_labels = channel_argmax(self.ancillary(images))
            pl = opts.pseudo
            loss_pseudo = pseudo_label_ce(
                logits, pseudo_labels, region if pl.exclude_padding else None, batch_average=pl.batch_average
            )
            loss = loss + pl.weight * loss_pseudo
            logs["train/loss_pseudo"] = loss_pseudo

        logs["train/loss"] = loss
        self.log_dict(logs, batch_size=images.shape[0])
        self.log_progress_loss(loss, images.shape[0], logs)
        return loss
