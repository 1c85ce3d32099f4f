"""The reference's optimisers (``solver/make_optimizer.py``) and learning-rate schedule.

AdamW over the adapters (``lr × 0.1``) and the head temperatures (``lr``), SGD with momentum
0.9 at 1e-3 over the learnable token embeddings; linear warm-up then cosine decay (the
reference's timm-style ``CosineLRScheduler`` with ``warmup_lr_init = 0.01·lr``,
``lr_min = 0.002·lr``), stepped per iteration instead of per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ram_ot._checks import check_positive
from ram_ot.training.distributed import unwrap

__all__ = ["CosineWarmup", "build_optimizers", "build_schedulers"]


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
