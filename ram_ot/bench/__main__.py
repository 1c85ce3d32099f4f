"""Entry point: ``python -m ram_ot.bench <name> [options]``; ``--help`` lists the benchmarks."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import ram_ot.bench as _pkg


def _names() -> list[str]:
    return sorted(
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules(_pkg.__path__)
        if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = _names()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m ram_ot.bench <name> [options]\n\nbenchmarks: " + ", ".join(names))
        return 0
    name = argv[0]
    if name not in names:
        print(
            f"ram_ot.bench: unknown benchmark {name!r}; choose one of: {', '.join(names)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(f"ram_ot.bench.{name.replace('-', '_')}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
