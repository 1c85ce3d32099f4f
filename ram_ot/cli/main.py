"""``ram-ot``: the command installed with the package (``[project.scripts]``).

Subcommands: ``tag`` (label images with a tagger file or a training-free CLIP), ``train``
(train RAM; provided by :mod:`ram_ot.cli.train`), ``eval`` (mAP and F1 of a tagger file on a
split json or COCO instances file), ``export`` (a tagger file as a ``torch.export`` program)
and ``info`` (versions and Sinkhorn backends, as
``python -m ram_ot.info``). Exit codes: 0 success, 1 runtime error, 2 usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

USAGE = """usage: ram-ot {tag,train,eval,export,info} ...

  tag    tag images with a trained tagger file or a pretrained CLIP
  train  train RAM (COCO layout, split json or the demo data)
  eval   mAP / F1@K of a tagger file on a split json or COCO instances file
  export a tagger file over a fixed label set as a torch.export program (.pt2)
  info   versions, devices and Sinkhorn backends

'ram-ot COMMAND --help' describes a command."""


def _tag(argv: list[str]) -> int:
    from ram_ot.cli import tag

    return tag.main(argv)


def _eval(argv: list[str]) -> int:
    from ram_ot.cli import eval as eval_cli

    return eval_cli.main(argv)


def _export(argv: list[str]) -> int:
    from ram_ot.cli import export

    return export.main(argv)


def _info(argv: list[str]) -> int:
    from ram_ot import info

    return info.main(argv)


def _train(argv: list[str]) -> int:
    try:
        from ram_ot.cli import train
    except ImportError as exc:
        if exc.name != "ram_ot.cli.train":
            raise
        print(
            "ram-ot train: not available in this version of ram-ot (no ram_ot.cli.train); "
            "run examples/train_coco.py instead.",
            file=sys.stderr,
        )
        return 1
    return int(train.main(argv) or 0)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "tag": _tag,
    "train": _train,
    "eval": _eval,
    "export": _export,
    "info": _info,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ram-ot`` with `argv` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args[0] == "--version":
        from ram_ot._version import __version__

        print(f"ram-ot {__version__}")
        return 0
    cmd = COMMANDS.get(args[0])
    if cmd is None:
        print(f"ram-ot: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return int(cmd(args[1:]) or 0)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        print("ram-ot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
