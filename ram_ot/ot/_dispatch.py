"""Backend selection for :func:`ram_ot.ot.sinkhorn`.

Order of precedence: the explicit ``backend=`` argument, then the environment variable
``RAM_OT_SINKHORN_BACKEND``, then ``"auto"``. ``"auto"`` picks the fused Triton kernel only for
CUDA tensors when :mod:`ram_ot.ot._triton` imports and its ``probe(device)`` says it can run,
and the pure-torch solver otherwise, silently. An explicit request that cannot run raises with
the reason. Triton is imported lazily here, never when :mod:`ram_ot` is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "available_backends",
    "resolve_backend",
    "get_solver",
    "triton_status",
]

BACKENDS = ("torch", "triton")
ENV_VAR = "RAM_OT_SINKHORN_BACKEND"


def triton_status(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton backend can run on `device`, and why not."""
    try:
        from ram_ot.ot import _triton
    except Exception as exc:  # ImportError without triton, or a broken install
        return False, f"ram_ot.ot._triton cannot be imported ({type(exc).__name__}: {exc})"
    try:
        ok, reason = _triton.probe(device)
    except Exception as exc:
        return False, f"the Triton probe failed ({type(exc).__name__}: {exc})"
    return bool(ok), str(reason)


def available_backends(device: Any | None = None) -> tuple[str, ...]:
    """Names of the Sinkhorn backends that can run on `device`.

    Args:
        device: a ``torch.device`` or string; None means ``torch.get_default_device()``.

    Returns:
        ``("torch",)`` or ``("torch", "triton")``.
    """
    dev = torch.device(device) if device is not None else _default_device()
    names = ["torch"]
    if triton_status(dev)[0]:
        names.append("triton")
    return tuple(names)


def _default_device() -> torch.device:
    getter = getattr(torch, "get_default_device", None)
    return getter() if getter is not None else torch.device("cpu")


def resolve_backend(backend: str, device: torch.device, grad: str, fn: str = "sinkhorn") -> str:
    """Name of the backend to run (``"torch"`` or ``"triton"``) for this call.

    Raises:
        ValueError: unknown name (argument or environment variable), or ``grad="unroll"``
            with an explicit ``"triton"``.
        RuntimeError: an explicit ``"triton"`` that cannot run here, with the probe's reason.
    """
    choices = ("auto",) + BACKENDS
    source = "backend"
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in choices:
                opts = ", ".join(repr(c) for c in choices)
                raise ValueError(
                    f"{fn}: expected the environment variable {ENV_VAR} to be one of {opts}, got {env!r}."
                )
            backend, source = env, f"{ENV_VAR}"
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if grad == "unroll":
            raise ValueError(
                f"{fn}: grad='unroll' differentiates through the torch iterations and cannot use "
                f"backend='triton' (set by {source}); use backend='torch' or grad='implicit'."
            )
        ok, reason = triton_status(device)
        if not ok:
            raise RuntimeError(
                f"{fn}: backend='triton' (set by {source}) cannot run on {device}: {reason}."
            )
        return "triton"
    # auto
    if grad != "unroll" and device.type == "cuda" and triton_status(device)[0]:
        return "triton"
    return "torch"


def get_solver(name: str) -> Callable[..., Any]:
    """The ``solve_potentials`` function of backend `name`."""
    if name == "triton":
        from ram_ot.ot import _triton

        return _triton.solve_potentials
    from ram_ot.ot import _torch

    return _torch.solve_potentials
