"""Shared plumbing of every method: evaluation, prediction, metrics and optimizers.

A method subclasses :class:`SegmentationMethod`, declares only its own arguments (ending with ``**kwargs``
passed to ``super().__init__``), builds its networks in ``configure_models`` from ``self.options``, names its
parameter groups in ``param_groups`` and writes ``training_step``; validation, test and predict steps,
metric logging and the optimizer / schedule come from here. The base saves every hyper-parameter (the
method's and its own) before the networks are built, as TorchGeo's ``BaseTask`` does, so a checkpoint alone
rebuilds the module.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import partial
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn
from typing_extensions import override

from wsss_lightning.callbacks.seeding import StepSeed
from wsss_lightning.callbacks.step_logging import is_logging_step
from wsss_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wsss_lightning.inference import (
    CRFPostProcessor,
    mean_field_labels,
    multiscale_flip_logits,
    sliding_window_logits,
)
from wsss_lightning.methods.nonfinite import (
    MAX_PENDING_STEPS,
    LossWatch,
    NonFiniteConfig,
    NonFiniteLossError,
    NonFiniteWeightsError,
    first_nonfinite_tensor,
    loss_terms,
    nonfinite_loss_message,
)
from wsss_lightning.methods.options import InferenceConfig, OptimizerConfig
from wsss_lightning.metrics import SegmentationIoU, iou_log_dict
from wsss_lightning.ops import channel_argmax
from wsss_lightning.schedules import warmup_poly


def _option_group(hint: Any) -> type | None:
    """The dataclass of an argument typed ``SomeConfig`` or ``SomeConfig | None``; None for other types."""
    candidates = [hint, *typing.get_args(hint)]
    groups = [t for t in candidates if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return groups[0] if groups else None


def _build_option_group(group: type, values: Any) -> Any:
    """``group(**values)`` with nested option groups given as dicts built the same way."""
    if not isinstance(values, dict):
        raise TypeError(f"expected a {group.__name__} or a dict of its fields, got {type(values).__name__}")
    hints = typing.get_type_hints(group)
    fields = {}
    for name, value in values.items():
        nested = _option_group(hints.get(name))
        fields[name] = _build_option_group(nested, value) if nested and isinstance(value, dict) else value
    return group(**fields)


class SegmentationMethod(L.LightningModule, ABC):
    """Base class of all methods.

    A method's ``__init__`` lists only its own arguments and ends with ``**kwargs`` handed to
    ``super().__init__``; LightningCLI follows that hand-over, so ``wsss fit --model.help <Method>`` lists the
    base's arguments too. The base then saves the hyper-parameters, collects the instantiated arguments of the
    whole chain in ``self.options`` (option groups left ``None`` become their defaults) and only then calls
    ``configure_models``, ``configure_losses`` and ``configure_metrics``, which read ``self.options``.

    Args:
        num_classes: number of classes (linked from the datamodule by the CLI).
        ignore_index: label of ignored pixels (linked from the datamodule).
        class_names: class names for per-class logging (linked from the datamodule).
        image_mean: normalisation mean of the datamodule (to recover RGB images for the CRF).
        image_std: normalisation std of the datamodule.
        optim: optimizer and learning-rate schedule.
        inference: validation / test-time inference (scales, flip, sliding window, CRF).
        nonfinite: what training does with a NaN / infinite loss (``stop``, the default, or ``skip``); a
            checkpoint with non-finite weights is never written, whatever this says.
    """

    image_mean: Tensor
    image_std: Tensor

    #: metric that checkpointing and model selection monitor
    monitor = "val/miou"
    mode = "max"
    #: Device-to-host reads a training step needs (ATen op or ``Tensor`` method name -> reason). A training
    #: step reads nothing from the device on the host (it would stall the accelerator's queue); the method
    #: contract test runs every method's steps under a detector and allows only what is listed here, which
    #: the method's docstring explains. Every method in the package lists nothing.
    HOST_READS: typing.ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        num_classes: int = 21,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        optim: OptimizerConfig | None = None,
        inference: InferenceConfig | None = None,
        nonfinite: NonFiniteConfig | None = None,
    ) -> None:
        super().__init__()
        # What the checkpoint records: the arguments of every ``__init__`` in the call chain (the method's and
        # these), or, under LightningCLI, the configuration as given (rebuilt by ``load_from_checkpoint``).
        self.save_hyperparameters()
        self.options = self._instantiated_arguments(inspect.currentframe())
        # Option groups are saved as plain dicts: checkpoints then load with torch's weights-only unpickler, and
        # ``load_from_checkpoint`` turns them back into the dataclasses.
        for key, value in self.hparams.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.hparams[key] = dataclasses.asdict(value)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self._progress_loss: tuple[Tensor, int] | None = None  # see log_progress_loss
        self.optim: OptimizerConfig = self.options.optim
        self.inference: InferenceConfig = self.options.inference
        self.nonfinite: NonFiniteConfig = self.options.nonfinite
        self._loss_watch = LossWatch()  # see log_progress_loss
        self._loss_check_due = False
        self._skipped_steps = 0
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        self._crf: CRFPostProcessor | None = None
        #: mIoU and per-class IoU (class name -> IoU) each ``_log_iou`` prefix last computed (``val``, ...)
        self.computed_iou: dict[str, tuple[float, dict[str, float]]] = {}
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def _instantiated_arguments(self, frame: FrameType | None) -> AttributeDict:
        """The arguments the module runs with: every ``__init__`` argument of the chain, as objects.

        Each option group (an argument typed ``SomeConfig | None``) left ``None`` becomes its defaults and one
        given as a dict (a checkpoint's hyper-parameters, a plain Python call) becomes the dataclass, so methods
        read ``self.options.<group>.<field>`` without ``or SomeConfig()`` at every use.
        """
        options = AttributeDict()
        for level in collect_init_args(frame, []) if frame is not None else []:
            options.update(level)
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None or not issubclass(cls, SegmentationMethod):
                continue
            for name, hint in typing.get_type_hints(init).items():
                group = _option_group(hint)
                if name in options and group is not None and not isinstance(options[name], group):
                    options[name] = _build_option_group(group, options[name] or {})
        return options

    def check_choices(self, **allowed: Sequence[object]) -> None:
        """Raise a ValueError naming each string option whose value is not among its ``allowed`` values.

        LightningCLI checks ``Literal`` options already; this covers modules built in Python.
        """
        for name, values in allowed.items():
            value = self.options[name]
            if value not in values:
                raise ValueError(
                    f"{type(self).__name__}: {name} = {value!r}; expected one of {tuple(values)}"
                )

    # ----------------------------------------------------------------- hooks for methods
    @abstractmethod
    def configure_models(self) -> None:
        """Build the networks (called from ``__init__`` after the hyper-parameters are set)."""

    def configure_losses(self) -> None:
        """Build loss modules (optional)."""

    def configure_metrics(self) -> None:
        """Create the IoU metrics; methods add their own (e.g. CAM and pseudo-label mIoU) with super()."""
        self.val_iou = SegmentationIoU(self.num_classes, self.ignore_index)
        self.test_iou = SegmentationIoU(self.num_classes, self.ignore_index)

    @abstractmethod
    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], float]]:
        """Trainable parameters by group name, each with its default learning-rate multiplier."""

    @abstractmethod
    def forward(self, images: Tensor) -> Tensor:
        """Segmentation logits (B, C, h, w) for normalised images (B, 3, H, W); any output stride."""

    @override
    def configure_callbacks(self) -> list[L.Callback]:
        """:class:`StepSeed` and the method's own callbacks (:meth:`method_callbacks`), once per trainer.

        Random draws inside ``training_step`` become a function of the global step (exact resume). A trainer
        that already holds a StepSeed (given by the user) keeps it, and a trainer that holds the callbacks an
        earlier validate / test on it attached keeps those: returning new ones would only replace them and make
        Lightning warn that they override existing callbacks.
        """
        attached = list(getattr(self._trainer, "callbacks", None) or ())
        previous: list[L.Callback] = getattr(self, "_configured_callbacks", [])
        if previous and all(any(c is a for a in attached) for c in previous):
            return []
        seed: list[L.Callback] = [] if any(isinstance(c, StepSeed) for c in attached) else [StepSeed()]
        self._configured_callbacks = [*seed, *self.method_callbacks()]
        return self._configured_callbacks

    def method_callbacks(self) -> list[L.Callback]:
        """The callbacks the method's training needs (schedules, teachers); none by default."""
        return []

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A diverged run must fail rather than overwrite its last good checkpoint: first with the loss term
        # that went non-finite (the more useful message), then, whatever the loss said, on the weights.
        self._check_losses()
        bad = first_nonfinite_tensor(checkpoint.get("state_dict", {}))
        if bad is not None:
            step = self.trainer.global_step if self._trainer is not None else "?"
            raise NonFiniteWeightsError(
                f"not writing a checkpoint at step {step}: {bad} holds NaN or infinite values (training diverged; "
                "lower the learning rate, model.init_args.optim.lr)"
            )
        # which method wrote the file: a later stage that loads it (Seminar's ancillary) can check it
        checkpoint["method"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["nonfinite_skipped_steps"] = self._skipped_steps

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._skipped_steps = int(checkpoint.get("nonfinite_skipped_steps", 0))

    # ----------------------------------------------------------------- inference
    def _single_pass(self, images: Tensor) -> Tensor:
        cfg = self.inference
        if cfg.window is None:
            logits: Tensor = self(images)
            return logits
        stride = cfg.stride or max(1, (2 * cfg.window + 2) // 3)
        return sliding_window_logits(self, images, self.num_classes, cfg.window, stride)

    def predict_logits(self, images: Tensor, test_time: bool = False) -> Tensor:
        """Logits (B, C, H, W) at the input resolution, multi-scale/flip/sliding-window per ``inference``."""
        cfg = self.inference
        scales = cfg.test_scales if test_time else cfg.val_scales
        flip = cfg.flip and test_time
        return multiscale_flip_logits(
            self._single_pass, images, scales=scales, flip=flip, merge=cfg.merge, flip_merge=cfg.flip_merge
        )

    def log_progress_loss(
        self, loss: Tensor, batch_size: int, terms: Mapping[str, Tensor] | None = None
    ) -> None:
        """Show the training loss in the progress bar as ``loss`` and watch it for NaN / infinite values.

        Every method calls this once per training step with its total loss and its logged values ``terms``
        (those named ``.../loss*`` are the loss terms the non-finite check names).

        The progress bar turns its values into Python numbers at every refresh and keeps showing the last value
        logged: a device value there would cost a host synchronisation every step. So the loss is copied to the
        host for it only on the steps whose logs are written, which read the values anyway, and after the step
        (:meth:`on_train_batch_end`, after the callbacks' batch-end hooks), so the step itself reads nothing.
        The loss terms are kept on the device and checked at the same moments (see :class:`NonFiniteConfig`).
        """
        if self._trainer is None:
            return
        self._loss_watch.record(self.trainer.global_step, loss_terms(loss, terms))
        logging = is_logging_step(self.trainer)
        self._loss_check_due = logging or len(self._loss_watch) >= MAX_PENDING_STEPS
        if logging:
            self._progress_loss = (loss.detach(), batch_size)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        progress, self._progress_loss = self._progress_loss, None
        if progress is not None:
            loss, batch_size = progress
            self.log("loss", loss.cpu(), prog_bar=True, logger=False, batch_size=batch_size)
        if self._loss_check_due:
            self._loss_check_due = False
            self._check_losses()
            if self.nonfinite.action == "skip":
                self.log("train/skipped_steps", float(self._skipped_steps), batch_size=1)

    def _check_losses(self) -> None:
        """``stop``: raise :class:`NonFiniteLossError` if a watched loss was not finite (on any process)."""
        if self.nonfinite.action == "skip":  # skipped steps were handled in backward
            self._loss_watch.clear()
            return
        found = self._loss_watch.first_nonfinite()
        elsewhere = False
        if self._trainer is not None and self.trainer.world_size > 1:
            # every process stops together, or the others would wait for it in the next collective
            flag = torch.tensor(float(found is not None), device=self.device)
            elsewhere = float(self.trainer.strategy.reduce(flag, reduce_op="sum")) > 0
        if found is not None:
            raise NonFiniteLossError(nonfinite_loss_message(*found))
        if elsewhere:
            raise NonFiniteLossError("non-finite loss on another process (see its error)")

    @override
    def on_train_end(self) -> None:
        self._check_losses()

    @override
    def on_validation_start(self) -> None:
        # no validation figures from diverged weights
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._check_losses()

    @override
    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        # ``skip``: one host read per step (see NonFiniteConfig); a step without backward makes no update
        if (
            self.nonfinite.action == "skip"
            and self._trainer is not None
            and not self._finite_everywhere(loss)
        ):
            self._skip_step()
            if getattr(self.trainer.precision_plugin, "scaler", None) is None:
                return
            # fp16 AMP: the gradient scaler needs the backward pass, and drops the step itself
        super().backward(loss, *args, **kwargs)

    def _finite_everywhere(self, loss: Tensor) -> bool:
        bad = (~torch.isfinite(loss.detach())).any().float()
        if self.trainer.world_size > 1:  # every process skips the same steps, or DDP's reduction would hang
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad > 0)

    def _skip_step(self) -> None:
        self._skipped_steps += 1
        found = self._loss_watch.first_nonfinite()
        what = nonfinite_loss_message(*found).split(";")[0] if found else "non-finite loss on another process"
        limit = self.nonfinite.max_skipped
        if self._skipped_steps > limit:
            raise NonFiniteLossError(
                f"{self._skipped_steps} training steps were skipped for a non-finite loss, more than "
                f"model.init_args.nonfinite.max_skipped = {limit} (the last: {what}); lower the learning rate "
                "(model.init_args.optim.lr) or check the data"
            )
        rank_zero_warn(
            f"skipping step {self.trainer.global_step} ({what}); {self._skipped_steps} of {limit} skipped"
        )

    def denormalize(self, images: Tensor) -> Tensor:
        """RGB in [0, 1] of normalised images (B, 3, H, W), on the 8-bit grid the images were loaded from.

        Rounding to that grid recovers the loaded pixels exactly, as the references that denormalise to uint8.
        """
        return ((images * self.image_std + self.image_mean).clamp(0, 1) * 255).round() / 255

    def to_uint8(self, images: Tensor) -> np.ndarray:
        """Normalised images (B, 3, H, W) as uint8 RGB arrays (B, H, W, 3) on the host (CRF, W&B media)."""
        rgb = self.denormalize(images) * 255
        return rgb.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def _crf_processor(self) -> CRFPostProcessor:
        if self._crf is None:
            crf = self.inference.crf
            self._crf = CRFPostProcessor(crf.params, num_workers=crf.workers)
        return self._crf

    def predict_masks(self, images: Tensor, sizes: Tensor, test_time: bool = True) -> list[Tensor]:
        """Label maps (h_i, w_i) int64 per image, cropped to each image's size, CRF-refined if enabled."""
        logits = self.predict_logits(images, test_time=test_time)
        sizes_list = sizes.tolist()
        if not (test_time and self.inference.crf.enabled):
            labels = channel_argmax(logits)
            return [labels[i, :h, :w] for i, (h, w) in enumerate(sizes_list)]
        if self.inference.crf.backend == "device":
            pixels = self.denormalize(images) * 255
            labels = mean_field_labels(pixels, logits.float().softmax(1), self.inference.crf.params, sizes)
            return [labels[i, :h, :w] for i, (h, w) in enumerate(sizes_list)]
        probs = logits.float().softmax(1).cpu().numpy()
        rgb = self.to_uint8(images)
        crops = [(rgb[i, :h, :w], probs[i, :, :h, :w]) for i, (h, w) in enumerate(sizes_list)]
        refined = self._crf_processor()([c[0] for c in crops], [c[1] for c in crops])
        return [torch.as_tensor(r, dtype=torch.long, device=images.device) for r in refined]

    # ----------------------------------------------------------------- steps
    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.predict_logits(batch["image"], test_time=False)
        self.val_iou.update(channel_argmax(logits), batch["mask"])

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_iou("val", self.val_iou)

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        masks = self.predict_masks(batch["image"], batch["size"], test_time=True)
        for pred, target, (h, w) in zip(masks, batch["mask"], batch["size"].tolist(), strict=True):
            self.test_iou.update(pred[None], target[None, :h, :w])

    @override
    def on_test_epoch_end(self) -> None:
        self._log_iou("test", self.test_iou)

    @override
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        masks = self.predict_masks(batch["image"], batch["size"], test_time=True)
        out = {"name": list(batch["name"]), "masks": [m.to(torch.uint8).cpu().numpy() for m in masks]}
        if "image_size" in batch:  # the size the writer restores when evaluation resized the images
            out["image_size"] = batch["image_size"].tolist()
        return out

    def _log_iou(self, stage: str, metric: SegmentationIoU, output: str = "") -> float:
        """Log ``<stage>[/<output>]/miou`` and the per-class IoU; returns the mIoU."""
        miou, per_class = metric.compute()
        metric.reset()
        prefix = f"{stage}/{output}" if output else stage
        values = iou_log_dict(prefix, miou, per_class, self.class_names)
        # kept so dashboards show exactly these values (callbacks run before this hook, so
        # trainer.callback_metrics would still hold the previous validation's)
        per_class_values = {name: values[f"{prefix}/iou/{name}"] for name in self.class_names}
        self.computed_iou[prefix] = (values[f"{prefix}/miou"], per_class_values)
        # The metric already reduced its confusion matrix across ranks, so every rank holds the same values;
        # sync_dist only makes Lightning aware of that (a mean of equal numbers).
        self.log_dict(values, sync_dist=True)
        return float(miou)

    def validation_table_iou(self) -> tuple[float, dict[str, float]] | None:
        """The mIoU behind ``val/miou`` of the latest validation and its per-class IoU (class name -> IoU).

        None before the first validation. Methods whose ``val/miou`` is another output's override this.
        """
        return self.computed_iou.get("val")

    @override
    def teardown(self, stage: str) -> None:
        if self._crf is not None:
            self._crf.close()
            self._crf = None

    # ----------------------------------------------------------------- optimisation
    def total_steps(self) -> int:
        """Length of the learning-rate schedule in optimizer steps."""
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        return int(trainer.estimated_stepping_batches)

    def no_weight_decay_groups(self) -> frozenset[str]:
        """Parameter groups trained without weight decay (e.g. RRM's biases); none by default."""
        return frozenset()

    def untrained_modules(self) -> list[nn.Module]:
        """Modules the current step's loss keeps in the graph at 0 only, so that DDP sees every parameter used.

        :meth:`on_before_optimizer_step` drops their zero gradients, so the optimizer skips them as if they had no
        gradient. None by default.
        """
        return []

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # AdamW would otherwise count these steps in its bias correction (the modules' first real updates then come
        # out up to ~3x too large) and apply its weight decay to them
        for module in self.untrained_modules():
            for p in module.parameters():
                p.grad = None

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over ``param_groups`` with the configured learning-rate multipliers."""
        cfg = self.optim
        groups = []
        no_decay = self.no_weight_decay_groups()
        for name, (params, default_mult) in self.param_groups().items():
            trainable = [p for p in params if p.requires_grad]
            if trainable:
                mult = cfg.lr_mult.get(name, default_mult)
                group = {"params": trainable, "name": name, "lr": cfg.lr * mult, "lr_mult": mult}
                if name in no_decay:
                    group["weight_decay"] = 0.0
                groups.append(group)
        unknown = set(cfg.lr_mult) - set(self.param_groups())
        if unknown:
            raise ValueError(
                f"optim.lr_mult names unknown parameter groups {sorted(unknown)}; "
                f"this method has {sorted(self.param_groups())}"
            )
        if cfg.name == "sgd":
            return torch.optim.SGD(
                groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
            )
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        schedule = partial(
            warmup_poly,
            total_steps=self.total_steps(),
            warmup_steps=self.optim.warmup_steps,
            power=self.optim.poly_power,
            warmup_ratio=self.optim.warmup_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
