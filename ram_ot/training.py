"""Reusable training pieces for RAM and similar models (paper §4.1 "Implementation details").

What the example scripts share, so that they stay thin:

* :func:`seed_everything`, :func:`capture_rng_state` / :func:`restore_rng_state`;
* :class:`ModelEMA` — exponential moving average of the trained weights, created once for
  the whole run (the reference re-creates it at every epoch, which restarts the average
  from the current weights; we keep one);
* :func:`build_optimizers` — the reference's split (``solver/make_optimizer.py``): AdamW
  over the adapters (``lr × 0.1``) and the head temperatures (``lr``), and a second
  optimiser, SGD with momentum 0.9 at 1e-3, for the learnable token embeddings;
* :func:`build_schedulers` — linear warm-up then cosine decay (the reference's timm-style
  ``CosineLRScheduler`` with ``warmup_lr_init = 0.01·lr``, ``lr_min = 0.002·lr``), stepped
  per iteration instead of per epoch;
* :func:`save_checkpoint` (atomic: temporary file + ``os.replace``) and
  :func:`load_checkpoint` — model, optimisers, schedulers, GradScaler, EMA, epoch, step and
  the RNG states (Python, NumPy, torch CPU and CUDA) of every rank;
* :func:`train_step`, :func:`train_one_epoch`, :func:`evaluate_zsl` — the loop bodies;
* a small ``torch.distributed`` helper: :func:`init_distributed` (from ``torchrun``'s
  environment; NCCL on GPUs, Gloo on CPU), :class:`ShardSampler`, :func:`all_gather_objects`.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from ram_ot._checks import check_positive
from ram_ot.metrics import EvalResult, MultiLabelMetrics, SplitResult

__all__ = [
    "Checkpoint",
    "CosineWarmup",
    "DistInfo",
    "EpochStats",
    "ModelEMA",
    "ShardSampler",
    "all_gather_objects",
    "autocast",
    "barrier",
    "build_optimizers",
    "build_schedulers",
    "capture_rng_state",
    "cleanup_distributed",
    "evaluate_split",
    "evaluate_zsl",
    "init_distributed",
    "load_checkpoint",
    "make_grad_scaler",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "train_one_epoch",
    "train_step",
    "unwrap",
]


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python's, NumPy's and torch's (CPU and all CUDA devices) random generators.

    Args:
        seed: the seed.
        deterministic: also ask torch for deterministic kernels (cuDNN, ``use_deterministic_algorithms``
            in warn-only mode). Slower on GPUs.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def capture_rng_state() -> dict[str, Any]:
    """The current states of Python's, NumPy's and torch's (CPU, CUDA) generators."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ------------------------------------------------------------------------ distributed


class DistInfo(NamedTuple):
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank. world_size: number of processes. local_rank: rank on this node.
        device: the device this process uses.
        distributed: whether a process group was initialised.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes checkpoints)."""
        return self.rank == 0


def init_distributed(
    *, device: str | torch.device | None = None, backend: str | None = None
) -> DistInfo:
    """Join the process group described by ``torchrun``'s environment, if any.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``
    through ``init_method="env://"``). Without them (``WORLD_SIZE`` unset or 1) nothing is
    initialised. Works across nodes: ``torchrun --nnodes N --node-rank i --rdzv-endpoint ...``.

    Args:
        device: ``"cuda"``, ``"cpu"`` or None (CUDA if available). On CUDA the process uses
            device ``LOCAL_RANK``.
        backend: process-group backend; default NCCL on CUDA, Gloo on CPU.

    Returns:
        :class:`DistInfo`.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
        try:
            dist.init_process_group(backend=backend, init_method="env://", **kwargs)
        except TypeError:  # torch < 2.3 has no `device_id`
            dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, True)


def cleanup_distributed() -> None:
    """Destroy the default process group if one is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """``torch.distributed.barrier()`` when distributed, else nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (``[obj]`` when not distributed). Picklable objects only."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a dataset, in order, without padding.

    For evaluation under DDP: unlike ``DistributedSampler`` no index is repeated to even out
    the shards, so metrics gathered from all ranks count each image exactly once.
    """

    def __init__(self, n: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or `model`)."""
    return (
        model.module
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )


# -------------------------------------------------------------------------------- EMA


def _ema_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """Trainable parameters, and floating buffers of modules that own a trainable parameter."""
    params = [n for n, p in model.named_parameters() if p.requires_grad]
    buffers = []
    for mod_name, mod in model.named_modules():
        if any(p.requires_grad for p in mod.parameters(recurse=False)):
            for b_name, b in mod.named_buffers(recurse=False):
                if b.is_floating_point():
                    buffers.append(f"{mod_name}.{b_name}" if mod_name else b_name)
    return params, buffers


class ModelEMA:
    """Exponential moving average of a model's trained weights.

    ``ema ← decay · ema + (1 − decay) · weight`` after every optimiser step, over the
    trainable parameters and the floating buffers (e.g. BatchNorm statistics) of the
    modules that hold them; frozen weights are not copied. Create it **once**, after the
    model is built (and before wrapping it in DDP, or pass the wrapper: it is unwrapped).

    Args:
        model: the model.
        decay: the reference's ``EMA_DECAY`` 0.9997 by default.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` at update n, so that short runs are
            not dominated by the initial weights (off by default, as the reference).

    Example:
        >>> ema = ModelEMA(model)  # doctest: +SKIP
        >>> ... optimizer.step(); ema.update(model)  # doctest: +SKIP
        >>> with ema.swapped(model):  # evaluate with the averaged weights  # doctest: +SKIP
        ...     evaluate(model)
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, *, warmup: bool = False) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ModelEMA: expected `decay` in [0, 1), got {decay!r}.")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        model = unwrap(model)
        params, buffers = _ema_names(model)
        if not params:
            raise ValueError("ModelEMA: expected a model with trainable parameters, got none.")
        self.param_names, self.buffer_names = params, buffers
        tensors = self._tensors(model)
        self.shadow: dict[str, Tensor] = {n: t.detach().clone() for n, t in tensors.items()}

    def _tensors(self, model: nn.Module) -> dict[str, Tensor]:
        model = unwrap(model)
        p = dict(model.named_parameters())
        b = dict(model.named_buffers())
        out = {n: p[n] for n in self.param_names}
        out.update({n: b[n] for n in self.buffer_names})
        return out

    def current_decay(self) -> float:
        """Decay used by the next :meth:`update`."""
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights."""
        d = self.current_decay()
        cur = self._tensors(model)
        shadow = list(self.shadow.values())
        new = [cur[n].detach().to(s.dtype) for n, s in self.shadow.items()]
        torch._foreach_lerp_(shadow, new, 1.0 - d)  # s += (1 - d) (w - s)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s tracked weights with the average."""
        for n, t in self._tensors(model).items():
            t.copy_(self.shadow[n])

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context in which `model` holds the averaged weights; its own are restored after."""
        tensors = self._tensors(model)
        backup = {n: t.detach().clone() for n, t in tensors.items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, t in tensors.items():
                    t.copy_(backup[n])

    def state_dict(self) -> dict[str, Any]:
        """Shadow weights and counters."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": dict(self.shadow),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the tracked names must match)."""
        missing = sorted(set(self.shadow) ^ set(state["shadow"]))
        if missing:
            raise ValueError(
                f"ModelEMA.load_state_dict: expected the same tracked weights, got differences in {missing[:5]}."
            )
        self.decay, self.warmup, self.num_updates = (
            float(state["decay"]),
            bool(state["warmup"]),
            int(state["num_updates"]),
        )
        with torch.no_grad():
            for n, s in self.shadow.items():
                s.copy_(state["shadow"][n])


# --------------------------------------------------------------- optimisers, schedules


def build_optimizers(
    model: nn.Module,
    *,
    lr: float = 5e-5,
    weight_decay: float = 1e-4,
    lr_mult: float = 0.1,
    lr_embeds: float = 1e-3,
    weight_decay_embeds: float = 1e-4,
    momentum: float = 0.9,
) -> list[torch.optim.Optimizer]:
    """Optimisers of the reference: AdamW over adapters and head, SGD over token embeddings.

    Uses ``model.param_groups(lr, weight_decay, lr_mult=..., lr_embeds=...,
    weight_decay_embeds=...)`` when the model has it (:class:`ram_ot.model.RAM` does): the
    group named ``"embeds"`` goes to ``SGD(momentum)``, the others to AdamW. Any other model
    gets one AdamW over its trainable parameters.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        lr: base learning rate (reference ``BASE_LR`` 5e-5).
        weight_decay: AdamW weight decay (1e-4).
        lr_mult: factor of the adapters' learning rate (0.1).
        lr_embeds: SGD learning rate of the token embeddings (``BASE_LR_SGD`` 1e-3).
        weight_decay_embeds: their weight decay (1e-4).
        momentum: SGD momentum (0.9).

    Returns:
        ``[adamw]`` or ``[adamw, sgd]``; each group keeps its ``"name"``.
    """
    check_positive("build_optimizers", "lr", lr)
    m = unwrap(model)
    if hasattr(m, "param_groups") and callable(m.param_groups):
        groups = m.param_groups(
            lr,
            weight_decay,
            lr_mult=lr_mult,
            lr_embeds=lr_embeds,
            weight_decay_embeds=weight_decay_embeds,
        )
    else:
        params = [p for p in m.parameters() if p.requires_grad]
        groups = [{"name": "all", "params": params, "lr": lr, "weight_decay": weight_decay}]
    adam = [g for g in groups if g.get("name") != "embeds" and g["params"]]
    sgd = [g for g in groups if g.get("name") == "embeds" and g["params"]]
    if not adam and not sgd:
        raise ValueError("build_optimizers: expected a model with trainable parameters, got none.")
    out: list[torch.optim.Optimizer] = []
    if adam:
        out.append(torch.optim.AdamW(adam, lr=lr, weight_decay=weight_decay))
    if sgd:
        out.append(
            torch.optim.SGD(sgd, lr=lr_embeds, momentum=momentum, weight_decay=weight_decay_embeds)
        )
    return out


class CosineWarmup:
    """Learning-rate factor: linear warm-up, then cosine decay (a ``LambdaLR`` lambda).

    ``f(t) = w + (1 − w)·t / T_w`` for ``t < T_w``, else
    ``m + ½(1 − m)(1 + cos(π·min(t, T)/T))`` — ``t`` counts optimiser steps from 0 and, as
    in the reference's scheduler (``warmup_prefix=False``), the cosine's clock includes the
    warm-up steps.

    Args:
        total_steps: T, the length of the cosine.
        warmup_steps: T_w (0 = none).
        warmup_init: w, the factor at step 0 (reference 0.01).
        min_factor: m, the final factor (reference 0.002).
    """

    def __init__(
        self,
        total_steps: int,
        *,
        warmup_steps: int = 0,
        warmup_init: float = 0.01,
        min_factor: float = 0.002,
    ) -> None:
        if int(total_steps) < 1:
            raise ValueError(f"CosineWarmup: expected `total_steps` >= 1, got {total_steps!r}.")
        if int(warmup_steps) < 0:
            raise ValueError(f"CosineWarmup: expected `warmup_steps` >= 0, got {warmup_steps!r}.")
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)
        self.warmup_init, self.min_factor = float(warmup_init), float(min_factor)

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.warmup_init + (1.0 - self.warmup_init) * t / self.warmup_steps
        tt = min(t, self.total_steps)
        return self.min_factor + 0.5 * (1.0 - self.min_factor) * (
            1.0 + math.cos(math.pi * tt / self.total_steps)
        )


def build_schedulers(
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_init: float = 0.01,
    min_factor: float = 0.002,
) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """One :class:`CosineWarmup` ``LambdaLR`` per optimiser; call ``.step()`` after each optimiser step."""
    sched = CosineWarmup(
        total_steps, warmup_steps=warmup_steps, warmup_init=warmup_init, min_factor=min_factor
    )
    return [torch.optim.lr_scheduler.LambdaLR(o, sched) for o in optimizers]


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


# -------------------------------------------------------------------------- checkpoints


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


class EpochStats(NamedTuple):
    """Summary of :func:`train_one_epoch`.

    Attributes:
        loss: mean training loss.
        steps: optimiser steps in the epoch.
        images: images seen by this rank.
        seconds: wall time.
        step: global step count after the epoch.
    """

    loss: float
    steps: int
    images: int
    seconds: float
    step: int


def train_step(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    labels: Sequence[str] | Tensor,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    schedulers: Sequence[Any] = (),
    scaler: torch.amp.GradScaler | None = None,
    ema: ModelEMA | None = None,
    amp: bool = False,
    max_grad_norm: float | None = None,
) -> Tensor:
    """One optimisation step: forward with targets, backward, step every optimiser.

    Args:
        model: returns an object with a ``loss`` attribute from ``model(images, labels, targets)``.
        images: (B, 3, H, W) float32, on the model's device.
        targets: (B, C) float32 multi-hot over `labels`.
        labels: C label names (or (C, D) embeddings).
        optimizers: stepped in order (through `scaler` if given).
        schedulers: stepped after the optimisers.
        scaler: a GradScaler (float16 autocast on CUDA), or None.
        ema: updated after the step.
        amp: autocast the forward.
        max_grad_norm: clip the gradient norm of each optimiser's parameters (None: no clipping).

    Returns:
        () float32, the loss, detached (no device sync).
    """
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    with autocast(images.device, enabled=amp):
        out = model(images, labels, targets)
    loss = out.loss
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            for o in optimizers:
                scaler.unscale_(o)
        _clip(optimizers, max_grad_norm)
        for o in optimizers:
            scaler.step(o)
        scaler.update()
    else:
        loss.backward()
        _clip(optimizers, max_grad_norm)
        for o in optimizers:
            o.step()
    for s in schedulers:
        s.step()
    if ema is not None:
        ema.update(model)
    return loss.detach()


def _clip(optimizers: Sequence[torch.optim.Optimizer], max_norm: float | None) -> None:
    if max_norm is None:
        return
    for o in optimizers:
        params = [p for g in o.param_groups for p in g["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, max_norm)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    labels: Sequence[str] | Tensor,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    device: torch.device | str,
    schedulers: Sequence[Any] = (),
    scaler: torch.amp.GradScaler | None = None,
    ema: ModelEMA | None = None,
    amp: bool = False,
    max_grad_norm: float | None = None,
    step: int = 0,
    progress: bool = False,
    desc: str = "train",
    log: Callable[[str], None] | None = None,
    log_every: int = 0,
) -> EpochStats:
    """Run :func:`train_step` over a loader of ``(images, targets)`` batches.

    Args:
        model, labels, optimizers, schedulers, scaler, ema, amp, max_grad_norm: see :func:`train_step`.
        loader: yields (B, 3, H, W) images and (B, C) targets.
        device: where batches are moved (non-blocking).
        step: global step count before the epoch.
        progress: show a tqdm bar (its postfix shows the running loss every few steps).
        desc: bar label. log: called with a progress line every `log_every` steps (0: never).

    Returns:
        :class:`EpochStats`.
    """
    device = torch.device(device)
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_steps = n_images = 0
    t0 = time.perf_counter()
    bar = None
    it: Iterable[Any] = loader
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
        it = bar
    for images, targets in it:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        loss = train_step(
            model, images, targets, labels, optimizers, schedulers=schedulers, scaler=scaler, ema=ema,
            amp=amp, max_grad_norm=max_grad_norm,
        )  # fmt: skip
        total += loss
        n_steps += 1
        n_images += int(images.shape[0])
        step += 1
        every = log_every if log_every > 0 else 0
        if (bar is not None and n_steps % 10 == 0) or (every and n_steps % every == 0):
            mean = float(total) / n_steps
            if bar is not None:
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{optimizers[0].param_groups[0]['lr']:.2e}")
            if every and n_steps % every == 0 and log is not None:
                log(f"{desc} step {n_steps}: loss {mean:.4f}")
    if bar is not None:
        bar.close()
    mean = float(total) / max(1, n_steps)
    return EpochStats(mean, n_steps, n_images, time.perf_counter() - t0, step)


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    labels: Sequence[str],
    *,
    device: torch.device | str,
    ks: Sequence[int] = (3, 5),
    amp: bool = False,
    score: str = "scores",
    progress: bool = False,
    desc: str = "eval",
) -> SplitResult:
    """Score one test split and compute its metrics (gathered over ranks under torch.distributed).

    Args:
        model: ``model(images, labels)`` returns an object with a `score` attribute (B, C).
        loader: yields (B, 3, H, W) images and (B, C) targets over `labels`; under DDP give
            each rank its own shard (:class:`ShardSampler`).
        labels: the C label names ranked.
        device: where batches go. ks: top-K values. amp: autocast the forward.
        score: which output is ranked (``"scores"``, the reference's fused softmax, by default).
        progress: tqdm bar. desc: its label.

    Returns:
        :class:`ram_ot.metrics.SplitResult` (the same on every rank).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = MultiLabelMetrics(len(labels), ks=tuple(k for k in ks if k <= len(labels)))
    it: Iterable[Any] = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    text = None
    for images, targets in it:
        images = images.to(device, non_blocking=True)
        with autocast(device, enabled=amp):
            if text is None and hasattr(model, "encode_labels"):
                text = model.encode_labels(list(labels))  # the label embeddings, once per split
            out = model(images, text if text is not None else list(labels))
        metrics.update(getattr(out, score).float(), targets)
    metrics.sync()
    model.train(was_training)
    return metrics.compute()


def evaluate_zsl(
    model: nn.Module,
    zsl_loader: Iterable[tuple[Tensor, Tensor]],
    gzsl_loader: Iterable[tuple[Tensor, Tensor]],
    *,
    unseen: Sequence[str],
    gzsl_labels: Sequence[str],
    device: torch.device | str,
    ks: Sequence[int] = (3, 5),
    amp: bool = False,
    score: str = "scores",
    progress: bool = False,
) -> EvalResult:
    """ZSL (unseen labels on the unseen test set) and GZSL (all labels) metrics in one call.

    Args:
        model: see :func:`evaluate_split` (a DDP wrapper is unwrapped).
        zsl_loader: batches with targets over `unseen`.
        gzsl_loader: batches with targets over `gzsl_labels` = ``sorted(seen) + sorted(unseen)``.
        unseen, gzsl_labels: the label lists.
        device, ks, amp, score, progress: see :func:`evaluate_split`.

    Returns:
        :class:`ram_ot.metrics.EvalResult`.
    """
    m = unwrap(model)
    common = dict(device=device, ks=ks, amp=amp, score=score, progress=progress)
    zsl = evaluate_split(m, zsl_loader, unseen, desc="ZSL", **common)
    gzsl = evaluate_split(m, gzsl_loader, gzsl_labels, desc="GZSL", **common)
    return EvalResult(zsl, gzsl, score)
