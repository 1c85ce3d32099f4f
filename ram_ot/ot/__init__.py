r"""Batched entropic optimal transport (balanced and unbalanced) with Sinkhorn's algorithm.

Paper §3.3 (Knowledge-Constrained Optimal Transport): RAM matches regions to labels with the
plan of an entropic transport problem per image. :func:`sinkhorn` solves a batch of such
problems, ragged batches included, with a log-stabilised solver on any device.

For a cost :math:`C \in \mathbb{R}^{N\times M}` and masses :math:`a, b \ge 0` it returns

.. math::
    T^\star = \arg\min_{T \ge 0}\ \langle C, T\rangle + \mathrm{reg}\cdot R(T)
        + \rho_a \mathrm{KL}(T\mathbf 1 \,\|\, a) + \rho_b \mathrm{KL}(T^\top \mathbf 1 \,\|\, b)

with :math:`R(T) = \mathrm{KL}(T \,\|\, a b^\top)` (``reg_type="kl"``) or
:math:`R(T) = \sum_{ij} T_{ij}(\log T_{ij} - 1)` (``reg_type="entropy"``), the objective of
``ot.unbalanced.sinkhorn_unbalanced``. ``reg_m=None`` (or ``inf``) makes a side a hard
constraint; with both sides hard the problem is balanced entropic OT (``ot.sinkhorn``), whose
plan does not depend on ``reg_type``. See ``docs/ot.md``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ram_ot._checks import (
    ConvergenceWarning,
    check_choice,
    check_finite,
    check_floating,
    check_positive,
    check_shape,
    check_tensor,
    is_compiling,
)
from ram_ot.ot._dispatch import available_backends, get_solver, resolve_backend

__all__ = ["sinkhorn", "SinkhornResult", "available_backends", "ConvergenceWarning"]

_FN = "sinkhorn"


class SinkhornResult(NamedTuple):
    """Result of :func:`sinkhorn` (leading B dropped for an unbatched (N, M) cost).

    Attributes:
        plan: (B, N, M) dtype of `cost`. Transport plan ``exp((f_i + g_j − C_ij)/reg)``;
            exactly 0 on masked rows/columns.
        f: (B, N) float32/float64 (the iteration dtype). Row potentials, in cost units, with
            ``plan = exp((f_i + g_j − C_ij)/reg)`` for the cost given; ``-inf`` on masked rows
            and rows of zero mass.
        g: (B, M) float32/float64. Column potentials; ``-inf`` on masked columns.
        n_iter: (B,) int64. Iterations run per problem.
        error: (B,) float32/float64. Error at the last convergence test: L1 row-marginal
            violation relative to the total mass (balanced) or the change of the potentials
            over one iteration divided by ``reg`` (unbalanced); see :func:`sinkhorn`.
        converged: (B,) bool. ``error < tol`` (always False with ``tol=0``).
    """

    plan: Tensor
    f: Tensor
    g: Tensor
    n_iter: Tensor
    error: Tensor
    converged: Tensor


def _parse_reg_m(reg_m: Any, reg: float) -> tuple[float, float]:
    """``reg_m`` -> (fi_a, fi_b) with ``fi = reg_m/(reg_m + reg)`` and 1 for a hard side."""
    if reg_m is None:
        return 1.0, 1.0
    if isinstance(reg_m, Tensor):
        reg_m = reg_m.tolist()
    if isinstance(reg_m, Sequence) and not isinstance(reg_m, str):
        if len(reg_m) != 2:
            raise ValueError(
                f"{_FN}: expected `reg_m` to be None, a number or a pair, got {len(reg_m)} values."
            )
        pair = (
            check_positive(_FN, "reg_m[0]", reg_m[0], allow_inf=True),
            check_positive(_FN, "reg_m[1]", reg_m[1], allow_inf=True),
        )
    else:
        v = check_positive(_FN, "reg_m", reg_m, allow_inf=True)
        pair = (v, v)
    return tuple(1.0 if math.isinf(r) else r / (r + reg) for r in pair)  # type: ignore[return-value]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_FN}: expected `{name}` to be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{_FN}: expected `{name}` >= {minimum}, got {value}.")
    return value


def _prep_mask(name: str, mask: Tensor | None, shape: list, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    check_shape(_FN, name, mask, shape)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{_FN}: expected `{name}` with dtype bool, got {str(mask.dtype).replace('torch.', '')}."
        )
    if mask.device != device:
        raise ValueError(f"{_FN}: expected `{name}` on {device} like `cost`, got {mask.device}.")
    return mask


def _prep_mass(
    name: str,
    x: Tensor | None,
    mask: Tensor | None,
    shape: list,
    B: int,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """Masses in the iteration dtype, zero on masked entries; uniform over real entries if None."""
    if x is None:
        if mask is None:
            return torch.full((B, n), 1.0 / n, dtype=dtype, device=device)
        m = mask.to(dtype)
        return m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
    check_shape(_FN, name, x, shape)
    check_floating(_FN, name, x)
    if x.device != device:
        raise ValueError(f"{_FN}: expected `{name}` on {device} like `cost`, got {x.device}.")
    x = x.to(dtype)
    if mask is not None:
        x = torch.where(mask, x, torch.zeros_like(x))
    return x


def _safe_log(x: Tensor) -> Tensor:
    """``log x`` (x >= 0) with ``-inf`` where x == 0 and, when x records a gradient, a finite
    gradient everywhere."""
    if not x.requires_grad:
        return torch.log(x)  # one launch: the frontend's common case
    pos = x > 0
    return torch.where(
        pos, torch.log(torch.where(pos, x, torch.ones_like(x))), torch.full_like(x, -math.inf)
    )


def sinkhorn(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    reg: float = 0.1,
    reg_m: None | float | tuple[float, float] = None,
    reg_type: str = "kl",
    mask_a: Tensor | None = None,
    mask_b: Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-5,
    backend: str = "auto",
    grad: str = "detach",
    check_every: int = 10,
    validate: bool = False,
) -> SinkhornResult:
    r"""Solve a batch of entropic (un)balanced transport problems with Sinkhorn's algorithm.

    Solves, per problem,

    .. math::
        \min_{T \ge 0}\ \langle C, T\rangle + \mathrm{reg}\cdot R(T)
            + \rho_a \mathrm{KL}(T\mathbf 1 \,\|\, a) + \rho_b \mathrm{KL}(T^\top\mathbf 1 \,\|\, b)

    (hard marginal constraints for ``ρ = inf``) in the log domain, iterating in float32
    (float64 if `cost` is float64) whatever the input dtype or autocast state. The plan is
    ``exp((f_i + g_j − C_ij)/reg)`` for the returned potentials.

    Each iteration updates ``f`` then ``g``. Convergence is tested every `check_every`
    iterations and at `max_iter`; a problem stops at the first test where its error is below
    `tol`. Both errors are free of units, so `tol` means the same at any `reg`, cost scale
    or total mass:

    * balanced (both sides hard): the L1 row-marginal violation relative to the total mass,
      ``Σ_i |Σ_j T_ij − a_i| / Σ_i a_i`` (columns are exact after the g-update). Balanced
      problems need ``Σa = Σb``: totals that differ by more than a relative
      ``MASS_RTOL = 2^-6`` (twice what rounding the masses to bfloat16 can cause) raise
      ValueError; within it, both are normalised in the iteration dtype, `b` is taken at
      the total of `a`, and the plan carries the mass of `a`.
    * unbalanced (some side relaxed): the largest change of the potentials over one
      iteration divided by `reg`, ``(max_i |Δf_i| + max_j |Δg_j|) / reg``: the change of
      ``log T``, which is also the largest relative violation of the fixed-point equations.

    The default ``tol=1e-5`` gives plans at least as close to the exact plan as the official
    code's stopping rule on RAM's problems (``docs/ot.md``).

    Args:
        cost: (B, N, M) or (N, M) float16/bfloat16/float32/float64. Cost matrices.
        a: (B, N) (or (N,)) floating, >= 0. Row masses; None = uniform over the real rows.
        b: (B, M) (or (M,)) floating, >= 0. Column masses; None = uniform over real columns.
        reg: entropic regularisation ε > 0.
        reg_m: marginal relaxation ρ: None = balanced; a number for both sides; a pair
            ``(ρ_a, ρ_b)``; ``float("inf")`` makes that side a hard constraint.
        reg_type: ``"kl"`` (``R = KL(T‖abᵀ)``, POT's default) or ``"entropy"``; only
            matters when some side is relaxed.
        mask_a: (B, N) (or (N,)) bool. True marks real rows of ragged problems; masked rows
            get zero mass and an exactly zero plan. None = all real.
        mask_b: (B, M) (or (M,)) bool. The same for columns.
        max_iter: maximum number of iterations (>= 1).
        tol: stopping threshold on the (relative) error; 0 runs exactly `max_iter`
            iterations and issues no ConvergenceWarning.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``; ``"auto"`` defers to the
            environment variable ``RAM_OT_SINKHORN_BACKEND``, then uses Triton for CUDA
            tensors where it can run and torch otherwise.
        grad: ``"detach"`` (no gradient), ``"unroll"`` (autograd through the torch
            iterations) or ``"implicit"`` (implicit differentiation at the fixed point;
            w.r.t. `cost`, `a` and `b`).
        check_every: iterations between convergence tests (each test syncs the device).
        validate: also check that `cost` holds no NaN/inf (reads the data).

    Returns:
        SinkhornResult(plan, f, g, n_iter, error, converged); see :class:`SinkhornResult`.

    Raises:
        TypeError: non-tensor input or wrong dtype.
        ValueError: bad shapes, empty problems, ``reg <= 0``, negative or non-finite masses, a
            problem with zero total mass (or no real row/column), unequal total masses of a
            balanced problem, unknown options, NaN/inf cost under ``validate=True``.
        RuntimeError: ``backend="triton"`` where the Triton kernel cannot run.

    Warns:
        ConvergenceWarning: when ``tol > 0`` and some problem did not converge.

    Under ``torch.compile`` the call traces into one graph: the torch log-domain iterations
    (whatever `backend`), all `max_iter` of them with each problem frozen at its own stop
    (same results), and neither the value checks of the masses and of `validate` nor the
    ConvergenceWarning (they read data); see ``docs/ot.md``.

    Example:
        >>> import torch
        >>> from ram_ot.ot import sinkhorn
        >>> res = sinkhorn(torch.rand(4, 196, 80), reg=0.1)
        >>> res.plan.shape, bool(res.converged.all())
        (torch.Size([4, 196, 80]), True)
    """
    check_tensor(_FN, "cost", cost)
    check_floating(_FN, "cost", cost)
    if cost.dim() not in (2, 3):
        raise ValueError(
            f"{_FN}: expected `cost` of shape (B, N, M) or (N, M), got {tuple(cost.shape)}."
        )
    unbatched = cost.dim() == 2
    if any(s == 0 for s in cost.shape):
        raise ValueError(f"{_FN}: expected a non-empty `cost`, got shape {tuple(cost.shape)}.")
    reg = check_positive(_FN, "reg", reg)
    fi_a, fi_b = _parse_reg_m(reg_m, reg)
    check_choice(_FN, "reg_type", reg_type, ("kl", "entropy"))
    max_iter = _check_int("max_iter", max_iter, 1)
    check_every = _check_int("check_every", check_every, 1)
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise TypeError(f"{_FN}: expected `tol` to be a number >= 0, got {tol!r}.") from None
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"{_FN}: expected `tol` >= 0 and finite, got {tol!r}.")
    check_choice(_FN, "backend", backend, ("auto", "torch", "triton"))
    check_choice(_FN, "grad", grad, ("detach", "unroll", "implicit"))

    device = cost.device
    in_dtype = cost.dtype
    if unbatched:
        cost = cost.unsqueeze(0)
        shape_a: list = [("N", cost.shape[1])]
        shape_b: list = [("M", cost.shape[2])]
    B, N, M = cost.shape
    if not unbatched:
        shape_a = [("B", B), ("N", N)]
        shape_b = [("B", B), ("M", M)]

    mask_a = _prep_mask("mask_a", mask_a, shape_a, device)
    mask_b = _prep_mask("mask_b", mask_b, shape_b, device)
    for name, x, shape in (("a", a, shape_a), ("b", b, shape_b)):
        if x is not None:
            check_shape(_FN, name, x, shape)
            check_floating(_FN, name, x)
    balanced = fi_a == 1.0 and fi_b == 1.0
    dtype = (
        torch.float64
        if torch.float64 in (cost.dtype, getattr(a, "dtype", None), getattr(b, "dtype", None))
        else torch.float32
    )
    if unbatched:
        a = None if a is None else a.unsqueeze(0)
        b = None if b is None else b.unsqueeze(0)
        mask_a = None if mask_a is None else mask_a.unsqueeze(0)
        mask_b = None if mask_b is None else mask_b.unsqueeze(0)
        shape_a, shape_b = [("B", 1), ("N", N)], [("B", 1), ("M", M)]

    compiling = is_compiling()
    if compiling:
        # a traced graph holds the torch log-domain iterations (pure tensor ops, no host sync)
        from ram_ot.ot._torch import solve_lse

        name, solve = "torch", solve_lse
    else:
        name = resolve_backend(backend, device, grad)
        solve = get_solver(name)
    params = dict(
        reg=reg, fi_a=fi_a, fi_b=fi_b, max_iter=max_iter, tol=tol, check_every=check_every
    )

    autocast_off = (
        torch.autocast(device_type=device.type, enabled=False)
        if device.type in ("cpu", "cuda")
        else contextlib.nullcontext()
    )
    with autocast_off:
        mass_a = _prep_mass("a", a, mask_a, shape_a, B, N, dtype, device)
        mass_b = _prep_mass("b", b, mask_b, shape_b, B, M, dtype, device)
        if compiling:
            # value checks read the data (a host sync): not part of a traced graph
            tot_a, tot_b, unit_a, unit_b = mass_a.sum(dim=1), mass_b.sum(dim=1), False, False
        else:
            tot_a, tot_b, unit_a, unit_b = _check_values(
                cost, mass_a, mass_b, mask_a, mask_b, validate, balanced
            )
        if balanced:
            # unit masses: the error and `tol` are relative to the total mass; the plan gets the
            # mass of `a` back through f (b is taken at the total of a, see _check_values)
            if not unit_a:
                mass_a = mass_a / tot_a[:, None]
            if not unit_b:
                mass_b = mass_b / tot_b[:, None]

        C = cost.to(dtype)
        if mask_a is not None or mask_b is not None:
            ma = mask_a if mask_a is not None else torch.ones(B, N, dtype=torch.bool, device=device)
            mb = mask_b if mask_b is not None else torch.ones(B, M, dtype=torch.bool, device=device)
            # padding may hold garbage (inf/NaN): replace it, it carries no mass anyway
            C = torch.where(
                ma[:, :, None] & mb[:, None, :], C, torch.zeros((), dtype=dtype, device=device)
            )
        log_a, log_b = _safe_log(mass_a), _safe_log(mass_b)
        if reg_type == "kl" and not balanced:
            # KL(T | a b^T) = entropy with cost C − reg·(log a_i + log b_j) on the support
            la0 = torch.where(torch.isfinite(log_a), log_a, torch.zeros_like(log_a))
            lb0 = torch.where(torch.isfinite(log_b), log_b, torch.zeros_like(log_b))
            C_solve = C - reg * (la0[:, :, None] + lb0[:, None, :])
        else:
            la0 = lb0 = None
            C_solve = C

        plan = None
        if grad == "detach":
            with torch.no_grad():
                if name == "torch" and device.type == "cpu" and not compiling:
                    # the CPU solver forms the plan from its kernel (no second exp pass)
                    plan = torch.empty(C_solve.shape, dtype=dtype, device=device)
                    f, g, n_iter, error = solve(
                        C_solve.contiguous(), log_a, log_b, **params, plan_out=plan
                    )
                else:
                    f, g, n_iter, error = solve(C_solve.contiguous(), log_a, log_b, **params)
        elif grad == "unroll":
            from ram_ot.ot._torch import solve_lse

            f, g, n_iter, error = solve_lse(C_solve.contiguous(), log_a, log_b, **params)
        else:
            from ram_ot.ot._implicit import ImplicitPotentials

            f, g, n_iter, error = ImplicitPotentials.apply(
                C_solve.contiguous(), log_a, log_b, solve, params
            )
        if la0 is not None:
            # potentials of the "entropy" problem with cost C_solve -> potentials for C
            f = f + reg * la0
            g = g + reg * lb0
        if balanced and not unit_a:
            f = f + reg * torch.log(tot_a)[:, None]  # plan of unit masses × Σa
            if plan is not None:
                plan.mul_(tot_a[:, None, None])
        if plan is None and grad != "detach" and torch.is_grad_enabled():
            plan = torch.exp((f[:, :, None] + g[:, None, :] - C) / reg)  # (B, N, M)
        elif plan is None:
            with torch.no_grad():
                s = 1.0 / reg
                plan = torch.sub(f[:, :, None] * s, C, alpha=s)  # (B, N, M)
                plan.add_(g[:, None, :] * s).exp_()
        plan = plan.to(in_dtype)

    converged = error < tol
    if tol > 0 and not compiling and not bool(converged.all()):
        n_bad = int((~converged).sum())
        warnings.warn(
            f"{_FN}: {n_bad} of {B} problems did not reach tol={tol:g} within max_iter={max_iter} "
            f"(largest error {float(error.max()):.3g}); raise max_iter or reg, or loosen tol.",
            ConvergenceWarning,
            stacklevel=2,
        )
    if unbatched:
        return SinkhornResult(plan[0], f[0], g[0], n_iter[0], error[0], converged[0])
    return SinkhornResult(plan, f, g, n_iter, error, converged)


MASS_RTOL = 2.0**-6
"""Largest relative difference of Σa and Σb that a balanced problem accepts (and corrects).

Rounding each entry of a mass vector to bfloat16 moves its total by at most a relative
``eps/2 = 2^-8``, so two totals of the same mass differ by at most ``2^-7``; twice that is
still rounding, whatever dtype the masses were cast to afterwards.
"""


def _check_values(
    cost: Tensor,
    a: Tensor,
    b: Tensor,
    mask_a: Tensor | None,
    mask_b: Tensor | None,
    validate: bool,
    balanced: bool,
) -> tuple[Tensor, Tensor, bool, bool]:
    """Mass checks (one device sync) and, under `validate`, the NaN/inf scan of `cost`.

    Returns:
        tot_a: (B,) total mass of `a` per problem.
        tot_b: (B,) total mass of `b`.
        unit_a: whether every total of `a` is exactly 1 (host bool).
        unit_b: the same for `b`.
    """
    with torch.no_grad():
        tot_a, tot_b = a.sum(dim=1), b.sum(dim=1)
        # min and max of the masses (NaN propagates and fails every test) and of their totals
        stats = [*torch.aminmax(a), *torch.aminmax(tot_a), *torch.aminmax(b), *torch.aminmax(tot_b)]
        if balanced:
            # largest relative difference of the totals (NaN where a total is 0: raised first)
            rel = (tot_a - tot_b).abs() / torch.maximum(tot_a, tot_b)
            stats.append(rel.amax())
        vals = torch.stack(stats).tolist()  # one sync
    mn_a, mx_a, mn_tot_a, mx_tot_a, mn_b, mx_b, mn_tot_b, mx_tot_b = vals[:8]
    flags = [
        mn_a >= 0 and mx_a < math.inf,
        mn_b >= 0 and mx_b < math.inf,
        mn_tot_a > 0,
        mn_tot_b > 0,
    ]
    for ok, name in zip(flags[:2], ("a", "b"), strict=False):
        if not ok:
            raise ValueError(
                f"{_FN}: expected `{name}` to be finite and >= 0, got a negative or non-finite entry."
            )
    for ok, name, mask in zip(flags[2:], ("a", "b"), (mask_a, mask_b), strict=False):
        if not ok:
            extra = f" (or `mask_{name}` marks no real entry)" if mask is not None else ""
            raise ValueError(
                f"{_FN}: expected `{name}` with a positive total mass in every problem, got zero{extra}."
            )
    if balanced and vals[8] > MASS_RTOL:
        i_w = int(rel.argmax())
        raise ValueError(
            f"{_FN}: balanced transport (reg_m=None) needs `a` and `b` of equal total mass in "
            f"every problem, got sum(a) = {float(tot_a[i_w]):.6g} and sum(b) = "
            f"{float(tot_b[i_w]):.6g} in problem {i_w} (relative difference {vals[8]:.3g} > "
            f"{MASS_RTOL:g}, what rounding can explain); rescale the masses, or relax a "
            "marginal with `reg_m`."
        )
    if validate:
        if mask_a is not None or mask_b is not None:
            real = torch.ones(cost.shape, dtype=torch.bool, device=cost.device)
            if mask_a is not None:
                real = real & mask_a[:, :, None]
            if mask_b is not None:
                real = real & mask_b[:, None, :]
            cost = cost.masked_fill(~real, 0.0)  # padding may hold anything
        check_finite(_FN, "cost", cost)
    return tot_a, tot_b, mn_tot_a == 1 and mx_tot_a == 1, mn_tot_b == 1 and mx_tot_b == 1
