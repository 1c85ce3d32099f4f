"""Smoke-run examples/bolt_on_kcot.py (in-process, with runpy)."""

import math
import re
import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bolt_on_kcot.py"


def test_bolt_on_example_runs(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    m = re.search(r"training step: loss (\S+), plan \(4, 36, 5\)", out)
    assert m is not None, out
    assert math.isfinite(float(m.group(1))) and float(m.group(1)) > 0
    m = re.search(r"scores \(4, 5\), top label per image: \[(\d), (\d), (\d), (\d)\]", out)
    assert m is not None, out
    assert all(0 <= int(k) < 5 for k in m.groups())
