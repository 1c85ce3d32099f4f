"""Fused log-domain Sinkhorn kernel in Triton (the ``"triton"`` backend of :func:`ram_ot.ot.sinkhorn`).

RAM (arXiv 2503.15337, Sec. 3.3) matches B images' N regions to M labels by
entropic optimal transport solved with Sinkhorn iterations. The reference implementation
launches about ten small kernels and one host sync per iteration; for RAM's shapes the
solver is bound by launches, not arithmetic. This module usually runs *all* iterations of
one problem in a single Triton program (one program per problem, grid ``(B,)``, one launch):

* **resident** (what "auto" takes when it fits): the cost tile, read once and scaled, and
  both potentials stay in registers for all iterations, with no global memory traffic or
  block barrier inside the loop. The columns are held as up to two power-of-two chunks, so
  RAM's (196, 80) is a 256 x (64 + 16) tile (20480 fp32 values, 8 warps); up to 20480
  fp32 / 4096 fp64 values;
* **on-chip**: the first design, kept for comparison: the padded tile (one power-of-two
  block) in registers, the potentials round-tripping through global memory every
  half-iteration;
* **streamed**: when the tile does not fit (NUS-WIDE's M = 1006, ViT-L's N = 576) the tile
  is read block by block in every half-iteration (from L1/L2 after the first read) with an
  online log-sum-exp;
* **split**: for large problems on a GPU (``N M >= 2^16``, e.g. NUS-WIDE's 196 x 1006 and
  ViT-L's 576 x 1006) one program per (problem, row block) and two launches per iteration: the
  row kernel updates f for its rows and writes column (max, sum-exp) partials, the column
  kernel combines them into g. Converged problems are frozen by device-side flags.

Iterations are carried out in base 2 (``exp2``/``log2``): with ``s = log2(e) / reg`` the
scaled potentials are ``u = f * s``, ``v = g * s`` and the scaled cost ``K = C * s``, so

    u_i = fi_a * (log2(a_i) - log2 sum_j 2^(v_j - K_ij)),
    v_j = fi_b * (log2(b_j) - log2 sum_i 2^(u_i - K_ij)),

which is exactly the natural-log update of the contract below multiplied by ``s``.
Masked (absent) rows and columns carry ``log a_i = -inf`` / ``log b_j = -inf`` and get
potentials ``-inf``, hence exactly zero plan entries. Each program stops on its own at the
first convergence test with ``error < tol`` (tests at iterations ``k`` with
``k % check_every == 0`` or ``k == max_iter``), like the torch backend.

Backend contract (shared with :mod:`ram_ot.ot._torch`)::

    probe(device) -> (ok, reason)
    solve_potentials(cost, log_a, log_b, *, reg, fi_a, fi_b, max_iter, tol, check_every)
        -> (f, g, n_iter, error)

Triton is imported here only, and this module is imported only lazily by the frontend,
so ``import ram_ot`` works without Triton. On CPU tensors the kernel runs through Triton's
interpreter, exactly when ``TRITON_INTERPRET=1`` is set (see ``docs/triton.md``).
"""

from __future__ import annotations

import math
import os
from functools import cache
from typing import Any, NamedTuple

import torch
from torch import Tensor

try:  # Triton is optional: everything below degrades to probe() -> (False, reason).
    import triton
    import triton.language as tl

    _IMPORT_ERROR: BaseException | None = None
except Exception as exc:  # pragma: no cover - depends on the environment
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    _IMPORT_ERROR = exc

__all__ = ["probe", "solve_potentials"]

_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)

#: Largest padded tile (elements) kept in registers, per dtype. Chosen so that ptxas
#: (sm_90, checked offline with the ptxas bundled with Triton) reports no register spills:
#: 64 x 128 fp32 over 16 warps uses 128 registers per thread; 256 x 128 spills ~2 KB per
#: thread. Larger problems take the streamed variant, whose re-reads of a tile of RAM's
#: size (62 KB for (196, 80) fp32) are served by L1/L2.
_ONCHIP_MAX_ELEMENTS = {torch.float32: 8192, torch.float64: 4096}
#: (BLOCK_N, BLOCK_M, num_warps) of the streamed variant, per dtype.
_STREAM_CONFIG = {torch.float32: (64, 128, 8), torch.float64: (32, 128, 8)}
#: (BLOCK_N, BLOCK_M, num_warps) of the split variant (programs per row block), per dtype.
_SPLIT_CONFIG = {torch.float32: (32, 128, 4), torch.float64: (16, 128, 4)}
_VARIANTS = ("auto", "resident", "onchip", "stream", "split")
_SUPPORTED_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------
# The kernels and the device functions they share. Defined undecorated and wrapped by
# ``triton.jit`` on first use (see ``_kernel``), so that the interpreter (TRITON_INTERPRET=1)
# is picked whenever it is set, not only at import time. Triton inlines the device functions
# into each kernel, and ``tl.constexpr`` arguments (the reduction axis, ONCHIP) are resolved
# at compile time: the kernels compile to the code they had with the updates written out.
#
# All of them work in base 2 on scaled quantities (see the module docstring): potentials
# ``u``/``v``, scaled cost ``K``, log2 masses, and -inf on masked rows and columns.
# --------------------------------------------------------------------------------------

if triton is not None:

    def _load_params(prm_ptr):
        """The kernel scalars ``(scale, fi_a, fi_b, tol, to_cost, log2e)`` (see ``_params``)."""
        scale = tl.load(prm_ptr)
        fi_a = tl.load(prm_ptr + 1)
        fi_b = tl.load(prm_ptr + 2)
        tol = tl.load(prm_ptr + 3)
        to_cost = tl.load(prm_ptr + 4)
        log2e = tl.load(prm_ptr + 5)  # a literal would be rounded to float32
        return scale, fi_a, fi_b, tol, to_cost, log2e

    def _cost_block(cost_b, rows, rmask, cols, cmask, stride_cn, scale):
        """The scaled cost ``K`` of rows x cols (0 outside the masks)."""
        kk = tl.load(
            cost_b + rows[:, None] * stride_cn + cols[None, :],
            mask=rmask[:, None] & cmask[None, :],
            other=0.0,
        )
        return kk * scale

    def _lse_finish(m, s):
        """``log2 sum`` from a running (max, sum of 2^(x - max)); -inf where all x are -inf."""
        return tl.where(m == float("-inf"), float("-inf"), m + tl.log2(tl.where(s > 0, s, 1.0)))

    def _max_sumexp(x, AXIS: tl.constexpr):
        """(max, sum of 2^(x - max)) of `x` along AXIS, a max of -inf taken as 0 in the shift."""
        m = tl.max(x, axis=AXIS)
        m_safe = tl.where(m == float("-inf"), tl.zeros_like(m), m)
        return m, tl.sum(tl.exp2(x - tl.expand_dims(m_safe, AXIS)), axis=AXIS)

    def _lse_step(m_run, s_run, x, AXIS: tl.constexpr):
        """Online log-sum-exp: fold block `x` (reduced along AXIS) into (m_run, s_run)."""
        m_new = tl.maximum(m_run, tl.max(x, axis=AXIS))
        m_safe = tl.where(m_new == float("-inf"), tl.zeros_like(m_new), m_new)
        s_run = s_run * tl.exp2(m_run - m_safe) + tl.sum(
            tl.exp2(x - tl.expand_dims(m_safe, AXIS)), axis=AXIS
        )
        return m_new, s_run

    def _lse_pass(
        cost_b,
        p_b,
        tile,
        idx,
        imask,
        L,
        stride_cn,
        scale,
        AXIS: tl.constexpr,
        ONCHIP: tl.constexpr,
        rl,
    ):
        """Half a Sinkhorn sweep with the other side's potentials ``p`` (at ``p_b``, L of them).

        AXIS = 1: `idx` are rows, returns ``log2 sum_j 2^(p_j - K_ij)`` (the row pass);
        AXIS = 0: `idx` are columns, returns ``log2 sum_i 2^(p_i - K_ij)`` (the column pass).
        The other side is read in blocks of BLOCK_L with an online log-sum-exp; with ONCHIP
        the cost is the register `tile` (one block covers it), else it is read from `cost_b`.
        `rl` is ``tl.arange(0, BLOCK_L)``.
        """
        m_run = tl.full(idx.shape, float("-inf"), cost_b.dtype.element_ty)
        s_run = tl.zeros(idx.shape, cost_b.dtype.element_ty)
        for l0 in range(0, L, rl.shape[0]):
            other = l0 + rl
            omask = other < L
            p = tl.load(p_b + other, mask=omask, other=float("-inf"))
            if ONCHIP:
                kk = tile
            elif AXIS == 1:
                kk = _cost_block(cost_b, idx, imask, other, omask, stride_cn, scale)
            else:
                kk = _cost_block(cost_b, other, omask, idx, imask, stride_cn, scale)
            if AXIS == 1:
                x = p[None, :] - kk
            else:
                x = p[:, None] - kk
            m_run, s_run = _lse_step(m_run, s_run, x, AXIS)
        return _lse_finish(m_run, s_run)

    def _update(lm, real, fi, lse, old):
        """Potential update ``fi * (log2 mass - lse)`` (-inf where not `real`), and the change.

        `lm` is the log2 mass where `real`, `lse` the pass's log-sum-exp, `old` the iterate;
        the change is 0 where not `real` (its largest size: ``_absmax``).
        """
        new = tl.where(real, fi * (lm - lse), float("-inf"))
        return new, tl.where(real, new, tl.zeros_like(new)) - tl.where(
            real, old, tl.zeros_like(old)
        )

    def _absmax(x):
        """``max |x|`` of a 1-D block."""
        return tl.max(tl.abs(x), axis=0)

    def _row_dev(u, r, real, la, mass):
        """``|2^(u_i + r_i) - a_i|``: row i's marginal violation (sum it over `real` rows with
        ``_masked_sum`` for the balanced error). The masses are `mass`, or ``exp(la)`` if None.
        """
        ur = tl.where(real, u + r, float("-inf"))
        if mass is None:
            dev = tl.abs(tl.exp2(ur) - tl.exp(tl.where(real, la, float("-inf"))))
        else:
            dev = tl.abs(tl.exp2(ur) - mass)
        return dev

    def _masked_sum(x, real):
        """``sum x`` over the `real` entries of a 1-D block."""
        return tl.sum(tl.where(real, x, tl.zeros_like(x)), axis=0)

    def _test(k, max_iter, check_every, err, tol, last_err):
        """The convergence test after iteration k: (error at the last test, whether to stop)."""
        tested = (k == max_iter) | ((k > 0) & (k % check_every == 0))
        last_err = tl.where(tested, err, last_err)
        stop = (tested & (err < tol)) | (k >= max_iter)
        return last_err, stop

    def _init_potentials(lm_b, p_b, L, rl):
        """Start potentials: 0 where the log mass at `lm_b` is finite, -inf where masked.

        In blocks of ``rl = tl.arange(0, BLOCK)``.
        """
        for l0 in range(0, L, rl.shape[0]):
            idx = l0 + rl
            lm = tl.load(lm_b + idx, mask=idx < L, other=float("-inf"))
            neg = tl.full(lm.shape, float("-inf"), lm.dtype)
            tl.store(p_b + idx, tl.where(lm > float("-inf"), tl.zeros_like(lm), neg), mask=idx < L)

    def _rescale(p_b, L, factor, rl):
        """``p *= factor`` in place for the L potentials at `p_b`, in blocks of `rl` (an arange)."""
        for l0 in range(0, L, rl.shape[0]):
            idx = l0 + rl
            p = tl.load(p_b + idx, mask=idx < L, other=0.0)
            tl.store(p_b + idx, p * factor, mask=idx < L)

    def _sinkhorn_kernel(
        cost_ptr,  # (B, N, M) cost, row-major, last stride 1
        la_ptr,  # (B, N) log a, -inf on masked rows
        lb_ptr,  # (B, M) log b, -inf on masked columns
        prm_ptr,  # (6,) [log2(e)/reg, fi_a, fi_b, tol, reg*ln2, log2(e)] in the cost dtype
        u_ptr,  # (B, N) out: f (scaled potentials while iterating)
        v_ptr,  # (B, M) out: g (scaled potentials while iterating)
        r_ptr,  # (B, N) scratch: log2 sum_j 2^(v_j - K_ij)
        n_iter_ptr,  # (B,) out: int64 iterations run
        err_ptr,  # (B,) out: error at the last convergence test
        N,
        M,
        max_iter,
        check_every,
        stride_cb,
        stride_cn,
        BALANCED: tl.constexpr,
        ONCHIP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid.to(tl.int64)
        cost_b = cost_ptr + b * stride_cb
        la_b = la_ptr + b * N
        lb_b = lb_ptr + b * M
        u_b = u_ptr + b * N
        v_b = v_ptr + b * M
        r_b = r_ptr + b * N
        dtype = cost_ptr.dtype.element_ty
        scale, fi_a, fi_b, tol, to_cost, log2e = _load_params(prm_ptr)

        rn = tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        zero_n = tl.zeros([BLOCK_N], dtype)
        zero_m = tl.zeros([BLOCK_M], dtype)

        tile = None
        if ONCHIP:
            # The whole padded tile, scaled once, stays in registers for all iterations.
            tmask = (rn[:, None] < N) & (rm[None, :] < M)
            tile = tl.load(cost_b + rn[:, None] * stride_cn + rm[None, :], mask=tmask, other=0.0)
            tile = tile * scale

        # init: f = 0 / g = 0 on real rows / columns, -inf on masked ones.
        _init_potentials(la_b, u_b, N, rn)
        _init_potentials(lb_b, v_b, M, rm)
        tl.debug_barrier()

        zero = scale * 0.0  # a scalar of the cost dtype
        k = pid * 0  # int32 scalar: iterations done
        du = zero + float("inf")  # unbalanced error pieces (scaled units)
        dv = zero
        last_err = zero + float("inf")
        go = k <= max_iter
        while go:
            # ---- row pass: r_i = log2 sum_j 2^(v_j - K_ij); balanced error of the current plan.
            err_bal = zero
            for i0 in range(0, N, BLOCK_N):
                rows = i0 + rn
                rmask = rows < N
                r = _lse_pass(cost_b, v_b, tile, rows, rmask, M, stride_cn, scale, 1, ONCHIP, rm)
                tl.store(r_b + rows, r, mask=rmask)
                if BALANCED:
                    la = tl.load(la_b + rows, mask=rmask, other=float("-inf"))
                    u = tl.load(u_b + rows, mask=rmask, other=float("-inf"))
                    real = la > float("-inf")
                    err_bal += _masked_sum(_row_dev(u, r, real, la, None), real)
            tl.debug_barrier()

            # ---- convergence test after iteration k (k = 0 only when max_iter = 0).
            if BALANCED:
                err = err_bal
            else:
                err = (du + dv) * to_cost
            last_err, stop = _test(k, max_iter, check_every, err, tol, last_err)
            if stop:
                go = k < 0  # False, as a tensor
            else:
                # ---- f-update: u_i = fi_a * (log2 a_i - r_i).
                du = zero
                for i0 in range(0, N, BLOCK_N):
                    rows = i0 + rn
                    rmask = rows < N
                    la = tl.load(la_b + rows, mask=rmask, other=float("-inf"))
                    r = tl.load(r_b + rows, mask=rmask, other=0.0)
                    u_old = tl.load(u_b + rows, mask=rmask, other=0.0)
                    real = la > float("-inf")
                    u_new, d = _update(tl.where(real, la, zero_n) * log2e, real, fi_a, r, u_old)
                    du = tl.maximum(du, _absmax(d))
                    tl.store(u_b + rows, u_new, mask=rmask)
                # no previous iterate at iteration 1: its unbalanced error is inf (as the torch backend)
                du = tl.where(k == 0, zero + float("inf"), du)
                tl.debug_barrier()

                # ---- column pass + g-update: v_j = fi_b * (log2 b_j - log2 sum_i 2^(u_i - K_ij)).
                dv = zero
                for j0 in range(0, M, BLOCK_M):
                    cols = j0 + rm
                    cmask = cols < M
                    c = _lse_pass(
                        cost_b, u_b, tile, cols, cmask, N, stride_cn, scale, 0, ONCHIP, rn
                    )
                    lb = tl.load(lb_b + cols, mask=cmask, other=float("-inf"))
                    v_old = tl.load(v_b + cols, mask=cmask, other=0.0)
                    real = lb > float("-inf")
                    v_new, d = _update(tl.where(real, lb, zero_m) * log2e, real, fi_b, c, v_old)
                    dv = tl.maximum(dv, _absmax(d))
                    tl.store(v_b + cols, v_new, mask=cmask)
                tl.debug_barrier()
                k += 1

        # ---- back to cost units: f = u * reg * ln 2, g = v * reg * ln 2 (in place).
        _rescale(u_b, N, to_cost, rn)
        _rescale(v_b, M, to_cost, rm)
        tl.store(n_iter_ptr + b, k.to(tl.int64))
        tl.store(err_ptr + b, last_err)

    # ----------------------------------------------------------------------------------
    # "resident" variant: the whole problem in one program's registers. The cost tile is
    # held as up to two column chunks (BLOCK_M1 + BLOCK_M2 columns, both powers of two, so
    # that e.g. M = 80 is 64 + 16 rather than 128 padded), and the potentials stay in
    # registers across iterations too: no global memory traffic and no block barriers
    # inside the loop, only the reductions of the two half-iterations.
    # ----------------------------------------------------------------------------------

    def _resident_chunk(cost_b, lb_ptr, b, rows, rmask, cols, M, stride_cn, scale, log2e):
        """One column chunk: (scaled tile, real columns, log2 b, start g) of columns `cols`."""
        cmask = cols < M
        tile = _cost_block(cost_b, rows, rmask, cols, cmask, stride_cn, scale)
        lb = tl.load(lb_ptr + b * M + cols, mask=cmask, other=float("-inf"))
        real_b = lb > float("-inf")
        lb = tl.where(real_b, lb * log2e, float("-inf"))
        v = tl.where(real_b, 0.0, float("-inf")).to(cost_b.dtype.element_ty)
        return tile, real_b, lb, v

    def _resident_g(u, tile, real_b, lb, fi_b, v):
        """Column pass and g-update of one chunk: (new v, its change)."""
        my, s = _max_sumexp(u[:, None] - tile, 0)
        return _update(tl.where(real_b, lb, 0.0), real_b, fi_b, _lse_finish(my, s), v)

    def _resident_kernel(
        cost_ptr,  # (B, N, M) cost, last stride 1
        la_ptr,  # (B, N) log a, -inf on masked rows
        lb_ptr,  # (B, M) log b, -inf on masked columns
        prm_ptr,  # (6,) [log2(e)/reg, fi_a, fi_b, tol, reg*ln2, log2(e)] in the cost dtype
        f_ptr,  # (B, N) out: f
        g_ptr,  # (B, M) out: g
        n_iter_ptr,  # (B,) out: int64 iterations run
        err_ptr,  # (B,) out: error at the last convergence test
        N,
        M,
        max_iter,
        check_every,
        stride_cb,
        stride_cn,
        BALANCED: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M1: tl.constexpr,
        BLOCK_M2: tl.constexpr,  # 0: a single column chunk
    ):
        b = tl.program_id(0).to(tl.int64)
        cost_b = cost_ptr + b * stride_cb
        dtype = cost_ptr.dtype.element_ty
        scale, fi_a, fi_b, tol, to_cost, log2e = _load_params(prm_ptr)
        zero = scale * 0.0
        inf = zero + float("inf")

        rows = tl.arange(0, BLOCK_N)
        rmask = rows < N
        la = tl.load(la_ptr + b * N + rows, mask=rmask, other=float("-inf"))
        real_a = la > float("-inf")
        la2 = tl.where(real_a, la * log2e, float("-inf"))
        mass_a = tl.where(real_a, tl.exp2(tl.where(real_a, la2, 0.0)), 0.0)
        u = tl.where(real_a, 0.0, float("-inf")).to(dtype)

        cols1 = tl.arange(0, BLOCK_M1)
        tile1, real_b1, lb1, v1 = _resident_chunk(
            cost_b, lb_ptr, b, rows, rmask, cols1, M, stride_cn, scale, log2e
        )
        if BLOCK_M2 > 0:
            cols2 = BLOCK_M1 + tl.arange(0, BLOCK_M2)
            tile2, real_b2, lb2, v2 = _resident_chunk(
                cost_b, lb_ptr, b, rows, rmask, cols2, M, stride_cn, scale, log2e
            )

        k = tl.program_id(0) * 0  # int32 scalar: iterations done
        du = inf  # unbalanced error pieces (scaled units)
        dv = zero
        last_err = inf
        go = k <= max_iter
        while go:
            # ---- row pass: r_i = log2 sum_j 2^(v_j - K_ij), over both chunks
            x1 = v1[None, :] - tile1
            mx = tl.max(x1, axis=1)
            if BLOCK_M2 > 0:
                x2 = v2[None, :] - tile2
                mx = tl.maximum(mx, tl.max(x2, axis=1))
            ms = tl.where(mx == float("-inf"), 0.0, mx)
            s = tl.sum(tl.exp2(x1 - ms[:, None]), axis=1)
            if BLOCK_M2 > 0:
                s += tl.sum(tl.exp2(x2 - ms[:, None]), axis=1)
            r = _lse_finish(mx, s)
            # ---- convergence test after iteration k (k = 0 only when max_iter = 0)
            if BALANCED:
                err = _masked_sum(_row_dev(u, r, real_a, la, mass_a), real_a)
            else:
                err = (du + dv) * to_cost
            last_err, stop = _test(k, max_iter, check_every, err, tol, last_err)
            if stop:
                go = k < 0  # False, as a tensor
            else:
                # ---- f-update: u_i = fi_a * (log2 a_i - r_i)
                u, d = _update(tl.where(real_a, la2, 0.0), real_a, fi_a, r, u)
                du = tl.where(k == 0, inf, _absmax(d))
                # ---- column pass + g-update: v_j = fi_b * (log2 b_j - log2 sum_i 2^(u_i - K_ij))
                v1, d1 = _resident_g(u, tile1, real_b1, lb1, fi_b, v1)
                dv = _absmax(d1)
                if BLOCK_M2 > 0:
                    v2, d2 = _resident_g(u, tile2, real_b2, lb2, fi_b, v2)
                    dv = tl.maximum(dv, _absmax(d2))
                k += 1

        # ---- back to cost units: f = u * reg * ln 2, g = v * reg * ln 2
        tl.store(f_ptr + b * N + rows, u * to_cost, mask=rmask)
        tl.store(g_ptr + b * M + cols1, v1 * to_cost, mask=cols1 < M)
        if BLOCK_M2 > 0:
            tl.store(g_ptr + b * M + cols2, v2 * to_cost, mask=cols2 < M)
        tl.store(n_iter_ptr + b, k.to(tl.int64))
        tl.store(err_ptr + b, last_err)

    # ----------------------------------------------------------------------------------
    # "split" variant: programs per (problem, row block), two launches per iteration.
    # Uses every SM when B is small and N x M large (e.g. 8 x 576 x 1006); the column
    # log-sum-exp is combined across row blocks through (max, sum) partials in global memory.
    # ----------------------------------------------------------------------------------

    def _split_rows_kernel(
        cost_ptr,  # (B, N, M)
        la_ptr,  # (B, N)
        prm_ptr,  # (6,)
        u_ptr,  # (B, N) scaled f, updated here
        v_ptr,  # (B, M) scaled g, read here
        pm_ptr,  # (B, RB, M) out: column max of u_i - K_ij over this row block
        ps_ptr,  # (B, RB, M) out: column sum of 2^(u_i - K_ij - max)
        dup_ptr,  # (B, RB) out: max |du| over this row block
        done_ptr,  # (B,) int32: 1 once a problem has stopped
        N,
        M,
        RB,
        stride_cb,
        stride_cn,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rb = tl.program_id(1)
        if tl.load(done_ptr + b) == 0:
            dtype = cost_ptr.dtype.element_ty
            scale = tl.load(prm_ptr)
            fi_a = tl.load(prm_ptr + 1)
            log2e = tl.load(prm_ptr + 5)
            zero = scale * 0.0
            rn = tl.arange(0, BLOCK_N)
            rm = tl.arange(0, BLOCK_M)
            zero_n = tl.zeros([BLOCK_N], dtype)
            cost_b = cost_ptr + b * stride_cb
            rows = rb * BLOCK_N + rn
            rmask = rows < N
            # row pass with the current g, then the f-update of this block's rows
            r = _lse_pass(
                cost_b, v_ptr + b * M, None, rows, rmask, M, stride_cn, scale, 1, False, rm
            )
            la = tl.load(la_ptr + b * N + rows, mask=rmask, other=float("-inf"))
            u_old = tl.load(u_ptr + b * N + rows, mask=rmask, other=0.0)
            real = la > float("-inf")
            u_new, d = _update(tl.where(real, la, zero_n) * log2e, real, fi_a, r, u_old)
            tl.store(dup_ptr + b * RB + rb, _absmax(d) + zero)
            tl.store(u_ptr + b * N + rows, u_new, mask=rmask)
            # column partials of LSE_i(u_i - K_ij) over this block's rows
            part = (b * RB + rb) * M
            for j0 in range(0, M, BLOCK_M):
                cols = j0 + rm
                cmask = cols < M
                x = u_new[:, None] - _cost_block(cost_b, rows, rmask, cols, cmask, stride_cn, scale)
                mc, sc = _max_sumexp(x, 0)
                tl.store(pm_ptr + part + cols, mc, mask=cmask)
                tl.store(ps_ptr + part + cols, sc, mask=cmask)

    def _split_cols_kernel(
        lb_ptr,  # (B, M)
        prm_ptr,  # (6,)
        v_ptr,  # (B, M) scaled g, updated here
        pm_ptr,  # (B, RB, M)
        ps_ptr,  # (B, RB, M)
        dvp_ptr,  # (B, CB) out: max |dv| over this column block
        done_ptr,  # (B,) int32
        M,
        RB,
        CB,
        BLOCK_M: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        cb = tl.program_id(1)
        if tl.load(done_ptr + b) == 0:
            dtype = v_ptr.dtype.element_ty
            fi_b = tl.load(prm_ptr + 2)
            log2e = tl.load(prm_ptr + 5)
            zero = fi_b * 0.0
            rm = tl.arange(0, BLOCK_M)
            neg_m = tl.full([BLOCK_M], float("-inf"), dtype)
            zero_m = tl.zeros([BLOCK_M], dtype)
            cols = cb * BLOCK_M + rm
            cmask = cols < M
            m_run = neg_m
            s_run = zero_m
            for r0 in range(0, RB):
                part = (b * RB + r0) * M
                pmv = tl.load(pm_ptr + part + cols, mask=cmask, other=float("-inf"))
                psv = tl.load(ps_ptr + part + cols, mask=cmask, other=0.0)
                m_new = tl.maximum(m_run, pmv)
                m_safe = tl.where(m_new == float("-inf"), zero_m, m_new)
                s_run = s_run * tl.exp2(m_run - m_safe) + psv * tl.exp2(pmv - m_safe)
                m_run = m_new
            c = _lse_finish(m_run, s_run)
            lb = tl.load(lb_ptr + b * M + cols, mask=cmask, other=float("-inf"))
            v_old = tl.load(v_ptr + b * M + cols, mask=cmask, other=0.0)
            real = lb > float("-inf")
            v_new, d = _update(tl.where(real, lb, zero_m) * log2e, real, fi_b, c, v_old)
            tl.store(dvp_ptr + b * CB + cb, _absmax(d) + zero)
            tl.store(v_ptr + b * M + cols, v_new, mask=cmask)

    def _split_check_kernel(
        cost_ptr,  # (B, N, M)
        la_ptr,  # (B, N)
        prm_ptr,  # (6,)
        u_ptr,  # (B, N)
        v_ptr,  # (B, M)
        errp_ptr,  # (B, RB) out: this block's part of sum_i |row_i - a_i|
        done_ptr,  # (B,) int32
        N,
        M,
        RB,
        stride_cb,
        stride_cn,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        rb = tl.program_id(1)
        if tl.load(done_ptr + b) == 0:
            scale = tl.load(prm_ptr)
            zero = scale * 0.0
            rn = tl.arange(0, BLOCK_N)
            rm = tl.arange(0, BLOCK_M)
            cost_b = cost_ptr + b * stride_cb
            rows = rb * BLOCK_N + rn
            rmask = rows < N
            r = _lse_pass(
                cost_b, v_ptr + b * M, None, rows, rmask, M, stride_cn, scale, 1, False, rm
            )
            la = tl.load(la_ptr + b * N + rows, mask=rmask, other=float("-inf"))
            u = tl.load(u_ptr + b * N + rows, mask=rmask, other=float("-inf"))
            real = la > float("-inf")
            dev = _row_dev(u, r, real, la, None)
            tl.store(errp_ptr + b * RB + rb, _masked_sum(dev, real) + zero)

    def _split_decide_kernel(
        prm_ptr,  # (6,)
        errp_ptr,  # (B, RB)
        dup_ptr,  # (B, RB)
        dvp_ptr,  # (B, CB)
        done_ptr,  # (B,) int32, set here
        n_iter_ptr,  # (B,) int64, set here
        err_ptr,  # (B,) error at the last test, set here
        k,
        RB,
        CB,
        BALANCED: tl.constexpr,
        BLOCK_RB: tl.constexpr,
        BLOCK_CB: tl.constexpr,
    ):
        b = tl.program_id(0).to(tl.int64)
        if tl.load(done_ptr + b) == 0:
            tol = tl.load(prm_ptr + 3)
            to_cost = tl.load(prm_ptr + 4)
            zero = tol * 0.0
            ir = tl.arange(0, BLOCK_RB)
            ic = tl.arange(0, BLOCK_CB)
            if BALANCED:
                err = (
                    tl.sum(tl.load(errp_ptr + b * RB + ir, mask=ir < RB, other=0.0), axis=0) + zero
                )
            else:
                du = tl.max(tl.load(dup_ptr + b * RB + ir, mask=ir < RB, other=0.0), axis=0)
                dv = tl.max(tl.load(dvp_ptr + b * CB + ic, mask=ic < CB, other=0.0), axis=0)
                err = (du + dv) * to_cost
                err = tl.where(k == 1, zero + float("inf"), err)  # no previous iterate at k = 1
            tl.store(err_ptr + b, err)
            if err < tol:
                tl.store(done_ptr + b, 1)
                tl.store(n_iter_ptr + b, k.to(tl.int64))


def _env_interpret() -> bool:
    """Whether ``TRITON_INTERPRET`` is set now (Triton's own truthiness: 1/true/on/yes)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _interpret_mode() -> bool:
    """Whether Triton was imported in interpreter mode.

    Triton reads ``TRITON_INTERPRET`` when it decorates a function, and ``triton.language``
    decorates its own helpers (``tl.sum``, ``tl.max``, ``tl.zeros``) when it is imported: the
    mode is fixed by the environment at the first ``import triton`` of the process.
    """
    if triton is None:
        return False
    return type(tl.sum).__name__ == "InterpretedFunction"


_KERNELS: dict[tuple[bool, str], Any] = {}
_NO_SPECIALIZE = {
    "fused": ["max_iter", "check_every"],
    "resident": ["max_iter", "check_every"],
    "split_rows": [],
    "split_cols": [],
    "split_check": [],
    "split_decide": ["k"],
}


#: The device functions the kernels call, undecorated: the first kernel built rebinds their
#: module names to their ``triton.jit`` versions (the kernels look them up by name).
_DEVICE_FNS: dict[str, Any] = {}
if triton is not None:
    _DEVICE_FNS = {
        fn.__name__: fn
        for fn in (
            _load_params,
            _cost_block,
            _lse_finish,
            _max_sumexp,
            _lse_step,
            _lse_pass,
            _update,
            _absmax,
            _row_dev,
            _masked_sum,
            _test,
            _init_potentials,
            _rescale,
            _resident_chunk,
            _resident_g,
        )
    }


def _kernel(name: str = "fused") -> Any:
    """The jitted kernel `name` for Triton's mode (interpreter or compiled), built on first use."""
    key = (_interpret_mode(), name)
    if key not in _KERNELS:
        if not _KERNELS:  # jit the device functions with the first kernel, in the same mode
            globals().update({n: triton.jit(fn) for n, fn in _DEVICE_FNS.items()})
        fn = {
            "fused": _sinkhorn_kernel,
            "resident": _resident_kernel,
            "split_rows": _split_rows_kernel,
            "split_cols": _split_cols_kernel,
            "split_check": _split_check_kernel,
            "split_decide": _split_decide_kernel,
        }[name]
        _KERNELS[key] = triton.jit(fn, do_not_specialize=_NO_SPECIALIZE[name])
    return _KERNELS[key]


# --------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------


def probe(device: torch.device | None = None) -> tuple[bool, str]:
    """Can the Triton kernel run for tensors on `device`?

    Args:
        device: where the cost tensor lives; ``None`` means the current CUDA device when
            CUDA is available, else the CPU.

    Returns:
        ``(ok, reason)``: ``reason`` says why not when ``ok`` is False (and which mode runs
        when it is True).
    """
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    index = device.index
    if device.type == "cuda" and index is None and torch.cuda.is_available():
        index = torch.cuda.current_device()
    return _probe_cached(device.type, index, _interpret_mode(), _env_interpret())


@cache
def _probe_cached(kind: str, index: int | None, interpret: bool, env: bool) -> tuple[bool, str]:
    if triton is None:
        return (
            False,
            f"Triton is not importable ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); pip install triton",
        )
    if kind == "cpu":
        if interpret and env:
            return (
                True,
                "CPU tensors run through Triton's interpreter (TRITON_INTERPRET=1); slow, for testing",
            )
        if env:
            return False, (
                "TRITON_INTERPRET=1 was set after Triton had been imported in compiled mode; Triton "
                "reads it at its first import, so set it before anything imports triton"
            )
        return False, (
            "the Triton kernel needs CUDA tensors; on CPU it runs only through Triton's interpreter: "
            "set TRITON_INTERPRET=1 before triton is first imported (slow, for testing)"
        )
    if kind != "cuda":
        return (
            False,
            f"the Triton kernel supports CUDA devices (and CPU with TRITON_INTERPRET=1), not {kind!r}",
        )
    if interpret:
        return (
            True,
            "CUDA tensors run through Triton's interpreter (TRITON_INTERPRET=1); slow, for testing",
        )
    if not torch.cuda.is_available():
        return False, "CUDA is not available to torch on this machine"
    i = 0 if index is None else index
    if torch.version.hip is None:
        major, minor = torch.cuda.get_device_capability(i)
        if (major, minor) < (7, 5):
            name = torch.cuda.get_device_name(i)
            return (
                False,
                f"{name} has compute capability {major}.{minor}; Triton needs 7.5 or newer",
            )
    try:
        triton.runtime.driver.active.get_current_target()
    except Exception as exc:  # no usable Triton driver (e.g. missing CUDA libraries)
        return False, f"Triton cannot target this GPU ({type(exc).__name__}: {exc})"
    return True, f"CUDA device {i} ({torch.cuda.get_device_name(i)})"


# --------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------


class _LaunchConfig(NamedTuple):
    onchip: bool
    block_n: int
    block_m: int
    num_warps: int


def _config(n: int, m: int, dtype: torch.dtype, variant: str = "auto") -> _LaunchConfig:
    """Tile sizes for an (N, M) problem: on-chip when the padded tile fits, else streamed."""
    if variant not in _VARIANTS:
        raise ValueError(
            f"sinkhorn: expected `_variant` to be one of {_VARIANTS}, got {variant!r}."
        )
    bn, bm = triton.next_power_of_2(max(n, 1)), triton.next_power_of_2(max(m, 1))
    onchip = variant == "onchip" or (variant == "auto" and bn * bm <= _ONCHIP_MAX_ELEMENTS[dtype])
    if onchip:
        regs = bn * bm * (2 if dtype == torch.float64 else 1)  # 32-bit registers for the tile
        num_warps = max(1, min(32, regs // 512))  # ~16 tile registers per thread
        return _LaunchConfig(True, bn, bm, triton.next_power_of_2(num_warps))
    sn, sm, warps = _STREAM_CONFIG[dtype]
    bn, bm = min(bn, sn), min(bm, sm)
    return _LaunchConfig(False, bn, bm, warps if bn * bm >= sn * sm // 2 else 4)


def _check(
    name: str, x: Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    # Internal contract checks (the public frontend validates user input before this).
    if tuple(x.shape) != shape:
        raise ValueError(f"sinkhorn: expected `{name}` of shape {shape}, got {tuple(x.shape)}.")
    if x.dtype != dtype:
        raise TypeError(f"sinkhorn: expected `{name}` of dtype {dtype}, got {x.dtype}.")
    if x.device != device:
        raise ValueError(f"sinkhorn: expected `{name}` on {device}, got {x.device}.")


_PARAMS: dict[tuple, Tensor] = {}


def _params(
    reg: float, fi_a: float, fi_b: float, tol: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """(6,) kernel scalars in the cost dtype, cached per device (no host-to-device copy per call).

    Triton passes Python floats and float literals as float32, which would cost float64 runs
    their precision; the kernel loads its scalars from this tensor instead.
    """
    key = (reg, fi_a, fi_b, tol, dtype, device)
    if key not in _PARAMS:
        if len(_PARAMS) > 64:
            _PARAMS.clear()
        values = [_LOG2E / reg, fi_a, fi_b, tol, reg * _LN2, _LOG2E]
        _PARAMS[key] = torch.tensor(values, dtype=dtype).to(device)
    return _PARAMS[key]


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
    _variant: str = "auto",
    _num_warps: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run log-domain Sinkhorn iterations on the GPU (or Triton's interpreter).

    Usually one fused launch runs all iterations (one program per problem); for a few large
    problems on a GPU, "auto" takes the split variant (programs per row block, two launches
    per iteration). Both follow the backend contract of the module docstring.

    Args:
        cost: (B, N, M) float32 or float64, the cost matrices.
        log_a: (B, N) same dtype, log row masses; ``-inf`` marks masked rows.
        log_b: (B, M) same dtype, log column masses; ``-inf`` marks masked columns.
        reg: entropic regularisation (> 0).
        fi_a: ``reg_m / (reg_m + reg)`` for the rows; 1.0 = balanced side.
        fi_b: same for the columns.
        max_iter: maximum number of iterations (>= 0).
        tol: a problem stops at the first convergence test with ``error < tol``.
        check_every: convergence is tested at iterations ``k % check_every == 0`` and at
            ``max_iter``.
        _variant: ``"auto"``, ``"resident"``, ``"onchip"``, ``"stream"`` or ``"split"``
            (private; benchmarks and tests).
        _num_warps: the resident variant's warps instead of its rule (private; tuning).

    Returns:
        f: (B, N) dtype of cost, row potentials (``-inf`` on masked rows).
        g: (B, M) dtype of cost, column potentials (``-inf`` on masked columns).
        n_iter: (B,) int64, iterations run per problem.
        error: (B,) dtype of cost, error at the last convergence test: the L1 row-marginal
            violation when balanced, else ``(max|Δf| + max|Δg|) / reg``.

    Raises:
        RuntimeError: when the kernel cannot run for these tensors (the reason from
            :func:`probe`).
    """
    ok, reason = probe(cost.device)
    if not ok:
        raise RuntimeError(f"sinkhorn: backend 'triton' cannot run: {reason}.")
    if cost.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"sinkhorn: the triton backend iterates in float32 or float64, got {cost.dtype}."
        )
    if cost.dim() != 3:
        raise ValueError(f"sinkhorn: expected `cost` of shape (B, N, M), got {tuple(cost.shape)}.")
    bsz, n, m = cost.shape
    _check("log_a", log_a, (bsz, n), cost.dtype, cost.device)
    _check("log_b", log_b, (bsz, m), cost.dtype, cost.device)
    if check_every < 1:
        raise ValueError(f"sinkhorn: expected `check_every` >= 1, got {check_every}.")
    if max_iter < 0:
        raise ValueError(f"sinkhorn: expected `max_iter` >= 0, got {max_iter}.")

    dev, dt = cost.device, cost.dtype
    f = torch.empty((bsz, n), device=dev, dtype=dt)
    g = torch.empty((bsz, m), device=dev, dtype=dt)
    n_iter = torch.zeros((bsz,), device=dev, dtype=torch.int64)
    error = torch.empty((bsz,), device=dev, dtype=dt)
    if bsz == 0 or n == 0 or m == 0:
        f.fill_(0.0)
        g.fill_(0.0)
        error.fill_(0.0)
        return f, g, n_iter, error

    cost = cost.contiguous()
    log_a = log_a.contiguous()
    log_b = log_b.contiguous()
    balanced = float(fi_a) == 1.0 and float(fi_b) == 1.0
    # the kernels measure the unbalanced error in cost units: test it against tol·reg and
    # report error/reg, the contract's (reg-free) unit
    tol_k = float(tol) if balanced else float(tol) * float(reg)
    params = _params(float(reg), float(fi_a), float(fi_b), tol_k, dt, dev)
    if _variant == "auto" and _prefer_split(n, m, dev):
        _variant = "split"
    if _variant == "split":
        _solve_split(
            cost,
            log_a,
            log_b,
            params,
            f,
            g,
            n_iter,
            error,
            int(max_iter),
            int(check_every),
            tol_k,
            float(reg),
            balanced,
        )
        return f, g, n_iter, error if balanced else error.div_(reg)
    if _variant == "resident" or (_variant == "auto" and _resident_fits(n, m, dt)):
        bn, bm1, bm2, warps = _resident_config(n, m, dt)
        _kernel("resident")[(bsz,)](
            cost, log_a, log_b, params, f, g, n_iter, error,
            n, m, int(max_iter), int(check_every),
            cost.stride(0), cost.stride(1),
            BALANCED=balanced, BLOCK_N=bn, BLOCK_M1=bm1, BLOCK_M2=bm2,
            num_warps=_num_warps or warps,
        )  # fmt: skip
        return f, g, n_iter, error if balanced else error.div_(reg)
    cfg = _config(n, m, dt, _variant)
    r = torch.empty((bsz, n), device=dev, dtype=dt)
    _kernel()[(bsz,)](
        cost, log_a, log_b, params, f, g, r, n_iter, error,
        n, m, int(max_iter), int(check_every),
        cost.stride(0), cost.stride(1),
        BALANCED=balanced, ONCHIP=cfg.onchip, BLOCK_N=cfg.block_n, BLOCK_M=cfg.block_m,
        num_warps=cfg.num_warps,
    )  # fmt: skip
    return f, g, n_iter, error if balanced else error.div_(reg)


#: Largest tile (elements, after splitting the columns into two power-of-two chunks) that the
#: "resident" variant keeps in registers, per dtype. ptxas (sm_90) reports no or a few bytes
#: of spills up to 256 x 80 fp32 (RAM's 196 x 80) at 8-16 warps; 256 x 128 spills ~1 KB.
_RESIDENT_MAX_ELEMENTS = {torch.float32: 20480, torch.float64: 4096}
#: 32-bit tile words per thread that set the resident variant's warps (at least 4, at most
#: 16). fp32: read off ``.ci/tune-triton.py`` on an H200, where 8 warps (80 values per thread,
#: 255 registers) was fastest at 196 x 80 (6.8 us per iteration against 8.5 at 16 warps and
#: 7.8 at 4), and 4 warps at 49 x 80 and 64 x 64 (docs/benchmarks.md). fp64 (untimed): the
#: most that ptxas compiles without spills (64 x 64 at 8 warps).
_RESIDENT_WORDS_PER_THREAD = {torch.float32: 80, torch.float64: 32}


def _resident_columns(m: int) -> tuple[int, int]:
    """Two power-of-two column chunks covering `m` with little padding (second may be 0)."""
    bm = triton.next_power_of_2(max(m, 1))
    if bm == m or bm <= 16:
        return bm, 0
    return bm // 2, triton.next_power_of_2(m - bm // 2)


def _resident_config(n: int, m: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_M1, BLOCK_M2, num_warps) of the register-resident variant."""
    bn = triton.next_power_of_2(max(n, 1))
    bm1, bm2 = _resident_columns(m)
    words = bn * (bm1 + bm2) * (2 if dtype == torch.float64 else 1)  # 32-bit registers
    warps = -(-words // (32 * _RESIDENT_WORDS_PER_THREAD[dtype]))
    return bn, bm1, bm2, max(4, min(16, triton.next_power_of_2(warps)))


def _resident_fits(n: int, m: int, dtype: torch.dtype) -> bool:
    bn, bm1, bm2, _ = _resident_config(n, m, dtype)
    return bn * (bm1 + bm2) <= _RESIDENT_MAX_ELEMENTS[dtype]


def _prefer_split(n: int, m: int, device: torch.device) -> bool:
    """Whether "auto" takes the split variant: problems of at least 2^16 entries on a GPU.

    Such tiles do not fit the resident variant, and the streamed one (one program per
    problem re-reading its tile from L2 every half-iteration) was 1.7-11x slower than the
    split variant at every such shape timed on an H200 (B from 2 to 128, (196, 1006) and
    (576, 1006); docs/benchmarks.md). The batch size is not part of the rule: split won at
    B = 128 too, where one program per problem would already fill the SMs.
    """
    return device.type == "cuda" and not _interpret_mode() and n * m >= 2**16


def _solve_split(
    cost: Tensor,
    log_a: Tensor,
    log_b: Tensor,
    params: Tensor,
    f: Tensor,
    g: Tensor,
    n_iter: Tensor,
    error: Tensor,
    max_iter: int,
    check_every: int,
    tol: float,
    reg: float,
    balanced: bool,
) -> None:
    """The "split" variant: a host loop of launches with programs per (problem, row block).

    Per iteration: the row kernel (row pass, f-update, column partials), the column kernel
    (combine the partials, g-update); at convergence tests also the balanced-error kernel and
    the decision kernel, which freezes converged problems on the device (their programs then
    return at once). The host reads the ``done`` flags only at tests with ``tol > 0``, to end
    the loop early, as the torch backend does. Writes ``f``, ``g``, ``n_iter``, ``error``.
    """
    bsz, n, m = cost.shape
    dev, dt = cost.device, cost.dtype
    bn, bm, warps = _SPLIT_CONFIG[dt]
    bn = min(bn, triton.next_power_of_2(n))
    bm = min(bm, triton.next_power_of_2(m))
    rb, cb = triton.cdiv(n, bn), triton.cdiv(m, bm)
    u = f  # scaled potentials live in the output buffers until the end
    v = g
    u.copy_(torch.where(torch.isneginf(log_a), log_a, torch.zeros_like(log_a)))
    v.copy_(torch.where(torch.isneginf(log_b), log_b, torch.zeros_like(log_b)))
    pm = torch.empty((bsz, rb, m), device=dev, dtype=dt)
    ps = torch.empty((bsz, rb, m), device=dev, dtype=dt)
    dup = torch.zeros((bsz, rb), device=dev, dtype=dt)
    dvp = torch.zeros((bsz, cb), device=dev, dtype=dt)
    errp = torch.zeros((bsz, rb), device=dev, dtype=dt)
    done = torch.zeros((bsz,), device=dev, dtype=torch.int32)
    n_iter.fill_(max_iter)
    error.fill_(float("inf"))
    rows_k, cols_k = _kernel("split_rows"), _kernel("split_cols")
    check_k, decide_k = _kernel("split_check"), _kernel("split_decide")
    s0, s1 = cost.stride(0), cost.stride(1)
    brb, bcb = triton.next_power_of_2(rb), triton.next_power_of_2(cb)
    for k in range(1, max_iter + 1):
        rows_k[(bsz, rb)](cost, log_a, params, u, v, pm, ps, dup, done, n, m, rb, s0, s1,
                          BLOCK_N=bn, BLOCK_M=bm, num_warps=warps)  # fmt: skip
        cols_k[(bsz, cb)](log_b, params, v, pm, ps, dvp, done, m, rb, cb, BLOCK_M=bm, num_warps=4)
        if k == max_iter or (tol > 0 and k % check_every == 0):  # errors are only needed there
            if balanced:
                check_k[(bsz, rb)](cost, log_a, params, u, v, errp, done, n, m, rb, s0, s1,
                                   BLOCK_N=bn, BLOCK_M=bm, num_warps=warps)  # fmt: skip
            decide_k[(bsz,)](params, errp, dup, dvp, done, n_iter, error, k, rb, cb,
                             BALANCED=balanced, BLOCK_RB=brb, BLOCK_CB=bcb, num_warps=1)  # fmt: skip
            if tol > 0 and k < max_iter and bool(done.all()):
                break
    # back to cost units: f = u * reg * ln 2, g = v * reg * ln 2
    f.mul_(reg * _LN2)
    g.mul_(reg * _LN2)


# --------------------------------------------------------------------------------------
# offline compilation check (no GPU needed)
# --------------------------------------------------------------------------------------


def _signature(jit_fn: Any, consts: dict[str, Any], dtype: str) -> dict[str, str]:
    """The Triton signature of a kernel for offline compilation: `consts` are constexpr,
    ``n_iter_ptr`` / ``done_ptr`` are int64 / int32 pointers, other pointers are `dtype`
    (``"fp32"``, ``"fp64"``), the rest int32."""
    import inspect

    sig = {}
    for arg in inspect.signature(jit_fn.fn).parameters:
        if arg in consts:
            sig[arg] = "constexpr"
        elif arg == "n_iter_ptr":
            sig[arg] = "*i64"
        elif arg == "done_ptr":
            sig[arg] = "*i32"
        elif arg.endswith("_ptr"):
            sig[arg] = f"*{dtype}"
        else:
            sig[arg] = "i32"
    return sig


def _compile_report(
    *,
    arch: int = 90,
    dtype: str = "fp32",
    variant: str = "onchip",
    balanced: bool = True,
    shape: tuple[int, int] | None = None,
    num_warps: int | None = None,
) -> str:
    """Compile the kernel(s) for ``sm_<arch>`` without a GPU and return ptxas' resource lines.

    Uses Triton's ahead-of-time path (``triton.compile`` with a ``GPUTarget``) and the ptxas
    bundled with Triton; it needs Triton in compiled mode (``TRITON_INTERPRET`` unset at its
    import). Tile sizes are those picked for a 64 x 128 padded tile (``variant="onchip"``), for
    RAM's (196, 80) problems (``"stream"`` and ``"resident"``), or the split variant's four
    kernels (``"split"``); `shape` ``(N, M)`` and `num_warps` override the defaults.

    Returns:
        one line per kernel, e.g. ``"sm_90 fp32 onchip balanced fused (64x128, 16 warps): 0 bytes
        spill stores ...; Used 128 registers ..."``.
    """
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if _interpret_mode():
        raise RuntimeError("_compile_report needs Triton imported without TRITON_INTERPRET=1.")
    tdt = {"fp32": torch.float32, "fp64": torch.float64}[dtype]
    jobs = []  # (kernel name, constexprs, num_warps, label)
    if variant == "split":
        bn, bm, warps = _SPLIT_CONFIG[tdt]
        jobs.append(("split_rows", {"BLOCK_N": bn, "BLOCK_M": bm}, warps, f"{bn}x{bm}"))
        jobs.append(("split_cols", {"BLOCK_M": bm}, 4, f"{bm}"))
        jobs.append(("split_check", {"BLOCK_N": bn, "BLOCK_M": bm}, warps, f"{bn}x{bm}"))
        jobs.append(
            ("split_decide", {"BALANCED": balanced, "BLOCK_RB": 32, "BLOCK_CB": 8}, 1, "32/8")
        )
    elif variant == "resident":
        bn, bm1, bm2, warps = _resident_config(*(shape or (196, 80)), tdt)
        consts = {"BALANCED": balanced, "BLOCK_N": bn, "BLOCK_M1": bm1, "BLOCK_M2": bm2}
        jobs.append(("resident", consts, num_warps or warps, f"{bn}x({bm1}+{bm2})"))
    else:
        n, m = shape or ((49, 80) if variant == "onchip" else (196, 80))
        cfg = _config(n, m, tdt, variant)
        consts = {
            "BALANCED": balanced,
            "ONCHIP": cfg.onchip,
            "BLOCK_N": cfg.block_n,
            "BLOCK_M": cfg.block_m,
        }
        jobs.append(("fused", consts, num_warps or cfg.num_warps, f"{cfg.block_n}x{cfg.block_m}"))
    lines = []
    for name, consts, warps, label in jobs:
        jit_fn = _kernel(name)
        src = ASTSource(jit_fn, _signature(jit_fn, consts, dtype), constexprs=consts)
        compiled = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps}
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.ptx")
            with open(path, "w") as fh:
                fh.write(compiled.asm["ptx"])
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            out = subprocess.run(
                [
                    triton.knobs.nvidia.ptxas.path,
                    "-v",
                    f"--gpu-name={gpu}",
                    path,
                    "-o",
                    os.path.join(tmp, "k.cubin"),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        info = [
            ln.split(":", 1)[-1].strip()
            for ln in out.stderr.splitlines()
            if "spill" in ln or "registers" in ln
        ]
        kind = "balanced" if balanced else "unbalanced"
        lines.append(
            f"sm_{arch} {dtype} {variant} {kind} {name} ({label}, {warps} warps): "
            + "; ".join(info)
        )
    return "\n".join(lines)
