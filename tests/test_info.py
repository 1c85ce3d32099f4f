"""Tests of ``python -m ram_ot.info`` (``ram_ot/info.py``)."""

from __future__ import annotations

import runpy
from importlib import metadata

import pytest
import torch

from ram_ot import info
from ram_ot.ot import _triton


def test_collect_reports_versions_devices_and_backends():
    env = info.collect()
    assert env.versions["torch"] == torch.__version__
    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = "not installed"
    assert env.versions["triton"] == triton_version
    assert env.versions["numpy"] == metadata.version("numpy")
    assert env.devices[0].startswith("cpu")
    assert len(env.devices) == 1 + (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    by_key = {(s.device, s.backend): s for s in env.backends}
    assert by_key[("cpu", "torch")].ok
    # the triton row says exactly what the kernel's own probe says
    ok, reason = _triton.probe(torch.device("cpu"))
    assert by_key[("cpu", "triton")].ok == ok
    assert by_key[("cpu", "triton")].reason == reason
    assert env.auto["cpu"] == "torch"  # auto uses Triton only on CUDA tensors


# runpy warns that the module is already imported (by this test file); harmless here
@pytest.mark.filterwarnings("ignore:'ram_ot.info' found in sys.modules:RuntimeWarning")
def test_module_entry_point_prints_the_report(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("ram_ot.info", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for needle in (
        "versions:",
        "torch",
        "triton",
        "open_clip",
        "numpy",
        "sinkhorn backends:",
        'backend="auto" picks:',
    ):
        assert needle in out, needle
    line = next(x for x in out.splitlines() if x.split()[:2] == ["cpu", "triton"])
    assert ("yes" in line.split()[2]) == _triton.probe(torch.device("cpu"))[0]


def test_bad_backend_environment_variable_is_reported_not_raised(monkeypatch, capsys):
    monkeypatch.setenv("RAM_OT_SINKHORN_BACKEND", "bogus")
    assert info.main([]) == 0
    out = capsys.readouterr().out
    assert "RAM_OT_SINKHORN_BACKEND=bogus" in out
    assert "error:" in out and "bogus" in out
