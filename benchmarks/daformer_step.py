"""DAFormer / U2PL+ DA training step time with a breakdown, on random source / target crops.

Times the real ``DAFormerModule.training_step`` (or ``U2PLDomainModule``'s with ``--contrastive``) inside a
Lightning ``Trainer``, after a warm-up step, with every part on: the ImageNet feature distance (the encoder
weights are a file saved from a freshly built encoder, so the frozen ImageNet copy exists), the teacher's
pseudo-labels, ClassMix and the strong augmentation, and for U2PL+ the teacher's train-mode pass over the
source and the mixed crop and the contrastive loss with a full memory bank. The pieces are measured by wrapping
the functions the module calls; the EMA update runs in the teacher callback after the batch and is added to the
step. The network passes are the student forwards (source, mixed) and backward, the teacher forwards, the frozen
ImageNet encoder forward and the optimizer update; the method's overhead is everything else.

Usage::

    python benchmarks/daformer_step.py --threads 1
    python benchmarks/daformer_step.py --threads 1 --contrastive
    python benchmarks/daformer_step.py --encoder mit_b5 --size 512   # the published network (slow on a CPU)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from step_timing import TIMES, fit_timed, print_parts, timed
from torch.utils.data import Dataset

from wsss_lightning.callbacks.ema import EMATeacherCallback
from wsss_lightning.data import DATASET_INFO
from wsss_lightning.methods import DAFormerModule, OptimizerConfig
from wsss_lightning.methods.daformer import module as daformer
from wsss_lightning.methods.daformer.options import CITYSCAPES_THING_CLASSES
from wsss_lightning.methods.u2pl import domain_module
from wsss_lightning.methods.u2pl.contrastive import U2PLContrastiveLoss
from wsss_lightning.methods.u2pl.domain_module import U2PLDomainModule
from wsss_lightning.models.mit import MiTEncoder
from wsss_lightning.teachers import EMATeacher

NUM_CLASSES = 19


class RandomDomain(Dataset):
    """Domain-view items: a labelled source crop (blocks of random classes, things included) and a target crop.

    The blocks are ``size // 8`` pixels wide, so with a 256 crop each covers one bottleneck cell (stride 32) and
    the thing-class cells pass the feature distance's majority test, as in real scenes.
    """

    def __init__(self, size: int, length: int) -> None:
        self.size, self.length = size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        s = self.size
        blocks = torch.randint(0, NUM_CLASSES, (8, 8), generator=g)
        blocks[blocks % 4 == 0] = 255  # some ignore, as the void pixels of GTA5
        block = -(-s // 8)
        mask = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:s, :s]
        tags = torch.zeros(NUM_CLASSES)
        tags[blocks[blocks < NUM_CLASSES].unique()] = 1
        box = torch.tensor([0, 0, s, s])
        return {
            "source": {
                "image": torch.randn(3, s, s, generator=g),
                "mask": mask,
                "tags": tags,
                "valid_box": box,
                "name": f"s{i}",
            },
            "target": {"image": torch.randn(3, s, s, generator=g), "valid_box": box, "name": f"t{i}"},
        }


def teacher_forward(original: Any) -> Any:
    """``EMATeacher.forward`` timed as the pseudo-labelling pass (no representation) or the U2PL+ pass."""
    labelling = timed("teacher forward, pseudo-labels (target)", original)
    both = timed("teacher forward, source + mixed (U2PL+)", original)

    def wrapper(self: EMATeacher, *args: Any, **kwargs: Any) -> Any:
        return (labelling if kwargs.get("with_rep") is False else both)(self, *args, **kwargs)

    return wrapper


def instrument() -> None:
    """Wrap the functions the modules call (classes and module namespaces, before the model is built)."""
    for name, label in (
        ("class_mix_masks", "ClassMix masks + mix"),
        ("mix", "ClassMix masks + mix"),
        ("strong_augment", "strong augmentation (jitter, blur)"),
        ("pseudo_label_weights", "pseudo-label weights + weighted CE"),
        ("weighted_ce", "pseudo-label weights + weighted CE"),
        ("feature_distance_loss", "feature distance loss"),
    ):
        setattr(daformer, name, timed(label, getattr(daformer, name)))
    for name in ("entropy_band_masks", "downsample_labels"):
        label = "contrastive labels (entropy bands, downsampling)"
        setattr(domain_module, name, timed(label, getattr(domain_module, name)))
    U2PLContrastiveLoss.forward = timed("contrastive loss + memory bank", U2PLContrastiveLoss.forward)  # type: ignore[method-assign]
    EMATeacher.forward = teacher_forward(EMATeacher.forward)  # type: ignore[method-assign]
    EMATeacherCallback.on_train_batch_end = timed(  # type: ignore[method-assign]
        "EMA teacher update (callback)", EMATeacherCallback.on_train_batch_end
    )
    DAFormerModule.backward = timed("backward", DAFormerModule.backward)  # type: ignore[method-assign]
    DAFormerModule.optimizer_step = timed("optimizer_step", DAFormerModule.optimizer_step)  # type: ignore[method-assign]
    DAFormerModule.training_step = timed("training_step", DAFormerModule.training_step)  # type: ignore[method-assign]


def build(args: argparse.Namespace, weights: Path) -> DAFormerModule:
    """The module with the feature distance on; the student's and the ImageNet encoder's forwards timed."""
    common: dict[str, Any] = {
        "encoder": args.encoder,
        "encoder_weights": str(weights),
        "num_classes": NUM_CLASSES,
        "class_names": DATASET_INFO["cityscapes"].class_names,
        "optim": OptimizerConfig(name="adamw", lr=6e-5, weight_decay=0.01),
    }
    model = U2PLDomainModule(**common) if args.contrastive else DAFormerModule(**common)
    assert model.uses_feature_distance and model.imagenet is not None
    # the teacher is a copy made at construction: wrapping the student's instance leaves it out
    model.student.forward = timed("student forwards (source, mixed)", model.student.forward)  # type: ignore[method-assign]
    model.imagenet.forward = timed("frozen ImageNet encoder forward", model.imagenet.forward)  # type: ignore[method-assign]
    contrastive = getattr(model, "contrastive", None)
    if contrastive is not None:  # a full bank, as after the first few hundred steps
        bank = contrastive.memory_bank
        labels = torch.arange(NUM_CLASSES).repeat_interleave(bank.capacities)
        bank.push(torch.randn(labels.numel(), bank.keys.shape[1]), labels)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help="source and target crops each")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--encoder", default="mit_b1")
    parser.add_argument("--contrastive", action="store_true", help="U2PL+ DA instead of DAFormer")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size % 32:
        parser.error(f"--size {args.size}: expected a multiple of 32 (the encoder's last stride)")

    instrument()
    skip = 1
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{args.encoder}.pth"
        torch.save(MiTEncoder(args.encoder).backbone.state_dict(), weights)
        model = build(args, weights)
    data = RandomDomain(args.size, args.batch * (skip + args.steps))
    step = fit_timed(model, args, skip, data)
    # the EMA update runs in a callback after the step timer's end of batch
    step += TIMES["EMA teacher update (callback)"] / args.steps
    network = (
        "student forwards (source, mixed)",
        "backward",
        "teacher forward, pseudo-labels (target)",
        "teacher forward, source + mixed (U2PL+)",
        "frozen ImageNet encoder forward",
        "optimizer update + hooks",
    )
    name = "U2PL+ DA" if args.contrastive else "DAFormer"
    things = ", ".join(str(c) for c in CITYSCAPES_THING_CLASSES)
    print(f"\n{name} step, {args.encoder}, {args.batch} source + {args.batch} target, {args.size}x{args.size}, "
          f"{args.device}, {torch.get_num_threads()} threads, feature distance on (things {things}), "
          f"mean of {args.steps} steps: {step:.2f} s")  # fmt: skip
    print_parts(step, args.steps, "losses, resizes, logging (rest)")
    net = sum(TIMES[n] for n in network) / args.steps
    print(f"\nnetwork passes (student forwards + backward, teacher forwards, ImageNet encoder, optimizer update): "
          f"{100 * net / step:.1f}% of the step; method overhead beyond them: {100 * (step - net) / step:.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
