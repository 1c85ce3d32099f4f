"""Benchmark: a trained tagger's thresholded tags against top-K, on the proxy world.

``python -m ram_ot.bench tagger [--quick] [--seed 0] [--images 2000 800] [--epochs 3]``

Trains RAM on Emoji-COCO with the shipped proxy CLIP (``ram-ot train --demo``, the demo's
settings, with more images by default), takes the ``tagger.pt`` the run writes (calibrated
on the validation images held out of train, :func:`ram_ot.tagger.write_trained_tagger`) and
compares, on the test images, the tags of each rule of :meth:`ram_ot.Tagger.predict`:

- ``top-K`` for K = 1, 3, 5 (ranked by RAM's fused softmax, ``predict``'s default);
- ``calibrated``: ``predict``'s default rule, the presence probability against each seen
  label's F1-optimal validation threshold, and the pooled *default threshold* for any label
  without one (free-text labels; here the unseen labels);
- ``unshrunk``: the same presence model with each seen label's own F1-optimal threshold
  as it is (``prior_positives=0``, the rule before the shrinkage);
- ``default thr``: the default threshold for every label (the free-text rule);
- ``test-oracle``: per-label F1-optimal thresholds fitted on the test set itself. Not a
  rule anyone can use (it sees the test labels): it shows what per-label thresholds on the
  presence probability reach without the gap between validation and test (each label's
  own F1 is maximal; micro OF1 need not be).

Three test sets (``docs/evaluation.md``): **seen** (the GZSL test images with a seen label,
ranked over the 48 seen labels: the tagger's own vocabulary), **GZSL** (all test images, 65
labels in ``sorted(seen) + sorted(unseen)`` order) and **ZSL** (the images with an unseen
label, ranked over the 17 unseen labels: every label is free text, so ``calibrated`` is the
default threshold). Each label set is scored on its own: the transport plan, the fused
softmax and the local presence feature depend on the labels asked for.

**Choosing the shrinkage on the validation split.** Before the test sets are scored, the
validation images' presence features are split in two halves at random (25 times, each
half in turn the fitting half): :func:`ram_ot.tagger.fit_calibration` is fitted on one half
with each candidate ``prior_positives`` k and scored (OF1, CF1) on the other. The report
gives the mean and its difference to the pooled threshold alone (k = inf), paired over the
50 splits (standard errors of the mean difference; the splits overlap, so they understate
the uncertainty). ``ram_ot.tagger.PRIOR_POSITIVES`` was set from this table; the test
sets play no part in it.

Columns: ``OP / OR / OF1`` over all (image, label) pairs (micro), ``CP / CR / CF1`` the means
over all C labels and the F1 of those means (macro, as :mod:`ram_ot.metrics` defines them),
``iP / iR`` per image: the mean precision over the images with at least one tag and the
mean recall over the images with at least one positive, ``tags`` the mean number of tags
per image and ``empty`` the share of images without a tag. Ratios: each rule's OF1 over the
top-3 OF1 of the same test set, measured in the same process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from typing import Any

import torch
from torch import Tensor

from ram_ot.metrics import _prf1_from_counts, _topk_mask, precision_recall_f1_at_k

KS = (1, 3, 5)


def prediction_metrics(pred: Tensor, targets: Tensor) -> dict[str, float]:
    """Micro, macro and per-image P / R / F1 of a (N, C) bool prediction.

    Micro and macro are :mod:`ram_ot.metrics`'s ``O*`` and ``C*`` (0/0 = 0, classes averaged
    over all C). Per image: precision averaged over the images with a prediction, recall over
    the images with a positive.
    """
    t = targets > 0
    counts = torch.stack([(pred & t).sum(0), (pred & ~t).sum(0), (~pred & t).sum(0)]).long()
    r = _prf1_from_counts(counts)
    tp_i, n_pred, n_pos = (pred & t).sum(1).double(), pred.sum(1).double(), t.sum(1).double()
    has_pred, has_pos = n_pred > 0, n_pos > 0
    ip = float((tp_i[has_pred] / n_pred[has_pred]).mean()) if has_pred.any() else 0.0
    ir = float((tp_i[has_pos] / n_pos[has_pos]).mean()) if has_pos.any() else 0.0
    return {**r._asdict(), "iP": ip, "iR": ir, "tags": float(n_pred.mean()),
            "empty": float((~has_pred).double().mean())}  # fmt: skip


def compare_rules(
    scores: Tensor, presence: Tensor, targets: Tensor, thresholds: Tensor, default: float,
    unshrunk: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Every rule's :func:`prediction_metrics` on one test set (see the module docstring).

    Args:
        scores: (N, C) fused softmax scores. presence: (N, C) presence probabilities.
        targets: (N, C) multi-hot. thresholds: (C,) the calibrated thresholds of the labels
            (``Calibration.threshold_for``). default: the default (pooled) threshold.
        unshrunk: (C,) the per-label thresholds without shrinkage (``prior_positives=0``),
            optional.
    """
    from ram_ot.metrics import calibrate_thresholds

    t = targets > 0
    out: dict[str, dict[str, float]] = {}
    for k in KS:
        if k > scores.shape[1]:
            continue
        out[f"top-{k}"] = m = prediction_metrics(_topk_mask(scores, k), t)
        ref = precision_recall_f1_at_k(scores, t, k)  # the metrics module's own top-K
        assert abs(ref.OF1 - m["OF1"]) < 1e-9 and abs(ref.CF1 - m["CF1"]) < 1e-9
    p = presence.double()
    out["calibrated"] = prediction_metrics(p >= thresholds.double(), t)
    if unshrunk is not None:
        out["unshrunk"] = prediction_metrics(p >= unshrunk.double(), t)
    out["default thr"] = prediction_metrics(p >= default, t)
    oracle = calibrate_thresholds(p, t)
    oracle = torch.where(oracle.isnan(), torch.full_like(oracle, 2.0), oracle)  # no positive: none
    out["test-oracle"] = prediction_metrics(p >= oracle, t)
    return out


CV_PRIORS = (0.0, 2.0, 5.0, 10.0, 15.0, 20.0, 40.0, math.inf)
CV_REPEATS = 25


def _micro_macro_f1(pred: Tensor, t: Tensor) -> tuple[float, float]:
    r = _prf1_from_counts(torch.stack([(pred & t).sum(0), (pred & ~t).sum(0),
                                       (~pred & t).sum(0)]).long())  # fmt: skip
    return r.OF1, r.CF1


def select_prior_positives(
    features: Tensor, targets: Tensor, labels: list[str], *, repeats: int = CV_REPEATS, seed: int = 0
) -> dict[str, Any]:
    """Two-fold cross-validation of ``fit_calibration``'s `prior_positives` on a validation split.

    Returns ``{"repeats", "rows": [{"k", "OF1", "CF1", "dOF1", "dOF1_se", "dCF1", "dCF1_se"}]}``
    (d*: the paired difference to k = inf, the pooled threshold alone).
    """
    from ram_ot.tagger import fit_calibration, presence_probability

    t = targets > 0
    n = t.shape[0]
    g = torch.Generator().manual_seed(seed)
    scores: dict[float, list[tuple[float, float]]] = {k: [] for k in CV_PRIORS}
    for _ in range(repeats):
        perm = torch.randperm(n, generator=g)
        halves = (perm[: n // 2], perm[n // 2 :])
        for a, b in (halves, halves[::-1]):
            if not t[a].any() or t[a].all():
                continue
            for k in CV_PRIORS:
                cal = fit_calibration(features[a], t[a], labels, prior_positives=1e12 if math.isinf(k) else k)
                thr = cal.threshold_for(labels)
                pred = presence_probability(features[b], cal.weights).double() >= thr
                scores[k].append(_micro_macro_f1(pred, t[b]))
    base = torch.tensor(scores[math.inf], dtype=torch.float64)
    rows = []
    for k in CV_PRIORS:
        v = torch.tensor(scores[k], dtype=torch.float64)
        d = v - base
        se = d.std(0) / math.sqrt(len(d)) if len(d) > 1 else torch.zeros(2)
        rows.append({"k": k, "OF1": float(v[:, 0].mean()), "CF1": float(v[:, 1].mean()),
                     "dOF1": float(d[:, 0].mean()), "dOF1_se": float(se[0]),
                     "dCF1": float(d[:, 1].mean()), "dCF1_se": float(se[1])})  # fmt: skip
    return {"repeats": repeats, "n_splits": len(base), "rows": rows}


def _val_features(tagger: Any, run_dir: str, args: argparse.Namespace) -> tuple[Tensor, Tensor, list[str]]:
    """Presence features and targets of the run's validation images (as ``ram-ot train`` held them out)."""
    from ram_ot.cli.train import build_datasets
    from ram_ot.data.transforms import clip_normalization

    mean, std = clip_normalization(tagger.model.clip_model)
    data = build_datasets(os.path.join(run_dir, "demo_data"), image_size=tagger.model.ladder.image_size,
                          mean=mean, std=std, val_fraction=0.1, seed=args.seed)  # fmt: skip
    val = data.val
    labels = list(val.labels)
    emb = tagger.model.encode_labels(labels)
    feats, targets = [], []
    with torch.no_grad():
        for s in range(0, len(val), 64):
            pairs = [val[i] for i in range(s, min(s + 64, len(val)))]
            feats.append(tagger.forward(torch.stack([p[0] for p in pairs]), emb).features)
            targets.append(torch.stack([torch.as_tensor(p[1]) for p in pairs]))
    return torch.cat(feats), torch.cat(targets), labels


def _train(out_dir: str, args: argparse.Namespace) -> float:
    from ram_ot.cli.train import main as train

    argv = ["--demo", "--demo-images", str(args.images[0]), str(args.images[1]),
            "--epochs", str(args.epochs), "--seed", str(args.seed), "--no-progress",
            "--threads", str(args.threads), "--output-dir", out_dir]  # fmt: skip
    t0 = time.perf_counter()
    rc = train(argv)
    if rc != 0:
        raise RuntimeError(f"bench tagger: training exited with status {rc}")
    return time.perf_counter() - t0


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    from ram_ot.data import coco_zsl_datasets
    from ram_ot.tagger import Tagger

    with tempfile.TemporaryDirectory(prefix="ram_ot_bench_tagger_") as d:
        train_s = _train(d, args)
        tagger = Tagger.load(os.path.join(d, "tagger.pt"), device="cpu")
        data = coco_zsl_datasets(os.path.join(d, "demo_data"))
        split = data.split
        seen, unseen, gzsl = list(split.seen), list(split.unseen), list(split.gzsl)
        cal = tagger.calibration
        if cal is None:
            raise RuntimeError("bench tagger: the run wrote an uncalibrated tagger")
        from ram_ot.tagger import PRIOR_POSITIVES, fit_calibration

        vf, vt, vlabels = _val_features(tagger, d, args)
        refit = fit_calibration(vf, vt, vlabels)  # the run's own calibration, recomputed
        if not torch.allclose(refit.weights, cal.weights, rtol=1e-4, atol=1e-6):
            raise RuntimeError("bench tagger: the validation split differs from the run's")
        cv = select_prior_positives(vf, vt, vlabels)
        unshrunk_cal = fit_calibration(vf, vt, vlabels, prior_positives=0)
        g_targets = data.test_gzsl.targets
        seen_cols = [gzsl.index(c) for c in seen]
        has_seen = g_targets[:, seen_cols].any(1)
        g_paths = data.test_gzsl.paths
        sets = {
            "seen": ([p for p, k in zip(g_paths, has_seen.tolist(), strict=True) if k], seen,
                     g_targets[has_seen][:, seen_cols]),
            "GZSL": (g_paths, gzsl, g_targets),
            "ZSL": (data.test_zsl.paths, unseen, data.test_zsl.targets),
        }  # fmt: skip
        results: dict[str, Any] = {}
        t0 = time.perf_counter()
        for name, (paths, labels, targets) in sets.items():
            scores, presence, ok = tagger.score(paths, labels, batch_size=128, progress=False)
            if not all(ok):
                raise RuntimeError(f"bench tagger: unreadable test images in {name}")
            own = sum(1 for c in labels if c in cal.labels)
            rules = compare_rules(scores, presence, targets, cal.threshold_for(labels),
                                  cal.default_threshold, unshrunk_cal.threshold_for(labels))  # fmt: skip
            from ram_ot.metrics import mean_average_precision

            results[name] = {
                "n_images": len(paths), "n_labels": len(labels), "own_thresholds": own,
                "positives_per_image": float((targets > 0).sum(1).double().mean()),
                "mAP": mean_average_precision(scores, targets).mAP, "rules": rules,
            }  # fmt: skip
        eval_s = time.perf_counter() - t0
    per_label = cal.thresholds[~cal.thresholds.isnan()]
    return {
        "settings": {"images": list(args.images), "epochs": args.epochs, "seed": args.seed,
                     "threads": args.threads},
        "calibration": {
            "weights": cal.weights.tolist(), "default_threshold": cal.default_threshold,
            "n_labels": len(cal.labels), "n_with_threshold": int(per_label.numel()),
            "threshold_min": float(per_label.min()), "threshold_median": float(per_label.median()),
            "threshold_max": float(per_label.max()),
        },
        "prior_positives": PRIOR_POSITIVES, "cv": cv,
        "train_s": train_s, "eval_s": eval_s, "sets": results,
    }  # fmt: skip


def format_report(res: dict[str, Any]) -> str:
    s, c = res["settings"], res["calibration"]
    lines = [
        f"tagger on Emoji-COCO (proxy CLIP): {s['images'][0]} train / {s['images'][1]} test "
        f"images, {s['epochs']} epochs, seed {s['seed']}; training {res['train_s']:.0f} s, "
        f"scoring {res['eval_s']:.0f} s",
        f"calibration: presence = sigmoid({c['weights'][0]:.2f} cos_g + {c['weights'][1]:.2f} u "
        f"+ {c['weights'][2]:.2f}); {c['n_with_threshold']}/{c['n_labels']} seen labels with "
        f"their own threshold (min {c['threshold_min']:.3f}, median {c['threshold_median']:.3f}, "
        f"max {c['threshold_max']:.3f}); default threshold {c['default_threshold']:.3f}; "
        f"shrinkage prior_positives = {res['prior_positives']:g}",
        "",
    ]
    cv = res["cv"]
    lines.append(f"choice of prior_positives k on the validation split ({cv['n_splits']} "
                 f"half/half splits; d = paired difference to k = inf, the pooled threshold):")  # fmt: skip
    lines.append(f"  {'k':>6}{'OF1':>8}{'CF1':>8}{'dOF1':>16}{'dCF1':>16}")
    for row in cv["rows"]:
        lines.append(f"  {row['k']:>6g}{100 * row['OF1']:8.2f}{100 * row['CF1']:8.2f}"
                     f"{100 * row['dOF1']:+10.2f} ± {100 * row['dOF1_se']:.2f}"
                     f"{100 * row['dCF1']:+10.2f} ± {100 * row['dCF1_se']:.2f}")  # fmt: skip
    lines.append("")
    cols = ("OP", "OR", "OF1", "CP", "CR", "CF1", "iP", "iR")
    for name, r in res["sets"].items():
        lines.append(
            f"{name}: {r['n_images']} images, {r['n_labels']} labels ({r['own_thresholds']} with "
            f"their own threshold), {r['positives_per_image']:.2f} positives / image, "
            f"mAP {100 * r['mAP']:.2f}"
        )
        lines.append(f"  {'rule':<12}" + "".join(f"{k:>7}" for k in cols)
                     + f"{'tags':>7}{'empty':>7}{'OF1/top-3':>11}")  # fmt: skip
        base = r["rules"]["top-3"]["OF1"]
        for rule, m in r["rules"].items():
            ratio = m["OF1"] / base if base else float("nan")
            lines.append(f"  {rule:<12}" + "".join(f"{100 * m[k]:7.2f}" for k in cols)
                         + f"{m['tags']:7.2f}{100 * m['empty']:6.1f}%{ratio:11.3f}")  # fmt: skip
        lines.append("")
    lines.append(
        "calibrated = seen labels' own thresholds shrunk toward the default one, the default "
        "threshold for the others; unshrunk = the seen labels' own thresholds as they are; "
        "test-oracle = per-label thresholds fitted on the test set (not a rule; no val->test gap). "
        "Values in %; iP / iR per image; tags per image; empty: images without a tag."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench tagger", description=__doc__.split("\n")[0]
    )
    p.add_argument("--images", type=int, nargs=2, default=[2000, 800], metavar=("TRAIN", "TEST"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--quick", action="store_true", help="the demo's size: 600 / 300 images")
    p.add_argument("--json", help="also write the raw values to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.images = [600, 300]
    if min(args.images) < 1 or args.epochs < 1:
        p.error("--images and --epochs must be >= 1")
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run(args)
    res["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                      "platform": platform.platform(), "threads": args.threads}  # fmt: skip
    print(format_report(res))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
