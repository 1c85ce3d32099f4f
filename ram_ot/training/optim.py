"""The reference's optimisers (``solver/make_optimizer.py``) and learning-rate schedule.

AdamW over the adapters (``lr × 0.1``) and the head temperatures (``lr``), SGD with momentum
0.9 at 1e-3 over the learnable token embeddings; linear warm-up then cosine decay (the
reference's timm-style ``CosineLRScheduler`` with ``warmup_lr_init = 0.01·lr``,
``lr_min = 0.002·lr``), stepped per iteration instead of per epoch (:class:`CosineWarmup`), or
the reference's own epoch-stepped schedule (:class:`EpochCosine`: 3 warm-up epochs from
``0.01·BASE_LR`` for every group, cosine over ``SCHEDULER_MAX_EPOCHS = 60``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ram_ot._checks import check_positive
from ram_ot.training.distributed import unwrap

__all__ = [
    "CosineWarmup",
    "EpochCosine",
    "build_epoch_schedulers",
    "build_optimizers",
    "build_schedulers",
]


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


class EpochCosine:
    """The reference's schedule for one parameter group: constant within an epoch, set per epoch.

    The reference (``solver/make_scheduler.py``, ``processor.py``) builds a timm-style cosine
    scheduler with ``t_initial = SCHEDULER_MAX_EPOCHS`` (60), ``warmup_t = WARMUP_EPOCHS`` (3),
    ``warmup_lr_init = 0.01·BASE_LR``, ``lr_min = 0.002·BASE_LR`` (both absolute, the same for
    every group and both optimisers), ``cycle_limit = 1``, and calls ``step(epoch)`` at the
    start of epoch ``e = 1, 2, ...``. The lr of a group whose configured lr is ``b`` is then,
    during epoch ``e``:

    ``lr(e) = w + e·(b − w)/E_w`` for ``e < E_w``, else
    ``m + ½(b − m)(1 + cos(π·e/E))`` for ``e < E``, else ``m`` —

    with ``w`` = `warmup_lr`, ``m`` = `min_lr`, ``E_w`` = `warmup_epochs`, ``E`` = `max_epochs`.
    Over the reference's 6 training epochs this barely decays (``lr(6) ≈ 0.976·b``).

    Used as a ``LambdaLR`` factor stepped once per optimiser step (as :func:`train_step`
    does): step ``t`` (from 0) belongs to epoch ``1 + t // steps_per_epoch``.

    Args:
        base_lr: b, the group's configured lr (> 0).
        steps_per_epoch: optimiser steps per epoch (>= 1).
        warmup_epochs: E_w (``WARMUP_EPOCHS`` 3; 0 = none).
        max_epochs: E (``SCHEDULER_MAX_EPOCHS`` 60).
        warmup_lr: w, absolute (the reference: ``0.01·BASE_LR`` = 5e-7).
        min_lr: m, absolute (the reference: ``0.002·BASE_LR`` = 1e-7).
    """

    def __init__(
        self,
        base_lr: float,
        *,
        steps_per_epoch: int,
        warmup_epochs: int = 3,
        max_epochs: int = 60,
        warmup_lr: float = 5e-7,
        min_lr: float = 1e-7,
    ) -> None:
        fn = "EpochCosine"
        check_positive(fn, "base_lr", base_lr)
        if int(steps_per_epoch) < 1:
            raise ValueError(f"{fn}: expected `steps_per_epoch` >= 1, got {steps_per_epoch!r}.")
        if int(warmup_epochs) < 0:
            raise ValueError(f"{fn}: expected `warmup_epochs` >= 0, got {warmup_epochs!r}.")
        if int(max_epochs) < 1:
            raise ValueError(f"{fn}: expected `max_epochs` >= 1, got {max_epochs!r}.")
        if warmup_lr < 0 or min_lr < 0:
            raise ValueError(
                f"{fn}: expected `warmup_lr` and `min_lr` >= 0, got {warmup_lr!r}, {min_lr!r}."
            )
        self.base_lr, self.steps_per_epoch = float(base_lr), int(steps_per_epoch)
        self.warmup_epochs, self.max_epochs = int(warmup_epochs), int(max_epochs)
        self.warmup_lr, self.min_lr = float(warmup_lr), float(min_lr)

    def lr(self, epoch: int) -> float:
        """The lr during (1-based) `epoch`."""
        e = int(epoch)
        if e < self.warmup_epochs:
            return self.warmup_lr + e * (self.base_lr - self.warmup_lr) / self.warmup_epochs
        if e >= self.max_epochs:  # cycle_limit = 1: the cycle is over
            return self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (
            1.0 + math.cos(math.pi * e / self.max_epochs)
        )

    def __call__(self, t: int) -> float:
        return self.lr(1 + int(t) // self.steps_per_epoch) / self.base_lr


def build_epoch_schedulers(
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    base_lr: float,
    steps_per_epoch: int,
    warmup_epochs: int = 3,
    max_epochs: int = 60,
    warmup_init: float = 0.01,
    min_factor: float = 0.002,
) -> list[torch.optim.lr_scheduler.LambdaLR]:
    """The reference's epoch schedule (:class:`EpochCosine`) for every group of every optimiser.

    Warm-up start and floor are absolute and shared by all groups, as in the reference:
    ``warmup_lr = warmup_init·base_lr`` and ``min_lr = min_factor·base_lr``, where `base_lr`
    is the run's ``BASE_LR`` (not the group's lr: the adapters' ``0.1·lr`` group and the SGD
    token group also warm up from ``0.01·BASE_LR``). Call ``.step()`` after each optimiser
    step (the lr changes only at epoch boundaries).

    Args:
        optimizers: e.g. from :func:`build_optimizers`.
        base_lr: the run's base lr (``BASE_LR`` 5e-5).
        steps_per_epoch, warmup_epochs, max_epochs: see :class:`EpochCosine`.
        warmup_init: ``warmup_lr / base_lr`` (0.01).
        min_factor: ``min_lr / base_lr`` (0.002).

    Returns:
        One ``LambdaLR`` per optimiser, with one :class:`EpochCosine` per group.
    """
    check_positive("build_epoch_schedulers", "base_lr", base_lr)
    out = []
    for o in optimizers:
        lambdas = [
            EpochCosine(
                g["lr"],
                steps_per_epoch=steps_per_epoch,
                warmup_epochs=warmup_epochs,
                max_epochs=max_epochs,
                warmup_lr=warmup_init * base_lr,
                min_lr=min_factor * base_lr,
            )
            for g in o.param_groups
        ]
        out.append(torch.optim.lr_scheduler.LambdaLR(o, lambdas))
    return out
