"""DuPL: dual students with trustworthy progressive learning, from image-level tags (single stage).

Wu et al., "DuPL: Dual Student with Trustworthy Progressive Learning for Robust Weakly Supervised Semantic
Segmentation" (CVPR 2024); released code ``Wu0409/DuPL`` (``train_final_voc.py``, ``train_final_coco.py``).
Two independent ViT sub-nets; each step (paper Sec. 3, as ``train_final_voc.py`` runs it):

1. both sub-nets classify the crop (main + auxiliary classifier) and predict a segmentation;
2. multi-scale + flip CAMs of both sub-nets (no gradient; the un-flipped scale-1.0 maps come from step 1's
   tokens), of each image's present classes only;
3. patch-token contrast on each sub-net's tokens with labels from its own auxiliary CAM;
4. a discrepancy loss keeps the two sub-nets' features apart;
5. after the CAM warm-up, each sub-net's CAM becomes PAR-refined pseudo-labels (dynamic background
   threshold) that supervise the OTHER sub-net's segmentation head;
6. after the segmentation warm-up, a per-image GMM on the loss maps drops noisy foreground pseudo-labels and
   a strong colour view regularises the ignored pixels towards the clean prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.callbacks.schedule import ScheduleCallback, fit_to_run, run_length
from wsss_lightning.data.device_augment import color_randaugment
from wsss_lightning.data.options import check_global_batch
from wsss_lightning.losses.segmentation import balanced_seg_ce, classification_loss
from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.dupl.losses import (
    consistency_loss,
    discrepancy_loss,
    patch_contrast_loss,
)
from wsss_lightning.methods.dupl.network import DuPLSubNet, SubNetOutput
from wsss_lightning.methods.dupl.noise_filter import adaptive_noise_filter
from wsss_lightning.methods.dupl.options import (
    CAMConfig,
    LossWeights,
    NoiseFilterConfig,
    PhaseConfig,
    StrongViewConfig,
    ThresholdConfig,
)
from wsss_lightning.methods.tags import ImageTagsMixin
from wsss_lightning.metrics import SegmentationIoU, pseudo_label_accuracy, removal_precision_recall
from wsss_lightning.models.par import PAR
from wsss_lightning.models.resize import padded_forward, resize
from wsss_lightning.ops import channel_argmax
from wsss_lightning.pseudo_labels.cam import (
    affinity_labels,
    cam_labels_eval,
    image_thresholds,
    multiscale_cams,
    par_pseudo_labels,
    threshold_labels,
)


def _total(terms: Sequence[Tensor] | Any) -> Tensor:
    """Sum of loss tensors (a tensor, also for type checkers)."""
    return torch.stack(list(terms)).sum()


class DuPLModule(ImageTagsMixin, SegmentationMethod):
    """DuPL for the ``image`` supervision view (image-level tags).

    Args:
        backbone: timm ViT name of both sub-nets (``deit_base_patch16_224``: the paper's DeiT-B/16;
            ``vit_base_patch16_224`` for DuPL-dagger's ImageNet-21k weights).
        backbone_weights: local weights file of the backbone (both sub-nets start from it).
        backbone_kwargs: extra ``timm.create_model`` arguments (e.g. ``{"depth": 6, "patch_size": 8}`` for
            a small model trained from scratch).
        aux_layer: block whose tokens feed the auxiliary classifier (-3 = block 10 of 12).
        train_pos_embed: train the ViTs' position embedding. Off, as the released code (which freezes the
            pretrained one); a network trained from scratch would keep its random initial embedding.
        pooling: classification pooling: ``gmp`` (released code, ToCo) or ``gap`` (the paper's text).
        head_channels: channels of the LargeFOV segmentation head (512).
        head_dilation: dilation of its 3x3 convolutions (5).
        phases: iteration boundaries (VOC defaults).
        threshold: delta_h schedule, delta_l and the validation background threshold.
        cam: CAM scales and PAR settings.
        noise_filter: adaptive noise filtering.
        strong_view: the consistency branch's strong view.
        loss_weights: weights of the loss terms.
        discrepancy: ``cosine`` (released code: 1 + cos) or ``log`` (the paper's -log(1 - cos)).
        seg_loss: ``balanced`` (released code: mean of the background and foreground CEs) or ``ce`` (paper).
        seg_target: what the segmentation heads learn from: ``pseudo`` (the method: each sub-net from the other's
            PAR pseudo-labels) or ``mask``, the batch's ground-truth masks (both sub-nets; the full-mask ceiling
            of the same network and schedule; needs the TagsView's diagnostic masks). The CAM branches train as
            usual either way; with ``mask`` no pseudo-labels are made in training, and the noise filter must be
            off (it would filter the masks).
        evaluate: sub-net used by validate-free test / predict: ``best`` (the one with the better validation
            segmentation mIoU, recorded during fit; the reference picks it by ground truth after training),
            ``1`` or ``2``.
        global_batch_size: the batch the schedule was tuned for (VOC 4, COCO 8). When set, fit fails at
            start-up unless data.loader.batch_size x devices x nodes x accumulate_grad_batches equals it.
        **kwargs: the arguments of :class:`SegmentationMethod` (``num_classes`` with background: 21 for VOC;
            ``optim`` groups ``backbone`` (x1), ``classifier`` and ``seg_head`` (x10): 6e-5 / 6e-4 with the VOC
            config).
    """

    class_thresholds: Tensor
    best_subnet: Tensor

    def __init__(
        self,
        backbone: str = "deit_base_patch16_224",
        backbone_weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        aux_layer: int = -3,
        train_pos_embed: bool = False,
        pooling: Literal["gmp", "gap"] = "gmp",
        head_channels: int = 512,
        head_dilation: int = 5,
        phases: PhaseConfig | None = None,
        threshold: ThresholdConfig | None = None,
        cam: CAMConfig | None = None,
        noise_filter: NoiseFilterConfig | None = None,
        strong_view: StrongViewConfig | None = None,
        loss_weights: LossWeights | None = None,
        discrepancy: Literal["cosine", "log"] = "cosine",
        seg_loss: Literal["balanced", "ce"] = "balanced",
        seg_target: Literal["pseudo", "mask"] = "pseudo",
        evaluate: Literal["best", "1", "2"] = "best",
        global_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # delta_h per foreground class, set before every training step by the ScheduleCallback
        self.register_buffer(
            "class_thresholds", torch.full((self.num_classes - 1,), self.options.threshold.start)
        )
        # 0 or 1: the sub-net with the better validation segmentation mIoU (recorded during fit)
        self.register_buffer("best_subnet", torch.zeros((), dtype=torch.long))
        self._subnet: int | None = None  # sub-net forced by validation; None = per ``evaluate``
        #: the phase boundaries training follows: ``phases``, or scaled into a shorter run (see setup)
        self.phases: PhaseConfig = self.options.phases
        self._val_best = 0  # sub-net behind val/miou in the latest validation

    # ------------------------------------------------------------------ construction
    @override
    def configure_models(self) -> None:
        hp = self.options
        self.check_choices(
            discrepancy=("cosine", "log"), seg_loss=("balanced", "ce"), seg_target=("pseudo", "mask"),
            pooling=("gmp", "gap"), evaluate=("best", "1", "2", 1, 2),
        )  # fmt: skip
        if hp.seg_target == "mask" and hp.noise_filter.enabled:
            raise ValueError(
                "DuPLModule: seg_target = 'mask' with noise_filter.enabled = true would filter the ground-truth "
                "masks; set --model.init_args.noise_filter.enabled=false"
            )
        if hp.global_batch_size is not None and hp.global_batch_size <= 0:
            raise ValueError(f"DuPLModule: global_batch_size = {hp.global_batch_size}; expected None or > 0")
        self.students = nn.ModuleList(
            DuPLSubNet(
                hp.backbone,
                self.num_classes - 1,
                weights=hp.backbone_weights,
                aux_layer=hp.aux_layer,
                model_kwargs=dict(hp.backbone_kwargs or {}),
                head_channels=hp.head_channels,
                head_dilation=hp.head_dilation,
                pooling=hp.pooling,
                train_pos_embed=hp.train_pos_embed,
            )
            for _ in range(2)
        )
        if hp.cam.reuse_training_pass and self.student(0).stochastic:
            raise ValueError(
                f"DuPLModule: cam.reuse_training_pass = true needs a backbone without dropout or stochastic "
                f"depth ({hp.backbone} with {dict(hp.backbone_kwargs or {})} has them): set "
                "--model.init_args.cam.reuse_training_pass=false"
            )
        self.patch_size = self.student(0).patch_size
        self.par = PAR(self.options.cam.par_dilations, self.options.cam.par_iterations)

    @override
    def configure_metrics(self) -> None:
        super().configure_metrics()
        # per sub-net: segmentation, CAM and pseudo-label IoU (keys "seg1", "cam2", ...), and the segmentation's IoU
        # on the pixels its pseudo-labels keep ("seg_kept1"), the pixel set of "pseudo1"
        self.val_outputs = nn.ModuleDict(
            {f"{kind}{k}": SegmentationIoU(self.num_classes, self.ignore_index)
             for kind in ("seg", "cam", "pseudo", "seg_kept") for k in (1, 2)}
        )  # fmt: skip

    def _val_metric(self, kind: str, k: int) -> SegmentationIoU:
        return cast(SegmentationIoU, self.val_outputs[f"{kind}{k + 1}"])

    @override
    def method_callbacks(self) -> list[L.Callback]:
        cfg = self.options.threshold
        start_step = self.options.phases.seg_start if cfg.start_step is None else cfg.start_step
        # the step span is set in setup, once the run's length is known
        self._threshold_schedule = ScheduleCallback(
            "class_thresholds",
            kind="cosine",
            start=cfg.start,
            end=cfg.class_ends(self.class_names[1:]),
            start_step=start_step,
            total_steps=cfg.total_steps,
            log_name="train/threshold_high",
        )
        return [self._threshold_schedule]

    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.options.global_batch_size is not None:
            self._check_global_batch()
        steps = run_length(self.trainer)
        if steps is not None:
            self._fit_schedule(steps)

    def _fit_schedule(self, steps: int) -> None:
        """Scale the phases and the delta_h descent into a run shorter than them; set the descent's span.

        A schedule longer than the run (``--trainer.max_steps 10`` on a 600-step config, ``fast_dev_run``) is
        scaled by :func:`fit_to_run`, which reports the change in one line; one that fits is left as
        configured. The saved hyper-parameters keep the configured values.
        """
        ph, cfg = self.options.phases, self.options.threshold
        self.phases = ph
        old = {
            f"phases.{name}": getattr(ph, name)
            for name in ("seg_start", "noise_filter_start", "ptc_start", "dis_start", "aux_labels_until")
        }
        if cfg.start_step is not None:
            old["threshold.start_step"] = cfg.start_step
        old = {name: value for name, value in old.items() if value is not None}
        new = fit_to_run(type(self).__name__, "step", steps, old)
        total = cfg.total_steps
        if new != old:
            values = {name.split(".")[1]: value for name, value in new.items() if name.startswith("phases.")}
            self.phases = dataclasses.replace(ph, **values)
            if total is not None:  # keep the descent's share of the schedule
                total = max(1, total * new["phases.noise_filter_start"] // old["phases.noise_filter_start"])
        start = new.get("threshold.start_step", self.phases.seg_start)
        if total is None:
            total = max(1, steps - start - 1)  # the last step reaches the end value (Eq. 5)
        self._threshold_schedule.retime(start, total)

    def _check_global_batch(self) -> None:
        trainer = self.trainer
        per_device = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if per_device is not None:
            check_global_batch(
                "DuPLModule: global_batch_size",
                self.options.global_batch_size,
                per_device,
                trainer.world_size,
                trainer.accumulate_grad_batches,
            )

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        groups: dict[str, list[nn.Parameter]] = {"backbone": [], "classifier": [], "seg_head": []}
        for k in range(2):
            for name, params in self.student(k).param_groups().items():
                groups[name].extend(params)
        return {"backbone": (groups["backbone"], 1.0), "classifier": (groups["classifier"], 10.0),
                "seg_head": (groups["seg_head"], 10.0)}  # fmt: skip

    def student(self, k: int) -> DuPLSubNet:
        """Sub-net ``k`` (0 or 1)."""
        return cast(DuPLSubNet, self.students[k])

    # ------------------------------------------------------------------ inference
    def eval_subnet(self) -> int:
        """Index (0 / 1) of the sub-net used for validation-free inference."""
        if self._subnet is not None:
            return self._subnet
        if str(self.options.evaluate) == "best":
            return int(self.best_subnet)
        return int(self.options.evaluate) - 1

    @override
    def forward(self, images: Tensor) -> Tensor:
        return cast(Tensor, padded_forward(self.student(self.eval_subnet()).segment, images, self.patch_size))

    def _cams(
        self, k: int, images: Tensor, classes: Tensor, out: SubNetOutput | None = None
    ) -> tuple[Tensor, Tensor]:
        """Multi-scale CAMs of the present ``classes``; ``out``: sub-net k's training forward of ``images``."""
        student = self.student(k)
        unflipped = None
        if out is not None and self.options.cam.reuse_training_pass:
            unflipped = student.cams_of(out.features.detach(), out.aux_features.detach())
        return multiscale_cams(
            student.cams, images, self.options.cam.scales, self.patch_size, classes, unflipped
        )

    def _pseudo_labels(
        self, images01: Tensor, cams: list[Tensor], classes: Tensor, high: Tensor | float, box: Tensor | None
    ) -> list[Tensor]:
        """PAR pseudo-labels of each CAM tensor of the same images (one PAR call, one kernel)."""
        labels = par_pseudo_labels(
            self.par,
            images01,
            cams,
            None,
            high,
            low=self.options.threshold.low,
            valid_box=box,
            downscale=self.options.cam.par_downscale,
            classes=classes,
        )
        return cast(list[Tensor], labels)

    # ------------------------------------------------------------------ training
    @override
    def untrained_modules(self) -> list[nn.Module]:
        """The seg heads until the segmentation phase (the official code: no gradient, a placeholder loss)."""
        if self.global_step <= self.phases.seg_start:
            return [cast(DuPLSubNet, student).seg_head for student in self.students]
        return []

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, box = batch["image"], batch["valid_box"]
        tags, classes = self._fg_tags(batch), self._classes(batch)
        t, ph, w = self.global_step, self.phases, self.options.loss_weights
        size = images.shape[-2:]
        images01 = self.denormalize(images)
        high = image_thresholds(self.class_thresholds, tags)

        outs: list[SubNetOutput] = [self.student(k)(images) for k in range(2)]
        with torch.no_grad():  # [(cam, aux_cam)] per sub-net, of the present classes
            cams = [self._cams(k, images, classes, outs[k]) for k in range(2)]
        logs: dict[str, Tensor] = {}

        loss_cls = _total(
            classification_loss(o.cls_logits, tags) + classification_loss(o.aux_cls_logits, tags)
            for o in outs
        )
        loss: Tensor = w.cls * loss_cls
        logs["train/loss_cls"] = loss_cls

        if t >= ph.ptc_start:
            loss_ptc = _total(
                self._ptc(o.features, aux, classes, high, box) for o, (_, aux) in zip(outs, cams, strict=True)
            )
            loss = loss + w.ptc * loss_ptc
            logs["train/loss_ptc"] = loss_ptc
        if t >= ph.dis_start:
            loss_dis = discrepancy_loss(outs[0].features, outs[1].features, form=self.options.discrepancy)
            loss = loss + w.dis * loss_dis
            logs["train/loss_dis"] = loss_dis

        if t > ph.seg_start:
            seg_logits = [resize(o.seg_logits, size) for o in outs]  # at the crop size, as the labels
            loss = loss + self._segmentation(images01, cams, seg_logits, classes, high, box, batch, logs)
        else:  # keeps the segmentation heads in the graph, so DDP needs no find_unused_parameters
            loss = loss + 0.0 * _total(o.seg_logits.sum() for o in outs)
        logs["train/loss"] = loss
        self.log_dict(logs, batch_size=images.shape[0], prog_bar=False)
        self.log_progress_loss(loss, images.shape[0], logs)
        return loss

    def _ptc(self, features: Tensor, aux_cam: Tensor, classes: Tensor, high: Tensor, box: Tensor) -> Tensor:
        grid = features.shape[-2:]
        small = resize(aux_cam, grid)
        scale = grid[0] / aux_cam.shape[-2] if self.options.cam.token_box == "scaled" else None
        labels = threshold_labels(
            small, None, high, self.options.threshold.low, valid_box=box, box_scale=scale, classes=classes
        )
        return patch_contrast_loss(features, affinity_labels(labels, self.ignore_index))

    def _segmentation(
        self,
        images01: Tensor,
        cams: list[tuple[Tensor, Tensor]],
        seg_logits: list[Tensor],
        classes: Tensor,
        high: Tensor,
        box: Tensor,
        batch: dict[str, Any],
        logs: dict[str, Tensor],
    ) -> Tensor:
        t, ph, w = self.global_step, self.phases, self.options.loss_weights
        with torch.no_grad():
            if self.options.seg_target == "mask":
                labels = [self._mask_target(batch, "seg_target")] * 2
            elif ph.aux_labels_until is not None and t <= ph.aux_labels_until:
                # COCO: labels from the auxiliary CAM with the fixed start threshold first
                # (train_final_coco.py)
                labels = self._pseudo_labels(
                    images01, [aux for _, aux in cams], classes, self.options.threshold.start, box
                )
            else:
                labels = self._pseudo_labels(images01, [cam for cam, _ in cams], classes, high, box)
            if "mask" in batch and self.options.seg_target == "pseudo":  # a diagnostic, not a target here
                for k, lab in enumerate(labels):
                    logs[f"train/pseudo_accuracy{k + 1}"] = pseudo_label_accuracy(
                        lab, batch["mask"], self.ignore_index
                    )
        # one log-softmax per sub-net serves the noise filter's loss maps and the segmentation loss
        log_probs = [F.log_softmax(s, dim=1) for s in seg_logits]
        filtering = t >= ph.noise_filter_start
        if filtering and self.options.noise_filter.enabled:
            labels = self._filter_noise(log_probs, labels, logs, batch.get("mask"))
        seg_fn = balanced_seg_ce if self.options.seg_loss == "balanced" else _plain_ce
        # cross supervision: each sub-net learns from the other's pseudo-labels
        loss_seg = seg_fn(log_probs[0], labels[1], self.ignore_index, log_probs=True) + seg_fn(
            log_probs[1], labels[0], self.ignore_index, log_probs=True
        )
        loss: Tensor = w.seg * loss_seg
        logs["train/loss_seg"] = loss_seg
        if filtering and t > ph.noise_filter_start:
            loss_reg = self._consistency(images01, seg_logits, log_probs, labels)
            loss = loss + w.reg * loss_reg
            logs["train/loss_reg"] = loss_reg
        return loss

    def _filter_noise(
        self, log_probs: list[Tensor], labels: list[Tensor], logs: dict[str, Tensor], mask: Tensor | None
    ) -> list[Tensor]:
        # sub-net k's loss against its OWN pseudo-label decides which of its labels are noisy, as in
        # train_final_voc.py (paper Eq. 6-7 leave it open); log_probs: log-softmax of each sub-net's logits
        with torch.no_grad():
            maps = torch.cat(
                [F.nll_loss(s, lab, ignore_index=self.ignore_index, reduction="none")
                 for s, lab in zip(log_probs, labels, strict=True)]
            )  # fmt: skip
            both = torch.cat(labels)
            filtered, noise = adaptive_noise_filter(maps, both, self.options.noise_filter, self.ignore_index)
            fg = (both != 0) & (both != self.ignore_index)
            logs["train/noise_fraction"] = noise.sum() / fg.sum().clamp(min=1)
            if mask is not None and self.options.seg_target == "pseudo":  # diagnostic masks, never trained on
                precision, recall, error = removal_precision_recall(
                    noise, both, torch.cat([mask, mask]), fg, self.ignore_index
                )
                logs["train/noise_precision"] = precision  # removed foreground labels that were wrong
                logs["train/noise_recall"] = recall  # wrong foreground labels that were removed
                logs["train/fg_label_error"] = error  # a random removal's precision
        return list(filtered.chunk(2))

    def _consistency(
        self, images01: Tensor, seg_logits: list[Tensor], log_probs: list[Tensor], labels: list[Tensor]
    ) -> Tensor:
        cfg, size = self.options.strong_view, images01.shape[-2:]
        strong = color_randaugment(images01, num_ops=cfg.num_ops, magnitude=cfg.magnitude)
        strong = (strong - self.image_mean) / self.image_std
        if cfg.flip:
            strong = strong.flip(-1)
        if cfg.scale != 1.0:
            strong = resize(strong, (int(size[0] * cfg.scale), int(size[1] * cfg.scale)))
        loss = images01.new_zeros(())
        for k in range(2):
            pred = padded_forward(self.student(k).segment, strong, self.patch_size)
            pred = resize(pred.flip(-1) if cfg.flip else pred, size)  # back to the clean view's geometry
            # pixels ignored in the labels that supervise sub-net k, i.e. the other sub-net's pseudo-labels
            loss = loss + consistency_loss(
                pred, seg_logits[k].detach(), labels[1 - k], cfg.confidence, self.ignore_index, log_probs[k]
            )
        return loss

    # ------------------------------------------------------------------ validation
    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"]
        tags, classes = self._fg_tags(batch), self._classes(batch)
        images01 = self.denormalize(images)
        high = image_thresholds(self.class_thresholds, tags)
        cams, segs = [], []
        for k in range(2):
            self._subnet = k
            try:
                segs.append(channel_argmax(self.predict_logits(images, test_time=False)))
            finally:
                self._subnet = None
            self._val_metric("seg", k).update(segs[k], masks)
            cam, _ = self._cams(k, images, classes)
            self._val_metric("cam", k).update(
                cam_labels_eval(cam, None, self.options.threshold.eval_background, classes=classes), masks
            )
            cams.append(cam)
        for k, pseudo in enumerate(self._pseudo_labels(images01, cams, classes, high, None)):
            # pseudo-label mIoU over the pixels the pseudo-labels keep (the rest are ignored in training), and the
            # segmentation's over the same pixels
            kept = pseudo != self.ignore_index
            kept_masks = torch.where(kept, masks, self.ignore_index)
            self._val_metric("pseudo", k).update(torch.where(kept, pseudo, 0), kept_masks)
            self._val_metric("seg_kept", k).update(torch.where(kept, segs[k], 0), kept_masks)

    @override
    def validation_table_iou(self) -> tuple[float, dict[str, float]] | None:
        # val/miou is the better sub-net's segmentation mIoU
        return self.computed_iou.get(f"val/seg{self._val_best + 1}")

    @override
    def on_validation_epoch_end(self) -> None:
        seg = [self._log_iou("val", self._val_metric("seg", k), f"seg{k + 1}") for k in range(2)]
        for k in range(2):
            self._log_iou("val", self._val_metric("cam", k), f"cam{k + 1}")
            self._log_iou("val", self._val_metric("pseudo", k), f"pseudo{k + 1}")
            self._log_iou("val", self._val_metric("seg_kept", k), f"seg_kept{k + 1}")
        best = 0 if seg[0] >= seg[1] else 1
        self._val_best = best
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and not self.trainer.sanity_checking:
            self.best_subnet.fill_(best)
        # the monitored figure: the better sub-net's segmentation mIoU
        self.log("val/miou", max(seg), sync_dist=True)
        self.log("val/best_subnet", float(best + 1), sync_dist=True)


def _plain_ce(logits: Tensor, labels: Tensor, ignore_index: int, log_probs: bool = False) -> Tensor:
    """Mean cross-entropy over the supervised pixels (``log_probs``: ``logits`` are log-probabilities)."""
    loss_fn = F.nll_loss if log_probs else F.cross_entropy
    return loss_fn(logits, labels, ignore_index=ignore_index)
