"""Training checkpoints: model, optimisers, schedulers, GradScaler, EMA, epoch, step and the
RNG states of every rank, written atomically (temporary file + ``os.replace``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ram_ot.training.distributed import unwrap
from ram_ot.training.ema import ModelEMA
from ram_ot.training.seeding import capture_rng_state, restore_rng_state

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` restored besides the objects it was given.

    Attributes:
        epoch: the last completed epoch. step: optimiser steps taken. extra: the user's dict.
    """

    epoch: int
    step: int
    extra: dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    schedulers: Sequence[Any] = (),
    scaler: torch.amp.GradScaler | None = None,
    ema: ModelEMA | None = None,
    epoch: int = 0,
    step: int = 0,
    rng_states: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a training checkpoint atomically (temporary file in the same directory + ``os.replace``).

    A crash while writing leaves the previous file intact.

    Args:
        path: destination file.
        model: its ``state_dict()`` is saved (:class:`ram_ot.model.RAM`'s holds only the
            trained weights); a DDP wrapper is unwrapped.
        optimizers, schedulers, scaler, ema: saved through their ``state_dict()``.
        epoch: last completed epoch. step: optimiser steps so far.
        rng_states: RNG states of every rank (:func:`all_gather_objects` of
            :func:`capture_rng_state`); default: this process's.
        extra: anything else picklable (e.g. the arguments of the run).
    """
    path = os.fspath(path)
    state = {
        "format": "ram_ot.training/1",
        "model": unwrap(model).state_dict(),
        "optimizers": [o.state_dict() for o in optimizers],
        "schedulers": [s.state_dict() for s in schedulers],
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng_states if rng_states is not None else [capture_rng_state()],
        "extra": dict(extra or {}),
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    schedulers: Sequence[Any] = (),
    scaler: torch.amp.GradScaler | None = None,
    ema: ModelEMA | None = None,
    map_location: str | torch.device = "cpu",
    rank: int = 0,
    restore_rng: bool = True,
) -> Checkpoint:
    """Restore a checkpoint written by :func:`save_checkpoint` into the given objects.

    Args:
        path: the file.
        model, optimizers, schedulers, scaler, ema: restored in place (same structure as saved).
        map_location: where tensors are loaded.
        rank: this process's rank; it gets the RNG state saved for it (``rank % n_saved``).
        restore_rng: restore the RNG states (default).

    Returns:
        :class:`Checkpoint` ``(epoch, step, extra)``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: checkpoint not found: {path}")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != "ram_ot.training/1":
        raise ValueError(f"load_checkpoint: {path} is not a ram_ot training checkpoint.")
    for name, objs in (("optimizers", optimizers), ("schedulers", schedulers)):
        if len(objs) != len(state[name]):
            raise ValueError(
                f"load_checkpoint: expected {len(state[name])} {name} as saved in {path}, got {len(objs)}."
            )
    unwrap(model).load_state_dict(state["model"])
    for o, s in zip(optimizers, state["optimizers"], strict=False):
        o.load_state_dict(s)
    for o, s in zip(schedulers, state["schedulers"], strict=False):
        o.load_state_dict(s)
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if ema is not None:
        if state["ema"] is None:
            raise ValueError(f"load_checkpoint: {path} holds no EMA state, but an `ema` was given.")
        ema.load_state_dict(state["ema"])
    if restore_rng and state.get("rng"):
        restore_rng_state(state["rng"][rank % len(state["rng"])])
    return Checkpoint(int(state["epoch"]), int(state["step"]), dict(state.get("extra") or {}))


# ------------------------------------------------------------------------------ loops
