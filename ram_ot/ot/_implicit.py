"""Implicit differentiation of the Sinkhorn potentials at their fixed point.

The potentials ``(f, g)`` returned by a backend satisfy (up to the tolerance) the fixed-point
equations of one Sinkhorn iteration::

    F_i(f, g) = f_i − fi_a·(reg·log a_i − reg·LSE_j((g_j − C_ij)/reg)) = 0
    G_j(f, g) = g_j − fi_b·(reg·log b_j − reg·LSE_i((f_i − C_ij)/reg)) = 0

By the implicit function theorem the vector-Jacobian product of ``(f, g)`` with cotangents
``(f̄, ḡ)`` is ``−wᵀ ∂(F, G)/∂θ`` for ``θ = (C, log a, log b)``, where ``w`` solves
``J^T w = (f̄, ḡ)`` with ``J = ∂(F, G)/∂(f, g) = [[I, A], [B, I]]``,
``A_ij = fi_a·T_ij/r_i`` and ``B_ji = fi_b·T_ij/c_j`` (``T`` the plan, ``r``/``c`` its row/column
sums). Eliminating one block leaves one dense linear system per problem of size min(N, M).

When both sides are balanced ``J`` is singular (the potentials are defined up to
``(f + t, g − t)``); the system is completed by the rank-one term ``1·1ᵀ/n`` over the real
entries, which returns the exact gradient of every loss invariant to that shift (every loss
of the plan) and the gradient under the gauge ``Σ_i w_i = 0`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["ImplicitPotentials", "implicit_vjp"]


def _solve_side(
    P: Tensor, gf: Tensor, gg: Tensor, fi_a: float, fi_b: float, real_a: Tensor, balanced: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Solve ``J^T w = (gf, gg)`` eliminating the column block; returns (w_f, w_g, A, Bt)."""
    r = P.sum(dim=2, keepdim=True)  # (B, N, 1)
    c = P.sum(dim=1, keepdim=True)  # (B, 1, M)
    A = fi_a * P / torch.where(r > 0, r, torch.ones_like(r))  # A_ij = fi_a T_ij / r_i
    Bt = fi_b * P / torch.where(c > 0, c, torch.ones_like(c))  # Bt_ij = fi_b T_ij / c_j
    # w_f + Bt w_g = gf ; A^T w_f + w_g = gg  ->  (I − Bt A^T) w_f = gf − Bt gg
    rhs = gf - torch.bmm(Bt, gg[:, :, None])[:, :, 0]
    rhs = torch.where(real_a, rhs, torch.zeros_like(rhs))
    n = P.shape[1]
    S = torch.eye(n, dtype=P.dtype, device=P.device) - torch.bmm(Bt, A.transpose(1, 2))  # (B, n, n)
    if balanced:
        m = real_a.to(P.dtype)
        S = S + m[:, :, None] * m[:, None, :] / m.sum(dim=1)[:, None, None]
    w_f = torch.linalg.solve(S, rhs[:, :, None])[:, :, 0]
    w_g = gg - torch.bmm(A.transpose(1, 2), w_f[:, :, None])[:, :, 0]
    return w_f, w_g, A, Bt


def implicit_vjp(
    cost: Tensor,
    f: Tensor,
    g: Tensor,
    gf: Tensor,
    gg: Tensor,
    *,
    reg: float,
    fi_a: float,
    fi_b: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``⟨f̄, f⟩ + ⟨ḡ, g⟩`` w.r.t. ``(cost, log_a, log_b)`` at the fixed point.

    Args:
        cost: (B, N, M) float. Cost the potentials were solved for.
        f: (B, N) float. Row potentials (``-inf`` on absent rows).
        g: (B, M) float. Column potentials (``-inf`` on absent columns).
        gf: (B, N) float. Cotangent of `f`.
        gg: (B, M) float. Cotangent of `g`.
        reg: entropic regularisation.
        fi_a: row-side ``reg_m/(reg_m + reg)`` (1 balanced).
        fi_b: column-side factor.

    Returns:
        (grad_cost (B, N, M), grad_log_a (B, N), grad_log_b (B, M)), in float64.
    """
    dt = torch.float64
    cost, f, g = cost.to(dt), f.to(dt), g.to(dt)
    real_a, real_b = torch.isfinite(f), torch.isfinite(g)
    gf = torch.where(real_a, gf.to(dt), torch.zeros_like(f))
    gg = torch.where(real_b, gg.to(dt), torch.zeros_like(g))
    P = torch.exp((f[:, :, None] + g[:, None, :] - cost) / reg)  # (B, N, M), 0 on absent entries
    balanced = fi_a == 1.0 and fi_b == 1.0
    if P.shape[2] < P.shape[1]:
        # eliminate the larger side: solve the transposed problem
        w_g, w_f, At, Bm = _solve_side(P.transpose(1, 2), gg, gf, fi_b, fi_a, real_b, balanced)
        A, Bt = Bm.transpose(1, 2), At.transpose(1, 2)
    else:
        w_f, w_g, A, Bt = _solve_side(P, gf, gg, fi_a, fi_b, real_a, balanced)
    grad_cost = A * w_f[:, :, None] + Bt * w_g[:, None, :]
    grad_log_a = torch.where(real_a, fi_a * reg * w_f, torch.zeros_like(w_f))
    grad_log_b = torch.where(real_b, fi_b * reg * w_g, torch.zeros_like(w_g))
    return grad_cost, grad_log_a, grad_log_b


class ImplicitPotentials(torch.autograd.Function):
    """``(cost, log_a, log_b) -> (f, g, n_iter, error)`` with implicit-function backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        cost: Tensor,
        log_a: Tensor,
        log_b: Tensor,
        solve: Callable[..., Any],
        params: dict,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with torch.no_grad():
            f, g, n_iter, error = solve(cost.detach(), log_a.detach(), log_b.detach(), **params)
        ctx.save_for_backward(cost, f, g)
        ctx.params = params
        ctx.in_dtypes = (cost.dtype, log_a.dtype, log_b.dtype)
        ctx.mark_non_differentiable(n_iter, error)
        return f, g, n_iter, error

    @staticmethod
    def backward(ctx: Any, gf: Tensor, gg: Tensor, _n: Any, _e: Any):  # type: ignore[override]
        cost, f, g = ctx.saved_tensors
        p = ctx.params
        gc, ga, gb = implicit_vjp(cost, f, g, gf, gg, reg=p["reg"], fi_a=p["fi_a"], fi_b=p["fi_b"])
        dc, da, db = ctx.in_dtypes
        return gc.to(dc), ga.to(da), gb.to(db), None, None
