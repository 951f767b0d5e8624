"""DAFormer: unsupervised domain adaptation by self-training with a Transformer (GTA5 -> Cityscapes).

Hoyer et al., "DAFormer: Improving Network Architectures and Training Strategies for Domain-Adaptive Semantic
Segmentation" (CVPR 2022); released code ``lhoyer/DAFormer`` (``mmseg/models/uda/dacs.py``). One
:class:`~wsss_lightning.models.daformer.DAFormerNetwork` student and its EMA teacher; each step (Sec. 3.1-3.4):

1. supervised cross-entropy on the labelled source crop (rare-class sampled by the datamodule, Sec. 3.3);
2. the ImageNet feature distance of the source crop's thing-class bottleneck features to a frozen copy of the
   initial encoder (Sec. 3.4);
3. the teacher (train mode, dropout and drop path off) labels the clean target crop; each pseudo-label is
   weighted by its image's share of confident pixels, zero on the top and bottom rows;
4. DACS ClassMix pastes half of each source image's classes onto a target image (image, label, weight), then
   colour jitter and Gaussian blur; the student learns the mixed label with the weighted cross-entropy;
5. the teacher follows the student by EMA, ``alpha_t = min(1 - 1/(t+1), 0.999)`` (``EMATeacherCallback``).

With ``self_training.enabled=false`` the module trains on the source alone (the source-only baseline); given a
plain batch (the ``full`` view, e.g. target masks) it trains the same network supervised (the target oracle).
The student is evaluated (DAFormer's convention; ``evaluate: teacher`` as an option).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.methods.base import SegmentationMethod
from wsss_lightning.methods.daformer.classmix import class_mix_masks, mix
from wsss_lightning.methods.daformer.feature_distance import feature_distance_loss
from wsss_lightning.methods.daformer.options import FeatureDistanceConfig, SelfTrainingConfig
from wsss_lightning.methods.daformer.pseudo_labels import pseudo_label_weights, weighted_ce
from wsss_lightning.methods.daformer.strong_augment import strong_augment
from wsss_lightning.metrics import pseudo_label_accuracy
from wsss_lightning.models.daformer import DAFormerNetwork, regularisation_off
from wsss_lightning.models.resize import resize
from wsss_lightning.teachers import EMATeacher, FrozenNetwork


class MixedBatch(NamedTuple):
    """The student's second input of a step: ClassMix of source onto target, strongly augmented."""

    images: Tensor  # (B, 3, H, W)
    labels: Tensor  # (B, H, W): source labels where pasted, the teacher's pseudo-labels elsewhere
    weights: Tensor  # (B, H, W): 1 where pasted, the pseudo-label quality weight elsewhere
    pasted: Tensor  # (B, H, W) bool: the pixel comes from the source image
    target_prob: Tensor  # (B, C, H, W): the teacher's probabilities on the clean target crop


class DAFormerModule(SegmentationMethod):
    """DAFormer for the ``domain`` supervision view (labelled source, unlabelled target).

    Args:
        encoder: MiT encoder name (``mit_b5``, the paper's; ``mit_b0`` .. ``mit_b5``).
        encoder_weights: local ImageNet weights file of the encoder (``mit_b5.pth``); it also turns the
            ImageNet feature distance on (``feature_distance.enabled``).
        encoder_kwargs: architecture overrides (``embed_dims``, ``depths``, ``num_heads``, ...) for a small
            encoder trained from scratch.
        drop_path_rate: stochastic depth of the encoder (0.1).
        embed_dim: width of the DAFormer decoder (256).
        self_training: the teacher, pseudo-labels, ClassMix and the strong augmentation.
        feature_distance: the ImageNet feature distance.
        evaluate: network used for validation / test / predict: ``student`` (DAFormer) or ``teacher``.
        **kwargs: the arguments of :class:`SegmentationMethod` (``num_classes`` 19; ``optim`` groups ``encoder``
            (x1) and ``decoder`` (x10)).
    """

    def __init__(
        self,
        encoder: str = "mit_b5",
        encoder_weights: str | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        drop_path_rate: float = 0.1,
        embed_dim: int = 256,
        self_training: SelfTrainingConfig | None = None,
        feature_distance: FeatureDistanceConfig | None = None,
        evaluate: Literal["student", "teacher"] = "student",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ construction
    def representation_channels(self) -> int | None:
        """Width of the representation head (None: none); U2PL+ DA adds one."""
        return None

    @property
    def uses_feature_distance(self) -> bool:
        """Whether the ImageNet feature distance is trained (see :class:`FeatureDistanceConfig`)."""
        enabled = self.options.feature_distance.enabled
        return self.options.encoder_weights is not None if enabled is None else bool(enabled)

    @override
    def configure_models(self) -> None:
        hp = self.options
        self.check_choices(evaluate=("student", "teacher"))
        fd = hp.feature_distance
        if fd.enabled and hp.encoder_weights is None:
            raise ValueError(
                f"{type(self).__name__}: feature_distance.enabled=true needs model.init_args.encoder_weights "
                "(the distance is to the ImageNet features of the initial encoder)"
            )
        bad = [c for c in fd.thing_classes if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(
                f"{type(self).__name__}: feature_distance.thing_classes {bad} outside 0..{self.num_classes - 1}"
            )
        try:
            self.student = DAFormerNetwork(
                self.num_classes,
                encoder=hp.encoder,
                encoder_weights=hp.encoder_weights,
                encoder_kwargs=hp.encoder_kwargs,
                drop_path_rate=hp.drop_path_rate,
                embed_dim=hp.embed_dim,
                representation_channels=self.representation_channels(),
            )
        except (ValueError, FileNotFoundError) as err:  # name the module's options, not the encoder's
            raise type(err)(
                f"{type(self).__name__}: model.init_args.encoder / encoder_weights / encoder_kwargs: {err}"
            ) from err
        self.teacher = EMATeacher(self.student, params_only=True)
        # the initial (ImageNet) encoder, frozen: the reference point of the feature distance
        self.imagenet: FrozenNetwork | None = None
        if self.uses_feature_distance:
            self.imagenet = FrozenNetwork(copy.deepcopy(self.student.encoder))

    @override
    def method_callbacks(self) -> list[L.Callback]:
        if not self.options.self_training.enabled:
            return []
        return [
            EMATeacherCallback(
                teacher_attr="teacher",
                student_attr="student",
                decay=self.options.self_training.ema_decay,
                ramp=True,
                warmup_steps=0,
                copy_at_warmup_end=False,
                ramp_offset=1,
            )
        ]

    @override
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        supervision = getattr(getattr(self._trainer, "datamodule", None), "supervision", None)
        if supervision is not None and supervision not in ("domain", "full"):
            raise ValueError(
                f"{type(self).__name__} adapts a labelled source to an unlabelled target: set data.view to "
                f"DomainView (data.init_args.view; FullView trains the supervised oracle), got the {supervision!r} view"
            )
        if not self.uses_feature_distance:
            reason = (
                "feature_distance.enabled=false"
                if self.options.feature_distance.enabled is False
                else "no model.init_args.encoder_weights: the frozen copy of a randomly initialised encoder "
                "is no ImageNet reference"
            )
            rank_zero_info(f"{type(self).__name__}: ImageNet feature distance off ({reason})")

    @override
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        groups = self.student.param_groups()
        return {"encoder": (groups["encoder"], 1.0), "decoder": (groups["decoder"], 10.0)}

    @override
    def forward(self, images: Tensor) -> Tensor:
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        use_teacher = self.options.evaluate == "teacher" and not (
            fitting and not self.options.self_training.enabled
        )
        net = self.teacher if use_teacher else self.student
        out: dict[str, Tensor] = net(images, with_rep=False)
        return out["pred"]

    # ------------------------------------------------------------------ pieces of a step
    def _source_loss(self, out: dict[str, Tensor], images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Cross-entropy on the source crop and, when on, the feature distance (DAFormer Eq. 1 and 5)."""
        logits = resize(out["pred"], labels.shape[-2:])
        losses = {"train/loss_source": F.cross_entropy(logits, labels, ignore_index=self.ignore_index)}
        if self.imagenet is not None:
            fd = self.options.feature_distance
            with torch.no_grad():
                reference = self.imagenet(images).features[-1]
            losses["train/loss_feature_distance"] = fd.weight * feature_distance_loss(
                out["bottleneck"],
                reference,
                labels,
                fd.thing_classes,
                min_ratio=fd.min_ratio,
                num_classes=self.num_classes,
                ignore_index=self.ignore_index,
            )
        return losses

    @contextmanager
    def _labelling_teacher(self) -> Iterator[EMATeacher]:
        """The teacher in train mode (BN on batch statistics, as released) with its regularisation as set."""
        with torch.no_grad(), self.teacher.train_mode():
            if self.options.self_training.teacher_regularisation == "off":
                with regularisation_off(self.teacher):
                    yield self.teacher
            else:
                yield self.teacher
        # its BN running statistics follow each rank's own target images: keep the ranks' teachers identical
        self.teacher.sync_buffers()

    def mixed_batch(self, source: dict[str, Tensor], target: dict[str, Tensor]) -> MixedBatch:
        """Teacher pseudo-labels of the target, ClassMix with the source, strong augmentation (Sec. 3.1)."""
        st = self.options.self_training
        images_t = target["image"]
        size = images_t.shape[-2:]
        with self._labelling_teacher() as teacher:
            prob = resize(teacher(images_t, with_rep=False)["pred"], size).softmax(1)
        labels_t, weights_t = pseudo_label_weights(
            prob,
            st.confidence_threshold,
            st.ignore_top,
            st.ignore_bottom,
            per_image=st.quality_weight == "image",
        )
        pasted = class_mix_masks(
            source["mask"], self.num_classes, self.ignore_index, per_image=st.classmix == "image"
        )
        images = mix(pasted, source["image"], images_t)
        labels = mix(pasted, source["mask"], labels_t)
        weights = mix(pasted, torch.ones_like(weights_t), weights_t)
        images = strong_augment(
            images,
            self.image_mean.flatten(),
            self.image_std.flatten(),
            jitter_strength=st.jitter_strength,
            jitter_p=st.jitter_p,
            blur_p=st.blur_p,
        )
        return MixedBatch(images, labels, weights, pasted, prob)

    def extra_loss(
        self,
        source: dict[str, Tensor],
        out_source: dict[str, Tensor],
        mixed: MixedBatch,
        out_mixed: dict[str, Tensor],
        logs: dict[str, Tensor],
    ) -> Tensor | None:
        """A weighted loss term added to DAFormer's (None: none); U2PL+ DA adds its contrastive term here.

        ``logs`` receives diagnostics (logged, not added to the loss).
        """
        return None

    # ------------------------------------------------------------------ training
    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if "source" not in batch:  # a plain labelled batch: the supervised oracle of the same network
            out = self.student(batch["image"], with_rep=False)
            terms = self._source_loss(out, batch["image"], batch["mask"])
            return self._finish(terms, {}, batch["image"].shape[0], out)
        source, target = batch["source"], batch["target"]
        out_source = self.student(source["image"])
        terms = self._source_loss(out_source, source["image"], source["mask"])
        if not self.options.self_training.enabled:  # source only
            return self._finish(terms, {}, source["image"].shape[0], out_source)
        mixed = self.mixed_batch(source, target)
        out_mixed = self.student(mixed.images)
        logits = resize(out_mixed["pred"], mixed.labels.shape[-2:])
        terms["train/loss_target"] = self.options.self_training.weight * weighted_ce(
            logits, mixed.labels, mixed.weights, self.ignore_index
        )
        # diagnostics (never trained on): quality weight and, with DomainView(keep_target_masks=True), the
        # pixel accuracy of the clean target's pseudo-labels
        logs: dict[str, Tensor] = {}
        extra = self.extra_loss(source, out_source, mixed, out_mixed, logs)
        if extra is not None:
            terms["train/loss_extra"] = extra
        from_target = (~mixed.pasted).float()
        logs["train/pseudo_weight"] = (mixed.weights * from_target).sum() / from_target.sum().clamp_min(1.0)
        if "mask" in target:
            labels_t = mixed.target_prob.argmax(1)
            logs["train/pseudo_accuracy"] = pseudo_label_accuracy(labels_t, target["mask"], self.ignore_index)
        return self._finish(terms, logs, source["image"].shape[0], out_source, out_mixed)

    def _finish(
        self, terms: dict[str, Tensor], logs: dict[str, Tensor], batch_size: int, *outs: dict[str, Tensor]
    ) -> Tensor:
        """The step's loss: the sum of ``terms`` (weighted as trained); ``logs`` are diagnostics only."""
        loss: Tensor = torch.stack(list(terms.values())).sum()
        # every parameter stays in the graph (the representation head is unused without the contrastive
        # term), so DDP needs no find_unused_parameters
        for out in outs:
            if "rep" in out:
                loss = loss + 0.0 * out["rep"].sum()
        self.log_dict({**terms, **logs}, batch_size=batch_size)
        self.log("train/loss", loss, batch_size=batch_size)
        self.log_progress_loss(loss, batch_size, terms)
        return loss
