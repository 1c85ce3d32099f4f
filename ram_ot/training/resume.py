"""What a run needs to stop anywhere and continue exactly: a sampler that skips the batches
already done, a learning-rate plan that can be extended, and a graceful stop on SIGTERM /
SIGINT (what a cluster sends at preemption).
"""

from __future__ import annotations

import copy
import math
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import Sampler

__all__ = ["GracefulStop", "LRPlan", "ResumeSampler"]


class ResumeSampler(Sampler):
    """Wrap a sampler so that one epoch can start after its first `n` indices.

    ``set_epoch(e)`` is passed on (a ``DistributedSampler`` reshuffles) and clears the skip;
    ``skip(n)`` then drops the first `n` indices of that epoch, in the same order as the
    uninterrupted epoch, without loading them. Skip whole batches (``n = batches × batch``).

    Args:
        sampler: the wrapped sampler (its order must depend only on its seed and epoch).
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch`: passed on to the wrapped sampler; clears the skip."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self._skip = 0

    def skip(self, n: int) -> None:
        """Drop the first `n` indices of the current epoch (call it after ``set_epoch``)."""
        if int(n) < 0:
            raise ValueError(f"ResumeSampler.skip: expected `n` >= 0, got {n!r}.")
        self._skip = int(n)

    def __iter__(self) -> Iterator[int]:
        for i, idx in enumerate(self.sampler):
            if i >= self._skip:
                yield idx

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self._skip)


class LRPlan:
    """A learning-rate factor ``t -> f(t)`` that a resumed run can extend (a ``LambdaLR`` lambda).

    Before any re-plan it is `base` (e.g. :class:`ram_ot.training.CosineWarmup`). A re-plan
    ``(t0, T)`` — a run resumed at step ``t0`` with a new total of ``T`` steps (``--epochs``
    changed) — keeps ``f`` up to ``t0`` and from there follows the schedule the run would
    have had with ``T`` from the start: the same base (warm-up, floor) with its
    ``total_steps`` set to ``T``. So a finished run extended with more epochs does not train
    them at the floor learning rate: the lr goes back up to the new plan's value at ``t0``
    (for ``CosineWarmup``: ``m + ½(1 − m)(1 + cos(π·t0/T))``) and decays to the floor at the
    new last step.

    A base without a ``total_steps`` attribute is re-planned by a half cosine from the
    current factor ``f(t0)`` to its floor ``m = base(∞)`` at step ``T``.

    Args:
        base: the original factor function.
        replans: ``(t0, T)`` pairs, in the order they were made.
    """

    def __init__(self, base: Callable[[int], float], replans: Sequence[Sequence[int]] = ()) -> None:
        self.base = base
        self.replans = [(int(a), int(b)) for a, b in replans]

    def floor(self) -> float:
        """m, the factor the plan decays to."""
        m = getattr(self.base, "min_factor", None)
        return float(m) if m is not None else float(self.base(10**12))

    def _factor(self, t: int, k: int) -> float:
        """f(t) under the first `k` re-plans."""
        if k == 0:
            return float(self.base(t))
        t0, total = self.replans[k - 1]
        if t < t0:
            return self._factor(t, k - 1)
        if hasattr(self.base, "total_steps"):
            b = copy.copy(self.base)
            b.total_steps = max(int(total), int(getattr(b, "warmup_steps", 0)) + 1)
            return float(b(t))
        f0, m = self._factor(t0, k - 1), self.floor()
        span = max(1, total - t0)
        return m + (f0 - m) * 0.5 * (1.0 + math.cos(math.pi * min(t - t0, span) / span))

    def __call__(self, t: int) -> float:
        return self._factor(int(t), len(self.replans))

    def replan(self, t0: int, total: int) -> None:
        """Extend (or shorten) the plan at step `t0` to end at step `total` (> `t0`)."""
        if int(total) <= int(t0):
            raise ValueError(f"LRPlan.replan: expected `total` > `t0` = {t0}, got {total!r}.")
        self.replans.append((int(t0), int(total)))

    def state(self) -> dict[str, Any]:
        """The re-plans, to store in a checkpoint (the base is rebuilt from the run's flags)."""
        return {"replans": [list(r) for r in self.replans]}


class GracefulStop:
    """Catch SIGTERM / SIGINT while training, so the run can checkpoint and exit cleanly.

    Inside ``with GracefulStop() as stop:``, the first signal only sets ``stop.signum``
    (check ``stop.requested`` between steps); a second one gets the default behaviour
    (SIGINT: ``KeyboardInterrupt``, SIGTERM: termination). Outside the main thread it does
    nothing (Python delivers signals to the main thread only).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """A signal has arrived."""
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name (``"SIGTERM"``), or ``""``."""
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second one acts

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.getsignal(s)
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
