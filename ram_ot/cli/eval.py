"""``ram-ot eval``: mAP and F1 of a tagger file on a labelled split.

::

    ram-ot eval --checkpoint tagger.pt --split-json test_65.json [--root DIR]
    ram-ot eval --checkpoint tagger.pt --coco-json annotations/instances_val2014.json \\
        --images val2014/ [--labels "cat,dog,..."] [--format json]

Reports, over the split's labels (or ``--labels``), the metrics of :mod:`ram_ot.metrics`
(mAP, top-K overall/per-class P, R, F1 for K = 3, 5) on RAM's fused softmax scores, and, for
a calibrated tagger, the P, R, F1 of its thresholded rule (the per-label thresholds of seen
labels, the default threshold for the others).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from ram_ot.cli._common import CLIError, parse_labels, warnings_to_stderr

PROG = "ram-ot eval"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Evaluate a tagger file on a split.")
    p.add_argument("--checkpoint", required=True, help="a tagger file (ram_ot.save_tagger)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split-json", help='RAM / MKT split json {"classes", "images"}')
    src.add_argument("--coco-json", help="COCO instances_*.json")
    p.add_argument("--root", help="image root of --split-json (default: its directory)")
    p.add_argument("--images", help="image directory of --coco-json")
    p.add_argument("--labels", help="labels to rank (comma-separated or a file); default: all")
    p.add_argument("--pretrained", help="local copy of the tagger's CLIP weights")
    p.add_argument("--ks", type=int, nargs="+", default=[3, 5], help="K of the top-K metrics")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device")
    p.add_argument("--format", choices=("text", "json"), default="text")
    return p


def _dataset(args: argparse.Namespace, parser: argparse.ArgumentParser, labels):
    from ram_ot.data import MultiLabelDataset, from_split_json, read_coco_instances

    if args.split_json:
        return from_split_json(args.split_json, args.root, labels=labels)
    if not args.images:
        parser.error("--coco-json needs --images DIR")
    samples, cats = read_coco_instances(args.coco_json)
    labels = labels or sorted(cats)
    missing = [c for c in labels if c not in cats]
    if missing:
        raise CLIError(f"labels {missing[:5]} are not categories of {args.coco_json}")
    resolved = [(os.path.join(args.images, f), names) for f, names in samples]
    return MultiLabelDataset(resolved, labels, source=args.coco_json)


def thresholded_prf1(predicted: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Overall precision / recall / F1 of a (N, C) bool prediction against (N, C) targets."""
    t = targets > 0
    tp = float((predicted & t).sum())
    n_pred, n_pos = float(predicted.sum()), float(t.sum())
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_pos if n_pos else 0.0
    return {"OP": p, "OR": r, "OF1": 2 * p * r / (p + r) if p + r else 0.0}


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ram_ot.backbones._hub import WeightsUnavailableError
    from ram_ot.metrics import MultiLabelMetrics
    from ram_ot.tagger import Tagger

    labels = parse_labels(args.labels)
    with warnings_to_stderr(PROG):
        try:
            tagger = Tagger.load(args.checkpoint, args.device, pretrained=args.pretrained)
            ds = _dataset(args, parser, labels)
        except (WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
            raise CLIError(str(exc).strip().splitlines()[0]) from None
        labels = list(ds.labels)
        scores, presence, ok = tagger.score(ds.paths, labels, batch_size=args.batch_size)
    keep = torch.tensor(ok)
    targets = ds.targets[keep]
    ks = tuple(k for k in args.ks if 1 <= k <= len(labels))
    m = MultiLabelMetrics(len(labels), ks=ks)
    m.update(scores[keep], targets)
    res = m.compute()
    out = {"n_labels": len(labels), "n_unreadable": int((~keep).sum()), **res.as_dict()}
    if presence is not None:
        thr = tagger.calibration.threshold_for(labels)
        pred = presence[keep].double() >= thr
        out["thresholded"] = thresholded_prf1(pred, targets)
    if args.format == "json":
        print(json.dumps(out, indent=1))
    else:
        print(f"{res.n_images} images, {len(labels)} labels ({res.n_excluded} without positive)")
        print(f"mAP      {100 * res.mAP:6.2f}")
        for k in ks:
            r = res.at_k[k]
            print(f"F1@{k:<5} {100 * r.OF1:6.2f}   (OP {100 * r.OP:.2f}, OR {100 * r.OR:.2f}, CF1 {100 * r.CF1:.2f})")
        if "thresholded" in out:
            t = out["thresholded"]
            print(f"F1@thr   {100 * t['OF1']:6.2f}   (OP {100 * t['OP']:.2f}, OR {100 * t['OR']:.2f}; calibrated thresholds)")
    return 1 if out["n_unreadable"] else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ram-ot eval``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, parser)
    except CLIError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
