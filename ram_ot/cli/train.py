"""Train RAM on COCO 2014 (48 seen / 17 unseen labels) and report ZSL / GZSL metrics.

The run behind ``examples/train_coco.py`` (and ``ram-ot train``), paper §4.1: the
reference's optimisers and cosine schedule, an optional EMA of the weights, evaluation every
``--eval-every`` epochs, model selection on train images held out for validation (never on
test), atomic checkpoints every epoch and an exact ``--resume``; one process or many under
``torchrun`` (NCCL on GPUs, Gloo on CPU).

:func:`main` only connects the pieces below, each usable on its own: :func:`build_parser`
and :func:`parse_args` (flags and the reference's defaults), :func:`build_datasets` (the
ZSL datasets and the validation split), :func:`build_loaders` (training and sharded
evaluation loaders for this process) and :func:`evaluate_record` (one ``metrics.json``
record). Everything else lives in :mod:`ram_ot.data`, :mod:`ram_ot.training` and
:mod:`ram_ot.metrics`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ram_ot.backbones.open_clip import resize_positional_embedding
from ram_ot.data import (
    REFERENCE_MEAN,
    REFERENCE_STD,
    ClassSplit,
    MultiLabelDataset,
    build_transform,
    clip_normalization,
    coco_zsl_datasets,
    load_class_split,
    make_demo_coco,
    read_split_json,
    split_json_zsl_datasets,
)
from ram_ot.data.official import (
    check_training_labels,
    official_json_zsl_datasets,
    voc_zsl_datasets,
)
from ram_ot.training import (
    DistInfo,
    ModelEMA,
    ShardSampler,
    all_gather_objects,
    barrier,
    build_epoch_schedulers,
    build_optimizers,
    build_schedulers,
    capture_rng_state,
    cleanup_distributed,
    evaluate_split,
    evaluate_zsl,
    init_distributed,
    load_checkpoint,
    make_grad_scaler,
    save_checkpoint,
    seed_everything,
    train_one_epoch,
)
from ram_ot.training.presets import PRESETS, get_preset

__all__ = [
    "DEMO",
    "REAL",
    "Loaders",
    "SmoothedTargets",
    "TrainData",
    "apply_preset",
    "build_datasets",
    "build_loaders",
    "build_parser",
    "evaluate_record",
    "main",
    "parse_args",
    "setup_logging",
    "write_json_atomic",
]

#: Defaults of ``--demo`` for the flags whose default depends on it.
DEMO = {"epochs": 3, "batch_size": 32, "lr": 2e-3, "eval_every": 1, "workers": 0, "threads": 1}
#: Defaults of a real run (the reference's ``configs/coco.yml``).
REAL = {
    "epochs": 6,
    "batch_size": 32,
    "lr": 5e-5,
    "eval_every": 3,
    "workers": 4,
    "threads": 0,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of a training run (defaults that depend on ``--demo`` are left None)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco-root", help="COCO 2014 directory (annotations/, train2014/, val2014/)")
    p.add_argument(
        "--split",
        help="seen/unseen split json {'seen': [...], 'unseen': [...]} (default: the 48/17 split)",
    )
    p.add_argument(
        "--split-json",
        nargs=3,
        metavar=("TRAIN", "ZSL", "GZSL"),
        help="use the reference's image lists instead of the instances files, e.g. "
        "annotations/{train_48,test_17,test_65}_filtered.json (relative to --coco-root; NUS-WIDE works too)",
    )
    p.add_argument(
        "--rewrite-prefix",
        nargs=2,
        metavar=("OLD", "NEW"),
        help="with --split-json: replace this leading part of the listed image paths",
    )
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture")
    p.add_argument(
        "--pretrained", default="openai", help="open_clip tag or checkpoint file; 'none' = random"
    )
    p.add_argument(
        "--text-deep-layers", type=int, nargs="+", metavar="L",
        help="text layers with deep prompts (default: the last 3; the reference's NUS-WIDE config: 6 7 8 9 10 11)",
    )  # fmt: skip
    p.add_argument(
        "--temperature-local", type=float, default=2e-3,
        help="initial local temperature (%(default)s; the reference's NUS-WIDE config: 2e-4)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, help="epochs (default 6; demo 3)")
    p.add_argument(
        "--batch-size", type=int, help="global batch size, split over processes (default 32)"
    )
    p.add_argument(
        "--eval-batch-size", type=int, help="per-process evaluation batch size (default 2x batch)"
    )
    p.add_argument("--lr", type=float, help="base learning rate (default 5e-5; demo 2e-3)")
    p.add_argument(
        "--weight-decay", type=float, default=1e-4, help="AdamW weight decay (%(default)s)"
    )
    p.add_argument(
        "--lr-embeds",
        type=float,
        default=1e-3,
        help="SGD learning rate of the token embeddings (%(default)s)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.5,
        help="linear warm-up length in epochs (%(default)s)",
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.add_argument(
        "--ema", action="store_true", help="keep an EMA of the weights and evaluate it too"
    )
    p.add_argument("--ema-decay", type=float, default=0.9997, help="(%(default)s)")
    p.add_argument("--output-dir", required=True)
    p.add_argument(
        "--resume", action="store_true", help="continue from <output-dir>/last.pt if it exists"
    )
    p.add_argument(
        "--stop-after", type=int, help="stop after this epoch (continue later with --resume)"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        help="evaluate every N epochs and after the last (default 3; demo 1)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of train held out for model selection (%(default)s; 0: none)",
    )
    p.add_argument(
        "--workers", type=int, help="data loader workers per process (default 4; demo 0)"
    )
    p.add_argument(
        "--threads", type=int, help="torch CPU threads per process (0: torch's default; demo 1)"
    )
    p.add_argument("--seed", type=int, default=42, help="(%(default)s)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--demo",
        action="store_true",
        help="offline run on generated data: Emoji-COCO + the shipped proxy CLIP (default), "
        "or --demo-world shapes (coloured shapes + a tiny random CLIP, for smoke tests)",
    )
    p.add_argument(
        "--demo-world", choices=("emoji", "shapes"), default="emoji", help="(%(default)s)"
    )
    p.add_argument(
        "--demo-images", type=int, nargs=2, metavar=("TRAIN", "VAL"),
        help="demo data size (default: emoji 600 300, shapes 192 96)",
    )  # fmt: skip
    # -- reproduction: presets (ram_ot.training.PRESETS) and the official set-up ----------
    r = p.add_argument_group("reproduction (the official code's set-up)")
    r.add_argument(
        "--preset", choices=sorted(PRESETS),
        help="a dataset's official settings (see docs/reproduce.md); flags given explicitly win",
    )  # fmt: skip
    r.add_argument("--data-root", dest="coco_root", help="the data set directory (= --coco-root)")
    r.add_argument(
        "--schedule", choices=("official", "cosine-steps"),
        help="official: lr set per epoch, 3 warm-up epochs, cosine over --scheduler-epochs; "
        "cosine-steps: per-iteration cosine over the run (default; presets: official)",
    )  # fmt: skip
    r.add_argument("--scheduler-epochs", type=int, help="cosine length of --schedule official (60)")
    r.add_argument(
        "--ema-mode", choices=("official", "continuous"),
        help="official: EMA re-created every epoch, global temperature copied; continuous: one "
        "EMA for the run (default; presets: official)",
    )  # fmt: skip
    r.add_argument(
        "--normalization", choices=("clip", "reference"),
        help="pixel mean/std: clip = the model's own (default), reference = 0.5/0.5 (presets)",
    )  # fmt: skip
    r.add_argument(
        "--image-size", type=int,
        help="input side; other than the model's, its positional embedding is interpolated "
        "(bilinear, as the official resize_pos_embed)",
    )  # fmt: skip
    r.add_argument(
        "--transfer", choices=("adapter", "frozen"), default="adapter",
        help="adapter: train adapters, tokens, prompts and temperatures (%(default)s); frozen: "
        "the official TRANSFER_TYPE freeze_all ablation, only the temperatures train",
    )  # fmt: skip
    r.add_argument(
        "--label-smoothing", action="store_true",
        help="train on targets 0.9 / 0.1 instead of 1 / 0 (the official SOLVER.LABEL_SMOOTHING; off)",
    )  # fmt: skip
    return p


def _explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags given on the command line (not left at their default)."""
    probe = argparse.ArgumentParser(add_help=False)
    for a in parser._actions:  # noqa: SLF001 - a copy of the parser's options without defaults
        if a.option_strings and not isinstance(a, argparse._HelpAction):  # noqa: SLF001
            kw = {"dest": a.dest, "default": argparse.SUPPRESS}
            if a.nargs == 0:
                kw["action"] = "store_const"
                kw["const"] = True
            else:
                kw["nargs"] = a.nargs
            probe.add_argument(*a.option_strings, **kw)
    known, _ = probe.parse_known_args(sys.argv[1:] if argv is None else argv)
    return set(vars(known))


#: ``Preset`` field -> training flag, for :func:`apply_preset`.
_PRESET_FLAGS = {
    "text_deep_layers": "text_deep_layers", "temperature_local": "temperature_local", "lr": "lr",
    "weight_decay": "weight_decay", "lr_embeds": "lr_embeds", "batch_size": "batch_size",
    "epochs": "epochs", "eval_every": "eval_every", "ema": "ema", "ema_decay": "ema_decay",
    "ema_mode": "ema_mode", "schedule": "schedule", "warmup_epochs": "warmup_epochs",
    "scheduler_epochs": "scheduler_epochs", "normalization": "normalization",
    "image_size": "image_size", "val_fraction": "val_fraction", "model": "model",
    "pretrained": "pretrained",
}  # fmt: skip


def apply_preset(args: argparse.Namespace, explicit: set[str] = frozenset()) -> None:
    """Fill `args` from ``--preset`` (flags in `explicit` are kept) and the set-up defaults.

    Without a preset: ``--schedule cosine-steps``, ``--ema-mode continuous``,
    ``--normalization clip``. ``--schedule official`` warms up 3 epochs unless
    ``--warmup-epochs`` is given.
    """
    args.layout = "instances"
    if args.preset is not None:
        preset = get_preset(args.preset)
        for field, dest in _PRESET_FLAGS.items():
            if dest not in explicit:
                value = getattr(preset, field)
                setattr(args, dest, list(value) if isinstance(value, tuple) else value)
        args.layout = preset.layout
        if preset.layout == "split-json" and "split_json" not in explicit:
            args.split_json = list(preset.files)
        args.official_json = list(preset.files) if preset.layout == "official-json" else None
    if args.split_json and args.layout == "instances":
        args.layout = "split-json"
    defaults = {"schedule": "cosine-steps", "ema_mode": "continuous", "normalization": "clip"}
    defaults["scheduler_epochs"] = 60
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.schedule == "official" and "warmup_epochs" not in explicit and args.preset is None:
        args.warmup_epochs = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse `argv` (default ``sys.argv[1:]``) and fill in :data:`DEMO` or :data:`REAL` defaults.

    Exits with a usage error when neither ``--coco-root`` nor ``--demo`` is given.
    """
    p = build_parser()
    args = p.parse_args(argv)
    apply_preset(args, _explicit_flags(p, argv))
    for k, v in (DEMO if args.demo else REAL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not args.demo and not args.coco_root:
        p.error("--coco-root is required (or --demo)")
    if args.preset is not None and get_preset(args.preset).split_required and not args.split:
        p.error(f"--preset {args.preset}: --split is required: {get_preset(args.preset).notes}")
    return args


class SmoothedTargets(Dataset):
    """A training set whose targets are smoothed as the official ``LABEL_SMOOTHING``: 1 -> 0.9, 0 -> 0.1.

    The smoothed targets reach the model as they are (the loss weighs positives by them; the
    knowledge constraint, which masks exact zeros, is then inactive, as in the official code).
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        image, target = self.base[i]
        return image, torch.where(target == 1, 0.9, 0.1).to(target.dtype)


def setup_logging(output_dir: str, is_main: bool) -> logging.Logger:
    """The ``ram_ot.train`` logger: ``<output_dir>/train.log`` and stdout on the main process."""
    log = logging.getLogger("ram_ot.train")
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):  # a second run in the same process logs to its own directory
        log.removeHandler(h)
        h.close()
    if is_main:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for h in (
            logging.FileHandler(os.path.join(output_dir, "train.log")),
            logging.StreamHandler(sys.stdout),
        ):
            h.setFormatter(fmt)
            log.addHandler(h)
    return log


def write_json_atomic(path: str, obj: object) -> None:
    """Write `obj` as JSON to `path` through a temporary file and ``os.replace``."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class TrainData(NamedTuple):
    """The datasets of a ZSL run.

    Attributes:
        split: the seen / unseen labels.
        train: training images (seen labels), less the validation share.
        val: held-out training images for model selection (test transform), or None.
        test_zsl: test images with unseen labels, targets over ``split.unseen``.
        test_gzsl: all test images, targets over ``split.gzsl``.
    """

    split: ClassSplit
    train: MultiLabelDataset
    val: MultiLabelDataset | None
    test_zsl: MultiLabelDataset
    test_gzsl: MultiLabelDataset


def build_datasets(
    root: str,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    split: str | None = None,
    split_json: Sequence[str] | None = None,
    rewrite_prefix: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
    official_json: Sequence[str] | None = None,
    voc: bool = False,
    check_unseen: bool = False,
) -> TrainData:
    """COCO-format ZSL datasets with the model's transforms, and a validation share of train.

    Args:
        root: the data set directory (COCO 2014 layout, or the root of `split_json`'s images).
        image_size: the model's input side. mean, std: its normalisation.
        split: a ``{"seen": [...], "unseen": [...]}`` json file (None: the 48/17 split).
        split_json: ``(train, zsl, gzsl)`` image-list files of the reference, relative to
            `root`, read instead of the instances files.
        rewrite_prefix: ``(old, new)`` leading part of the listed paths to replace.
        val_fraction: share of train held out for model selection (0: none).
        seed: the seed of the held-out draw.
        official_json: ``(train, test)`` lists of every class (the official repository's
            MultiScene / MLRSNet / PA100K / RAP files), relative to `root`, read with
            `split` (required) through :func:`ram_ot.data.official_json_zsl_datasets`.
        voc: read `root` as PASCAL VOC 2007 (trainval / test) with `split` (required).
        check_unseen: refuse a `split_json` training list that holds an unseen label
            (:func:`ram_ot.data.check_training_labels`; the NUS-WIDE preset).

    Returns:
        :class:`TrainData`.
    """
    transforms = {
        "train_transform": build_transform(image_size, train=True, mean=mean, std=std),
        "test_transform": build_transform(image_size, train=False, mean=mean, std=std),
    }
    if (official_json or voc) and not split:
        raise ValueError(
            "build_datasets: expected `split` with `official_json` / `voc`: the open-vocabulary "
            "split of these data sets is in no public file."
        )
    if official_json:
        train_json, test_json = (os.path.join(root, f) for f in official_json)
        data = official_json_zsl_datasets(
            root, train=train_json, test=test_json, split=load_class_split(split),
            rewrite_prefix=tuple(rewrite_prefix) if rewrite_prefix else None, **transforms,
        )  # fmt: skip
    elif voc:
        data = voc_zsl_datasets(root, split=load_class_split(split), **transforms)
    elif split_json:
        train_json, zsl_json, gzsl_json = (os.path.join(root, f) for f in split_json)
        if check_unseen:
            check_training_labels(train_json, read_split_json(zsl_json)[1])
        data = split_json_zsl_datasets(
            root, train=train_json, test_zsl=zsl_json, test_gzsl=gzsl_json,
            rewrite_prefix=tuple(rewrite_prefix) if rewrite_prefix else None, **transforms,
        )  # fmt: skip
    else:
        class_split = load_class_split(split) if split else None
        data = coco_zsl_datasets(root, split=class_split, **transforms)
    train_set, val_set = data.train, None
    if val_fraction > 0:
        train_set, val_set = data.train.split(
            val_fraction, seed=seed, transform=data.test_gzsl.transform
        )
    return TrainData(data.split, train_set, val_set, data.test_zsl, data.test_gzsl)


class Loaders(NamedTuple):
    """This process's loaders.

    Attributes:
        train: shuffled training batches of ``batch_size // world_size`` (last partial dropped).
        sampler: its ``DistributedSampler`` (call ``set_epoch`` before each epoch).
        zsl, gzsl: the test sets, each image on exactly one rank (:class:`ShardSampler`).
        val: the validation images, sharded alike, or None.
    """

    train: DataLoader
    sampler: DistributedSampler
    zsl: DataLoader
    gzsl: DataLoader
    val: DataLoader | None


def build_loaders(
    data: TrainData,
    dist: DistInfo,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    workers: int = 4,
    seed: int = 42,
) -> Loaders:
    """Training and evaluation loaders of `data` for this process.

    Args:
        data: the datasets (:func:`build_datasets`).
        dist: this process's place in the run (:func:`ram_ot.training.init_distributed`).
        batch_size: the global training batch, split over the processes.
        eval_batch_size: per-process evaluation batch (None: twice the training one).
        workers: loader worker processes per process.
        seed: the seed of the training shuffle.

    Returns:
        :class:`Loaders`.

    Raises:
        SystemExit: fewer training images per process than one batch.
    """
    per_rank = max(1, batch_size // dist.world_size)
    eval_bs = eval_batch_size or 2 * per_rank
    sampler = DistributedSampler(
        data.train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed
    )
    pin = dist.device.type == "cuda"
    train_loader = DataLoader(
        data.train, batch_size=per_rank, sampler=sampler, num_workers=workers, drop_last=True, pin_memory=pin,
        persistent_workers=workers > 0,
    )  # fmt: skip
    if len(train_loader) == 0:
        raise SystemExit(
            f"train_coco: {len(data.train)} training images per process < batch size {per_rank}."
        )

    def eval_loader(ds: Dataset) -> DataLoader:
        shard = ShardSampler(len(ds), rank=dist.rank, world_size=dist.world_size)
        return DataLoader(
            ds, batch_size=eval_bs, sampler=shard, num_workers=workers, pin_memory=pin
        )

    zsl, gzsl = eval_loader(data.test_zsl), eval_loader(data.test_gzsl)
    val = eval_loader(data.val) if data.val is not None else None
    return Loaders(train_loader, sampler, zsl, gzsl, val)


def evaluate_record(
    model: nn.Module,
    loaders: Loaders,
    split: ClassSplit,
    *,
    device: torch.device,
    ema: ModelEMA | None = None,
    amp: bool = False,
    progress: bool = False,
    log: logging.Logger | None = None,
    epoch: int = 0,
) -> dict[str, Any]:
    """Validation, ZSL and GZSL metrics of `model`, and of its EMA weights when `ema` is given.

    Returns:
        ``{"val": ..., "zsl": ..., "gzsl": ...}`` of the model (``"val"`` only with a
        validation loader), with the EMA's under ``"ema"``; each part a
        :meth:`ram_ot.metrics.SplitResult.as_dict`.
    """
    record: dict[str, Any] = {}
    labels_seen, labels_unseen, labels_gzsl = list(split.seen), list(split.unseen), list(split.gzsl)
    variants = [("model", None)] + ([("ema", ema)] if ema is not None else [])
    for name, avg in variants:
        res: dict = {}
        with avg.swapped(model) if avg is not None else contextlib.nullcontext():
            if loaders.val is not None:
                v = evaluate_split(model, loaders.val, labels_seen, device=device, amp=amp)
                res["val"] = v.as_dict()
            r = evaluate_zsl(
                model, loaders.zsl, loaders.gzsl, unseen=labels_unseen, gzsl_labels=labels_gzsl,
                device=device, amp=amp, progress=progress,
            )  # fmt: skip
        res["zsl"], res["gzsl"] = r.zsl.as_dict(), r.gzsl.as_dict()
        if name == "model":
            record.update(res)
        else:
            record["ema"] = res
        if log is not None:
            log.info(
                f"epoch {epoch} [{name}] " + " | ".join(_summary(k, v) for k, v in res.items())
            )
    return record


def _summary(part: str, m: dict) -> str:
    f1 = f" F1@3 {100 * m['F1@3']:.2f}" if "F1@3" in m else ""
    return f"{part.upper() if part != 'val' else 'val'} mAP {100 * m['mAP']:.2f}{f1}"


def _demo_data(args: argparse.Namespace, dist: DistInfo, log: logging.Logger) -> None:
    """``--demo``: write generated COCO-format data and point `args` at it and its CLIP.

    ``emoji`` (default): Emoji-COCO (the 65 COCO zero-shot names as emoji sprites, 48 seen /
    17 unseen) and the shipped proxy CLIP. ``shapes``: coloured shapes and a tiny random CLIP.
    """
    from ram_ot.backbones.open_clip import (
        PROXY_MODEL_NAME,
        PROXY_PRETRAINED,
        TINY_MODEL_NAME,
    )
    from ram_ot.data.emoji_world import make_emoji_coco

    emoji = args.demo_world == "emoji"
    n_train, n_val = args.demo_images or ((600, 300) if emoji else (192, 96))
    args.coco_root = os.path.join(args.output_dir, "demo_data")
    if dist.is_main:
        if emoji:
            info = make_emoji_coco(args.coco_root, n_train=n_train, n_val=n_val, seed=args.seed)
        else:
            info = make_demo_coco(args.coco_root, n_train=n_train, n_val=n_val, seed=args.seed)
        log.info(
            f"demo data ({args.demo_world}): {info.n_train} train / {info.n_val} test images in "
            f"{info.root}"
        )
    barrier()
    if emoji:
        args.split = None  # COCO's own 48 / 17 split
        args.model, args.pretrained = PROXY_MODEL_NAME, PROXY_PRETRAINED
    else:
        args.split = os.path.join(args.coco_root, "annotations", "demo_split.json")
        args.model, args.pretrained = TINY_MODEL_NAME, "none"


def _demo_reference(
    model: nn.Module, loaders: Loaders, split: ClassSplit, data: Any, *, device: torch.device
) -> dict[str, Any]:
    """What training is measured against: zero-shot CLIP (global) and random scores."""
    from ram_ot.baselines import build_baseline, chance_level

    base = build_baseline("zero-shot-clip", model.clip_model, model.prompts.tokenizer).to(device)
    base.eval()
    r = evaluate_zsl(
        base, loaders.zsl, loaders.gzsl, unseen=list(split.unseen), gzsl_labels=list(split.gzsl),
        device=device,
    )  # fmt: skip
    return {
        "zero_shot_clip": {"zsl": r.zsl.as_dict(), "gzsl": r.gzsl.as_dict()},
        "chance": {
            "zsl": chance_level(data.test_zsl.targets),
            "gzsl": chance_level(data.test_gzsl.targets),
        },
    }


def _demo_summary(record: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    lines = []
    for part in ("zsl", "gzsl"):
        ch = ref["chance"][part]["mAP"]
        lines.append(
            f"{part.upper()} mAP: RAM {100 * record[part]['mAP']:.2f} | zero-shot CLIP "
            f"{100 * ref['zero_shot_clip'][part]['mAP']:.2f} | chance "
            f"{100 * ch[0]:.2f} ± {100 * ch[1]:.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run training from the command line `argv` (default ``sys.argv[1:]``); returns 0.

    Writes ``<output-dir>/train.log``, ``metrics.json`` (one record per evaluation),
    ``last.pt`` (every epoch; ``--resume`` continues from it) and ``best.pt`` (the weights
    with the best validation mAP).
    """
    args = parse_args(argv)
    if (
        args.threads > 0
    ):  # the demo's tiny ops gain nothing from more threads, and lose on busy CPUs
        torch.set_num_threads(args.threads)
    dist = init_distributed(device=args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    log = setup_logging(args.output_dir, dist.is_main)
    progress = dist.is_main and not args.no_progress
    if args.demo:  # synthetic data + tiny random CLIP: the whole pipeline offline
        _demo_data(args, dist, log)

    from ram_ot.model import build_ram

    seed_everything(args.seed)  # same on every rank: identical (random) weights everywhere
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*No pretrained weights.*")
        model = build_ram(
            args.model,
            None if args.pretrained.lower() == "none" else args.pretrained,
            device=dist.device,
            text_deep_layers=args.text_deep_layers,
            temperature_local=args.temperature_local,
        )
    seed_everything(args.seed + dist.rank)  # then different augmentations per rank
    if args.transfer == "frozen":  # the official freeze_all: adapters, tokens, prompts frozen
        for part in (model.ladder, model.prompts):
            part.requires_grad_(False)
    if args.image_size is not None:  # the official resize_pos_embed (bilinear)
        resize_positional_embedding(model.clip_model.visual, args.image_size, mode="bilinear")

    if args.normalization == "reference":  # the official configs' PIXEL_MEAN / PIXEL_STD
        mean, std = REFERENCE_MEAN, REFERENCE_STD
    else:
        mean, std = clip_normalization(model.clip_model)
    log.info(
        f"set-up: preset {args.preset}, schedule {args.schedule}, EMA "
        f"{args.ema_mode if args.ema else 'off'}, normalisation {args.normalization} "
        f"(mean {tuple(mean)}, std {tuple(std)}), image size {model.ladder.image_size}"
    )
    data = build_datasets(
        args.coco_root, image_size=model.ladder.image_size, mean=mean, std=std, split=args.split,
        split_json=args.split_json, rewrite_prefix=args.rewrite_prefix, val_fraction=args.val_fraction,
        seed=args.seed, official_json=getattr(args, "official_json", None), voc=args.layout == "voc",
        check_unseen=args.preset == "nus",
    )  # fmt: skip
    split = data.split
    log.info(
        f"{len(split.seen)} seen / {len(split.unseen)} unseen labels; train {len(data.train)}, "
        f"val {len(data.val) if data.val else 0}, ZSL test {len(data.test_zsl)}, GZSL test {len(data.test_gzsl)} images; "
        f"{dist.world_size} process(es) on {dist.device}"
    )
    if args.label_smoothing:
        data = data._replace(train=SmoothedTargets(data.train))
    loaders = build_loaders(
        data, dist, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        workers=args.workers, seed=args.seed,
    )  # fmt: skip

    reference = None
    if args.demo and args.demo_world == "emoji":
        reference = _demo_reference(model, loaders, split, data, device=dist.device)
        if dist.is_main:
            write_json_atomic(os.path.join(args.output_dir, "reference.json"), reference)
        z = reference["zero_shot_clip"]
        log.info(
            f"before training: zero-shot CLIP ZSL mAP {100 * z['zsl']['mAP']:.2f}, GZSL mAP "
            f"{100 * z['gzsl']['mAP']:.2f} (chance ZSL {100 * reference['chance']['zsl']['mAP'][0]:.2f}, "
            f"GZSL {100 * reference['chance']['gzsl']['mAP'][0]:.2f})"
        )

    optimizers = build_optimizers(
        model, lr=args.lr, weight_decay=args.weight_decay, lr_embeds=args.lr_embeds
    )
    steps_per_epoch = len(loaders.train)
    if args.schedule == "official":  # lr set per epoch (solver/make_scheduler.py)
        schedulers = build_epoch_schedulers(
            optimizers, base_lr=args.lr, steps_per_epoch=steps_per_epoch,
            warmup_epochs=round(args.warmup_epochs), max_epochs=args.scheduler_epochs,
        )  # fmt: skip
    else:
        schedulers = build_schedulers(
            optimizers,
            total_steps=args.epochs * steps_per_epoch,
            warmup_steps=round(args.warmup_epochs * steps_per_epoch),
        )
    scaler = make_grad_scaler(dist.device, enabled=args.amp)
    ema_copy = ("head.temperature_global",) if args.ema_mode == "official" else ()
    ema = ModelEMA(model, args.ema_decay, warmup=args.demo, copy=ema_copy) if args.ema else None
    train_model = model
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    last = os.path.join(args.output_dir, "last.pt")
    metrics_file = os.path.join(args.output_dir, "metrics.json")
    records: list[dict] = []
    start_epoch, step, best = 0, 0, None
    if args.resume and os.path.isfile(last):
        ck = load_checkpoint(
            last, model=model, optimizers=optimizers, schedulers=schedulers, scaler=scaler, ema=ema,
            map_location=dist.device, rank=dist.rank,
        )  # fmt: skip
        start_epoch, step, best = ck.epoch, ck.step, ck.extra.get("best")
        if ck.extra.get("seed") != args.seed:
            log.warning(
                f"resuming a run started with --seed {ck.extra.get('seed')} with --seed {args.seed}"
            )
        if os.path.isfile(metrics_file):
            with open(metrics_file, encoding="utf-8") as f:
                records = [r for r in json.load(f) if r["epoch"] <= start_epoch]
        log.info(f"resumed from {last}: epoch {start_epoch}, step {step}")
    elif args.resume:
        log.info(f"--resume: no {last} yet, starting from scratch")

    for epoch in range(start_epoch + 1, args.epochs + 1):
        loaders.sampler.set_epoch(epoch)
        if ema is not None and args.ema_mode == "official":
            ema.reset(model)  # the official code builds a new EMA at the start of every epoch
        stats = train_one_epoch(
            train_model, loaders.train, list(split.seen), optimizers, device=dist.device, schedulers=schedulers,
            scaler=scaler, ema=ema, amp=args.amp, step=step, progress=progress, desc=f"epoch {epoch}/{args.epochs}",
        )  # fmt: skip
        step = stats.step
        log.info(
            f"epoch {epoch}: loss {stats.loss:.4f}, {stats.steps} steps, "
            f"{stats.images * dist.world_size / stats.seconds:.1f} img/s, lr {optimizers[0].param_groups[0]['lr']:.2e}"
        )
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            record: dict = {
                "epoch": epoch,
                "step": step,
                "train_loss": stats.loss,
                "score": "scores",
            }
            record.update(
                evaluate_record(
                    model, loaders, split, device=dist.device, ema=ema, amp=args.amp,
                    progress=progress, log=log, epoch=epoch,
                )
            )  # fmt: skip
            # model selection on the held-out train images (EMA weights when --ema), never on test
            sel = record.get("ema", record) if ema is not None else record
            if "val" in sel and (best is None or sel["val"]["mAP"] > best["val_mAP"]):
                best = {
                    "epoch": epoch,
                    "val_mAP": sel["val"]["mAP"],
                    "weights": "ema" if ema is not None else "model",
                }
                record["selected"] = True
                if dist.is_main:
                    with ema.swapped(model) if ema is not None else contextlib.nullcontext():
                        save_checkpoint(
                            os.path.join(args.output_dir, "best.pt"),
                            model=model,
                            epoch=epoch,
                            step=step,
                        )
            records.append(record)
            if dist.is_main:
                write_json_atomic(metrics_file, records)
        rng = all_gather_objects(capture_rng_state())
        if dist.is_main:
            save_checkpoint(
                last, model=model, optimizers=optimizers, schedulers=schedulers, scaler=scaler, ema=ema,
                epoch=epoch, step=step, rng_states=rng, extra={"seed": args.seed, "best": best, "args": vars(args)},
            )  # fmt: skip
        barrier()
        if args.stop_after is not None and epoch >= args.stop_after:
            log.info(f"stopping after epoch {epoch} (--stop-after); continue with --resume")
            break
    if best is not None:
        log.info(
            f"best val mAP {100 * best['val_mAP']:.2f} at epoch {best['epoch']} ({best['weights']} weights) -> best.pt"
        )
    if reference is not None and records:
        for line in _demo_summary(records[-1], reference):
            log.info(line)
    log.info(f"metrics: {metrics_file}; checkpoint: {last}")
    cleanup_distributed()
    return 0
