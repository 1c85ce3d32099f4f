"""Batched Sinkhorn potentials in pure PyTorch: the reference backend (any device).

Paper §3.3 (Knowledge-Constrained Optimal Transport) solves an entropic transport problem per
image with Sinkhorn's algorithm. This module holds the iterations; validation, masses, masks,
``reg_type`` and the plan live in :func:`ram_ot.ot.sinkhorn`.

Two algorithms compute the same iterates (up to rounding):

* :func:`solve_lse`: log-domain updates with log-sum-exp over the cost (about eight tensor
  operations per half-iteration). Differentiable by autograd (``grad="unroll"``), never
  syncs the device between convergence checks (on CUDA not even at them); used on
  accelerators, for unrolled gradients and while ``torch.compile`` traces.
* :func:`solve_scaling`: *scaling with absorption* (Schmitzer 2019, "Stabilized sparse scaling
  algorithms for entropy regularized transport problems", SIAM J. Sci. Comput.). The log
  potentials are split as ``f = fa + reg·log u`` and ``g = ga + reg·log v``; the inner work is
  two matrix-vector products with a precomputed kernel ``K = exp((fa + ga − C)/reg)``, which
  reads the kernel once per half-iteration (memory-bandwidth bound on CPUs). Whenever a
  scaling leaves ``[e^-τ, e^τ]`` (or a product underflows to 0) the half-iteration is redone
  in the log domain and the potentials are absorbed into a new kernel, so small ``reg`` never
  produces NaN/inf. Used on the CPU.

Backend contract (shared with ``_triton.solve_potentials``)::

    solve_potentials(cost, log_a, log_b, *, reg, fi_a, fi_b, max_iter, tol, check_every)
        -> (f, g, n_iter, error)

One iteration is an f-update followed by a g-update::

    f_i = fi_a · (reg·log a_i − reg·LSE_j((g_j − C_ij)/reg))
    g_j = fi_b · (reg·log b_j − reg·LSE_i((f_i − C_ij)/reg))

starting from ``g = 0`` on real columns; ``log a = −inf`` marks absent rows (their ``f`` is
``−inf``, and likewise for columns). ``fi = reg_m/(reg_m + reg)`` per side (1 = balanced).
The error of a problem is, when both sides are balanced, the L1 row-marginal violation
``Σ_i |Σ_j T_ij − a_i|`` after the g-update (the frontend passes unit masses, so this is
relative to the total mass); otherwise ``(max_i |Δf_i| + max_j |Δg_j|) / reg`` over one
iteration (the change of the log scalings, independent of the cost's units and of reg). It is tested at iterations ``k`` with ``k % check_every == 0`` or
``k == max_iter``; a problem whose error is below ``tol`` stops there (``n_iter = k``).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from ram_ot._checks import is_compiling

__all__ = ["solve_potentials", "solve_lse", "solve_scaling"]


def solve_potentials(
    cost: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    *,
    reg: float,
    fi_a: float,
    fi_b: float,
    max_iter: int,
    tol: float,
    check_every: int,
    plan_out: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sinkhorn potentials of a batch of problems (see the module docstring for the contract).

    Picks :func:`solve_scaling` on the CPU when no gradient is recorded, else :func:`solve_lse`.
    With `plan_out` (B, N, M) of `cost`'s dtype (CPU scaling path only), also writes the plan
    ``exp((f + g − C)/reg)`` there, formed as ``u_i K_ij v_j`` from the kernel without a
    second ``exp`` over the batch (entries below ``u_i·e^lo·v_j`` are raised to it, see
    ``_Limits``).

    Args:
        cost: (B, N, M) float32/float64, contiguous. Cost matrices.
        log_a: (B, N) same dtype. Log row masses; ``-inf`` marks absent rows.
        log_b: (B, M) same dtype. Log column masses; ``-inf`` marks absent columns.
        reg: entropic regularisation (> 0).
        fi_a: ``reg_m_a / (reg_m_a + reg)``, 1.0 for a balanced row side.
        fi_b: the same for the column side.
        max_iter: maximum number of iterations (>= 1).
        tol: per-problem stopping threshold on the error (0 runs ``max_iter`` iterations).
        check_every: test convergence every this many iterations.

    Returns:
        f: (B, N) dtype of `cost`. Row potentials (``-inf`` on absent rows).
        g: (B, M) dtype of `cost`. Column potentials (``-inf`` on absent columns).
        n_iter: (B,) int64. Iterations run per problem.
        error: (B,) dtype of `cost`. Error at the last test.
    """
    grad = torch.is_grad_enabled() and (
        cost.requires_grad or log_a.requires_grad or log_b.requires_grad
    )
    solver = solve_scaling if (cost.device.type == "cpu" and not grad) else solve_lse
    kwargs = dict(
        reg=reg, fi_a=fi_a, fi_b=fi_b, max_iter=max_iter, tol=tol, check_every=check_every
    )
    if solver is solve_lse:
        if plan_out is not None:
            raise ValueError(
                "sinkhorn: `plan_out` is formed by the CPU scaling path only (CPU tensors, "
                "no gradient recorded)."
            )
        return solve_lse(cost, log_a, log_b, **kwargs)
    group = _cpu_group_size(cost)
    if group >= cost.shape[0]:
        return solve_scaling(cost, log_a, log_b, **kwargs, plan_out=plan_out)
    # Problems are independent: solving them a few at a time keeps each group's kernel in
    # cache across all its iterations instead of streaming the whole batch from memory twice
    # per iteration. Same iterates (up to the rounding of the batched products).
    parts = [
        solve_scaling(
            cost[s : s + group],
            log_a[s : s + group],
            log_b[s : s + group],
            **kwargs,
            plan_out=None if plan_out is None else plan_out[s : s + group],
        )  # fmt: skip
        for s in range(0, cost.shape[0], group)
    ]
    return tuple(torch.cat(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


CPU_CACHE_BUDGET = 8 << 20
"""Bytes of kernel that one group of CPU problems may occupy."""


_LOG2E = 1.0 / math.log(2.0)

LAZY_WINDOW = 8
"""Iterations between the CPU solver's range tests of the scalings (see ``solve_scaling``)."""

SMALL_PROBLEM = 1 << 16
"""N·M up to which the CPU kernel keeps a transposed copy (see ``_Kernel``)."""


def _cpu_group_size(cost: Tensor) -> int:
    """How many (N, M) problems :func:`solve_scaling` takes at once on the CPU."""
    _, N, M = cost.shape
    per_problem = N * M * cost.element_size()  # the kernel
    if N * M <= SMALL_PROBLEM:
        per_problem *= 2  # and its transposed copy
    group = max(1, CPU_CACHE_BUDGET // per_problem)
    threads = max(1, torch.get_num_threads())
    if group > threads:
        group -= group % threads  # bmm spreads a group's problems evenly over the threads
    return group


def _is_check(k: int, max_iter: int, tol: float, check_every: int) -> bool:
    return k == max_iter or (tol > 0 and k % check_every == 0)


def _max_change(x: Tensor, x_prev: Tensor, real: Tensor) -> Tensor:
    """``max_i |x_i − x'_i|`` over the real entries of each problem; (B,)."""
    return torch.where(real, x - x_prev, torch.zeros_like(x)).abs().amax(dim=1)


def _unbalanced_error(
    f: Tensor,
    f_prev: Tensor,
    g: Tensor,
    g_prev: Tensor,
    real_a: Tensor,
    real_b: Tensor,
    reg: float,
) -> Tensor:
    """``(max_i |f_i − f'_i| + max_j |g_j − g'_j|) / reg`` over real entries; (B,).

    Divided by `reg`, the change is that of the log scalings (of ``log T``), which does not
    depend on the units of the cost or on the masses.
    """
    return (_max_change(f, f_prev, real_a) + _max_change(g, g_prev, real_b)) / reg


# ---------------------------------------------------------------------------------------
# Log domain (differentiable)
# ---------------------------------------------------------------------------------------


def solve_lse(
    cost: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    *,
    reg: float,
    fi_a: float,
    fi_b: float,
    max_iter: int,
    tol: float,
    check_every: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Log-domain Sinkhorn with log-sum-exp; same contract as :func:`solve_potentials`.

    Iterates the potentials in units of `reg` (``F = f/reg``, ``G = g/reg`` against the
    precomputed ``C/reg``), about eight tensor operations per half-iteration. Differentiable
    by autograd, without in-place writes to recorded tensors. All problems are iterated
    until every one has stopped; a problem's potentials, error and ``n_iter`` are taken at
    its stopping test with ``torch.where``, so the problems that run on do not change its
    results (nor, with autograd, its gradient). The loop exits early once all problems have
    stopped: on the CPU at that test; on CUDA one test later, by an asynchronous copy of the
    flag read at the next test, so that a test never stalls the device; never while
    ``torch.compile`` traces (all `max_iter` iterations run: the same results).
    """
    B, N, M = cost.shape
    device = cost.device
    compiling = is_compiling()
    balanced = fi_a == 1.0 and fi_b == 1.0
    real_a = torch.isfinite(log_a)
    real_b = torch.isfinite(log_b)
    c = cost / reg  # (B, N, M)
    fla = log_a if fi_a == 1.0 else fi_a * log_a
    flb = log_b if fi_b == 1.0 else fi_b * log_b
    mass_a = torch.exp(log_a) if balanced else None
    early_exit = tol > 0 and not compiling
    lazy_flag = early_exit and device.type == "cuda"
    flag = event = None  # host copy of "some problem runs" at the last test, and its event

    F = torch.full_like(log_a, -math.inf)
    G = torch.zeros_like(log_b).masked_fill(~real_b, -math.inf)  # g = 0 on real columns
    # LSE_j(G_j − C_ij/reg), shared by the f-update and the row-marginal error
    lse_row = _lse(G[:, None, :] - c, 2)  # (B, N)
    out_F = out_G = error = n_iter = active = None

    for k in range(1, max_iter + 1):
        check = _is_check(k, max_iter, tol, check_every)
        last = k == max_iter
        F_new = torch.add(fla, lse_row, alpha=-fi_a)  # fi_a·(log a − LSE)
        G_new = torch.add(flb, _lse(F_new[:, :, None] - c, 1), alpha=-fi_b)
        if not last or (check and balanced):
            lse_row_new = _lse(G_new[:, None, :] - c, 2)
        if check:
            if balanced:
                # row marginal of the plan after the g-update: exp(F_i + LSE_j(G_j − C_ij/reg))
                err = (torch.exp(F_new + lse_row_new) - mass_a).abs().sum(dim=1)
            else:
                # (max |Δf| + max |Δg|)/reg over real entries; inf at iteration 1 (F = −inf)
                err = _max_change(F_new, F, real_a) + _max_change(G_new, G, real_b)
            err = err.detach()
            if active is None:  # the first test: every problem is running
                stop = (err < tol) if (tol > 0 and not last) else None  # None: all stop
                out_F, out_G, error = F_new, G_new, err
                n_iter = torch.full((B,), max_iter, dtype=torch.int64, device=device)
                if stop is not None:
                    n_iter = torch.where(stop, torch.full_like(n_iter, k), n_iter)
                    active = ~stop
            else:
                stop = active if last else active & (err < tol)
                keep = stop[:, None]
                out_F = torch.where(keep, F_new, out_F)
                out_G = torch.where(keep, G_new, out_G)
                error = torch.where(active, err, error)
                n_iter = torch.where(stop, torch.full_like(n_iter, k), n_iter)
                active = active & ~stop
            if early_exit and active is not None and not last:
                if not lazy_flag:
                    if not bool(active.any()):
                        break
                else:
                    if event is not None:
                        event.synchronize()  # the device has reached the previous test
                        if not bool(flag):
                            break  # every problem had stopped there
                    else:
                        flag = torch.empty((), dtype=torch.bool, pin_memory=True)
                        event = torch.cuda.Event()
                    flag.copy_(active.any(), non_blocking=True)
                    event.record()
        if not last:
            F, G, lse_row = F_new, G_new, lse_row_new
    return out_F * reg, out_G * reg, n_iter, error


def _lse(x: Tensor, dim: int) -> Tensor:
    """``log Σ exp(x)`` along `dim` (kept out); `x` is a temporary that may be overwritten.

    The shift is the detached maximum (the gradient of the shift cancels exactly), finite
    for every row and column that holds a real entry of finite cost, which the frontend
    guarantees; without a recorded gradient the work is done in place in `x`.
    """
    m = x.detach().amax(dim=dim, keepdim=True)
    if x.requires_grad:
        return torch.log(torch.exp(x - m).sum(dim=dim)) + m.squeeze(dim)
    return x.sub_(m).exp_().sum(dim=dim).log_().add_(m.squeeze(dim))


# ---------------------------------------------------------------------------------------
# Scaling with absorption (CPU fast path)
# ---------------------------------------------------------------------------------------


class _Limits:
    """Per-dtype constants of the stabilised scaling iterations."""

    def __init__(self, dtype: torch.dtype) -> None:
        info = torch.finfo(dtype)
        # kernel entries are floored at exp(lo) = tiny·1e8 (exp of arguments below about
        # log(tiny) is slow and denormal); scalings stay within [e^-tau, e^tau], so every
        # product K_ij·v_j is a normal number and the floored entries weigh less than
        # M·exp(lo)·e^(2·tau)/a_i relative to a row (< 1e-10 in float32 for M <= 1e4, a_i >= 1e-6).
        self.lo = math.log(info.tiny * 1e8)
        self.tau = 15.0 if dtype == torch.float32 else 30.0
        self.tiny = info.tiny
        self.u_lo = math.exp(-self.tau)
        self.u_hi = math.exp(self.tau)


class _Kernel:
    """``K_ij = exp((fa_i + ga_j − C_ij)/reg)`` and its matrix-vector products ``Kv``, ``Kᵀu``.

    Two ways to read the kernel, both in the fast row-vector form on CPUs:

    * ``"bmm"`` (several intra-op threads): ``bmm(uᵀ, K)`` and ``bmm(vᵀ, Kᵀ)``; torch
      spreads the batch over its threads. ``Kᵀ`` is a transposed *view* of K for large
      problems (as fast as a transposed copy, at half the memory and cache footprint) and a
      transposed copy for small ones (N·M <= 2^16), where the copy's product is faster.
    * ``"mv"`` (one thread): one ``torch.mv`` per problem on a single copy stored with its
      longer side contiguous (the faster layout); no transposed copy, and it never waits for
      worker threads (much faster than ``bmm`` when other processes load the cores).

    ``Cl`` is the cost in the storage layout (a view).
    """

    def __init__(self, cost: Tensor, reg: float, lim: _Limits, mode: str) -> None:
        self.mode = mode
        self.t = mode == "mv" and cost.shape[1] > cost.shape[2]  # store K^T as (B, M, N)
        self.Cl = cost.transpose(1, 2) if self.t else cost
        self.reg, self.lim = reg, lim
        self.L = _workspace("K", self.Cl.shape, cost.dtype, cost.device)
        if mode == "bmm":
            self.copy_t = self.L.shape[1] * self.L.shape[2] <= SMALL_PROBLEM
            B, R, S = self.L.shape
            self.LT = (
                _workspace("KT", (B, S, R), cost.dtype, cost.device)
                if self.copy_t
                else self.L.transpose(1, 2)  # a view
            )
        else:
            Ls = self.L.unbind(0)
            LTs = [x.T for x in Ls]
            self._rows = LTs if self.t else Ls  # Kv: one mv per problem
            self._cols = Ls if self.t else LTs  # K^T u

    def bind(self, u: Tensor, v: Tensor, Kv: Tensor, Ktu: Tensor) -> None:
        """Register the persistent buffers the products read and write (in place)."""
        self.u, self.v, self.Kv, self.Ktu = u, v, Kv, Ktu
        if self.mode == "bmm":  # (B, 1, ·) row-vector views, made once
            self.u3, self.v3 = u[:, None, :], v[:, None, :]
            self.Kv3, self.Ktu3 = Kv[:, None, :], Ktu[:, None, :]
        if self.mode == "mv":
            self.us, self.vs = u.unbind(0), v.unbind(0)
            self.Kvs, self.Ktus = Kv.unbind(0), Ktu.unbind(0)

    def _build(self, Cl: Tensor, fa: Tensor, ga: Tensor, out: Tensor | None = None) -> Tensor:
        rp, cp = (ga, fa) if self.t else (fa, ga)
        s = _LOG2E / self.reg  # in base 2: exp2 is cheaper than exp on CPUs (~0.6x the time)
        K = torch.sub(cp[:, None, :] * s, Cl, alpha=s, out=out)  # (B, R, S) in the storage layout
        # entries below exp(lo) (absent rows/columns included) become exp(lo): a floor far
        # below any entry that matters, which keeps every product a normal number
        return K.add_(rp[:, :, None] * s).clamp_(min=self.lim.lo * _LOG2E).exp2_()

    def set_all(self, fa: Tensor, ga: Tensor) -> None:
        self._build(self.Cl, fa, ga, out=self.L)
        if self.mode == "bmm" and self.copy_t:
            self.LT.copy_(self.L.transpose(1, 2))

    def set_some(self, idx: Tensor, fa: Tensor, ga: Tensor) -> None:
        """Rebuild problems `idx` from their absorbed potentials ``fa (b, N)``, ``ga (b, M)``."""
        K = self._build(self.Cl[idx], fa, ga)
        self.L[idx] = K
        if self.mode == "bmm" and self.copy_t:
            self.LT[idx] = K.transpose(1, 2)

    def rows(self, active: list[int]) -> None:
        """``Kv[i] = K_i v_i`` (in place) for the problems in `active` (all of them for bmm)."""
        if self.mode == "bmm":
            torch.bmm(self.v3, self.LT, out=self.Kv3)  # (B,1,M)@(B,M,N)
            return
        mats, v, out = self._rows, self.vs, self.Kvs
        for i in active:
            torch.mv(mats[i], v[i], out=out[i])

    def cols(self, active: list[int]) -> None:
        """``Ktu[i] = K_i^T u_i`` (in place) for the problems in `active`."""
        if self.mode == "bmm":
            torch.bmm(self.u3, self.L, out=self.Ktu3)  # (B,1,N)@(B,N,M)
            return
        mats, u, out = self._cols, self.us, self.Ktus
        for i in active:
            torch.mv(mats[i], u[i], out=out[i])

    def lse_update(self, side: str, idx: Tensor, p: Tensor, log_m: Tensor, fi: float) -> Tensor:
        """Log-domain update of `side` (``"f"`` or ``"g"``) of problems `idx`.

        `p` is the other side's absolute potential (``g (b, M)`` for the f-update, ``f (b, N)``
        for the g-update), `log_m` and `fi` the updated side's log masses and ``fi``.
        """
        Cl, reg = self.Cl[idx], self.reg
        if (side == "f") != self.t:  # p runs along the storage's last axis
            lse = torch.logsumexp((p[:, None, :] - Cl) / reg, dim=2)
        else:
            lse = torch.logsumexp((p[:, :, None] - Cl) / reg, dim=1)
        return fi * (reg * log_m - reg * lse)

    def plan_into(self, out: Tensor, stop: Tensor | None, u: Tensor, v: Tensor) -> None:
        """``out[i] = u_i K_i v_i`` (B, N, M) for the problems `stop` (bool (B,); None = all)."""
        ol = out.transpose(1, 2) if self.t else out  # the storage layout
        rs, cs = (v, u) if self.t else (u, v)
        if stop is None:
            torch.mul(self.L, rs[:, :, None], out=ol).mul_(cs[:, None, :])
            return
        ol[stop] = self.L[stop] * rs[stop][:, :, None] * cs[stop][:, None, :]

    def row_min(self, real_b: Tensor, masked: bool) -> Tensor:
        """``min_j C_ij`` over real columns; (B, N)."""
        if not masked:
            return self.Cl.amin(dim=1 if self.t else 2)
        if self.t:
            return self.Cl.masked_fill(~real_b[:, :, None], math.inf).amin(dim=1)
        return self.Cl.masked_fill(~real_b[:, None, :], math.inf).amin(dim=2)


_WORKSPACE = threading.local()


def _workspace(name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> Tensor:
    """A scratch tensor of `shape`, reused across calls in this thread (contents undefined).

    The CPU kernel of a batch or group (at most about ``CPU_CACHE_BUDGET`` bytes, or one
    problem when a problem exceeds it) is rewritten in full by every solve; reusing its
    memory spares the page faults of a fresh multi-megabyte allocation per call (about a
    tenth of a COCO-sized solve). Each thread keeps its own buffers, one per `name`; a
    buffer over ``4 * CPU_CACHE_BUDGET`` bytes is allocated afresh and not kept, so that no
    thread holds on to the kernel of one huge problem.
    """
    numel = math.prod(shape)
    if numel * dtype.itemsize > 4 * CPU_CACHE_BUDGET:
        return torch.empty(shape, dtype=dtype, device=device)
    bufs = getattr(_WORKSPACE, "bufs", None)
    if bufs is None:
        bufs = _WORKSPACE.bufs = {}
    buf = bufs.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
        buf = bufs[name] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


def _out_of_range(
    x: Tensor, absent: Tensor | None, fill: float, lo: float, hi: float, active: Tensor
) -> list[int]:
    """Active problems with a real entry of `x` outside [lo, hi] (NaN included)."""
    if absent is not None:
        x = x.masked_fill(absent, fill)  # absent entries (0 or -inf) are not tested
    mn, mx = torch.aminmax(x)  # NaN propagates, and fails both comparisons
    if lo <= mn.item() and mx.item() <= hi:  # the common case: one test for all
        return []
    mn, mx = x.amin(dim=1), x.amax(dim=1)  # (torch.aminmax(dim=) is much slower on CPU)
    bad = ~((mn >= lo) & (mx <= hi)) & active
    return bad.nonzero()[:, 0].tolist()


def _exp_factor(fi: float, c: float, log_m: Tensor, real: Tensor, p: Tensor) -> Tensor:
    """``exp(fi·log m − c·p)`` (p taken as 0 where not `real`), with ``c = (1 − fi)/reg``: the
    unbalanced scaling's factor for absorbed potentials `p` (fixed between absorptions)."""
    return torch.exp(fi * log_m - c * torch.where(real, p, 0.0))


def _skipped(absent: Tensor | None, active: Tensor, n: int) -> Tensor:
    """(B, n) entries the range test ignores: the `absent` ones and those of finished problems."""
    if absent is None:
        return ~active[:, None].expand(active.shape[0], n)
    return absent | ~active[:, None]


@torch.no_grad()
def solve_scaling(
    cost: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    *,
    reg: float,
    fi_a: float,
    fi_b: float,
    max_iter: int,
    tol: float,
    check_every: int,
    plan_out: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stabilised scaling iterations with absorption; same contract as :func:`solve_potentials`.

    Not differentiable. State per problem: absorbed potentials ``fa (N,)``, ``ga (M,)``, the
    kernel ``K = exp((fa_i + ga_j − C_ij)/reg)`` and scalings ``u``, ``v``, so that
    ``f = fa + reg·log u`` and ``g = ga + reg·log v``. Each half-iteration is one
    matrix-vector product per problem; a problem whose new scaling leaves ``[e^-τ, e^τ]``
    (or is inf/NaN because a product underflowed) redoes that half-iteration in the log
    domain and absorbs it into a fresh kernel. The range is tested every ``LAZY_WINDOW``
    iterations (and at convergence tests); a failed test rolls the window back and replays
    it with a test after each half-iteration. Converged problems are left out of the tests
    (and of the products in ``"mv"`` mode). With `plan_out`, each problem's plan
    ``u_i K_ij v_j`` is written there when it stops.
    """
    B, N, M = cost.shape
    dtype, device = cost.dtype, cost.device
    lim = _Limits(dtype)
    balanced = fi_a == 1.0 and fi_b == 1.0
    ca = (1.0 - fi_a) / reg
    cb = (1.0 - fi_b) / reg

    out_f = torch.full((B, N), -math.inf, dtype=dtype, device=device)
    out_g = torch.full((B, M), -math.inf, dtype=dtype, device=device)
    n_iter = torch.full((B,), max_iter, dtype=torch.int64, device=device)
    error = torch.full((B,), math.inf, dtype=dtype, device=device)

    la, lb = log_a, log_b
    ra, rb = torch.isfinite(la), torch.isfinite(lb)
    masked = not (bool(ra.all()) and bool(rb.all()))
    absent_a = ~ra if masked else None
    absent_b = ~rb if masked else None
    a, b = torch.exp(la), torch.exp(lb)
    ones_a, ones_b = ra.to(dtype), rb.to(dtype)

    # bmm spreads the batch over torch's threads; with one thread, per-problem mv is faster
    mode = "bmm" if (torch.get_num_threads() > 1 or N * M <= 1 << 16) else "mv"
    ker = _Kernel(cost, reg, lim, mode)
    # Initial absorption: fa_i = min_j C_ij + reg·log a_i and ga_j = reg·log b_j, so that
    # K_ij <= a_i·b_j with equality at each row minimum; v_j = 1/b_j gives g = 0 (the
    # contract's start) and u = a/(Kv) in [1/M, 1].
    fa = torch.where(ra, ker.row_min(rb, masked) + reg * la, la)
    ga = reg * lb
    ker.set_all(fa, ga)
    ea = eb = None
    if not balanced:
        # u = (a/Kv)^fi_a · exp(−(1 − fi_a)·fa/reg) = ea · Kv^(−fi_a), ea fixed between absorptions
        ea = _exp_factor(fi_a, ca, la, ra, fa)
        eb = _exp_factor(fi_b, cb, lb, rb, ga)

    # persistent buffers, updated in place, with per-problem views for the products
    u = ones_a.clone()
    v = torch.where(rb, torch.exp(-lb), torch.zeros_like(lb))
    Kv = torch.empty_like(la)
    Ktu = torch.empty_like(lb)
    ker.bind(u, v, Kv, Ktu)
    skip_a, skip_b = absent_a, absent_b  # entries the range test ignores (absent or finished)
    active_mask = torch.ones(B, dtype=torch.bool, device=device)
    active = list(range(B))
    ker.rows(active)

    def fix(side: str, bad: list[int]) -> None:
        """Redo the `side` ("f" or "g") update of problems `bad` in the log domain and absorb it."""
        i = torch.tensor(bad, device=device)
        own, other, s_other, log_m, fi = (
            (fa, ga, v, la, fi_a) if side == "f" else (ga, fa, u, lb, fi_b)
        )
        p = other[i] + reg * torch.log(s_other[i])  # the other side's absolute potential
        own[i] = ker.lse_update(side, i, p, log_m[i], fi)
        other[i] = p
        ker.set_some(i, fa[i], ga[i])
        u[i], v[i] = ones_a[i], ones_b[i]
        if not balanced:
            ea[i] = _exp_factor(fi_a, ca, la[i], ra[i], fa[i])
            eb[i] = _exp_factor(fi_b, cb, lb[i], rb[i], ga[i])

    def scale(out: Tensor, prod: Tensor, mass: Tensor, fi: float, e: Tensor | None) -> None:
        """A scaling update in place: ``out = (mass / prod)^fi · e`` (``mass / prod`` when
        balanced), i.e. u from Kv (f-update) or v from Kᵀu (g-update); a zero product gives
        inf/NaN, caught by the range tests."""
        if masked:
            prod.clamp_min_(lim.tiny)  # absent rows (columns) have a zero product
        if balanced:
            torch.div(mass, prod, out=out)
        else:
            torch.pow(prod, -fi, out=out).mul_(e)

    # Range tests are lazy: the scalings are tested at the end of each window of LAZY_WINDOW
    # iterations (and at every convergence test) against a snapshot taken at the window's
    # start. If a test fails, the window is replayed from the snapshot with a test after
    # every half-iteration (and absorption where needed), as the strict scheme would run it.
    snap_u, snap_v, snap_kv = u.clone(), v.clone(), Kv.clone()
    k_snap, strict_until = 0, 0
    k = 0
    while k < max_iter:
        if k >= strict_until:
            # the iterations before the next window end have no test or check: run them plainly
            k_end = min(max_iter, (k // LAZY_WINDOW + 1) * LAZY_WINDOW)
            if tol > 0:
                k_end = min(k_end, (k // check_every + 1) * check_every)
            while k < k_end - 1:
                k += 1
                scale(u, Kv, a, fi_a, ea)
                ker.cols(active)
                scale(v, Ktu, b, fi_b, eb)
                ker.rows(active)
        k += 1
        strict = k <= strict_until
        check = _is_check(k, max_iter, tol, check_every)
        if check and not balanced:
            # iteration 1 has no previous iterate: its error is inf, as in solve_lse
            f_prev = fa + reg * torch.log(u) if k > 1 else torch.full_like(fa, -math.inf)
            g_prev = ga + reg * torch.log(v)

        scale(u, Kv, a, fi_a, ea)  # f-update
        if strict:
            bad = _out_of_range(u, skip_a, 1.0, lim.u_lo, lim.u_hi, active_mask)
            if bad:
                fix("f", bad)

        ker.cols(active)  # g-update
        scale(v, Ktu, b, fi_b, eb)
        if strict:
            bad = _out_of_range(v, skip_b, 1.0, lim.u_lo, lim.u_hi, active_mask)
            if bad:
                fix("g", bad)

        last = k == max_iter
        if not last or balanced:
            ker.rows(active)  # the plan's row sums are u·Kv
        if check or last or k % LAZY_WINDOW == 0:
            if not strict and (
                _out_of_range(u, skip_a, 1.0, lim.u_lo, lim.u_hi, active_mask)
                or _out_of_range(v, skip_b, 1.0, lim.u_lo, lim.u_hi, active_mask)
            ):
                u.copy_(snap_u)
                v.copy_(snap_v)
                Kv.copy_(snap_kv)
                strict_until, k = k, k_snap
                continue
            snap_u.copy_(u)
            snap_v.copy_(v)
            snap_kv.copy_(Kv)
            k_snap = k
        if not check:
            continue
        if balanced:
            err = (u * Kv - a).abs().sum(dim=1)
        else:
            err = _unbalanced_error(
                fa + reg * torch.log(u), f_prev, ga + reg * torch.log(v), g_prev, ra, rb, reg
            )
        stop = active_mask & (
            (err < tol) if (tol > 0 and not last) else torch.full_like(active_mask, last)
        )
        if not bool(stop.any()):
            continue
        every = bool(stop.all())
        if every:
            out_f.copy_(fa).add_(torch.log(u), alpha=reg)
            out_g.copy_(ga).add_(torch.log(v), alpha=reg)
            error.copy_(err)
            n_iter.fill_(k)
        else:
            out_f[stop] = (fa + reg * torch.log(u))[stop]
            out_g[stop] = (ga + reg * torch.log(v))[stop]
            error[stop] = err[stop]
            n_iter[stop] = k
        if plan_out is not None:
            ker.plan_into(plan_out, None if every else stop, u, v)
        active_mask = active_mask & ~stop
        # finished problems keep being multiplied in bmm mode: exclude them from the test
        skip_a = _skipped(absent_a, active_mask, N)
        skip_b = _skipped(absent_b, active_mask, M)
        active = active_mask.nonzero()[:, 0].tolist()
        if not active:
            break
    return out_f, out_g, n_iter, error
