"""Environment report: ``python -m ram_ot.info``.

Prints the versions of ram_ot and its main dependencies, the devices torch sees, and which
Sinkhorn backends (:func:`ram_ot.ot.sinkhorn`, paper Sec. 3.3) can run on each device here,
with the reason when one cannot, plus what ``backend="auto"`` picks. Paste its output into
bug reports.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import NamedTuple

import torch

__all__ = ["BackendStatus", "EnvInfo", "collect", "format_info", "main"]


class BackendStatus(NamedTuple):
    """Whether one Sinkhorn backend can run on one device.

    Attributes:
        device: device string, e.g. ``"cpu"`` or ``"cuda:0"``.
        backend: ``"torch"`` or ``"triton"``.
        ok: True when the backend can run there.
        reason: why not (or how it runs).
    """

    device: str
    backend: str
    ok: bool
    reason: str


class EnvInfo(NamedTuple):
    """What :func:`collect` found.

    Attributes:
        versions: package name -> version string (``"not installed"`` when absent).
        devices: one line per device torch can use.
        backends: one :class:`BackendStatus` per (device, backend).
        auto: device string -> the backend ``backend="auto"`` picks there (or the error).
        env: the environment variables that change backend selection, with their values.
    """

    versions: dict[str, str]
    devices: list[str]
    backends: list[BackendStatus]
    auto: dict[str, str]
    env: dict[str, str]


_PACKAGES = (
    ("ram_ot", "ram-ot"),
    ("torch", "torch"),
    ("triton", "triton"),
    ("open_clip", "open_clip_torch"),
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("pot", "pot"),
)
_ENV_VARS = ("RAM_OT_SINKHORN_BACKEND", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES")


def _version(dist: str) -> str:
    # metadata only: importing open_clip or triton here would be slow or have side effects
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect() -> EnvInfo:
    """Gather versions, devices and backend availability (imports Triton only through the probe)."""
    from ram_ot._version import __version__
    from ram_ot.ot._dispatch import resolve_backend, triton_status

    versions = {name: _version(dist) for name, dist in _PACKAGES}
    versions["ram_ot"] = __version__
    versions["torch"] = torch.__version__
    versions["python"] = platform.python_version()
    cuda = torch.version.cuda or (f"HIP {torch.version.hip}" if torch.version.hip else None)
    versions["torch CUDA build"] = cuda or "none (CPU build)"

    devs = [torch.device("cpu")]
    lines = [
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(
                f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB"
            )
            devs.append(torch.device("cuda", i))
    else:
        lines.append("cuda: not available")

    statuses: list[BackendStatus] = []
    auto: dict[str, str] = {}
    for dev in devs:
        name = str(dev)
        statuses.append(BackendStatus(name, "torch", True, "pure PyTorch, any device"))
        ok, reason = triton_status(dev)
        statuses.append(BackendStatus(name, "triton", ok, reason))
        try:
            auto[name] = resolve_backend("auto", dev, "detach")
        except (ValueError, RuntimeError) as exc:
            auto[name] = f"error: {exc}"
    env = {k: os.environ.get(k, "(unset)") for k in _ENV_VARS}
    return EnvInfo(versions, lines, statuses, auto, env)


def format_info(info: EnvInfo) -> str:
    """The report :func:`main` prints."""
    out = ["ram_ot environment", "", "versions:"]
    width = max(len(k) for k in info.versions)
    out += [f"  {k:<{width}}  {v}" for k, v in info.versions.items()]
    out += ["", "devices:"] + [f"  {line}" for line in info.devices]
    out += ["", "environment:"] + [f"  {k}={v}" for k, v in info.env.items()]
    out += ["", "sinkhorn backends:"]
    for s in info.backends:
        mark = "yes" if s.ok else "no "
        out.append(f"  {s.device:<7} {s.backend:<7} {mark}  {s.reason}")
    out += ["", 'backend="auto" picks:'] + [f"  {d:<7} {b}" for d, b in info.auto.items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print the report; returns the exit status (0)."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: python -m ram_ot.info\n\nPrints versions, devices and which Sinkhorn backends can run here."
        )
        return 0
    print(format_info(collect()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
