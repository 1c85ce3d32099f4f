"""The training loop bodies: one optimisation step and one epoch over a loader."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ram_ot.training.amp import autocast
from ram_ot.training.ema import ModelEMA

__all__ = ["EpochProgress", "EpochStats", "NonFiniteError", "train_one_epoch", "train_step"]


class NonFiniteError(FloatingPointError):
    """A training loss or an evaluation score that is NaN or infinite.

    Attributes:
        what: ``"loss"`` or ``"scores"``.
        step: the global optimiser step at which it appeared (training), or None.
        value: the offending value (the loss; the first non-finite score).
    """

    def __init__(self, what: str, value: float, step: int | None = None, where: str = "") -> None:
        self.what, self.value, self.step = what, value, step
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"the {what} became {value}{at}{where}.")


class EpochStats(NamedTuple):
    """Summary of :func:`train_one_epoch`.

    Attributes:
        loss: mean training loss.
        steps: optimiser steps in the epoch.
        images: images seen by this rank.
        seconds: wall time.
        step: global step count after the epoch.
        stopped: `on_step` asked to stop before the end of the loader.
    """

    loss: float
    steps: int
    images: int
    seconds: float
    step: int
    stopped: bool = False


class EpochProgress(NamedTuple):
    """How far an epoch got (saved in a mid-epoch checkpoint to resume it exactly).

    Attributes:
        steps: optimiser steps done in this epoch (= batches consumed).
        images: images seen by this rank in this epoch.
        loss_sum: the sum of their losses (float64, as accumulated).
    """

    steps: int
    images: int
    loss_sum: float


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
    done: EpochProgress | None = None,
    on_step: Callable[[int, Callable[[], EpochProgress]], bool] | None = None,
    check_finite: bool = True,
) -> EpochStats:
    """Run :func:`train_step` over a loader of ``(images, targets)`` batches.

    Args:
        model, labels, optimizers, schedulers, scaler, ema, amp, max_grad_norm: see :func:`train_step`.
        loader: yields (B, 3, H, W) images and (B, C) targets.
        device: where batches are moved (non-blocking).
        step: global step count before the epoch.
        progress: show a tqdm bar (its postfix shows the running loss every few steps).
        desc: bar label. log: called with a progress line every `log_every` steps (0: never).
        done: the part of this epoch already done before a mid-epoch resume (the loader
            must then yield only the remaining batches, e.g. through
            :class:`ram_ot.training.ResumeSampler`); the epoch's mean loss counts it.
        on_step: called after every step with the global step and a function returning this
            epoch's :class:`EpochProgress` (it syncs the device); returning True stops the
            epoch there (``stopped=True``).
        check_finite: stop with :class:`NonFiniteError` at the first NaN / inf loss (one
            device sync per step).

    Returns:
        :class:`EpochStats` (its loss and step counts include `done`).

    Raises:
        NonFiniteError: the loss became NaN or infinite (`check_finite`).
    """
    device = torch.device(device)
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_steps = n_images = 0
    if done is not None:
        total += done.loss_sum
        n_steps, n_images = int(done.steps), int(done.images)
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
        step += 1
        if check_finite and not bool(torch.isfinite(loss)):
            if bar is not None:
                bar.close()
            raise NonFiniteError("loss", float(loss), step, f" ({desc}, batch {n_steps + 1})")
        total += loss
        n_steps += 1
        n_images += int(images.shape[0])
        stopped = False
        if on_step is not None:
            stopped = bool(
                on_step(step, lambda s=n_steps, i=n_images, t=total: EpochProgress(s, i, float(t)))
            )
        every = log_every if log_every > 0 else 0
        if (bar is not None and n_steps % 10 == 0) or (every and n_steps % every == 0):
            mean = float(total) / n_steps
            if bar is not None:
                bar.set_postfix(loss=f"{mean:.4f}", lr=f"{optimizers[0].param_groups[0]['lr']:.2e}")
            if every and n_steps % every == 0 and log is not None:
                log(f"{desc} step {n_steps}: loss {mean:.4f}")
        if stopped:
            break
    else:
        stopped = False
    if bar is not None:
        bar.close()
    mean = float(total) / max(1, n_steps)
    return EpochStats(mean, n_steps, n_images, time.perf_counter() - t0, step, stopped)
