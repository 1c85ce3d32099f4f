"""Argument and tensor validation with one error-message template.

Every public entry point validates its input here, so that all errors read alike::

    sinkhorn: expected `a` of shape (B, N) = (4, 196), got (4, 195).

Shape and dtype checks only read tensor metadata and always run. Value checks that need
the data (NaN/Inf scans, which force a device sync) run only when the caller asks for them
(``validate=True`` on the public functions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ConvergenceWarning",
    "check_tensor",
    "check_shape",
    "check_floating",
    "check_positive",
    "check_choice",
    "check_finite",
    "check_nonnegative",
    "fmt_shape",
    "is_compiling",
]

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped at ``max_iter`` before reaching its tolerance."""


def is_compiling() -> bool:
    """Whether ``torch.compile`` / ``torch.export`` is tracing: value checks (a host sync)
    and warnings are then skipped. False on torch versions without ``torch.compiler``."""
    fn = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(fn()) if fn is not None else False


def fmt_shape(shape: Sequence[Any]) -> str:
    """``(4, None, 3) -> "(4, *, 3)"``."""
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_tensor(fn: str, name: str, x: Any) -> Tensor:
    """Raise TypeError unless `x` is a torch.Tensor; return it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: expected `{name}` to be a torch.Tensor, got {type(x).__name__}.")
    return x


def check_shape(
    fn: str,
    name: str,
    x: Tensor,
    dims: Sequence[tuple[str, int | None]],
) -> None:
    """Raise ValueError unless `x` has the shape named by `dims`.

    Args:
        fn: name of the public function, first word of the message.
        name: argument name.
        x: the tensor.
        dims: one ``(letter, size)`` per dimension; ``size=None`` matches any size.

    Example:
        ``check_shape("sinkhorn", "a", a, [("B", 4), ("N", 196)])`` raises
        ``sinkhorn: expected `a` of shape (B, N) = (4, 196), got (4, 195).``
    """
    check_tensor(fn, name, x)
    sizes = [s for _, s in dims]
    ok = x.dim() == len(dims) and all(
        s is None or s == d for s, d in zip(sizes, x.shape, strict=False)
    )
    if not ok:
        letters = "(" + ", ".join(letter for letter, _ in dims) + ")"
        want = letters if all(s is None for s in sizes) else f"{letters} = {fmt_shape(sizes)}"
        raise ValueError(f"{fn}: expected `{name}` of shape {want}, got {tuple(x.shape)}.")


def check_floating(
    fn: str, name: str, x: Tensor, allowed: Sequence[torch.dtype] = FLOATING
) -> None:
    """Raise TypeError unless `x` has a floating dtype in `allowed`."""
    check_tensor(fn, name, x)
    if x.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(
            f"{fn}: expected `{name}` with a floating dtype ({names}), "
            f"got {str(x.dtype).replace('torch.', '')}."
        )


def check_positive(fn: str, name: str, value: Any, *, allow_inf: bool = False) -> float:
    """Raise ValueError unless `value` is a real number > 0 (finite unless `allow_inf`)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{fn}: expected `{name}` to be a positive number, got {value!r}."
        ) from None
    if not (v > 0) or (math.isinf(v) and not allow_inf) or math.isnan(v):
        raise ValueError(
            f"{fn}: expected `{name}` > 0{'' if allow_inf else ' and finite'}, got {value!r}."
        )
    return v


def check_choice(fn: str, name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ValueError unless `value` is one of `choices`."""
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{fn}: expected `{name}` to be one of {opts}, got {value!r}.")


def check_finite(fn: str, name: str, x: Tensor) -> None:
    """Raise ValueError if `x` holds NaN or Inf (reads the data: forces a device sync)."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{fn}: expected `{name}` to be finite, got {n_bad} NaN/Inf entries.")


def check_nonnegative(fn: str, name: str, x: Tensor) -> None:
    """Raise ValueError if `x` holds a negative or non-finite entry (reads the data)."""
    if not bool((torch.isfinite(x) & (x >= 0)).all()):
        raise ValueError(
            f"{fn}: expected `{name}` to be finite and >= 0, got a negative or non-finite entry."
        )
