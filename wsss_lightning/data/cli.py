"""``wsss-data``: generate synthetic datasets, convert real ones, derive supervision files, check a dataset.

Examples::

    wsss-data synthetic --layout voc --out data/voc_synth
    wsss-data coco-masks --annotations instances_train2014.json --images train2014 --out data/coco --split train
    wsss-data coco-stuff --root data/cocostuff-10k
    wsss-data cityscapes-trainids --root data/cityscapes
    wsss-data tags --dataset voc --root data/VOC2012 --split train_aug --out data/VOC2012/cls_labels.npy
    wsss-data partitions --list data/VOC2012/ImageSets/Segmentation/train_aug.txt --out data/VOC2012/splits
    wsss-data clicks --dataset voc --root data/VOC2012 --split train_aug --out data/VOC2012/SegmentationClicks
    wsss-data clicks-from-json --dataset voc --root data/VOC2012 --split train_aug \
        --clicks voc_whats_the_point.json voc_whats_the_point_bg_from_scribbles.json \
        --out data/VOC2012/SegmentationClicksWTP
    wsss-data class-stats --dataset gta5 --root data/gta5 --split train
    wsss-data check --dataset voc --root data/VOC2012 --split val
    wsss-data pretrain-encoder --encoder resnet18 --out outputs/pretrained

Every error prints one clear message to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from wsss_lightning.data import prepare
from wsss_lightning.data.datasets import SOURCES, build_source
from wsss_lightning.data.datasets.base import DataError
from wsss_lightning.data.pretrain_task import PretrainConfig
from wsss_lightning.data.rare_classes import compute_class_stats, default_stats_path, save_class_stats
from wsss_lightning.data.source import DEFAULT_SPLITS
from wsss_lightning.data.supervision import read_id_list
from wsss_lightning.data.synthetic import DIFFICULTIES, LAYOUTS, generate


def _fraction(text: str) -> float:
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (use e.g. 1/16 or 0.25)") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"fraction {text} is not in (0, 1]")
    return value


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, choices=sorted(SOURCES), help="dataset layout")
    parser.add_argument("--root", required=True, type=Path, help="dataset root")
    parser.add_argument("--split", required=True, help="split name or list file")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``wsss-data`` (one sub-command per task)."""
    parser = argparse.ArgumentParser(prog="wsss-data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthetic", help="write a synthetic dataset in a real layout")
    p.add_argument(
        "--layout", required=True, choices=LAYOUTS, help="on-disk layout of the real dataset to mimic"
    )
    p.add_argument("--out", required=True, type=Path, help="dataset root to write (created if missing)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; the data is a function of all options (default: 0)"
    )
    p.add_argument(
        "--num-train",
        type=int,
        default=None,
        help="training images (default: 200 for voc / coco / coco_stuff, 120 for cityscapes / gta5)",
    )
    p.add_argument(
        "--num-val",
        type=int,
        default=None,
        help="validation images, the test list for coco_stuff (default: 40 for object layouts, 30 for street scenes)",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="image height and width (default: 128 128 for object layouts, 96 192 for street scenes)",
    )
    p.add_argument(
        "--difficulty",
        choices=DIFFICULTIES,
        default="easy",
        help="easy: one colour, texture and shape per class; hard: shared colours, thin parts, clutter, "
        "long-tailed classes, per-image lighting, for comparing label-efficient methods (default: easy)",
    )

    p = sub.add_parser("tags", help="image-level tag file (.npy or .txt) from a split's masks")
    _add_source_args(p)
    p.add_argument("--out", required=True, type=Path, help="tag file, .npy or .txt")
    p.add_argument("--workers", type=int, default=0)

    p = sub.add_parser("coco-masks", help="COCO instance JSON -> 81-id PNG masks (WSSS COCO layout)")
    p.add_argument("--annotations", required=True, type=Path, help="e.g. instances_train2014.json")
    p.add_argument("--out", required=True, type=Path, help="output dataset root")
    p.add_argument("--split", required=True, help="list-file name, e.g. train or val")
    p.add_argument("--images", type=Path, default=None, help="folder of the images named in the JSON")
    p.add_argument("--copy", action="store_true", help="copy images instead of symlinking them")
    p.add_argument("--keep-empty", action="store_true", help="also list images without instances")

    p = sub.add_parser("coco-stuff", help="COCO-Stuff 10k annotations -> VOC-20 masks")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None, help="output root (default: --root)")

    p = sub.add_parser("cityscapes-trainids", help="write *_gtFine_labelTrainIds.png for a Cityscapes tree")
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("partitions", help="semi-supervised labeled/unlabeled lists")
    p.add_argument("--list", required=True, type=Path, help="list file of all training ids")
    p.add_argument(
        "--out", required=True, type=Path, help="folder receiving <1_16|...>/{labeled,unlabeled}.txt"
    )
    p.add_argument("--fractions", type=_fraction, nargs="+", default=list(prepare.DEFAULT_FRACTIONS))
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("clicks", help="simulated click PNGs from a split's masks")
    _add_source_args(p)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--background-clicks", type=int, default=1)
    p.add_argument("--placement", choices=("center", "random"), default="center")

    p = sub.add_parser(
        "clicks-from-json",
        help='click PNGs from "What\'s the Point" click JSON files (Seminar / Gated-CRF)',
        description=(
            "Rasterise click JSON files ({image_id: [{x, y, cls, (rank)}, ...]}) into one 1-px click PNG per id "
            "of a split: class id at each click (nearest pixel, floor(v + 0.5)), 255 elsewhere. Clicks up to "
            "one pixel outside their image are clamped to the border, farther ones dropped and counted. Files "
            "are drawn in the given order (foreground first, then background: a background click wins a "
            "shared pixel)."
        ),
    )
    p.add_argument("--dataset", required=True, choices=sorted(SOURCES), help="dataset layout")
    p.add_argument("--root", required=True, type=Path, help="dataset root")
    p.add_argument(
        "--split", default=None, help="split whose ids get a PNG (default: the training split, VOC train_aug)"
    )
    p.add_argument(
        "--clicks",
        required=True,
        type=Path,
        nargs="+",
        metavar="JSON",
        help="click files, drawn in this order",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder of <id>.png click maps")
    p.add_argument(
        "--allow-unknown-ids",
        action="store_true",
        help="count ids without an image in the dataset instead of failing",
    )

    p = sub.add_parser(
        "class-stats",
        help="per-image class pixel counts of a split, for rare-class sampling",
        description=(
            "Count the pixels of every class in every label map of a split (as stored, before any resize) and "
            "write <root>/class_stats_<split>.npz (ids, counts (N, C), num_classes, version, newest label "
            "time), the file DomainView's rare_class_sampling reads."
        ),
    )
    _add_source_args(p)
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default: <root>/class_stats_<split>.npz)"
    )
    p.add_argument("--workers", type=int, default=0, help="threads reading label maps (default: 0)")

    p = sub.add_parser(
        "pretrain-encoder",
        help="pretrain an encoder on a generated classification task (cached by its arguments)",
        description=(
            "Train a timm CNN or MiT encoder on a generated multi-label classification set of object scenes (the 20 "
            "VOC object classes, images disjoint from the synthetic benchmark sets) and write its weights, "
            "for the encoder_weights argument of the methods: a CPU stand-in for ImageNet weights. A file "
            "with the same arguments is reused."
        ),
    )
    defaults = PretrainConfig()
    p.add_argument(
        "--encoder",
        default=defaults.encoder,
        help="timm model name or mit_b0 … mit_b5 (default: %(default)s)",
    )
    p.add_argument(
        "--architecture",
        default=defaults.architecture,
        help='JSON object of architecture overrides, e.g. \'{"embed_dims": [32, 64, 128, 192], "depths": '
        '[1, 2, 2, 2], "num_heads": [1, 2, 4, 4]}\' for a small MiT (default: none)',
    )
    p.add_argument(
        "--out", type=Path, default=Path("outputs/pretrained"), help="folder (default: %(default)s)"
    )
    for name, text in (
        ("seed", "seed of the generated images and of the training"),
        ("num_images", "generated training images"),
        ("image_size", "side of the generated images"),
        ("crop", "side of the random training crops"),
        ("steps", "optimizer steps"),
        ("batch_size", "images per step"),
    ):
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=int, default=getattr(defaults, name), help=f"{text} (default: %(default)s)")
    p.add_argument(
        "--lr", type=float, default=defaults.lr, help="peak AdamW learning rate (default: %(default)s)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")

    p = sub.add_parser("check", help="read every sample of a split and report errors")
    _add_source_args(p)
    p.add_argument("--max-errors", type=int, default=20, help="errors printed in full")
    return parser


def _check(args: argparse.Namespace) -> int:
    source = build_source(args.dataset, args.root, args.split)
    errors = []
    for sample_id in source.ids:
        try:
            source.read_sample(sample_id)
        except DataError as exc:
            errors.append(str(exc))
    for message in errors[: args.max_errors]:
        print(f"error: {message}", file=sys.stderr)
    if errors:
        raise DataError(f"{len(errors)} of {len(source.ids)} samples of {source} have errors")
    masks = "with masks" if source.has_masks else "without masks"
    print(f"ok: {len(source.ids)} samples of {args.dataset} split {args.split!r} {masks} under {args.root}")
    return 0


def _clicks_from_json(args: argparse.Namespace) -> None:
    split = args.split or DEFAULT_SPLITS[args.dataset][0]
    summary = prepare.write_clicks_from_json(
        args.dataset, args.root, split, args.clicks, args.out, allow_unknown_ids=args.allow_unknown_ids
    )
    for f in summary.files:
        line = (
            f"{f.path}: {f.images} images, {f.drawn} clicks drawn, {f.dropped} dropped (more than 1 px outside "
            f"their image), {f.skipped_images} images outside split {split!r} skipped"
        )
        if args.allow_unknown_ids:
            line += f", {f.unknown_images} unknown images skipped"
        print(line)
    print(
        f"wrote {summary.written} click files to {args.out}: {summary.empty} without any click (all 255); "
        f"{summary.dropped} clicks dropped in total; {summary.skipped} ids outside split {split!r} skipped"
        + (f"; {summary.unknown} unknown ids skipped" if args.allow_unknown_ids else "")
    )


def _pretrain(args: argparse.Namespace) -> None:
    import torch  # only this command needs torch and timm

    from wsss_lightning.models.pretrain import pretrain_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    fields = (
        "encoder",
        "architecture",
        "seed",
        "num_images",
        "image_size",
        "crop",
        "steps",
        "batch_size",
        "lr",
    )
    config = PretrainConfig(**{name: getattr(args, name) for name in fields})
    pretrain_encoder(config, args.out)


def _run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "synthetic":
        start = time.perf_counter()
        size = (args.size[0], args.size[1]) if args.size else None
        root = generate(args.layout, args.out, args.seed, args.num_train, args.num_val, size, args.difficulty)
        elapsed = time.perf_counter() - start
        print(f"wrote synthetic {args.layout} ({args.difficulty}) dataset to {root} in {elapsed:.1f} s")
    elif command == "tags":
        path = prepare.write_tags(args.dataset, args.root, args.split, args.out, num_workers=args.workers)
        print(f"wrote tags to {path}")
    elif command == "coco-masks":
        ids = prepare.coco_instances_to_masks(
            args.annotations,
            args.out,
            args.split,
            images_dir=args.images,
            link_images=not args.copy,
            skip_empty=not args.keep_empty,
        )
        print(f"wrote masks under {args.out}; {len(ids)} ids listed in ImageSets/{args.split}.txt")
    elif command == "coco-stuff":
        n = prepare.coco_stuff_to_voc(args.root, args.out)
        print(f"wrote {n} VOC-class masks under {(args.out or args.root) / 'annotations'}")
    elif command == "cityscapes-trainids":
        n = prepare.cityscapes_to_trainids(args.root, overwrite=args.overwrite)
        print(f"wrote {n} *_gtFine_labelTrainIds.png files under {args.root / 'gtFine'}")
    elif command == "partitions":
        sizes = prepare.write_partitions(read_id_list(args.list), args.out, args.fractions, seed=args.seed)
        for name, (n_lab, n_unlab) in sizes.items():
            print(f"{name}: {n_lab} labeled, {n_unlab} unlabeled")
    elif command == "clicks":
        n = prepare.write_clicks(
            args.dataset,
            args.root,
            args.split,
            args.out,
            seed=args.seed,
            background_clicks=args.background_clicks,
            placement=args.placement,
        )
        print(f"wrote {n} click files to {args.out}")
    elif command == "clicks-from-json":
        _clicks_from_json(args)
    elif command == "class-stats":
        stats = compute_class_stats(build_source(args.dataset, args.root, args.split), args.workers)
        path = save_class_stats(args.out or default_stats_path(args.root, args.split), stats)
        present = int((stats.counts.sum(axis=0) > 0).sum())
        print(f"wrote class statistics of {len(stats.ids)} images ({present} classes present) to {path}")
    elif command == "pretrain-encoder":
        _pretrain(args)
    elif command == "check":
        return _check(args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wsss-data``.

    Returns:
        0 on success.

    Raises:
        SystemExit: status 2 after printing the error message, on bad arguments or bad data.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (DataError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"wsss-data {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    raise SystemExit(main())
