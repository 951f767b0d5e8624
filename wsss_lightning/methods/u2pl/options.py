"""Typed option groups of :class:`~wsss_lightning.methods.u2pl.module.U2PLModule`.

Each group validates its own fields and is passed whole to the functions that use it. References: Wang et al.,
"Semi-Supervised Semantic Segmentation Using Unreliable Pseudo-Labels" (CVPR 2022) and "Using Unreliable
Pseudo-Labels for Label-Efficient Semantic Segmentation" (U2PL+, IJCV 2024; equation and section numbers below
are U2PL+'s); released code ``Haochen-Wang409/U2PL`` (``u2pl/utils/loss_helper.py``, ``train_semi.py``,
``experiments/*/config.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

#: storage dtypes of the memory bank
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


#: U2PLModule arguments that moved into an option group, old name -> new spelling
RENAMED_OPTIONS = {
    "aux_weight": "supervised.aux_weight",
    "supervised_loss": "supervised.loss",
    "ohem_thresh": "supervised.ohem_thresh",
    "ohem_min_kept": "supervised.ohem_min_kept",
    "ema_decay": "teacher.ema_decay",
    "teacher_copy_first_epoch": "teacher.copy_first_epoch",
    "teacher_bn_from_student": "teacher.bn_from_student",
    "cutmix_prob": "unsupervised.cutmix_prob",
    "unsup_weight": "unsupervised.weight",
    "drop_percent": "unsupervised.drop_percent",
    "adaptive_weight": "unsupervised.adaptive_weight",
    "unsup_loss": "unsupervised.loss",
    "sce_xi1": "unsupervised.sce_xi1",
    "sce_xi2": "unsupervised.sce_xi2",
    "prototypical_denoising": "unsupervised.prototypical_denoising",
}


def renamed_options_message(config_files: list[str], model_args: list[str]) -> str | None:
    """``old -> new`` lines for the renamed U2PLModule arguments in config files and ``--model.*`` options."""
    import yaml

    found: list[str] = []
    for path in config_files:
        try:
            with open(path) as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError):
            continue
        model = config.get("model") if isinstance(config, dict) else None
        init_args = model.get("init_args", {}) if isinstance(model, dict) else {}
        found += [f"{path}: model.init_args.{k} -> model.init_args.{RENAMED_OPTIONS[k]}"
                  for k in init_args or {} if k in RENAMED_OPTIONS]  # fmt: skip
    for key in model_args:
        name = key.removeprefix("--model.").removeprefix("init_args.")
        if name in RENAMED_OPTIONS:
            found.append(f"command line: {key} -> --model.init_args.{RENAMED_OPTIONS[name]}")
    if not found:
        return None
    return (
        "U2PLModule groups its options now (supervised / teacher / unsupervised / contrastive):\n  "
        + "\n  ".join(found)
    )


def _fail(group: str, name: str, value: object, expected: str, owner: str = "U2PLModule") -> None:
    raise ValueError(f"{owner}: {group}.{name} = {value!r}; expected {expected}")


def _check_choice(group: str, owner: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(owner, name)
    if value not in allowed:
        _fail(group, name, value, f"one of {allowed}")


@dataclass
class SupervisedLossConfig:
    """The supervised loss on labeled images (U2PL+ Sec. 3.1; U2PL ``train_semi.py``).

    Attributes:
        loss: ``ce`` (VOC) or ``ohem`` (Cityscapes).
        ohem_thresh: OHEM probability threshold (0.7).
        ohem_min_kept: OHEM minimum kept pixels per batch (100,000).
        aux_weight: weight of the auxiliary layer3 head's loss (0.4 for Cityscapes; 0 builds no aux head).
    """

    loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    aux_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("supervised", self, "loss", ("ce", "ohem"))
        if not 0.0 < self.ohem_thresh <= 1.0:
            _fail("supervised", "ohem_thresh", self.ohem_thresh, "a value in (0, 1]")
        if self.ohem_min_kept < 0:
            _fail("supervised", "ohem_min_kept", self.ohem_min_kept, ">= 0")
        if self.aux_weight < 0:
            _fail("supervised", "aux_weight", self.aux_weight, ">= 0")


@dataclass
class TeacherConfig:
    """The EMA teacher (U2PL+ Sec. 3.1; U2PL ``train_semi.py``: ``ema_decay = min(1 - 1 / (i + 1), 0.99)``).

    Attributes:
        ema_decay: the teacher's maximum EMA decay (0.99); the decay ramps as min(1 - 1/(k+1), ema_decay).
        copy_first_epoch: the teacher equals the student during the first semi-supervised epoch, as in the
            released code. ``False``: the teacher starts as the student at the end of the warm-up and follows it
            by EMA (the ramped decay) from the first semi-supervised step.
        bn_from_student: at the end of the warm-up the teacher also takes the student's BN running statistics
            (the reference keeps the teacher's own, gathered by train-mode forwards of its never-updated
            weights during the warm-up).
    """

    ema_decay: float = 0.99
    copy_first_epoch: bool = True
    bn_from_student: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay <= 1.0:
            _fail("teacher", "ema_decay", self.ema_decay, "a value in [0, 1]")


@dataclass
class UnsupervisedConfig:
    """Pseudo-labels of the unlabeled images and their loss L_u (U2PL+ Sec. 3.3, Eq. 4, 13-14).

    Attributes:
        weight: lambda_u, the weight of L_u (1).
        drop_percent: alpha_0, the % of highest-entropy pseudo-labels dropped at the start (20; anneals
            linearly to 0 over the epochs, Eq. 13).
        adaptive_weight: U2PL's lambda_u = B*H*W / #reliable (Eq. 14); False uses the plain mean.
        loss: ``ce`` (U2PL) or ``sce`` (U2PL+ symmetric CE with ``sce_xi1``, ``sce_xi2``).
        sce_xi1: CE weight of the symmetric CE.
        sce_xi2: reverse-CE weight of the symmetric CE (paper text 0.1; Table VII best 0.5).
        cutmix_prob: probability that a step mixes the unlabeled batch with CutMix (0.5).
        prototypical_denoising: U2PL+ prototypical denoising of the teacher's pseudo-labels (Sec. 3.4; needs
            ``contrastive.momentum_prototype``).
        oracle_labels: diagnostic, not a method setting: the unlabeled images' ground truth replaces the
            teacher's pseudo-labels (their confidence, the entropy bands and every other term stay the teacher's),
            to measure what the rest of the method reaches with perfect pseudo-labels. Needs the ground truth in
            the unlabeled batches (``SemiView(keep_target_masks=True)``).
        oracle_filter: diagnostic, not a method setting: the teacher's pseudo-labels stay, but those that
            disagree with the ground truth are ignored, as a perfect reliability filter would do (pixels without
            ground truth keep theirs). Needs the ground truth as ``oracle_labels``; exclusive with it.
    """

    weight: float = 1.0
    drop_percent: float = 20.0
    adaptive_weight: bool = True
    loss: Literal["ce", "sce"] = "ce"
    sce_xi1: float = 1.0
    sce_xi2: float = 0.1
    cutmix_prob: float = 0.5
    prototypical_denoising: bool = False
    oracle_labels: bool = False
    oracle_filter: bool = False

    def __post_init__(self) -> None:
        _check_choice("unsupervised", self, "loss", ("ce", "sce"))
        if self.weight < 0:
            _fail("unsupervised", "weight", self.weight, ">= 0")
        if not 0.0 <= self.drop_percent < 100.0:
            _fail("unsupervised", "drop_percent", self.drop_percent, "a percentage in [0, 100)")
        if not 0.0 <= self.cutmix_prob <= 1.0:
            _fail("unsupervised", "cutmix_prob", self.cutmix_prob, "a probability in [0, 1]")
        if self.oracle_labels and self.oracle_filter:
            _fail("unsupervised", "oracle_filter", self.oracle_filter, "False when oracle_labels is set")


@dataclass
class ContrastiveConfig:
    """U2PL's contrastive term L_c with its memory bank (U2PL+ Eq. 10, 15-28, Sec. 3.5).

    Attributes:
        enabled: use the contrastive loss at all (SupOnly: false, and no memory bank is allocated).
        weight: lambda_c. The released code sets 1 but its DDP reduction divides the gradient by the number
            of GPUs W, so the effective weight of the published runs is 1/W: 0.25 for VOC (4 GPUs), 0.125 for
            Cityscapes (8 GPUs). The default is the VOC value.
        low_entropy_percent: alpha^c_0; anchors / prototypes of unlabeled images come from the alpha^c_t %
            lowest-entropy pixels and negatives from the alpha^c_t % highest (alpha^c_t anneals like alpha_t).
        anchor_set: ``code`` (the alpha^c_t % lowest-entropy pixels, released code and Table III) or ``paper``
            (every reliable pixel, Eq. 17 / 22).
        capacity: queue capacity per class (30,000).
        background_capacity: queue capacity of class 0 (50,000).
        bank_dtype: storage dtype of the queues (float32 as released; float16 halves the memory).
        num_anchors: M anchors per class (256).
        num_negatives: N negatives per anchor (50).
        delta_p: anchor threshold on the teacher probability of the class (0.3).
        delta_n: negatives need a teacher probability below this (1 = vacuous, as released).
        low_rank: r_l (3).
        high_rank: r_h (20).
        temperature: tau (0.5).
        negative_rule: ``paper`` (Eq. 25-28) or ``code`` (released code, issue #171: only pixels
            pseudo-labelled c become negatives of c).
        class_pairing: ``matched`` (correct) or ``shifted`` (the released code's index-mismatch bug, #111).
        normalization: divide by the number of ``present`` classes (code) or by ``all`` C (paper Eq. 10).
        min_valid_classes: below this many valid classes the loss is 0 (2, as released).
        momentum_prototype: U2PL+ momentum prototypes as positives instead of batch means.
        prototype_momentum: their momentum (0.999).
        max_keys_per_step: keys enqueued per rank and step, shared fairly between classes (fixed shapes, no
            host sync); ``None`` (default) enqueues every negative pixel as the released code does (also
            without a host sync: the newest ``capacity`` keys of each class go through fixed-size slots).
        labeled_negatives: labelled pixels become negatives by the rank rule (Eq. 26); off leaves the negatives
            to the unreliable unlabelled pixels alone (the domain-adaptive setting's target negatives).
    """

    enabled: bool = True
    weight: float = 0.25
    low_entropy_percent: float = 20.0
    anchor_set: Literal["code", "paper"] = "code"
    capacity: int = 30000
    background_capacity: int | None = 50000
    bank_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_anchors: int = 256
    num_negatives: int = 50
    delta_p: float = 0.3
    delta_n: float = 1.0
    low_rank: int = 3
    high_rank: int = 20
    temperature: float = 0.5
    negative_rule: Literal["paper", "code"] = "paper"
    class_pairing: Literal["matched", "shifted"] = "matched"
    normalization: Literal["present", "all"] = "present"
    min_valid_classes: int = 2
    momentum_prototype: bool = False
    prototype_momentum: float = 0.999
    max_keys_per_step: int | None = None
    labeled_negatives: bool = True

    def __post_init__(self) -> None:
        smallest = min(self.capacity, self.background_capacity or self.capacity)
        if smallest < self.num_negatives:
            raise ValueError(
                f"contrastive: queue capacity ({smallest}) must be >= num_negatives ({self.num_negatives})"
            )
        for name, allowed in {
            "negative_rule": ("paper", "code"),
            "class_pairing": ("matched", "shifted"),
            "normalization": ("present", "all"),
            "anchor_set": ("code", "paper"),
            "bank_dtype": tuple(BANK_DTYPES),
        }.items():
            _check_choice("contrastive", self, name, allowed)
        if not 1 <= self.low_rank < self.high_rank:
            raise ValueError(
                f"contrastive: need 1 <= low_rank < high_rank, got {self.low_rank}, {self.high_rank}"
            )
        if self.num_anchors < 1 or self.num_negatives < 1 or self.temperature <= 0:
            raise ValueError(
                f"contrastive: num_anchors ({self.num_anchors}) and num_negatives ({self.num_negatives}) must be "
                f">= 1 and temperature ({self.temperature}) > 0"
            )
        if not 0.0 <= self.low_entropy_percent < 50.0:
            _fail("contrastive", "low_entropy_percent", self.low_entropy_percent, "a percentage in [0, 50)")
        if self.max_keys_per_step is not None and self.max_keys_per_step < 1:
            _fail("contrastive", "max_keys_per_step", self.max_keys_per_step, "None or >= 1")


@dataclass
class WeakContrastiveConfig:
    """U2PL+'s contrastive term for image-level labels (U2PL+ Sec. 3.5.2, Eq. 29-31; no public code).

    Anchors of class c are the pixels of images tagged with c whose CAM score exceeds beta (Eq. 29); the
    positive is the class's momentum prototype, moved towards the mean of the detached anchor
    representations (Eq. 30; the baseline has no teacher, so the network's own features); negatives of c are
    the pixels of images without tag c and / or with CAM score below beta (Eq. 31, Table XIV). See
    :func:`~wsss_lightning.methods.u2pl.weak.weak_contrastive_loss`.

    The paper gives no value for beta, lambda_c, the start, the queues or any subsampling; the defaults
    and their reasons:

    * ``beta = 0.55``: the score above which AFA, the WS baseline, calls a CAM pixel reliable foreground
      (its high threshold); with ``background`` the background anchors are then the pixels whose best
      foreground score is below 0.45, AFA's background score.
    * ``weight = 0.1``: the weight AFA gives each of its other auxiliary terms (segmentation, affinity).
    * ``start_step = 2000``: AFA's CAM-only warm-up; before it the CAMs that choose anchors are poor.
    * ``capacity`` / ``background_capacity`` 30,000 / 50,000, ``num_anchors`` 256, ``num_negatives`` 50,
      ``temperature`` 0.5, ``prototype_momentum`` 0.999: the semi-supervised values (U2PL+ Sec. 4.1).
    * ``max_keys_per_step = 4096``: Eq. 31 makes most pixels negatives of most classes (every pixel of an
      image is a negative of each of its absent classes), so enqueueing all of them would push C times the
      batch's pixels per step; 4,096 keys shared fairly between the classes keep about 200 per class for VOC.
    * ``min_valid_classes = 1``: the negatives come from the bank, so one class with anchors already has a
      contrast (the semi-supervised release's 2 is available).

    Attributes:
        enabled: use the term at all (no memory bank is allocated otherwise).
        weight: lambda_c.
        start_step: first optimiser step at which the term is added (it runs with AFA's segmentation and
            affinity losses, so never before ``phases.seg_start``).
        beta: CAM score threshold in (0, 1) of Eq. 29 and 31.
        negatives: ``both`` (Eq. 31), ``absent`` (only pixels of images without the class) or ``low`` (only
            pixels of images with the class and a score below beta): Table XIV's rows.
        background: add the background class 0, scored ``1 - max`` of the image's foreground CAMs; False
            leaves class 0 out of the loss.
        capacity: queue capacity per foreground class.
        background_capacity: queue capacity of class 0 (None: ``capacity``).
        bank_dtype: storage dtype of the queues.
        num_anchors: M anchors per class.
        num_negatives: N negatives per anchor.
        temperature: tau.
        prototype_momentum: m of the momentum prototypes (Eq. 18).
        max_keys_per_step: keys enqueued per rank and step, shared fairly between the classes; None
            enqueues every negative (the newest ``capacity`` of each class).
        normalization: divide by the number of ``present`` classes or by ``all`` C.
        min_valid_classes: below this many classes with anchors the loss is 0.
    """

    enabled: bool = True
    weight: float = 0.1
    start_step: int = 2000
    beta: float = 0.55
    negatives: Literal["both", "absent", "low"] = "both"
    background: bool = True
    capacity: int = 30000
    background_capacity: int | None = 50000
    bank_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    num_anchors: int = 256
    num_negatives: int = 50
    temperature: float = 0.5
    prototype_momentum: float = 0.999
    max_keys_per_step: int | None = 4096
    normalization: Literal["present", "all"] = "present"
    min_valid_classes: int = 1

    def __post_init__(self) -> None:
        def fail(name: str, expected: str) -> None:
            _fail("contrastive", name, getattr(self, name), expected, owner="WeakContrastiveConfig")

        for name, allowed in {
            "negatives": ("both", "absent", "low"),
            "normalization": ("present", "all"),
            "bank_dtype": tuple(BANK_DTYPES),
        }.items():
            if getattr(self, name) not in allowed:
                fail(name, f"one of {allowed}")
        if not 0.0 < self.beta < 1.0:
            fail("beta", "a CAM score in (0, 1)")
        if self.weight < 0:
            fail("weight", ">= 0")
        if self.start_step < 0:
            fail("start_step", ">= 0")
        if self.num_anchors < 1:
            fail("num_anchors", ">= 1")
        if self.num_negatives < 1:
            fail("num_negatives", ">= 1")
        if self.temperature <= 0:
            fail("temperature", "> 0")
        if not 0.0 <= self.prototype_momentum < 1.0:
            fail("prototype_momentum", "a value in [0, 1)")
        if self.max_keys_per_step is not None and self.max_keys_per_step < 1:
            fail("max_keys_per_step", "None or >= 1")
        if self.min_valid_classes < 1:
            fail("min_valid_classes", ">= 1")
        if self.capacity < self.num_negatives:
            fail("capacity", f">= num_negatives ({self.num_negatives})")
        if self.background_capacity is not None and self.background_capacity < self.num_negatives:
            fail("background_capacity", f"None or >= num_negatives ({self.num_negatives})")


@dataclass
class DomainContrastiveConfig(ContrastiveConfig):
    """U2PL+'s contrastive term in the domain-adaptive setting (U2PL+ Sec. 4.2, Tables XI-XII; no public code).

    The semi-supervised loss with the source as the labelled domain and the ClassMix image (source classes
    pasted onto a target image) as the unlabelled one; see
    :class:`~wsss_lightning.methods.u2pl.domain_module.U2PLDomainModule`. The paper states neither the anchor
    and prototype sets, nor lambda_c, nor the bank for 19 classes; the defaults and their reasons:

    * anchors and prototypes: every labelled source pixel and, in the mixed image, the pasted source pixels
      and the alpha^c_t % lowest-entropy target pixels (``anchor_set: code``, as the semi-supervised
      release), alpha^c_t annealed over the iterations (the setting has no epochs);
    * negatives: only the target's unreliable pixels (the alpha^c_t % highest-entropy target pixels of the
      mixed image, ranks r_l..r_h): Table XII credits them with the gain (68.4 -> 69.6) and the source
      negatives with a marginal one, so ``labeled_negatives: false``; ``true`` adds the source negatives by
      the rank rule (Eq. 26);
    * ``weight = 0.1``: the weight the semi-supervised release effectively gives the term on Cityscapes (its
      loss weight 1 divided by 8 GPUs is 0.125), rounded, kept an auxiliary of DAFormer's two unit-weight
      cross-entropies;
    * momentum prototypes on (U2PL+ Eq. 18, m = 0.999);
    * the bank: 30,000 keys per class and 50,000 for class 0 (road), the semi-supervised Cityscapes sizes.
    """

    weight: float = 0.1
    momentum_prototype: bool = True
    labeled_negatives: bool = False
