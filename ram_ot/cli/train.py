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
import glob
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
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
    ZSLDatasets,
    build_transform,
    clip_normalization,
    coco_zsl_datasets,
    from_csv,
    from_split_json,
    load_class_split,
    make_demo_coco,
    read_split_json,
    split_json_zsl_datasets,
    voc2007,
)
from ram_ot.data.official import (
    check_training_labels,
    official_json_zsl_datasets,
    voc_zsl_datasets,
)
from ram_ot.training import (
    CheckpointError,
    DistInfo,
    EpochProgress,
    GracefulStop,
    LRPlan,
    ModelEMA,
    NonFiniteError,
    ResumeSampler,
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
    read_checkpoint,
    save_checkpoint,
    seed_everything,
    train_one_epoch,
)
from ram_ot.training.presets import PRESETS, get_preset

__all__ = [
    "DEMO",
    "EXIT_DATA_ERROR",
    "EXIT_NON_FINITE",
    "EXIT_OK",
    "EXIT_SIGNAL_BASE",
    "REAL",
    "BadImageError",
    "Loaders",
    "SmoothedTargets",
    "TrainData",
    "apply_preset",
    "build_datasets",
    "build_loaders",
    "build_parser",
    "default_workers",
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
    "workers": None,  # default_workers()
    "threads": 0,
}

#: Exit status of :func:`main`: finished (or nothing left to do).
EXIT_OK = 0
#: Exit status: an image could not be read while training (without ``--skip-bad-images``).
EXIT_DATA_ERROR = 1
#: Exit status: the loss or the scores became NaN / inf (nothing saved after the last good step).
EXIT_NON_FINITE = 3
#: Exit status after SIGTERM / SIGINT: ``128 + signal number`` (143, 130), after a resumable
#: ``last.pt`` was written, as a shell reports a process ended by that signal.
EXIT_SIGNAL_BASE = 128


def default_workers() -> int:
    """Loader workers per process: what this machine can run, at most 4 (the reference's).

    ``min(4, cpus // local processes - 1)``, at least 0: one core stays with the training
    process itself. ``cpus`` counts the cores this process may run on (``sched_getaffinity``).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(4, cpus // local - 1))


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
    _add_run_safety_args(p)
    _add_own_data_args(p)
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


def _add_run_safety_args(p: argparse.ArgumentParser) -> None:
    """Flags that keep a run from being lost or spoiled (docs/training.md, "Runs")."""
    g = p.add_argument_group("keeping runs safe")
    g.add_argument(
        "--overwrite", action="store_true",
        help="replace the run already in --output-dir (without it, or --resume, a run there is refused)",
    )  # fmt: skip
    g.add_argument(
        "--force", action="store_true",
        help="with --resume: continue although --lr, batch size, data or model flags changed",
    )  # fmt: skip
    g.add_argument(
        "--save-every", type=int, default=0, metavar="N",
        help="also write a resumable last.pt every N optimiser steps (0: at epoch ends only)",
    )  # fmt: skip


def _add_own_data_args(p: argparse.ArgumentParser) -> None:
    """Data sources besides COCO 2014 (docs/own_data.md)."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--coco-year", type=int, choices=(2014, 2017),
        help="with --coco-root: which instances_{train,val}<year>.json to read (default: detected)",
    )  # fmt: skip
    g.add_argument(
        "--train-list",
        metavar="FILE",
        help="your own training images: a CSV (path,label1;label2) or split json "
        '({"images": [[path, [labels]], ...]}, "classes" optional)',
    )
    g.add_argument(
        "--test-list",
        metavar="FILE",
        help="with --train-list: the held-out test images, same format",
    )
    g.add_argument(
        "--image-root", metavar="DIR",
        help="with --train-list: directory of relative image paths (default: each list's directory)",
    )  # fmt: skip
    g.add_argument(
        "--voc-root", metavar="DIR",
        help="PASCAL VOC 2007 (VOCdevkit/VOC2007 or a parent): train on trainval, test on test",
    )  # fmt: skip
    g.add_argument(
        "--verify-images", action="store_true",
        help="decode every image's header before training (slower; finds corrupt files up front)",
    )  # fmt: skip
    g.add_argument(
        "--skip-bad-images", action="store_true",
        help="drop missing / unreadable images (counted in the log) instead of stopping",
    )  # fmt: skip


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

    Exits with a usage error (status 2, naming the flag) when a value is out of range, when
    no data source or more than one is given, or when a flag lacks the flag it works with.
    """
    p = build_parser()
    args = p.parse_args(argv)
    apply_preset(args, _explicit_flags(p, argv))
    for k, v in (DEMO if args.demo else REAL).items():
        if getattr(args, k) is None:
            setattr(args, k, v if v is not None else default_workers())
    _validate(p, args)
    if args.preset is not None and get_preset(args.preset).split_required and not args.split:
        p.error(f"--preset {args.preset}: --split is required: {get_preset(args.preset).notes}")
    return args


#: (flag, check, what is expected) for every numeric flag; a None value (unset) is not checked.
_NUMERIC: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("epochs", lambda v: v >= 1, "an integer >= 1"),
    ("batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("eval_batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("eval_every", lambda v: v >= 1, "an integer >= 1"),
    ("stop_after", lambda v: v >= 1, "an integer >= 1"),
    ("save_every", lambda v: v >= 0, "an integer >= 0 (0: off)"),
    ("workers", lambda v: v >= 0, "an integer >= 0"),
    ("threads", lambda v: v >= 0, "an integer >= 0 (0: torch's default)"),
    ("lr", lambda v: math.isfinite(v) and v > 0, "a number > 0"),
    ("lr_embeds", lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    ("weight_decay", lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    ("warmup_epochs", lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
    ("ema_decay", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("val_fraction", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("temperature_local", lambda v: math.isfinite(v) and v > 0, "a number > 0"),
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject flag values that would run wrongly (argparse's usage error, exit status 2)."""
    for name, ok, want in _NUMERIC:
        v = getattr(args, name, None)
        if v is not None and not ok(v):
            p.error(f"argument {_flag(name)}: expected {want}, got {v!r}")
    for name in ("demo_images", "text_deep_layers"):
        v = getattr(args, name, None)
        low = 1 if name == "demo_images" else 0
        if v is not None and any(x < low for x in v):
            p.error(f"argument {_flag(name)}: expected integers >= {low}, got {v}")
    sources = [f for f in ("demo", "coco_root", "train_list", "voc_root") if getattr(args, f)]
    if not sources:
        p.error("a data source is required: --coco-root, --train-list, --voc-root (or --demo)")
    if len(sources) > 1:
        p.error(f"expected one data source, got {', '.join(_flag(f) for f in sources)}")
    needs = (
        ("rewrite_prefix", "split_json"), ("split_json", "coco_root"), ("coco_year", "coco_root"),
        ("test_list", "train_list"), ("train_list", "test_list"), ("image_root", "train_list"),
        ("force", "resume"),
    )  # fmt: skip
    for flag, req in needs:
        if flag == "rewrite_prefix" and getattr(args, "official_json", None):
            continue  # the official json lists of a preset take it too
        if getattr(args, flag) and not getattr(args, req):
            p.error(f"argument {_flag(flag)}: only with {_flag(req)}")
    if args.resume and args.overwrite:
        p.error(
            "argument --overwrite: not with --resume (one continues the run, the other replaces it)"
        )


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
    """The datasets of a run: zero-shot (a seen / unseen split) or plain supervised.

    Attributes:
        split: the seen / unseen labels (supervised: every label seen, none unseen).
        train: training images (seen labels), less the validation share.
        val: held-out training images for model selection (test transform), or None.
        test_zsl: test images with unseen labels, targets over ``split.unseen`` (None when
            supervised).
        test_gzsl: all test images, targets over ``split.gzsl`` (None when supervised).
        test: supervised: the held-out test images over ``split.seen``; None for zero-shot.
    """

    split: ClassSplit
    train: MultiLabelDataset
    val: MultiLabelDataset | None
    test_zsl: MultiLabelDataset | None
    test_gzsl: MultiLabelDataset | None
    test: MultiLabelDataset | None = None


def _relabel(
    ds: MultiLabelDataset, labels: Sequence[str], transform: Any, *, keep_empty: bool
) -> MultiLabelDataset:
    """`ds` with targets over `labels` (images without one of them dropped unless `keep_empty`)."""
    samples = [(path, ds.label_names(i)) for i, path in enumerate(ds.paths)]
    with warnings.catch_warnings():  # its skip counts were reported when `ds` was read
        warnings.simplefilter("ignore")
        return MultiLabelDataset(
            samples, labels, transform=transform, keep_empty=keep_empty, check_files=False,
            source=ds.source, skipped=ds.skipped,
        )  # fmt: skip


def _read_list(
    path: str, root: str | None, *, verify_images: bool, on_error: str
) -> MultiLabelDataset:
    """Your own image list: a CSV (UTF-8, with or without BOM) or a split json ("classes" optional)."""
    base = root if root is not None else os.path.dirname(os.path.abspath(path))
    common = dict(verify_images=verify_images, on_error=on_error)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"train: image list not found: {path}")
    if path.lower().endswith(".json"):
        return from_split_json(path, base, **common)
    return from_csv(path, base, **common)


def _coco_year(root: str, year: int | None) -> int:
    if year is not None:
        return year
    for y in (2014, 2017):
        if os.path.isfile(os.path.join(root, "annotations", f"instances_train{y}.json")):
            return y
    raise FileNotFoundError(
        f"train: no annotations/instances_train2014.json or instances_train2017.json in {root}; "
        "pass --coco-year, or --split-json for the reference's image lists"
    )


def build_datasets(
    root: str | None,
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    split: str | None = None,
    split_json: Sequence[str] | None = None,
    rewrite_prefix: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
    coco_year: int | None = None,
    train_list: str | None = None,
    test_list: str | None = None,
    image_root: str | None = None,
    voc_root: str | None = None,
    verify_images: bool = False,
    skip_bad_images: bool = False,
    official_json: Sequence[str] | None = None,
    voc: bool = False,
    check_unseen: bool = False,
) -> TrainData:
    """The datasets of a run with the model's transforms, and a validation share of train.

    Sources, one of: COCO (`root`, 2014 or 2017 layout), the reference's image lists
    (`split_json`, relative to `root`), your own lists (`train_list` + `test_list`: CSV or
    split json) or PASCAL VOC 2007 (`voc_root`: trainval / test). With COCO or
    `split_json` the run is zero-shot; with your own lists or VOC it is plain supervised
    (every label seen, ``test`` evaluated) unless `split` is given, which makes it
    zero-shot: training on the seen labels, ZSL / GZSL on the test images.

    Args:
        root: the COCO directory (or the root of `split_json`'s images); None for the others.
        image_size: the model's input side. mean, std: its normalisation.
        split: a ``{"seen": [...], "unseen": [...]}`` json file (COCO default: the 48/17 split).
        split_json: ``(train, zsl, gzsl)`` image-list files of the reference, relative to
            `root`, read instead of the instances files.
        rewrite_prefix: ``(old, new)`` leading part of the listed paths to replace.
        val_fraction: share of train held out for model selection (0: none).
        seed: the seed of the held-out draw.
        coco_year: 2014 or 2017 (None: the one whose instances files exist).
        train_list, test_list: your own image lists. image_root: their relative paths' root.
        voc_root: ``VOCdevkit/VOC2007`` or a parent.
        verify_images: decode every image's header while reading.
        skip_bad_images: drop missing / unreadable images (counted in ``skipped``).
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
    common = dict(verify_images=verify_images, on_error="skip" if skip_bad_images else "raise")
    test = None
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
            rewrite_prefix=tuple(rewrite_prefix) if rewrite_prefix else None, **transforms, **common,
        )  # fmt: skip
    elif train_list or voc_root:
        if voc_root:
            tr_all, te_all = (voc2007(voc_root, part, **common) for part in ("trainval", "test"))
        else:
            tr_all, te_all = (_read_list(f, image_root, **common) for f in (train_list, test_list))
        tr_t, te_t = transforms["train_transform"], transforms["test_transform"]
        known = set(tr_all.labels) | set(te_all.labels)
        if split:
            cs = load_class_split(split)
            missing = [x for x in cs.gzsl if x not in known]
            if missing:  # allowed (an all-negative column), but likely a typo
                warnings.warn(
                    f"train: labels {missing[:5]} of {split} are on no image of "
                    f"{tr_all.source} or {te_all.source}.",
                    stacklevel=2,
                )
            data = ZSLDatasets(
                _relabel(tr_all, cs.seen, tr_t, keep_empty=False),
                _relabel(te_all, cs.unseen, te_t, keep_empty=False),
                _relabel(te_all, cs.gzsl, te_t, keep_empty=False),
                cs,
            )
        else:
            cs = ClassSplit.make(sorted(known), [])
            train_all = _relabel(tr_all, cs.seen, tr_t, keep_empty=True)
            test = _relabel(te_all, cs.seen, te_t, keep_empty=True)
            data = ZSLDatasets(train_all, None, None, cs)
    else:
        class_split = load_class_split(split) if split else None
        data = coco_zsl_datasets(
            root, split=class_split, year=_coco_year(root, coco_year), **transforms, **common
        )
    train_set, val_set = data.train, None
    if val_fraction > 0:
        train_set, val_set = data.train.split(
            val_fraction, seed=seed, transform=transforms["test_transform"]
        )
    return TrainData(data.split, train_set, val_set, data.test_zsl, data.test_gzsl, test)


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`build_datasets` keywords of the data flags."""
    keys = ("coco_year", "train_list", "test_list", "image_root", "voc_root", "verify_images",
            "skip_bad_images")  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def _skipped_counts(data: TrainData) -> dict[str, dict[str, int]]:
    """``{source file: {reason: count}}`` of the images dropped while reading."""
    out: dict[str, dict[str, int]] = {}
    for ds in (data.train, data.val, data.test_zsl, data.test_gzsl, data.test):
        if ds is not None and ds.skipped:
            out[ds.source or "?"] = dict(ds.skipped)
    return out


def _test_sizes(data: TrainData) -> str:
    if data.test is not None:
        return f"test {len(data.test)} images"
    return f"ZSL test {len(data.test_zsl)}, GZSL test {len(data.test_gzsl)} images"


class BadImageError(OSError):
    """An image that cannot be read while training (without ``--skip-bad-images``)."""


class _Images(Dataset):
    """A dataset whose unreadable images raise :class:`BadImageError`, or with `skip`, are
    replaced by the next readable item (a warning names each file once)."""

    def __init__(self, ds: Dataset, skip: bool) -> None:
        self.ds, self.skip, self.bad = ds, skip, set()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        n = len(self.ds)
        for k in range(n if self.skip else 1):
            j = (i + k) % n
            try:
                return self.ds[j]
            except OSError as e:
                if not self.skip:
                    raise BadImageError(
                        f"{e}; pass --skip-bad-images to train past such files, or "
                        "--verify-images to find them all before training"
                    ) from None
                if j not in self.bad:
                    self.bad.add(j)
                    warnings.warn(
                        f"{e} (--skip-bad-images: replaced by the next readable image)",
                        stacklevel=2,
                    )
        raise BadImageError(f"train: no readable image left in {getattr(self.ds, 'source', '')}")


class Loaders(NamedTuple):
    """This process's loaders.

    Attributes:
        train: shuffled training batches of ``batch_size // world_size`` (last partial dropped).
        sampler: its ``DistributedSampler`` in a :class:`ResumeSampler` (call ``set_epoch``
            before each epoch; ``skip`` to resume one mid-way).
        zsl, gzsl: the test sets, each image on exactly one rank (:class:`ShardSampler`);
            None when supervised.
        val: the validation images, sharded alike, or None.
        test: supervised: the test images, sharded alike; else None.
    """

    train: DataLoader
    sampler: ResumeSampler
    zsl: DataLoader | None
    gzsl: DataLoader | None
    val: DataLoader | None
    test: DataLoader | None = None


def build_loaders(
    data: TrainData,
    dist: DistInfo,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    workers: int = 4,
    seed: int = 42,
    skip_bad_images: bool = False,
) -> Loaders:
    """Training and evaluation loaders of `data` for this process.

    Args:
        data: the datasets (:func:`build_datasets`).
        dist: this process's place in the run (:func:`ram_ot.training.init_distributed`).
        batch_size: the global training batch, split over the processes.
        eval_batch_size: per-process evaluation batch (None: twice the training one).
        workers: loader worker processes per process.
        seed: the seed of the training shuffle.
        skip_bad_images: an image unreadable while training is replaced by the next readable
            one (with a warning naming it) instead of stopping with :class:`BadImageError`.

    Returns:
        :class:`Loaders`.

    Raises:
        SystemExit: fewer training images per process than one batch, or a global batch
            smaller than the number of processes.
    """
    if batch_size < dist.world_size:
        raise SystemExit(
            f"train: --batch-size {batch_size} is smaller than the {dist.world_size} processes; "
            "it is the global batch, split over them."
        )
    per_rank = batch_size // dist.world_size
    eval_bs = eval_batch_size or 2 * per_rank
    sampler = ResumeSampler(DistributedSampler(
        data.train, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed
    ))  # fmt: skip
    pin = dist.device.type == "cuda"
    train_loader = DataLoader(
        _Images(data.train, skip_bad_images), batch_size=per_rank, sampler=sampler,
        num_workers=workers, drop_last=True, pin_memory=pin, persistent_workers=workers > 0,
        generator=torch.Generator(),  # re-seeded every epoch: no draw from the global RNG
    )  # fmt: skip
    if len(train_loader) == 0:
        raise SystemExit(
            f"train_coco: {len(data.train)} training images per process < batch size {per_rank}."
        )

    def eval_loader(ds: Dataset) -> DataLoader:
        shard = ShardSampler(len(ds), rank=dist.rank, world_size=dist.world_size)
        return DataLoader(
            _Images(ds, skip_bad_images), batch_size=eval_bs, sampler=shard, num_workers=workers,
            pin_memory=pin,
        )  # fmt: skip

    def maybe(ds: Dataset | None) -> DataLoader | None:
        return eval_loader(ds) if ds is not None else None

    return Loaders(
        train_loader, sampler, maybe(data.test_zsl), maybe(data.test_gzsl), maybe(data.val),
        maybe(data.test),
    )  # fmt: skip


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
        validation loader; supervised: ``"test"`` instead of ``"zsl"`` / ``"gzsl"``), with the EMA's under ``"ema"``; each part a
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
            if loaders.zsl is not None:
                r = evaluate_zsl(
                    model, loaders.zsl, loaders.gzsl, unseen=labels_unseen, gzsl_labels=labels_gzsl,
                    device=device, amp=amp, progress=progress,
                )  # fmt: skip
                res["zsl"], res["gzsl"] = r.zsl.as_dict(), r.gzsl.as_dict()
            if loaders.test is not None:
                t = evaluate_split(
                    model, loaders.test, labels_seen, device=device, amp=amp, progress=progress,
                    desc="test",
                )  # fmt: skip
                res["test"] = t.as_dict()
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


#: Files of a run in ``--output-dir``; ``--overwrite`` removes them first.
RUN_FILES = ("last.pt", "metrics.json", "best.pt", "reference.json", "train.log", "tagger.pt")
#: Flags whose change on ``--resume`` is harmless: they do not alter what is trained.
RESUME_SAFE = frozenset(
    {
        "output_dir", "resume", "overwrite", "force", "stop_after", "no_progress", "workers",
        "threads", "device", "eval_batch_size", "eval_every", "save_every", "verify_images",
        "skip_bad_images",
    }
)  # fmt: skip


def _prepare_output_dir(
    p: argparse.ArgumentParser, args: argparse.Namespace, is_main: bool
) -> None:
    """Refuse an output dir that holds a run unless ``--resume`` / ``--overwrite``; clear it for the latter."""
    out = args.output_dir
    last, metrics = os.path.join(out, "last.pt"), os.path.join(out, "metrics.json")
    held = [f for f in (last, metrics) if os.path.exists(f)]
    if held and not (args.resume or args.overwrite):
        p.error(
            f"--output-dir {out} already holds a run ({', '.join(os.path.basename(f) for f in held)}): "
            "pass --resume to continue it, --overwrite to replace it, or choose another --output-dir"
        )
    if args.resume and os.path.exists(metrics) and not os.path.exists(last):
        p.error(
            f"--resume: {metrics} exists but {last} does not, so the run cannot be continued: "
            "pass --overwrite to start again, or choose another --output-dir"
        )
    barrier()  # every rank has looked before the main one clears anything
    if args.overwrite and is_main:
        stale = [os.path.join(out, f) for f in RUN_FILES]
        stale += glob.glob(os.path.join(glob.escape(out), ".tmp-*"))
        for f in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(f)
    barrier()


def _resume_changes(saved: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any]) -> dict:
    """``{flag: (old, new)}`` for every flag whose value differs from the saved run's."""
    out = {}
    for k in sorted((set(saved) | set(now)) - {"resume", "overwrite", "force"}):
        old, new = saved.get(k, defaults.get(k)), now.get(k, defaults.get(k))
        if isinstance(old, tuple):
            old = list(old)
        if isinstance(new, tuple):
            new = list(new)
        if old != new:
            out[k] = (old, new)
    return out


def _fmt_changes(changes: dict) -> str:
    return ", ".join(f"{_flag(k)} {old!r} -> {new!r}" for k, (old, new) in changes.items())


def _set_lrs(optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[Any]) -> None:
    """Recompute each group's lr from its scheduler's base lr and factor at the current step."""
    for o, s in zip(optimizers, schedulers, strict=True):
        lrs = [b * s.lr_lambdas[i if len(s.lr_lambdas) > 1 else 0](s.last_epoch)
               for i, b in enumerate(s.base_lrs)]  # fmt: skip
        for g, lr in zip(o.param_groups, lrs, strict=True):
            g["lr"] = lr
        s._last_lr = lrs


def _apply_forced(
    changes: dict, optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[Any]
) -> list[str]:
    """With ``--force``: make a changed --lr / --lr-embeds / --weight-decay take effect now."""
    applied = []
    for o, s in zip(optimizers, schedulers, strict=True):
        is_sgd = isinstance(o, torch.optim.SGD)
        key = "lr_embeds" if is_sgd else "lr"
        if key in changes and changes[key][0]:
            ratio = changes[key][1] / changes[key][0]
            s.base_lrs = [b * ratio for b in s.base_lrs]
            for g in o.param_groups:
                g["initial_lr"] = g.get("initial_lr", g["lr"]) * ratio
            applied.append(_flag(key))
        if "weight_decay" in changes and not is_sgd:
            for g in o.param_groups:
                g["weight_decay"] = changes["weight_decay"][1]
            applied.append("--weight-decay")
    _set_lrs(optimizers, schedulers)
    return sorted(set(applied))


def _fingerprint(ds: MultiLabelDataset) -> str:
    """The training images and labels in one short string (to notice changed data on resume)."""
    import hashlib

    h = hashlib.sha1()
    for i, path in enumerate(ds.paths):
        h.update(f"{path}\t{';'.join(ds.label_names(i))}\n".encode())
    return f"{len(ds)} images, sha1 {h.hexdigest()[:12]}"


def _non_finite_message(e: NonFiniteError, last_saved: tuple[int, int] | None, last: str) -> str:
    where = (
        f"the last good checkpoint is {last} (epoch {last_saved[0]}, step {last_saved[1]}): "
        "fix the cause, then continue from it with --resume (--force for a changed --lr)"
        if last_saved is not None
        else "no checkpoint was written before it: fix the cause and start again with --overwrite"
    )
    return (
        f"training stopped: {e} Nothing was saved after it; {where}. Likely causes: a learning "
        "rate too high for this data (--lr, --lr-embeds), float16 overflow under --amp (try "
        "without it), a too small --temperature-local, or broken images or labels (try "
        "--verify-images)."
    )


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())  # fmt: skip


def _any_rank(flag: bool, dist: DistInfo) -> bool:
    """True on every rank when `flag` is True on any (a stop must happen at the same step)."""
    if not dist.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)


def main(argv: list[str] | None = None) -> int:
    """Run training from the command line `argv` (default ``sys.argv[1:]``).

    Writes ``<output-dir>/train.log``, ``metrics.json`` (one record per evaluation),
    ``last.pt`` (every epoch and every ``--save-every`` steps; ``--resume`` continues from
    it) and ``best.pt`` (the weights with the best validation mAP).

    Returns:
        The exit status: :data:`EXIT_OK` (0), :data:`EXIT_DATA_ERROR` (1) for an image
        unreadable while training, :data:`EXIT_NON_FINITE` (3) when the loss or
        the scores became NaN / inf, ``128 + signum`` (143 for SIGTERM, 130 for SIGINT) after
        a signal made it save a resumable ``last.pt`` and stop. Usage errors exit with 2.
    """
    parser = build_parser()
    args = parse_args(argv)
    if (
        args.threads > 0
    ):  # the demo's tiny ops gain nothing from more threads, and lose on busy CPUs
        torch.set_num_threads(args.threads)
    dist = init_distributed(device=args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    _prepare_output_dir(parser, args, dist.is_main)
    log = setup_logging(args.output_dir, dist.is_main)
    progress = dist.is_main and not args.no_progress
    last = os.path.join(args.output_dir, "last.pt")
    metrics_file = os.path.join(args.output_dir, "metrics.json")
    meta = None
    if args.resume and os.path.isfile(last):
        try:
            meta = read_checkpoint(last, map_location="cpu")
        except CheckpointError as e:
            log.error(str(e))
            raise SystemExit(f"train: {e}") from None
    elif args.resume:
        log.info(f"--resume: no {last} yet, starting from scratch")
    if args.demo:  # synthetic data + tiny random CLIP: the whole pipeline offline
        _demo_data(args, dist, log)

    changes: dict = {}
    if meta is not None:
        saved_args = dict(meta["extra"].get("args") or {})
        now = dict(vars(args), world_size=dist.world_size)
        saved_args.setdefault("world_size", meta["extra"].get("world_size", len(meta["rng"])))
        changes = _resume_changes(saved_args, now, vars(parser.parse_args(["--output-dir", "x"])))
        unsafe = {k: v for k, v in changes.items() if k not in RESUME_SAFE and k != "epochs"}
        if unsafe and not args.force:
            msg = (
                f"--resume: {last} was trained with other values: {_fmt_changes(unsafe)}. "
                "Continuing with them is not defined (the optimiser state, the schedule or the "
                "data order belong to the old values): resume with the original flags, pass "
                "--force to continue anyway, or start a new run in another --output-dir."
            )
            log.error(msg)
            parser.error(msg)
        if changes:
            log.warning(f"--resume with changed flags: {_fmt_changes(changes)}")

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
        seed=args.seed, **_data_options(args),
        official_json=getattr(args, "official_json", None), voc=args.layout == "voc",
        check_unseen=args.preset == "nus",
    )  # fmt: skip
    split = data.split
    skipped = _skipped_counts(data)
    log.info(
        f"{len(split.seen)} seen / {len(split.unseen)} unseen labels; train {len(data.train)}, "
        f"val {len(data.val) if data.val else 0}, " + _test_sizes(data) + "; "
        f"{dist.world_size} process(es) on {dist.device}"
    )
    if skipped:
        log.warning(f"skipped images while reading the data: {skipped}")
    train_images = _fingerprint(data.train)
    if meta is not None and meta["extra"].get("train_images", train_images) != train_images:
        msg = (
            f"--resume: the training images differ from those {last} was trained on "
            f"({meta['extra']['train_images']} -> {train_images}): the data order of the run "
            "is lost. Resume with the original data, pass --force to continue anyway, or "
            "start a new run in another --output-dir."
        )
        if not args.force:
            log.error(msg)
            parser.error(msg)
        log.warning(msg)
    if args.label_smoothing:
        data = data._replace(train=SmoothedTargets(data.train))
    loaders = build_loaders(
        data, dist, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        workers=args.workers, seed=args.seed, skip_bad_images=args.skip_bad_images,
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
    per_rank = args.batch_size // dist.world_size
    plan_total, total_steps, lr_plan = 0, args.epochs * steps_per_epoch, None
    if args.schedule == "official":  # lr set per epoch (solver/make_scheduler.py); no re-plan
        schedulers = build_epoch_schedulers(
            optimizers, base_lr=args.lr, steps_per_epoch=steps_per_epoch,
            warmup_epochs=round(args.warmup_epochs), max_epochs=args.scheduler_epochs,
        )  # fmt: skip
    else:
        # the schedule as first planned; a resumed run with other --epochs re-plans it (LRPlan)
        plan_state = dict(meta["extra"].get("lr_plan") or {}) if meta is not None else {}
        total_steps = args.epochs * steps_per_epoch
        plan_total = int(plan_state.get("total", 0)) or (
            int(saved_args.get("epochs", args.epochs)) * steps_per_epoch if meta else total_steps
        )
        schedulers = build_schedulers(
            optimizers,
            total_steps=plan_total,
            warmup_steps=round(args.warmup_epochs * steps_per_epoch),
        )
        lr_plan = LRPlan(schedulers[0].lr_lambdas[0], plan_state.get("replans", ()))
        for s in schedulers:
            s.lr_lambdas = [lr_plan] * len(s.base_lrs)
    scaler = make_grad_scaler(dist.device, enabled=args.amp)
    ema_copy = ("head.temperature_global",) if args.ema_mode == "official" else ()
    ema = ModelEMA(model, args.ema_decay, warmup=args.demo, copy=ema_copy) if args.ema else None
    train_model = model
    if dist.distributed:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    records: list[dict] = []
    start_epoch, step, best, partial = 0, 0, None, None
    last_saved: tuple[int, int] | None = None
    if meta is not None:
        ck = load_checkpoint(
            last, model=model, optimizers=optimizers, schedulers=schedulers, scaler=scaler, ema=ema,
            map_location=dist.device, rank=dist.rank, state=meta,
        )  # fmt: skip
        start_epoch, step, best = ck.epoch, ck.step, ck.extra.get("best")
        partial = ck.extra.get("partial")
        last_saved = (start_epoch, step)
        if lr_plan is not None:
            lr_plan = schedulers[0].lr_lambdas[0]  # restored with the scheduler state
            for s in schedulers:
                s.lr_lambdas = [lr_plan] * len(s.base_lrs)
        planned = (lr_plan.replans[-1][1] if lr_plan.replans else plan_total) if lr_plan else 0
        if lr_plan is not None and total_steps != planned and total_steps > step:
            lr_plan.replan(step, total_steps)
            log.info(
                f"--epochs {args.epochs}: the schedule is re-planned from step {step} to end at "
                f"step {total_steps} (as planned with the new --epochs from the start; docs/training.md)"
            )
        if args.force and changes:
            applied = _apply_forced(changes, optimizers, schedulers)
            if applied:
                log.warning(f"--force: {', '.join(applied)} take effect from step {step}")
        if lr_plan is not None:
            _set_lrs(optimizers, schedulers)
        if os.path.isfile(metrics_file):
            with open(metrics_file, encoding="utf-8") as f:
                records = [r for r in json.load(f) if r["epoch"] <= start_epoch]
        at = f", {partial['steps']} steps into epoch {partial['epoch']}" if partial else ""
        log.info(f"resumed from {last}: epoch {start_epoch}, step {step}{at}")
        if start_epoch >= args.epochs and not partial:
            log.info(f"{last} has already trained {start_epoch} epochs (--epochs {args.epochs})")

    def save_last(epoch: int, step: int, best: dict | None, partial: dict | None = None) -> None:
        nonlocal last_saved
        if not _all_finite(model):
            raise NonFiniteError("weights", float("nan"), step, " (not saved)")
        rng = all_gather_objects(capture_rng_state())
        if dist.is_main:
            extra = {
                "seed": args.seed, "best": best, "args": vars(args), "world_size": dist.world_size,
                "lr_plan": {"total": plan_total, **lr_plan.state()} if lr_plan else None,
                "partial": partial,
                "train_images": train_images,
            }  # fmt: skip
            save_checkpoint(
                last, model=model, optimizers=optimizers, schedulers=schedulers, scaler=scaler,
                ema=ema, epoch=epoch, step=step, rng_states=rng, extra=extra,
            )  # fmt: skip
        barrier()
        last_saved = (epoch, step)

    stop = GracefulStop()
    try:
        with stop:
            rc = _train_epochs(
                args, dist, log, model, train_model, loaders, split, optimizers, schedulers,
                scaler, ema, records, metrics_file, stop, save_last,
                start_epoch=start_epoch, step=step, best=best, partial=partial, per_rank=per_rank,
                progress=progress,
            )  # fmt: skip
    except NonFiniteError as e:
        log.error(_non_finite_message(e, last_saved, last))
        cleanup_distributed()
        return EXIT_NON_FINITE
    except BadImageError as e:  # from a loader worker: the message is the last line
        msg = str(e).strip().splitlines()[-1].removeprefix("ram_ot.cli.train.BadImageError: ")
        log.error(f"training stopped: {msg}")
        cleanup_distributed()
        return EXIT_DATA_ERROR
    if rc != EXIT_OK:
        cleanup_distributed()
        return rc
    if reference is not None and records:
        for line in _demo_summary(records[-1], reference):
            log.info(line)
    if (
        dist.is_main
        and args.epochs > 0
        and (args.stop_after is None or args.stop_after >= args.epochs)
    ):
        tagger = _write_tagger(args, model, ema, data, split, log)
        log.info(f"tagger: {tagger} (ram-ot tag --checkpoint {tagger} IMAGES ...)")
    log.info(f"metrics: {metrics_file}; checkpoint: {last}")
    cleanup_distributed()
    return EXIT_OK


def _write_tagger(args, model, ema, data, split, log) -> str:
    """``<output-dir>/tagger.pt``: the final weights (the EMA's with ``--ema``) as one tagger file,
    calibrated on the validation images when there are some (docs/tagger.md)."""
    from ram_ot.tagger import write_trained_tagger

    path = os.path.join(args.output_dir, "tagger.pt")
    pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
    with ema.swapped(model) if ema is not None else contextlib.nullcontext():
        write_trained_tagger(
            model, path, labels=list(split.seen), val_dataset=data.val, pretrained=pretrained,
            train_args=vars(args),
        )  # fmt: skip
    if data.val is None:
        log.info("tagger: no validation images (--val-fraction 0), so no calibrated thresholds")
    return path


def _train_epochs(
    args, dist, log, model, train_model, loaders, split, optimizers, schedulers, scaler, ema,
    records, metrics_file, stop, save_last, *, start_epoch, step, best, partial, per_rank, progress,
) -> int:  # fmt: skip
    """The epochs of :func:`main` (its locals passed through); returns the exit status."""
    labels = list(split.seen)
    for epoch in range(start_epoch + 1, args.epochs + 1):
        loaders.sampler.set_epoch(epoch)
        if ema is not None and args.ema_mode == "official":
            ema.reset(model)  # the official code builds a new EMA at the start of every epoch
        if loaders.train.generator is not None:  # the loader's own seed draw leaves the global
            loaders.train.generator.manual_seed(args.seed * 100_003 + epoch)  # RNG alone
        done = None
        if partial is not None and partial["epoch"] == epoch:
            loaders.sampler.skip(partial["indices"])
            done = EpochProgress(partial["steps"], partial["images"], partial["loss_sum"])
        first = step - (done.steps if done else 0)  # the global step before this epoch

        n_epoch = len(loaders.train) + (done.steps if done else 0)  # batches in this epoch

        def on_step(
            step: int, epoch_progress: Callable[[], EpochProgress], epoch=epoch, first=first,
            n_epoch=n_epoch, best=best,
        ) -> bool:  # fmt: skip
            halt = _any_rank(stop.requested, dist)
            mid = step - first < n_epoch  # the epoch's end saves anyway (and evaluates first)
            if mid and (halt or (args.save_every > 0 and step % args.save_every == 0)):
                p = epoch_progress()
                part = {"epoch": epoch, "indices": p.steps * per_rank, **p._asdict()}
                save_last(epoch - 1, step, best, part)
            return halt and mid

        stats = train_one_epoch(
            train_model, loaders.train, labels, optimizers, device=dist.device, schedulers=schedulers,
            scaler=scaler, ema=ema, amp=args.amp, step=step, progress=progress,
            desc=f"epoch {epoch}/{args.epochs}", done=done, on_step=on_step,
        )  # fmt: skip
        step, partial = stats.step, None
        if stats.stopped:
            log.warning(
                f"{stop.name}: saved {os.path.join(args.output_dir, 'last.pt')} at step {step} "
                f"(epoch {epoch}, batch {stats.steps}); continue with --resume"
            )
            return EXIT_SIGNAL_BASE + int(stop.signum)
        log.info(
            f"epoch {epoch}: loss {stats.loss:.4f}, {stats.steps} steps, "
            f"{stats.images * dist.world_size / max(stats.seconds, 1e-9):.1f} img/s, lr {optimizers[0].param_groups[0]['lr']:.2e}"
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
        save_last(epoch, step, best)
        if epoch < args.epochs and _any_rank(stop.requested, dist):
            log.warning(
                f"{stop.name}: stopped after epoch {epoch} (last.pt saved); continue with --resume"
            )
            return EXIT_SIGNAL_BASE + int(stop.signum)
        if args.stop_after is not None and epoch >= args.stop_after:
            log.info(f"stopping after epoch {epoch} (--stop-after); continue with --resume")
            break
    if best is not None:
        log.info(
            f"best val mAP {100 * best['val_mAP']:.2f} at epoch {best['epoch']} ({best['weights']} weights) -> best.pt"
        )
    return EXIT_OK
