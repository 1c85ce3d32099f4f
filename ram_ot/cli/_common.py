"""Shared pieces of the ``ram-ot`` subcommands: labels, image lists, errors, warnings."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class CLIError(Exception):
    """A runtime error reported as one line (exit status 1)."""


def parse_labels(text: str | None) -> list[str] | None:
    """``"a,b,c"`` or a text file with one label per line -> list; None stays None."""
    if text is None:
        return None
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    else:
        labels = [s.strip() for s in text.split(",") if s.strip()]
    return list(dict.fromkeys(labels))


def image_list(paths: list[str]) -> list[str]:
    """Files as given; directories expanded to their image files (sorted)."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(
                str(f) for f in Path(p).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            out.append(p)  # a missing file is reported (and skipped) when it is read
    return out


@contextlib.contextmanager
def warnings_to_stderr(prog: str) -> Iterator[list[str]]:
    """Print each warning as one ``prog: warning: ...`` line; yields the messages."""
    seen: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*No pretrained weights.*")
        try:
            yield seen
        finally:
            for w in caught:
                msg = str(w.message).splitlines()[0]
                seen.append(msg)
                print(f"{prog}: warning: {msg}", file=sys.stderr)
