"""``ram-ot export``: a tagger file over a fixed label set as a ``torch.export`` program.

::

    ram-ot export --checkpoint tagger.pt --out tagger.pt2 [--labels "cat,dog,..."] \\
        [--max-iter 100] [--device cpu] [--static-batch]

Writes :meth:`ram_ot.tagger.Tagger.export`'s ``.pt2`` file: preprocessed images (B, 3, H, W)
in, ``scores`` / ``logits_global`` / ``logits_local`` (and, for a calibrated tagger,
``presence``) out; the labels, preprocessing and thresholds are stored with it. Load it with
``ram_ot.inference.load_exported(path)`` or ``torch.export.load(path).module()``.
"""

from __future__ import annotations

import argparse
import sys
import time

from ram_ot.cli._common import CLIError, parse_labels, warnings_to_stderr

PROG = "ram-ot export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Export a tagger file as a torch.export program (.pt2)."
    )
    p.add_argument("--checkpoint", required=True, help="a tagger file (ram_ot.save_tagger)")
    p.add_argument("--out", required=True, help="the .pt2 file to write")
    p.add_argument("--labels", help="the fixed label set (comma-separated or a file); "
                   "default: the tagger's vocabulary")  # fmt: skip
    p.add_argument("--max-iter", type=int, default=None,
                   help="Sinkhorn iterations, all run (default: the tagger's, 100)")  # fmt: skip
    p.add_argument("--pretrained", help="local copy of the tagger's CLIP weights")
    p.add_argument("--device", default="cpu", help="device the program is for (default cpu)")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch size to 2 instead of any batch size")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    from ram_ot.backbones._hub import WeightsUnavailableError
    from ram_ot.tagger import Tagger

    labels = parse_labels(args.labels)
    with warnings_to_stderr(PROG):
        try:
            tagger = Tagger.load(args.checkpoint, args.device, pretrained=args.pretrained)
            n = len(labels if labels is not None else tagger.labels)
            t0 = time.perf_counter()
            path = tagger.export(
                args.out, labels, max_iter=args.max_iter, dynamic_batch=not args.static_batch
            )
        except (WeightsUnavailableError, FileNotFoundError, ValueError, TypeError) as exc:
            raise CLIError(str(exc).strip().splitlines()[0]) from None
    print(f"wrote {path} ({n} labels, exported in {time.perf_counter() - t0:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ram-ot export``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except CLIError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
