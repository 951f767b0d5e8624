"""ASDT: alternate self-dual teaching from image-level tags.

Zhang et al., "Weakly Supervised Semantic Segmentation via Alternate Self-Dual Teaching" (IEEE TIP), on the
training code of its baseline RRM (Zhang et al., "Reliability Does Matter", AAAI 2020; github.com/zbf1991/RRM,
``train_from_cls_weight.py``). One network (:class:`~wsss_lightning.methods.asdt.network.ASDTNetwork`) with a
class-teacher, a seg-teacher and a student; each step:

1. the class-teacher classifies the crop (multi-label soft margin, Eq. 2) and gives multi-scale CAMs;
2. RRM's reliable label B^ct / R^ct from the CAMs and two dense CRFs of different background strength (Sec. 3.2),
   computed batched on the training device (:func:`~wsss_lightning.methods.asdt.labels.class_teacher_labels`);
3. the seg-teacher learns from B^ct every step (Eq. 3: the bg/fg cross-entropy + the gated dense-CRF energy L_str);
4. the student learns from one teacher per step, chosen by the pulse-width wave (Eq. 4): from B^ct (Eq. 5) in the
   high phase, from B^st, the CRF of the seg-teacher's own prediction (Eq. 6), in the low phase
   (:class:`~wsss_lightning.callbacks.pw_wave.PWWaveCallback` sets :attr:`ASDTModule.active_teacher`);
5. loss ``L_ce + L_d^{ct→st} + L_ad`` with unit weights (RRM sums its terms the same way).

The ablation rows of Table 4 are ``teaching.mode``: ``class`` (row I: the student learns from the class-teacher
only, i.e. RRM), ``seg`` (row II), ``max`` / ``mean`` (rows III / IV: one CRF label of the fused class-teacher and
seg-teacher maps) and ``alternate`` (row V, the method).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from typing_extensions import override

from wsss_lightning.callbacks.pw_wave import PWWaveCallback
from wsss_lightning.callbacks.schedule import fit_to_run, run_length
from wsss_lightning.inference.crf import CRFPostProcessor
from wsss_lightning.inference.device_crf import mean_field_crf
from wsss_lightning.losses.dense_crf import DenseCRFLoss
from wsss_lightning.losses.segmentation import classification_loss
from wsss_lightning.methods.asdt.labels import (
    CRFFunction,
    PoolCRF,
    class_teacher_labels,
    dual_teacher_labels,
    normalise_by_max,
    pseudo_masks,
    seg_teacher_labels,
)
from wsss_lightning.methods.asdt.losses import bg_fg_ce, structure_gate
from wsss_lightning.methods.asdt.network import ASDTNetwork, ASDTOutput, head_reach_warning
from wsss_lightning.methods.asdt.options import (
    PWWaveConfig,
    ReliableLabelConfig,
    StructureLossConfig,
    TeachingConfig,
)
from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.tags import ImageTagsMixin
from wsss_lightning.metrics import SegmentationIoU, pseudo_label_accuracy
from wsss_lightning.models.resize import resize
from wsss_lightning.models.token_grid import TokenGrid, tokens_to_pixels
from wsss_lightning.pseudo_labels.cam import box_mask

Output = Literal["student", "seg_teacher", "max"]


class ASDTModule(ImageTagsMixin, SegmentationMethod):
    """ASDT for the ``image`` supervision view (image-level tags).

    Args:
        encoder: ``resnet38`` (RRM's wide ResNet-38, the paper's best row) or a timm CNN (``resnet101``: the R101 row),
            run at output stride 8 with BatchNorm frozen.
        encoder_weights: local weights file of the backbone (PSA's VOC-classification ``res38_cls.pth`` for ResNet-38,
            from which RRM starts; ImageNet weights for timm CNNs).
        seg_width: width of the seg-heads' first convolution (512).
        dilation: dilation of the seg-heads' convolutions (12).
        dropout: Dropout2d before the class-teacher's pooling (0.5).
        pw: the pulse-width wave (period T = 150, τ = 5: T_h = 30 class-teacher steps first).
        teaching: which teacher the student learns from (``alternate``, or a Table 4 ablation row) and how B^st treats
            absent classes.
        labels: RRM's reliable-label rules and CAM scales.
        structure: the gated dense-CRF energy L_str (σ_rgb 15, σ_xy 100, weight 1e-7, half resolution).
        evaluate: the output that validation and test use: the ``student`` (P^s), the ``seg_teacher`` (P^st) or
            their element-wise ``max`` (P̄ of Eq. 1).
        predict: what ``wsss predict`` writes: ``psm``, the pseudo segmentation masks of Eq. 1 for the second stage
            (CRF of P̄ with the classes absent from the image's tags suppressed; the predict split's tags come
            from the TagsView), or ``evaluate``, the evaluated output as in test.
        validate_psm: validation also scores the pseudo masks of Eq. 1 (``val/psm/miou``: CRF of P̄ with the
            classes absent from the mask-derived tags suppressed, as ``wsss predict`` writes them), one device CRF
            per image: run ``wsss validate`` with the training split as ``val_split`` for the paper's PSM mIoU.
        warmup_steps: steps that train the class-teacher alone before any distillation (0: the paper, which starts
            from RRM's classification-trained weights; a stand-in for them when the backbone starts elsewhere).
        **kwargs: the arguments of :class:`SegmentationMethod` (``num_classes`` with background; ``optim`` groups
            ``backbone`` (×1), ``backbone_bias`` (×2), ``head`` (×10), ``head_bias`` (×20); biases without weight
            decay, as RRM).
    """

    def __init__(
        self,
        encoder: str = "resnet38",
        encoder_weights: str | None = None,
        seg_width: int = 512,
        dilation: int = 12,
        dropout: float = 0.5,
        pw: PWWaveConfig | None = None,
        teaching: TeachingConfig | None = None,
        labels: ReliableLabelConfig | None = None,
        structure: StructureLossConfig | None = None,
        evaluate: Output = "student",
        predict: Literal["psm", "evaluate"] = "psm",
        warmup_steps: int = 0,
        validate_psm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if warmup_steps < 0:
            raise ValueError(f"{type(self).__name__}: warmup_steps must be >= 0, got {warmup_steps}")
        #: classification-only steps, as configured or scaled into a shorter run (see setup)
        self.warmup_steps = warmup_steps
        #: the teacher of the student's loss in the current step ("class", "seg", "max" or "mean"), set by the
        #: PWWaveCallback before every training batch
        self.active_teacher: str = "class"

    # ------------------------------------------------------------------ construction
    @override
    def configure_models(self) -> None:
        hp = self.options
        self.check_choices(evaluate=("student", "seg_teacher", "max"), predict=("psm", "evaluate"))
        try:
            self.net = ASDTNetwork(
                self.num_classes,
                encoder=hp.encoder,
                encoder_weights=hp.encoder_weights,
                seg_width=hp.seg_width,
                dilation=hp.dilation,
                dropout=hp.dropout,
            )
        except (ValueError, FileNotFoundError) as err:  # name the module's options
            raise type(err)(
                f"{type(self).__name__}: model.init_args.encoder / encoder_weights: {err}"
            ) from err
        s = hp.structure
        self.structure_loss = DenseCRFLoss(s.weight, s.sigma_rgb, s.sigma_xy, s.scale, s.kernel)
        labels = hp.labels
        #: the dense CRF of the labels and pseudo masks: on the device, or pydensecrf2 in a pool
        self.label_crf: CRFFunction = (
            PoolCRF(CRFPostProcessor(labels.crf, num_workers=labels.crf_workers))
            if labels.crf_backend == "pydensecrf"
            else mean_field_crf
        )

    @override
    def configure_metrics(self) -> None:
        super().configure_metrics()
        # the reliable label's precision on its kept pixels and the share it keeps, pixel-weighted means
        self.ct_label_precision, self.ct_label_kept = MeanMetric(), MeanMetric()
        # P^st, P^s and P̄ of Table 4, and the class-teacher's reliable label B^ct (over the pixels it keeps)
        self.val_outputs = nn.ModuleDict(
            {
                kind: SegmentationIoU(self.num_classes, self.ignore_index)
                for kind in ("seg_teacher", "student", "max", "ct_label")
                + (("psm",) if self.options.validate_psm else ())
            }
        )

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        groups = self.net.param_groups()
        mults = {"backbone": 1.0, "backbone_bias": 2.0, "head": 10.0, "head_bias": 20.0}
        return {name: (params, mults[name]) for name, params in groups.items()}

    @override
    def no_weight_decay_groups(self) -> frozenset[str]:
        return frozenset({"backbone_bias", "head_bias"})

    @override
    def method_callbacks(self) -> list[L.Callback]:
        pw, mode = self.options.pw, self.options.teaching.mode
        return [PWWaveCallback(pw.period, pw.tau, pw.first, mode)]

    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        supervision = getattr(getattr(self._trainer, "datamodule", None), "supervision", None)
        if supervision is not None and supervision != "image":
            raise ValueError(
                f"{type(self).__name__} trains on image-level tags: set data.view to TagsView "
                f"(data.init_args.view), got the {supervision!r} view"
            )
        steps = run_length(self.trainer)
        if steps is not None and self.options.warmup_steps > 0:
            # a warm-up longer than the run (--trainer.max_steps 10) is scaled into it, said in one line
            self.warmup_steps = fit_to_run(
                type(self).__name__, "step", steps, {"warmup_steps": self.options.warmup_steps}
            )["warmup_steps"]

    # ------------------------------------------------------------------ inference
    @property
    def tokens(self) -> TokenGrid | None:
        """Where every token map (CAMs, seg heads) is placed on the image (``labels.token_positions``).

        The backbone's token grid for ``encoder``, None for RRM's bilinear resizes (``cell_centres``).
        """
        return self.net.token_grid if self.options.labels.token_positions == "encoder" else None

    def head_logits(self, out: ASDTOutput, size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The seg-teacher's and the student's logits at the input's ``size``.

        Their tokens are placed as the CAMs' (:attr:`tokens`), so the class-teacher's labels and the heads'
        predictions always sit on the same pixels.
        """
        return (
            tokens_to_pixels(out.seg_teacher, size, size, self.tokens),
            tokens_to_pixels(out.student, size, size, self.tokens),
        )

    def _probs(self, out: ASDTOutput, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """P^st and P^s (B, C, H, W) of a forward's output, at ``size``."""
        seg_teacher, student = self.head_logits(out, size)
        return seg_teacher.float().softmax(1), student.float().softmax(1)

    @override
    def forward(self, images: Tensor) -> Tensor:
        """Logits of the evaluated output (log of P̄ for ``evaluate: max``).

        At the backbone's resolution with RRM's token placement (the caller's bilinear resize places them as
        cell centres), at the input's with ``labels.token_positions: encoder``.
        """
        out: ASDTOutput = self.net(images)
        tokens, size = self.tokens, images.shape[-2:]

        def place(logits: Tensor) -> Tensor:  # only the maps the evaluated output reads
            return logits if tokens is None else tokens_to_pixels(logits, size, size, tokens)

        if self.options.evaluate == "student":
            return place(out.student)
        if self.options.evaluate == "seg_teacher":
            return place(out.seg_teacher)
        return torch.maximum(
            place(out.seg_teacher).float().softmax(1), place(out.student).float().softmax(1)
        ).log()

    # ------------------------------------------------------------------ labels
    @torch.no_grad()
    def class_teacher_cams(self, images: Tensor, cams: Tensor, tags: Tensor) -> Tensor:
        """RRM's multi-scale CAM M (B, C−1, H, W) (``network/RRM.py``).

        The scales' CAMs (``cams``: the training forward's, scale 1) are averaged on the training grid (with
        ``labels.cam_flip`` the flipped images' too), absent classes zeroed, the mean bilinearly upsampled to the
        crop and each map normalised by its maximum. With ``labels.token_positions: encoder`` each map is instead
        resampled to the crop where its tokens sit and the mean is taken there.
        """
        cfg, size, tokens = self.options.labels, images.shape[-2:], self.tokens
        grid = cams.shape[-2:]

        def place(maps: Tensor, seen: Sequence[int], flipped: bool = False) -> Tensor:
            if tokens is None:  # RRM: on the scale-1 token grid, upsampled after the mean
                return resize(maps.flip(-1) if flipped else maps, grid).float()
            # resampled in the flipped frame, then flipped back
            out = tokens_to_pixels(maps.float(), size, seen, tokens)
            return out.flip(-1) if flipped else out

        total, count = place(cams, size), 1
        for s in cfg.cam_scales:
            x = images if s == 1.0 else resize(images, (int(images.shape[-2] * s), int(images.shape[-1] * s)))
            if s != 1.0:
                total, count = total + place(self.net.cams(x), x.shape[-2:]), count + 1
            if cfg.cam_flip:
                total, count = total + place(self.net.cams(x.flip(-1)), x.shape[-2:], flipped=True), count + 1
        mean = total / count * tags[:, :, None, None]
        return normalise_by_max(resize(mean, size))

    def reliable_labels(self, rgb: Tensor, cams: Tensor, tags: Tensor, roi: Tensor | None = None) -> Tensor:
        """B^ct with R^ct applied (255 where unreliable), with the ``labels`` options."""
        cfg = self.options.labels
        return class_teacher_labels(
            rgb, cams, tags, crf=cfg.crf, crf_fn=self.label_crf, alphas=cfg.alphas, cam_floor=cfg.cam_floor,
            cam_quantile=cfg.cam_quantile, background_sure=cfg.background_sure, crf_sure=cfg.crf_sure, roi=roi,
        )  # fmt: skip

    def student_target(
        self, rgb: Tensor, cams: Tensor, tags: Tensor, ct_label: Tensor, p_st: Tensor
    ) -> Tensor:
        """The label the student learns from in this step: B^ct, B^st or the fused dual-teacher label."""
        teaching = self.options.teaching
        crf = teaching.seg_teacher_crf
        if self.active_teacher == "class":
            return ct_label
        if self.active_teacher == "seg":
            return seg_teacher_labels(
                rgb, p_st, tags, crf=crf, absent=teaching.seg_teacher_absent, crf_fn=self.label_crf
            )
        mode = cast(Literal["max", "mean"], self.active_teacher)
        return dual_teacher_labels(rgb, cams, tags, p_st, mode, crf=crf, crf_fn=self.label_crf)

    # ------------------------------------------------------------------ training
    def distillation(self, rgb: Tensor, logits: Tensor, labels: Tensor, roi: Tensor) -> tuple[Tensor, Tensor]:
        """(bg/fg cross-entropy, gated dense-CRF energy L_str) of one head against one label (Eqs. 3, 5, 6)."""
        probs = logits.float().softmax(1)
        ce = bg_fg_ce(logits, labels, self.ignore_index)
        energy = self.structure_loss(rgb, probs, roi, structure_gate(probs, labels, roi, self.ignore_index))
        return ce, energy

    @override
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch_idx == 0:  # an epoch's first crop (Python shows a repeated warning once)
            warning = head_reach_warning(self.options.dilation, tuple(batch["image"].shape[-2:]))
            if warning is not None:
                rank_zero_warn(f"{type(self).__name__}: {warning}")

    @override
    def untrained_modules(self) -> list[nn.Module]:
        """The seg heads the current step does not train: both during the warm-up, the seg-teacher in row I."""
        if self.global_step < self.warmup_steps:
            return [self.net.seg_teacher, self.net.student]
        return [self.net.seg_teacher] if self.options.teaching.mode == "class" else []

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"]
        size = (images.shape[-2], images.shape[-1])
        tags = self._fg_tags(batch)
        out: ASDTOutput = self.net(images)
        if self.global_step < self.warmup_steps:
            loss_cls = classification_loss(out.class_logits, tags)
            # the seg heads stay in the graph (0 ×), so DDP needs no find_unused_parameters
            loss = loss_cls + 0.0 * (out.seg_teacher.sum() + out.student.sum())
            self.log_dict({"train/loss_cls": loss_cls, "train/loss": loss}, batch_size=images.shape[0])
            self.log_progress_loss(loss, images.shape[0], {"train/loss_cls": loss_cls})
            return loss
        energy_roi = box_mask(type(self).__name__, batch["valid_box"], size)
        # RRM does not mask the padded border in B^ct (it is usually background or 255); labels.mask_padding does
        roi = energy_roi if self.options.labels.mask_padding else None
        rgb = self.denormalize(images) * 255.0
        seg_teacher, student = self.head_logits(out, size)
        with torch.no_grad():
            cams = self.class_teacher_cams(images, out.cams.detach(), tags)
            ct_label = self.reliable_labels(rgb, cams, tags, roi)
            target = self.student_target(rgb, cams, tags, ct_label, seg_teacher.detach().float().softmax(1))
        loss_cls = classification_loss(out.class_logits, tags)
        ce_st, str_st = self.distillation(rgb, seg_teacher, ct_label, energy_roi)
        ce_s, str_s = self.distillation(rgb, student, target, energy_roi)
        # Table 4 row I is RRM: one seg branch (the student) trained from the class-teacher; the seg-teacher's
        # terms stay in the graph at 0 (DDP needs every parameter used)
        teacher_weight = 0.0 if self.options.teaching.mode == "class" else 1.0
        loss = loss_cls + teacher_weight * (ce_st + str_st) + ce_s + str_s
        logs = {
            "train/loss_cls": loss_cls, "train/loss_ce_st": ce_st, "train/loss_str_st": str_st,
            "train/loss_ce_s": ce_s, "train/loss_str_s": str_s, "train/loss": loss,
            "train/reliable_fraction": (ct_label != self.ignore_index).float().mean(),
        }  # fmt: skip
        if "mask" in batch:  # diagnostics of the TagsView's masks (diagnostic_masks: true)
            logs["train/ct_label_accuracy"] = pseudo_label_accuracy(
                ct_label, batch["mask"], self.ignore_index
            )
        self.log_dict(logs, batch_size=images.shape[0])
        self.log_progress_loss(loss, images.shape[0], logs)
        return loss

    # ------------------------------------------------------------------ validation
    def _val_metric(self, kind: str) -> SegmentationIoU:
        return cast(SegmentationIoU, self.val_outputs[kind])

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        images, masks = batch["image"], batch["mask"].long()
        out: ASDTOutput = self.net(images)
        p_st, p_s = self._probs(out, (images.shape[-2], images.shape[-1]))
        self._val_metric("seg_teacher").update(p_st.argmax(1), masks)
        self._val_metric("student").update(p_s.argmax(1), masks)
        self._val_metric("max").update(torch.maximum(p_st, p_s).argmax(1), masks)
        rgb = self.denormalize(images) * 255.0
        if self.options.validate_psm:
            psm = pseudo_masks(
                rgb, p_st, p_s, self._fg_tags(batch), crf=self.inference.crf.params, crf_fn=self.label_crf,
                sizes=batch["size"],
            )  # fmt: skip
            self._val_metric("psm").update(psm, masks)
        if "tags" in batch:  # the class-teacher's reliable label on the pixels it keeps
            tags = self._fg_tags(batch)
            label = self.reliable_labels(rgb, self.class_teacher_cams(images, out.cams, tags), tags)
            kept = label != self.ignore_index
            self._val_metric("ct_label").update(
                torch.where(kept, label, 0), torch.where(kept, masks, self.ignore_index)
            )
            # precision of the kept pixels and the share kept, weighted by the batch's pixels
            valid = masks != self.ignore_index
            self.ct_label_precision.update(
                pseudo_label_accuracy(label, masks, self.ignore_index), (kept & valid).sum().clamp(min=1)
            )
            self.ct_label_kept.update(
                (kept & valid).sum() / valid.sum().clamp(min=1), valid.sum().clamp(min=1)
            )

    @override
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        for name, rate in (("precision", self.ct_label_precision), ("kept", self.ct_label_kept)):
            if rate.update_called:
                self.log(f"val/ct_label_{name}", rate.compute())
            rate.reset()
        for kind, metric in self.val_outputs.items():
            self._log_iou("val", cast(SegmentationIoU, metric), kind)

    # ------------------------------------------------------------------ pseudo masks
    def pseudo_segmentation_masks(self, images: Tensor, tags: Tensor, sizes: Tensor | None = None) -> Tensor:
        """Eq. 1's PSM: CRF of max(P^st, P^s) with absent classes suppressed, (B, H, W) labels."""
        p_st, p_s = self._probs(self.net(images), (images.shape[-2], images.shape[-1]))
        rgb = self.denormalize(images) * 255.0
        return pseudo_masks(
            rgb, p_st, p_s, tags, crf=self.inference.crf.params, crf_fn=self.label_crf, sizes=sizes
        )

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        if self.options.predict == "evaluate":
            return super().predict_step(batch, batch_idx, dataloader_idx)
        if "tags" not in batch:
            raise KeyError(
                f"{type(self).__name__}: predict: psm suppresses the classes absent from each image's tags, but the "
                "prediction batches hold none: predict a split of the dataset (data.source.predict_split) with the "
                "TagsView and a tags_file or masks, or set model.init_args.predict: evaluate"
            )
        labels = self.pseudo_segmentation_masks(batch["image"], self._fg_tags(batch), batch["size"])
        sizes = batch["size"].tolist()
        out = {
            "name": list(batch["name"]),
            "masks": [labels[i, :h, :w].to(torch.uint8).cpu().numpy() for i, (h, w) in enumerate(sizes)],
        }
        if "image_size" in batch:
            out["image_size"] = batch["image_size"].tolist()
        return out

    @override
    def teardown(self, stage: str) -> None:
        super().teardown(stage)
        if isinstance(self.label_crf, PoolCRF):
            self.label_crf.pool.close()


__all__ = ["ASDTModule"]
