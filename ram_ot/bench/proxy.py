"""Benchmark: the paper's experiment in miniature, on Emoji-COCO with the shipped proxy CLIP.

``python -m ram_ot.bench proxy [--seeds 0 1 2] [--quick] [--markdown]``

Trains and evaluates seven methods on the same generated Emoji-COCO (48 seen / 17 unseen
COCO names drawn as emoji sprites, :func:`ram_ot.data.emoji_world.make_emoji_coco`) with the
frozen proxy CLIP (:mod:`ram_ot.backbones.proxy`), and prints ZSL and GZSL mAP, F1@3 and
F1@5 as mean ± std over seeds, next to chance level, with each row's wall time:

1. zero-shot proxy CLIP, global embedding only (no training);
2. training-free RAM: value-value regions + KCOT, fused scores (no training);
3. prompt tuning, global branch only (CoOp-like deep prompts; loss and scores global);
4. ladder + mean pooling of region-label similarities (no OT);
5. ladder + max pooling (no OT);
6. ladder + KCOT without the knowledge constraint;
7. full RAM (ladder + KCOT with the teacher's knowledge constraint).

Every trained row shares the data, the epochs, the optimisers and learning rates, the
batches (same seed) and the selection rule: the epoch with the best mAP on the validation
images held out of train (seen labels only), never the test set. Rows 4-7 all train the
ladder, the visual tokens, the deep text prompts and both temperatures with MMC on both
branches and fused scores; they differ only in how region similarities become a local
logit. The seed changes the initialisation and the batch order, not the data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

ROWS = (
    "zero-shot CLIP (global)",
    "training-free RAM",
    "prompt tuning (global)",
    "ladder + mean pooling",
    "ladder + max pooling",
    "ladder + KCOT, no constraint",
    "RAM (full)",
)
_METRICS = ("mAP", "F1@3", "F1@5")


class Settings(NamedTuple):
    """Shared protocol of every row."""

    n_train: int = 2000
    n_test: int = 800
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    lr_embeds: float = 1e-3
    val_fraction: float = 0.1
    padding: int = 3


QUICK = Settings(n_train=500, n_test=300, epochs=2)


def _build(row: int, clip: tuple, seed: int, ram_kwargs: dict) -> tuple[nn.Module, bool]:
    """(model, trained?) of a row, over the shared frozen proxy CLIP."""
    from ram_ot.baselines import BASELINES, build_baseline

    torch.manual_seed(seed)
    return build_baseline(BASELINES[row], *clip, **ram_kwargs), row >= 2


def run_row(
    row: int,
    seed: int,
    data,
    clip: tuple,
    s: Settings,
    *,
    log: Callable[[str], None],
    ram_kwargs: dict | None = None,
) -> dict[str, Any]:
    """Train (if the row trains) and evaluate one row with one seed; returns its metrics."""
    from torch.utils.data import DataLoader

    from ram_ot.training import (
        build_optimizers,
        build_schedulers,
        evaluate_split,
        evaluate_zsl,
        seed_everything,
        train_one_epoch,
    )

    t0 = time.perf_counter()
    split = data.split
    model, trains = _build(row, clip, seed, ram_kwargs or {})
    seen, unseen, gzsl = list(split.seen), list(split.unseen), list(split.gzsl)
    train_set, val_set = data.train.split(
        s.val_fraction, seed=0, transform=data.test_gzsl.transform
    )
    loader = lambda ds, shuffle=False: DataLoader(  # noqa: E731
        ds, batch_size=s.batch_size if shuffle else 128, shuffle=shuffle, drop_last=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )  # fmt: skip
    zsl_l, gzsl_l, val_l = loader(data.test_zsl), loader(data.test_gzsl), loader(val_set)

    def evaluate() -> dict[str, Any]:
        r = evaluate_zsl(model, zsl_l, gzsl_l, unseen=unseen, gzsl_labels=gzsl, device="cpu")
        v = evaluate_split(model, val_l, seen, device="cpu")
        return {"val": v.mAP, "zsl": r.zsl.as_dict(), "gzsl": r.gzsl.as_dict()}

    if not trains:
        model.eval()
        best = {**evaluate(), "epoch": 0}
    else:
        seed_everything(seed)
        train_l = loader(train_set, shuffle=True)
        opts = build_optimizers(model, lr=s.lr, lr_embeds=s.lr_embeds)
        steps = s.epochs * len(train_l)
        scheds = build_schedulers(opts, total_steps=steps, warmup_steps=len(train_l) // 2)
        best, step = None, 0
        for epoch in range(1, s.epochs + 1):
            stats = train_one_epoch(
                model, train_l, seen, opts, device="cpu", schedulers=scheds, step=step
            )
            step = stats.step
            res = {**evaluate(), "epoch": epoch}
            log(
                f"  {ROWS[row]} seed {seed} epoch {epoch}: loss {stats.loss:.4f} val mAP "
                f"{100 * res['val']:.2f} ZSL {100 * res['zsl']['mAP']:.2f}"
            )
            if best is None or res["val"] > best["val"]:
                best = res
    best["seconds"] = time.perf_counter() - t0
    return best


def _fmt(vals: Sequence[float]) -> str:
    if len(vals) == 1:
        return f"{100 * vals[0]:.2f}"
    return f"{100 * statistics.mean(vals):.2f} ± {100 * statistics.stdev(vals):.2f}"


def table(results: dict[int, list[dict]], chance: dict, *, markdown: bool) -> str:
    """The results table: one line per row, ZSL / GZSL metrics, mean ± std, wall time."""
    head = ["method"] + [f"{p} {m}" for p in ("ZSL", "GZSL") for m in _METRICS] + ["s / seed"]
    lines = []
    ch = ["chance (random scores)"] + [
        f"{100 * chance[p][m][0]:.2f} ± {100 * chance[p][m][1]:.2f}"
        for p in ("zsl", "gzsl") for m in _METRICS
    ] + ["-"]  # fmt: skip
    lines.append(ch)
    for row, runs in sorted(results.items()):
        cells = [f"{row + 1}. {ROWS[row]}"]
        for p in ("zsl", "gzsl"):
            for m in _METRICS:
                cells.append(_fmt([r[p][m] for r in runs]))
        cells.append(f"{statistics.mean(r['seconds'] for r in runs):.0f}")
        lines.append(cells)
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c) + " |" for c in lines]
        return "\n".join(out)
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda c: "  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(c) for c in lines])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench proxy", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", type=int, nargs="+", default=list(range(1, 8)), help="rows 1..7")
    p.add_argument("--quick", action="store_true", help="small data, 2 epochs (a few minutes)")
    p.add_argument("--epochs", type=int, help="override the epochs of the protocol")
    p.add_argument("--data-dir", help="where Emoji-COCO is written (default: a temporary dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="also write the raw per-seed results to this file")
    p.add_argument("--markdown", action="store_true")
    p.add_argument(
        "--temperature-local", type=float,
        help="initial local temperature of every row (default: RAM's 2e-3)",
    )  # fmt: skip
    p.add_argument(
        "--frozen-text", action="store_true", help="no deep text prompts in any row (n_ctx 0)"
    )
    p.add_argument("--pretrained", default=None, help="proxy weights file (default: shipped)")
    a = p.parse_args(argv)
    if any(not 1 <= r <= len(ROWS) for r in a.rows):
        p.error(f"--rows must lie in 1..{len(ROWS)}, got {a.rows}")
    s = QUICK if a.quick else Settings()
    if a.epochs is not None:
        if a.epochs < 1:
            p.error(f"--epochs must be >= 1, got {a.epochs}")
        s = s._replace(epochs=a.epochs)
    if a.threads:
        torch.set_num_threads(a.threads)
    ram_kwargs: dict[str, Any] = {}
    if a.temperature_local is not None:
        if not a.temperature_local > 0:
            p.error(f"--temperature-local must be > 0, got {a.temperature_local}")
        ram_kwargs["temperature_local"] = a.temperature_local
    if a.frozen_text:
        ram_kwargs["n_ctx"] = 0

    from ram_ot.backbones.open_clip import PROXY_MODEL_NAME, PROXY_PRETRAINED, load_clip
    from ram_ot.data import build_transform, clip_normalization, coco_zsl_datasets
    from ram_ot.data.emoji_world import make_emoji_coco

    clip_model, tokenizer, _ = load_clip(PROXY_MODEL_NAME, a.pretrained or PROXY_PRETRAINED)
    size = clip_model.visual.image_size[0]
    mean, std = clip_normalization(clip_model)
    tmp = contextlib.ExitStack()
    root = a.data_dir or tmp.enter_context(tempfile.TemporaryDirectory(prefix="emoji-coco-"))
    t0 = time.perf_counter()
    make_emoji_coco(root, n_train=s.n_train, n_val=s.n_test, image_size=size, seed=0)
    data = coco_zsl_datasets(
        root,
        train_transform=build_transform(size, train=True, mean=mean, std=std, padding=s.padding),
        test_transform=build_transform(size, train=False, mean=mean, std=std),
    )
    print(
        f"Emoji-COCO: {len(data.train)} train (seen labels only), ZSL test {len(data.test_zsl)}, "
        f"GZSL test {len(data.test_gzsl)} images ({time.perf_counter() - t0:.1f} s); "
        f"{s.epochs} epochs, batch {s.batch_size}, lr {s.lr}, seeds {a.seeds}, "
        f"RAM options {ram_kwargs or 'defaults'}",
        flush=True,
    )
    from ram_ot.baselines import chance_level

    chance = {
        "zsl": chance_level(data.test_zsl.targets),
        "gzsl": chance_level(data.test_gzsl.targets),
    }
    results: dict[int, list[dict]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for row in [r - 1 for r in a.rows]:
            for seed in a.seeds if row >= 2 else a.seeds[:1]:
                r = run_row(
                    row, seed, data, (clip_model, tokenizer), s,
                    log=lambda m: print(m, flush=True), ram_kwargs=ram_kwargs,
                )  # fmt: skip
                results.setdefault(row, []).append(r)
                print(
                    f"{ROWS[row]} seed {seed}: ZSL mAP {100 * r['zsl']['mAP']:.2f}, GZSL mAP "
                    f"{100 * r['gzsl']['mAP']:.2f} (epoch {r['epoch']}, {r['seconds']:.0f} s)",
                    flush=True,
                )
    print()
    print(table(results, chance, markdown=a.markdown))
    print("\nRows 1-2 do not train (one run; their results do not depend on the seed).")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"settings": s._asdict(), "ram_options": ram_kwargs, "chance": chance,
                       "results": {ROWS[k]: v for k, v in results.items()}}, f, indent=1)  # fmt: skip
    tmp.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
