"""Training checkpoints: model, optimisers, schedulers, GradScaler, EMA, epoch, step and the
RNG states of every rank, written atomically (temporary file + ``os.replace``).

A checkpoint is a ``torch.save`` zip archive. :func:`read_checkpoint` checks it before
unpickling (empty file, truncated or corrupt archive, CRC of every member) and raises one
:class:`CheckpointError` that names the file and says what to do. Writing leaves no
temporary file behind (a temporary file left by a killed writer of the same destination is
removed on the next save) and gives the file the mode a plain ``open`` would (umask).
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from ram_ot.training.distributed import unwrap
from ram_ot.training.ema import ModelEMA
from ram_ot.training.seeding import capture_rng_state, restore_rng_state

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

_FORMAT = "ram_ot.training/1"


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` restored besides the objects it was given.

    Attributes:
        epoch: the last completed epoch. step: optimiser steps taken. extra: the user's dict.
    """

    epoch: int
    step: int
    extra: dict[str, Any]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: empty, truncated, corrupt or not ours.

    Attributes:
        path: the file.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(
            f"load_checkpoint: cannot resume from {path}: {problem}. Move the file away (or "
            "delete it) and resume from an intact copy, or start the run again (--overwrite); "
            "ram_ot writes checkpoints atomically, so a damaged file was cut by a copy, a full "
            "disk or a storage fault."
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_prefix(path: str) -> str:
    return f".tmp-{os.path.basename(path)}-"


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

    A crash while writing leaves the previous file intact; a temporary file of the same
    destination left by a killed writer (``.tmp-<name>-*``) is removed. The file gets mode
    ``0o666 & ~umask``, as ``open`` would give it.

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
        "format": _FORMAT,
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
    prefix = _tmp_prefix(path)
    for stale in glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + "*")):
        with contextlib.suppress(OSError):
            os.remove(stale)  # left by a writer killed mid-save (SIGKILL, power loss)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def read_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Check and read a checkpoint written by :func:`save_checkpoint`, without restoring it.

    The zip archive is checked first (not empty, a complete archive, the CRC of every
    member), so that a damaged file gives one clear error instead of a raw
    ``PytorchStreamReader`` / EOF / unpickling error.

    Args:
        path: the file.
        map_location: where tensors are loaded.

    Returns:
        The saved dict (``"model"``, ``"optimizers"``, ..., ``"epoch"``, ``"step"``, ``"extra"``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is empty, truncated, corrupt or not a ram_ot checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: checkpoint not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(path, "the file is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(
            path, f"it is not a complete checkpoint archive ({size} bytes; {e}), e.g. truncated"
        ) from None
    if bad is not None:
        raise CheckpointError(path, f"the archive is corrupt (CRC mismatch in {bad!r})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means unreadable
        raise CheckpointError(
            path, f"its contents cannot be read ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise CheckpointError(path, "it is not a ram_ot training checkpoint")
    return state


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
    state: dict[str, Any] | None = None,
) -> Checkpoint:
    """Restore a checkpoint written by :func:`save_checkpoint` into the given objects.

    Args:
        path: the file.
        model, optimizers, schedulers, scaler, ema: restored in place (same structure as saved).
        map_location: where tensors are loaded.
        rank: this process's rank; it gets the RNG state saved for it (``rank % n_saved``).
        restore_rng: restore the RNG states (default).
        state: what :func:`read_checkpoint` returned for `path` (read again when None).

    Returns:
        :class:`Checkpoint` ``(epoch, step, extra)``.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_checkpoint`.
    """
    path = os.fspath(path)
    if state is None:
        state = read_checkpoint(path, map_location=map_location)
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
