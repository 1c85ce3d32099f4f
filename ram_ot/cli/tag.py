"""``ram-ot tag``: label image files with a tagger file or a training-free pretrained CLIP.

::

    ram-ot tag photos/ img.jpg --checkpoint tagger.pt                 # training vocabulary
    ram-ot tag img.jpg --checkpoint tagger.pt --labels "cat,dog,sofa" --threshold 0.4
    ram-ot tag img.jpg --model ViT-B-16 --pretrained openai --labels labels.txt --top-k 5
    ram-ot tag img.jpg --checkpoint tagger.pt --format json --explain heatmaps/

Without ``--checkpoint`` the model is RAM without training (value–value regions + KCOT
over a frozen CLIP, as ``examples/zero_shot_tagging.py``): it has no calibration, so it
ranks (``--top-k``, default 3) but takes no ``--threshold``. A file that cannot be read is
reported on stderr and skipped; the exit status is then 1 (0 when every image was tagged,
2 for a usage error).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ram_ot.cli._common import CLIError, image_list, parse_labels, warnings_to_stderr

PROG = "ram-ot tag"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Tag images with free-text labels (RAM: ladder adapter + KCOT).",
    )
    p.add_argument("images", nargs="+", help="image files or directories")
    p.add_argument(
        "--labels",
        help="comma-separated labels or a text file (one per line); default: the tagger's "
        "training vocabulary",
    )
    p.add_argument("--checkpoint", help="a tagger file (ram_ot.save_tagger)")
    p.add_argument("--model", help="open_clip architecture, without --checkpoint (e.g. ViT-B-16)")
    p.add_argument(
        "--pretrained",
        help="with --model: open_clip tag, local checkpoint file or 'none' (default 'openai'); "
        "with --checkpoint: a local copy of the CLIP weights the tagger was trained on",
    )
    p.add_argument("--cache-dir", help="open_clip download cache")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--top-k", type=int, help="keep the K best labels")
    rule.add_argument(
        "--threshold", type=float, help="keep labels with presence probability >= T"
    )
    p.add_argument(
        "--score",
        choices=("softmax", "presence"),
        default="softmax",
        help="score printed and ranked by (default: RAM's fused softmax)",
    )
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.add_argument("--explain", metavar="DIR", help="write plan heatmaps (PNG) to DIR")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _tagger(args: argparse.Namespace, labels: list[str] | None):
    from ram_ot.backbones._hub import ensure_reachable
    from ram_ot.tagger import Tagger

    if args.checkpoint:
        return Tagger.load(
            args.checkpoint, args.device, pretrained=args.pretrained, cache_dir=args.cache_dir
        )
    from ram_ot.model import build_ram

    pretrained = args.pretrained or "openai"
    pretrained = None if pretrained.lower() == "none" else pretrained
    ensure_reachable(PROG, args.model, pretrained, cache_dir=args.cache_dir)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    # training-free RAM: value-value regions + KCOT, no adapters, tokens or prompts
    model = build_ram(
        args.model, pretrained, device=device, cache_dir=args.cache_dir,
        adapter_layers=(), n_visual_tokens=0, n_ctx=0,
    )  # fmt: skip
    tagger = Tagger(model, labels)
    tagger.clip["pretrained"] = pretrained
    return tagger


def _write(fmt: str, files: list[str], results: list, out=None) -> None:
    out = sys.stdout if out is None else out
    if fmt == "json":
        rows = [
            {"image": f, "tags": None if r is None else [{"label": t.label, "score": t.score} for t in r]}
            | ({"error": "could not be read"} if r is None else {})
            for f, r in zip(files, results, strict=True)
        ]
        json.dump(rows, out, indent=1)
        out.write("\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["image", "label", "score"])
        for f, r in zip(files, results, strict=True):
            for t in r or []:
                w.writerow([f, t.label, f"{t.score:.6g}"])
    else:
        for f, r in zip(files, results, strict=True):
            if r is not None:
                out.write(f"{f}: " + ", ".join(f"{t.label} ({t.score:.3f})" for t in r) + "\n")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ram_ot.backbones._hub import WeightsUnavailableError

    labels = parse_labels(args.labels)
    if labels is not None and not labels:
        parser.error("--labels holds no label name")
    if not args.checkpoint and not args.model:
        parser.error("give --checkpoint FILE, or --model NAME (with --pretrained TAG_OR_FILE)")
    if args.checkpoint and args.model:
        parser.error("--checkpoint and --model exclude each other (the file names its CLIP)")
    if not args.checkpoint and labels is None:
        parser.error("--labels is required without --checkpoint")
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        parser.error("--threshold must be in [0, 1]")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    files = image_list(args.images)
    if not files:
        parser.error("no image files found")
    with warnings_to_stderr(PROG):
        try:
            tagger = _tagger(args, labels)
        except (WeightsUnavailableError, FileNotFoundError, ValueError, RuntimeError) as exc:
            raise CLIError(str(exc).strip().splitlines()[0]) from None
        if tagger.calibration is None and (args.threshold is not None or args.score == "presence"):
            parser.error(
                "this model has no calibrated presence probability (no tagger file, or one "
                "saved without calibration): use --top-k"
            )
        results = tagger.predict(
            files, labels, top_k=args.top_k, threshold=args.threshold, score=args.score,
            batch_size=args.batch_size, progress=False if args.no_progress else None,
        )  # fmt: skip
        if args.explain:
            for f, r in zip(files, results, strict=True):
                if r:
                    tagger.explain(
                        f, labels, show=[t.label for t in r], out_dir=args.explain,
                        prefix=Path(f).stem,
                    )  # fmt: skip
    _write(args.format, files, results)
    bad = [f for f, r in zip(files, results, strict=True) if r is None]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ram-ot tag``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, parser)
    except CLIError as exc:
        msg = str(exc)
        print(msg if msg.startswith(("ram-ot", "Tagger", "load_clip")) else f"{PROG}: {msg}",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
