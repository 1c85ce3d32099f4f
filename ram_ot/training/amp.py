"""Mixed precision: float16 autocast with a GradScaler on CUDA, bfloat16 on CPU."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "make_grad_scaler"]


def make_grad_scaler(device: torch.device, *, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler for float16 autocast on CUDA (disabled elsewhere: bfloat16 needs none)."""
    on = bool(enabled) and device.type == "cuda"
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=on)
    return torch.cuda.amp.GradScaler(enabled=on)  # torch < 2.3


def autocast(device: torch.device, *, enabled: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast``: float16 on CUDA, bfloat16 on CPU; a null context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)
