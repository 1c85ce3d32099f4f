"""Exponential moving average of the trained weights (the reference's ``EMA_DECAY``).

By default created once for the whole run. The reference (``processor.py``,
``utils/model_utils.py``) re-creates it at the start of every epoch, which restarts the
average from the current weights, and copies the model's global temperature into the
average at every update instead of averaging it; :meth:`ModelEMA.reset` and the `copy`
argument reproduce that (``--ema-mode official`` of the training script).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ram_ot.training.distributed import unwrap

__all__ = ["ModelEMA"]


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
        copy: names of tracked weights that are copied from the model at every update
            instead of averaged (the reference copies its global temperature: for
            :class:`ram_ot.model.RAM` pass ``("head.temperature_global",)``). Default none.

    Example:
        >>> ema = ModelEMA(model)  # doctest: +SKIP
        >>> ... optimizer.step(); ema.update(model)  # doctest: +SKIP
        >>> with ema.swapped(model):  # evaluate with the averaged weights  # doctest: +SKIP
        ...     evaluate(model)
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9997,
        *,
        warmup: bool = False,
        copy: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"ModelEMA: expected `decay` in [0, 1), got {decay!r}.")
        if isinstance(copy, str):
            raise TypeError(f"ModelEMA: expected `copy` to be a sequence of names, got {copy!r}.")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        model = unwrap(model)
        params, buffers = _ema_names(model)
        if not params:
            raise ValueError("ModelEMA: expected a model with trainable parameters, got none.")
        self.param_names, self.buffer_names = params, buffers
        unknown = [n for n in copy if n not in set(params) | set(buffers)]
        if unknown:
            raise ValueError(
                f"ModelEMA: expected `copy` to name tracked weights, got {unknown} (tracked: "
                f"{(params + buffers)[:8]}...)."
            )
        self.copy_names = tuple(copy)
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
        for n in self.copy_names:
            self.shadow[n].copy_(cur[n].detach())
        self.num_updates += 1

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from `model`'s current weights (the reference does so each epoch)."""
        for n, t in self._tensors(model).items():
            self.shadow[n].copy_(t.detach())
        self.num_updates = 0

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
