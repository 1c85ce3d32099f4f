"""Tests for ram_ot.ot.sinkhorn: POT oracles, masks, stability, dtypes, gradients, errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

from ram_ot._checks import ConvergenceWarning
from ram_ot.bench._official import official_sinkhorn
from ram_ot.bench.sinkhorn import kcot_problem
from ram_ot.ot import SinkhornResult, available_backends, sinkhorn
from ram_ot.ot._dispatch import ENV_VAR, resolve_backend

ot = pytest.importorskip("ot")

INF = float("inf")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm())


def pot_unbalanced(a, b, cost, reg, reg_m, reg_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that "entropy" overwrites its c matrix
        plan = ot.unbalanced.sinkhorn_unbalanced(
            a.numpy(),
            b.numpy(),
            cost.numpy(),
            reg,
            reg_m,
            reg_type=reg_type,
            method="sinkhorn",
            numItermax=100000,
            stopThr=1e-15,
        )
    return torch.from_numpy(plan)


# ---------------------------------------------------------------------------------------
# Oracles: POT in float64
# ---------------------------------------------------------------------------------------


def pot_balanced(a, b, cost, reg):
    """POT's log-domain Sinkhorn per problem, run to convergence (numpy, float64)."""
    return torch.stack(
        [
            torch.from_numpy(
                ot.bregman.sinkhorn_log(
                    a[i].numpy(),
                    b[i].numpy(),
                    cost[i].numpy(),
                    reg,
                    numItermax=100000,
                    stopThr=1e-12,
                )
            )
            for i in range(cost.shape[0])
        ]
    )


@pytest.mark.parametrize("reg", [0.1, 0.05, 0.01])
def test_balanced_matches_pot(reg):
    # seed 4: both problems converge within ~1.5k iterations at reg=0.01 (keeps POT fast)
    cost, a, b = kcot_problem(2, 30, 12, dtype=torch.float64, seed=4)
    ref = pot_balanced(a, b, cost, reg)
    for grad in ("detach", "unroll"):  # scaling with absorption / log-domain LSE
        with torch.no_grad():
            res = sinkhorn(cost, a, b, reg=reg, max_iter=20000, tol=1e-11, grad=grad)
            res32 = sinkhorn(
                cost.float(), a.float(), b.float(), reg=reg, max_iter=20000, tol=1e-5, grad=grad
            )
        assert bool(res.converged.all()) and bool(res32.converged.all())
        assert rel_err(res.plan, ref) <= 1e-6
        assert res32.plan.dtype == torch.float32
        assert rel_err(res32.plan, ref) <= 1e-3


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
@pytest.mark.parametrize("reg_m", [1.0, (0.5, INF), (INF, 0.3), (2.0, 0.2)])
@pytest.mark.parametrize("reg", [0.1, 0.01])
def test_unbalanced_matches_pot(reg, reg_m, reg_type):
    cost, a, b = kcot_problem(2, 25, 10, dtype=torch.float64, seed=2)
    a = 1.5 * a  # unequal total masses
    ref = torch.stack([pot_unbalanced(a[i], b[i], cost[i], reg, reg_m, reg_type) for i in range(2)])
    res = sinkhorn(cost, a, b, reg=reg, reg_m=reg_m, reg_type=reg_type, max_iter=20000, tol=1e-12)
    assert bool(res.converged.all())
    assert rel_err(res.plan, ref) <= 1e-6
    res32 = sinkhorn(
        cost.float(),
        a.float(),
        b.float(),
        reg=reg,
        reg_m=reg_m,
        reg_type=reg_type,
        max_iter=20000,
        tol=1e-6,
    )
    assert rel_err(res32.plan, ref) <= 1e-3


def test_plan_is_exp_of_potentials_and_reg_type_irrelevant_when_balanced():
    cost, a, b = kcot_problem(2, 20, 9, dtype=torch.float64, seed=3)
    r_kl = sinkhorn(cost, a, b, reg=0.05, reg_type="kl", tol=1e-10, max_iter=5000)
    r_ent = sinkhorn(cost, a, b, reg=0.05, reg_type="entropy", tol=1e-10, max_iter=5000)
    torch.testing.assert_close(r_kl.plan, r_ent.plan)
    rebuilt = torch.exp((r_kl.f[:, :, None] + r_kl.g[:, None, :] - cost) / 0.05)
    torch.testing.assert_close(rebuilt, r_kl.plan)
    r_u = sinkhorn(cost, a, b, reg=0.05, reg_m=0.5, reg_type="kl", tol=1e-10, max_iter=5000)
    torch.testing.assert_close(
        torch.exp((r_u.f[:, :, None] + r_u.g[:, None, :] - cost) / 0.05), r_u.plan
    )


def test_both_torch_algorithms_agree_iterate_by_iterate():
    from ram_ot.ot._torch import solve_lse, solve_scaling

    cost, a, b = kcot_problem(3, 17, 23, dtype=torch.float64, seed=4)
    for fi in (1.0, 0.9):
        kw = dict(reg=0.02, fi_a=fi, fi_b=fi, max_iter=300, tol=1e-6, check_every=7)
        f1, g1, n1, e1 = solve_scaling(cost, a.log(), b.log(), **kw)
        f2, g2, n2, e2 = solve_lse(cost, a.log(), b.log(), **kw)
        assert torch.equal(n1, n2)
        torch.testing.assert_close(f1, f2, rtol=0, atol=1e-10)
        torch.testing.assert_close(g1, g2, rtol=0, atol=1e-10)
        torch.testing.assert_close(e1, e2, rtol=1e-6, atol=1e-12)


def test_official_reimplementation_agrees_where_it_is_stable():
    cost, a, b = kcot_problem(2, 30, 12, dtype=torch.float64, seed=5)
    ref = official_sinkhorn(a, b, cost, 0.1, max_iter=3000, thresh=0.0)
    res = sinkhorn(cost, a, b, reg=0.1, max_iter=3000, tol=1e-12)
    assert rel_err(res.plan, ref) <= 1e-8


# ---------------------------------------------------------------------------------------
# Masks (ragged batches)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_masks_equal_trimmed_problems(reg_m):
    B, N, M, reg = 3, 14, 9, 0.05
    cost, a, b = kcot_problem(B, N, M, dtype=torch.float64, seed=6)
    n_real, m_real = [14, 9, 5], [9, 4, 7]
    mask_a = torch.arange(N)[None, :] < torch.tensor(n_real)[:, None]
    mask_b = torch.arange(M)[None, :] < torch.tensor(m_real)[:, None]
    pad = ~(mask_a[:, :, None] & mask_b[:, None, :])
    cost = cost.masked_fill(pad, float("nan"))  # padding garbage must not leak
    a = a.masked_fill(~mask_a, 0.0)
    a = a / a.sum(-1, keepdim=True)  # equal total masses on the real entries
    res = sinkhorn(
        cost,
        a,
        None,
        reg=reg,
        reg_m=reg_m,
        mask_a=mask_a,
        mask_b=mask_b,
        tol=1e-12,
        max_iter=20000,
        validate=True,  # checks only the real entries
    )
    assert torch.isfinite(res.plan).all()
    assert bool((res.plan[pad] == 0).all())
    assert bool((res.f[~mask_a] == -INF).all()) and bool((res.g[~mask_b] == -INF).all())
    for i in range(B):
        n, m = n_real[i], m_real[i]
        ai = a[i, :n]
        bi = torch.full((m,), 1.0 / m, dtype=torch.float64)  # default b: uniform over real columns
        ci = cost[i, :n, :m]
        if reg_m is None:
            ref = pot_balanced(ai[None], bi[None], ci[None], reg)[0]
            trimmed = sinkhorn(ci, ai, bi, reg=reg, tol=1e-12, max_iter=20000)
            torch.testing.assert_close(
                res.plan[i, :n, :m] / res.plan[i].sum(), ref / ref.sum(), rtol=1e-6, atol=1e-12
            )
        else:
            ref = pot_unbalanced(ai, bi, ci, reg, reg_m, "kl")
            trimmed = sinkhorn(ci, ai, bi, reg=reg, reg_m=reg_m, tol=1e-12, max_iter=20000)
            torch.testing.assert_close(res.plan[i, :n, :m], ref, rtol=1e-6, atol=1e-12)
        assert trimmed.plan.shape == (n, m)
        torch.testing.assert_close(
            res.plan[i, :n, :m], trimmed.plan.to(res.plan.dtype), rtol=1e-6, atol=1e-12
        )


def test_masked_balanced_problem_uses_given_masses_on_real_rows():
    cost, a, b = kcot_problem(1, 6, 4, dtype=torch.float64, seed=7)
    mask_a = torch.tensor([[True, True, True, False, True, False]])
    a = mask_a.double() / 4.0  # masses of the real rows sum to 1
    res = sinkhorn(cost, a, b, mask_a=mask_a, reg=0.1, tol=1e-12, max_iter=5000)
    torch.testing.assert_close(res.plan.sum(-1), a)
    torch.testing.assert_close(res.plan.sum(-2), b)


# ---------------------------------------------------------------------------------------
# Stability at small reg
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reg_m", [None, 1.0, (0.1, INF)])
def test_no_nan_down_to_reg_1e_3(dtype, reg_m):
    gen = torch.Generator().manual_seed(8)
    cost = (2 * torch.rand(3, 40, 24, generator=gen, dtype=torch.float64)).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for grad in ("detach", "unroll"):
            res = sinkhorn(cost, reg=1e-3, reg_m=reg_m, max_iter=60, grad=grad)
            for t in (res.plan, res.f, res.g, res.error):
                assert torch.isfinite(t).all()
    # the column marginals are exact after each g-update in the balanced case
    if reg_m is None:
        torch.testing.assert_close(
            res.plan.sum(1).double(),
            torch.full((3, 24), 1 / 24, dtype=torch.float64),
            rtol=1e-4,
            atol=0,
        )


def test_official_scaling_solver_gives_nan_where_ours_does_not():
    cost, a, b = kcot_problem(4, 196, 80, seed=9)
    # the reference runs under fp16 autocast: at reg 0.01 its kernel exp(-M/reg) underflows
    off16 = official_sinkhorn(a.half(), b.half(), cost.half(), 0.01)
    assert torch.isnan(off16).any()
    # in float32 it breaks down at reg 1e-3
    off32 = official_sinkhorn(a, b, cost, 1e-3)
    assert torch.isnan(off32).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours16 = sinkhorn(cost.half(), a.half(), b.half(), reg=0.01)
        ours32 = sinkhorn(cost, a, b, reg=1e-3)
    assert ours16.plan.dtype == torch.float16
    assert torch.isfinite(ours16.plan).all() and torch.isfinite(ours32.plan).all()
    torch.testing.assert_close(ours32.plan.sum(1), b, rtol=1e-3, atol=0)


# ---------------------------------------------------------------------------------------
# dtypes, autocast, unbatched input, convergence bookkeeping
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_iterates_in_float32(dtype):
    cost, a, b = kcot_problem(2, 20, 8, seed=10)
    low = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), reg=0.05, tol=0.0, max_iter=50)
    ref = sinkhorn(
        cost.to(dtype).float(),
        a.to(dtype).float(),
        b.to(dtype).float(),
        reg=0.05,
        tol=0.0,
        max_iter=50,
    )
    assert (
        low.plan.dtype == dtype
        and low.f.dtype == torch.float32
        and low.error.dtype == torch.float32
    )
    torch.testing.assert_close(low.plan, ref.plan.to(dtype))
    torch.testing.assert_close(low.f, ref.f)


def test_autocast_does_not_lower_the_iteration_precision():
    cost, a, b = kcot_problem(2, 20, 8, seed=11)
    ref = sinkhorn(cost, a, b, reg=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = sinkhorn(cost, a, b, reg=0.05, grad="unroll")
    assert res.plan.dtype == torch.float32
    torch.testing.assert_close(res.plan, ref.plan, rtol=1e-5, atol=1e-7)


def test_float64_mass_promotes_iterations():
    cost, a, b = kcot_problem(1, 10, 5, seed=12)
    res = sinkhorn(cost, a.double(), b, reg=0.1)
    assert res.f.dtype == torch.float64 and res.plan.dtype == torch.float32


def test_unbatched_input_gives_unbatched_output():
    cost, a, b = kcot_problem(1, 12, 7, dtype=torch.float64, seed=13)
    batched = sinkhorn(cost, a, b, reg=0.1)
    single = sinkhorn(cost[0], a[0], b[0], reg=0.1, mask_a=torch.ones(12, dtype=torch.bool))
    assert isinstance(single, SinkhornResult)
    assert single.plan.shape == (12, 7) and single.f.shape == (12,) and single.g.shape == (7,)
    assert single.n_iter.shape == () and single.error.shape == () and single.converged.shape == ()
    torch.testing.assert_close(single.plan, batched.plan[0])


def test_error_definitions_and_per_problem_stop():
    cost, a, b = kcot_problem(3, 20, 8, dtype=torch.float64, seed=14)
    cost[0] = cost[0] * 0.01  # a nearly uniform cost converges much sooner
    res = sinkhorn(cost, a, b, reg=0.05, tol=1e-6, max_iter=5000, check_every=5)
    assert bool(res.converged.all()) and bool((res.error < 1e-6).all())
    assert bool((res.n_iter % 5 == 0).all()) and int(res.n_iter[0]) < int(res.n_iter[1:].min())
    # balanced error: L1 row-marginal violation of the returned plan
    torch.testing.assert_close(
        res.error, (res.plan.sum(-1) - a).abs().sum(-1), rtol=1e-6, atol=1e-15
    )
    # unbalanced error: change of the potentials over the last iteration, divided by reg
    r5 = sinkhorn(cost, a, b, reg=0.05, reg_m=0.3, tol=0.0, max_iter=5)
    r4 = sinkhorn(cost, a, b, reg=0.05, reg_m=0.3, tol=0.0, max_iter=4)
    expect = ((r5.f - r4.f).abs().amax(-1) + (r5.g - r4.g).abs().amax(-1)) / 0.05
    torch.testing.assert_close(r5.error, expect)
    # balanced error is relative to the total mass: masses x1e3 give the same error
    big = sinkhorn(cost, 1e3 * a, 1e3 * b, reg=0.05, tol=1e-6, max_iter=5000, check_every=5)
    torch.testing.assert_close(big.error, res.error, rtol=1e-6, atol=1e-15)
    torch.testing.assert_close(big.plan, 1e3 * res.plan)


# ---------------------------------------------------------------------------------------
# Stopping rule: `converged` means close to the fixed point (issues 14 and 15)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("reg", [1e-3, 3e-3, 1e-2, 0.1])
def test_unbalanced_converged_means_close_to_the_fixed_point(reg):
    # issue 14: the error was the potentials' change in cost units, which shrinks with reg:
    # at reg 1e-3 `converged` was True with plans ~30-80% off the fixed point
    torch.manual_seed(0)
    B, N, M = 6, 60, 40
    cost = torch.rand(B, N, M, dtype=torch.float64)
    a = torch.softmax(torch.randn(B, N, dtype=torch.float64), 1)
    b = torch.full((B, M), 1 / M, dtype=torch.float64)
    ref = sinkhorn(cost, a, b, reg=reg, reg_m=1.0, max_iter=40000, tol=1e-12, check_every=100)
    assert bool(ref.converged.all())
    for dtype in (torch.float64, torch.float32):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = sinkhorn(cost.to(dtype), a.to(dtype), b.to(dtype), reg=reg, reg_m=1.0, tol=1e-3)
        err = (res.plan.double() - ref.plan).abs().sum((1, 2)) / ref.plan.sum((1, 2))
        assert bool((err[res.converged] <= 1e-2).all()), (reg, dtype, err, res.converged)
        if reg == 0.1:
            assert bool(res.converged.all())  # and the test is not met by never converging


def test_unbalanced_error_does_not_depend_on_units():
    # cost x s with reg x s is the same problem (same plan): the same error and stop
    cost, a, b = kcot_problem(2, 20, 8, dtype=torch.float64, seed=14)
    r1 = sinkhorn(cost, a, b, reg=0.05, reg_m=0.3, tol=1e-6, max_iter=2000)
    r2 = sinkhorn(100 * cost, a, b, reg=5.0, reg_m=30.0, tol=1e-6, max_iter=2000)
    assert r1.n_iter.tolist() == r2.n_iter.tolist()
    torch.testing.assert_close(r1.error, r2.error, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(r1.plan, r2.plan)


def test_balanced_low_precision_and_scaled_masses_converge():
    # issue 14: bf16 masses (sums off by rounding) or masses x1e6 never converged
    cost, a, b = kcot_problem(2, 49, 10, seed=21)
    a = torch.full((2, 49), 1 / 49)
    b = torch.full((2, 10), 1 / 10)
    ref = sinkhorn(cost.double(), a.double(), b.double(), reg=0.1, tol=1e-12, max_iter=5000)
    a16, b16 = a.bfloat16(), b.bfloat16()
    assert abs(float(a16.float().sum(1)[0]) - float(b16.float().sum(1)[0])) > 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        low = sinkhorn(cost, a16, b16, reg=0.1)
        big = sinkhorn(cost, 1e6 * a, 1e6 * b, reg=0.1)
    assert bool(low.converged.all()) and bool(big.converged.all())
    # the plan carries the mass of `a` (rows exact), `b` is taken at that total
    torch.testing.assert_close(low.plan.sum(2), a16.float(), rtol=1e-4, atol=0)

    def l1(p):  # L1 distance of the unit-mass plan to the float64 one
        p = p.double() / p.double().sum((1, 2), keepdim=True)
        return float((p - ref.plan).abs().sum((1, 2)).max())

    assert l1(low.plan) <= 1e-2  # bf16 plan entries (8 bits) dominate
    assert l1(big.plan) <= 1e-4
    assert float(big.plan.sum()) == pytest.approx(2e6, rel=1e-5)
    torch.testing.assert_close(
        torch.exp((big.f[:, :, None] + big.g[:, None, :] - cost) / 0.1), big.plan, rtol=1e-4,
        atol=0,
    )  # fmt: skip


def test_balanced_unequal_total_masses_raise():
    cost, a, b = kcot_problem(2, 20, 8, seed=22)
    with pytest.raises(ValueError, match=r"equal total mass.*problem 1.*reg_m"):
        sinkhorn(cost, a, b * torch.tensor([[1.0], [1.5]]))
    # relaxed marginals accept any totals
    res = sinkhorn(cost, a, 1.5 * b, reg_m=1.0)
    assert torch.isfinite(res.plan).all()


def _ram_problem(B, N, C, spread, teacher, seed):
    """KCOT problems as the official head builds them (float64).

    cost = 1 − softmax(100·sim) over labels (+ the training prior −0.05·log p, p the teacher's
    region distribution with non-target labels set to its minimum), a = softmax(max_j sim/0.1)
    over regions, uniform b.
    """
    g = torch.Generator().manual_seed(seed)
    sim = 0.25 + spread * torch.randn(B, N, C, generator=g, dtype=torch.float64)
    cost = 1 - torch.softmax(100 * sim, -1)
    if teacher:
        tsim = sim + 0.02 * torch.randn(B, N, C, generator=g, dtype=torch.float64)
        prior = torch.softmax(20 * torch.softmax(100 * tsim, 2), 1)
        target = torch.rand(B, 1, C, generator=g, dtype=torch.float64) < 0.05
        prior = torch.where(target, prior, prior.amin((1, 2), keepdim=True))
        cost = cost - 0.05 * torch.log(prior)
    a = torch.softmax(sim.amax(-1) / 0.1, -1)
    b = torch.full((B, C), 1.0 / C, dtype=torch.float64)
    return cost, a, b


@pytest.mark.parametrize(
    "reg, C, spread, teacher",
    [
        (0.1, 48, 0.05, False),  # inference: reg = OT_REG
        (0.1, 65, 0.1, False),
        (0.15, 65, 0.05, False),
        (0.15, 48, 0.05, True),  # training: reg = OT_REG + OT_REGSC, teacher prior in the cost
        (0.15, 65, 0.1, True),
    ],
)
def test_default_tol_is_at_least_as_close_as_the_official_stop(reg, C, spread, teacher):
    # issue 15: the official solver stops when mean_i |Δr_i| < 1e-3 for the whole batch; the
    # default tol must give plans at least as close to the exact plan, on the same problems
    cost, a, b = _ram_problem(12, 196, C, spread, teacher, seed=C + int(1000 * spread))
    exact = sinkhorn(cost, a, b, reg=reg, max_iter=20000, tol=1e-13, check_every=50)
    assert bool(exact.converged.all())
    off = official_sinkhorn(a.float(), b.float(), cost.float(), reg, max_iter=100, thresh=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # some reach max_iter, as official
        ours = sinkhorn(cost.float(), a.float(), b.float(), reg=reg)

    def plan_err(p):
        return (p.double() - exact.plan).abs().sum((1, 2)) / exact.plan.sum((1, 2))

    e_off, e_ours = plan_err(off), plan_err(ours.plan)
    # the batch's worst plan (the official rule waits for it) is at least as close
    assert float(e_ours.max()) <= float(e_off.max()), (e_ours, e_off)
    # and every plan is as close as the official's or within 3·tol of the exact one (the
    # official batch-wide rule runs its easy problems on to float32 rounding)
    tol = 1e-5
    assert bool((e_ours <= torch.clamp(e_off, min=3 * tol)).all()), (e_ours, e_off)


def test_tol_zero_runs_max_iter_without_warning_and_warning_otherwise():
    cost, a, b = kcot_problem(2, 15, 6, seed=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = sinkhorn(cost, a, b, reg=0.05, tol=0.0, max_iter=7)
    assert res.n_iter.tolist() == [7, 7] and not bool(res.converged.any())
    assert torch.isfinite(res.error).all()
    with pytest.warns(ConvergenceWarning, match="did not reach tol") as rec:
        res = sinkhorn(cost, a, b, reg=0.01, tol=1e-9, max_iter=3)
    assert rec[0].filename == __file__  # stacklevel points at the caller
    assert not bool(res.converged.any()) and res.n_iter.tolist() == [3, 3]


# ---------------------------------------------------------------------------------------
# Gradients: implicit vs unrolled vs finite differences (float64)
# ---------------------------------------------------------------------------------------


def _loss(res, W, use_potentials):
    loss = (res.plan * W).sum()
    if use_potentials:
        loss = loss + 0.3 * res.f.sum() + (res.g**2).sum()
    return loss


@pytest.mark.parametrize(
    "reg_m,reg_type",
    [(None, "kl"), (0.7, "kl"), (0.7, "entropy"), ((0.3, INF), "kl"), ((INF, 0.4), "entropy")],
)
def test_implicit_gradients_match_unroll_and_finite_differences(reg_m, reg_type):
    gen = torch.Generator().manual_seed(16)
    B, N, M, reg = 2, 6, 4, 0.1
    cost = torch.rand(B, N, M, generator=gen, dtype=torch.float64)
    a = torch.softmax(torch.randn(B, N, generator=gen, dtype=torch.float64), -1)
    b = torch.softmax(torch.randn(B, M, generator=gen, dtype=torch.float64), -1)
    W = torch.randn(B, N, M, generator=gen, dtype=torch.float64)
    use_pot = reg_m is not None  # balanced potentials are defined up to a shift
    kw = dict(reg=reg, reg_m=reg_m, reg_type=reg_type, max_iter=5000, tol=1e-13, check_every=1)

    grads = {}
    for mode in ("implicit", "unroll"):
        c, aa, bb = (t.clone().requires_grad_() for t in (cost, a, b))
        loss = _loss(sinkhorn(c, aa, bb, grad=mode, **kw), W, use_pot)
        grads[mode] = torch.autograd.grad(loss, (c, aa, bb))

    def fd(direction_c, direction_a, h=1e-6):
        vals = []
        for s in (1, -1):
            r = sinkhorn(cost + s * h * direction_c, a + s * h * direction_a, b, **kw)
            vals.append(float(_loss(r, W, use_pot)))
        return (vals[0] - vals[1]) / (2 * h)

    dc = torch.randn(B, N, M, generator=gen, dtype=torch.float64)
    da = torch.randn(B, N, generator=gen, dtype=torch.float64)
    if reg_m is None:
        da = da - da.mean(-1, keepdim=True)  # balanced: only mass-preserving directions are defined
    num_c, num_a = fd(dc, torch.zeros_like(a)), fd(torch.zeros_like(cost), da)
    for mode in ("implicit", "unroll"):
        gc, ga, _ = grads[mode]
        assert math.isclose(float((gc * dc).sum()), num_c, rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(float((ga * da).sum()), num_a, rel_tol=1e-5, abs_tol=1e-7)
    torch.testing.assert_close(grads["implicit"][0], grads["unroll"][0], rtol=1e-6, atol=1e-9)
    if reg_m is not None:
        for gi, gu in zip(grads["implicit"][1:], grads["unroll"][1:], strict=False):
            torch.testing.assert_close(gi, gu, rtol=1e-6, atol=1e-9)


def test_implicit_gradient_with_masks_is_finite_and_zero_on_padding():
    cost, a, b = kcot_problem(2, 7, 5, dtype=torch.float64, seed=17)
    mask_a = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    mask_b = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    c = cost.clone().requires_grad_()
    aa = a.clone().requires_grad_()
    W = torch.randn(2, 7, 5, dtype=torch.float64)
    res = sinkhorn(
        c,
        aa,
        None,
        reg=0.1,
        reg_m=0.5,
        mask_a=mask_a,
        mask_b=mask_b,
        grad="implicit",
        tol=1e-12,
        max_iter=5000,
    )
    gc, ga = torch.autograd.grad((res.plan * W).sum(), (c, aa))
    pad = ~(mask_a[:, :, None] & mask_b[:, None, :])
    assert torch.isfinite(gc).all() and torch.isfinite(ga).all()
    assert bool((gc[pad] == 0).all()) and bool((ga[~mask_a] == 0).all())
    cu = cost.clone().requires_grad_()
    res_u = sinkhorn(
        cu,
        a,
        None,
        reg=0.1,
        reg_m=0.5,
        mask_a=mask_a,
        mask_b=mask_b,
        grad="unroll",
        tol=1e-12,
        max_iter=5000,
    )
    (gu,) = torch.autograd.grad((res_u.plan * W).sum(), (cu,))
    torch.testing.assert_close(gc, gu, rtol=1e-6, atol=1e-9)


def test_detach_gives_no_graph():
    cost, a, b = kcot_problem(1, 8, 4, seed=18)
    res = sinkhorn(cost.requires_grad_(), a, b)
    assert not res.plan.requires_grad and not res.f.requires_grad


# ---------------------------------------------------------------------------------------
# Input errors
# ---------------------------------------------------------------------------------------


def _ok():
    return kcot_problem(2, 5, 3, seed=19)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (
            dict(a=torch.ones(2, 4)),
            ValueError,
            r"expected `a` of shape \(B, N\) = \(2, 5\), got \(2, 4\)",
        ),
        (dict(b=torch.ones(3, 3)), ValueError, r"`b` of shape \(B, M\) = \(2, 3\)"),
        (dict(a=torch.ones(2, 5, dtype=torch.int64)), TypeError, "floating dtype"),
        (dict(a=-torch.ones(2, 5)), ValueError, "finite and >= 0"),
        (dict(b=torch.full((2, 3), float("nan"))), ValueError, "finite and >= 0"),
        (dict(a=torch.zeros(2, 5)), ValueError, "positive total mass"),
        (dict(mask_a=torch.zeros(2, 5, dtype=torch.bool)), ValueError, "marks no real entry"),
        (dict(mask_a=torch.ones(2, 5)), TypeError, "dtype bool"),
        (dict(mask_b=torch.ones(2, 4, dtype=torch.bool)), ValueError, "`mask_b` of shape"),
        (dict(reg=0.0), ValueError, "`reg` > 0"),
        (dict(reg=-1.0), ValueError, "`reg` > 0"),
        (dict(reg=float("inf")), ValueError, "`reg` > 0 and finite"),
        (dict(reg_m=-0.5), ValueError, "`reg_m` > 0"),
        (dict(reg_m=(1.0, 2.0, 3.0)), ValueError, "a pair"),
        (dict(reg_m="big"), TypeError, "positive number"),
        (dict(reg_type="l2"), ValueError, "`reg_type` to be one of 'kl', 'entropy'"),
        (dict(backend="cuda"), ValueError, "`backend` to be one of"),
        (dict(grad="autodiff"), ValueError, "`grad` to be one of"),
        (dict(max_iter=0), ValueError, "`max_iter` >= 1"),
        (dict(max_iter=2.5), TypeError, "`max_iter` to be an int"),
        (dict(check_every=0), ValueError, "`check_every` >= 1"),
        (dict(tol=-1e-3), ValueError, "`tol` >= 0"),
    ],
)
def test_bad_input_raises(kwargs, exc, match):
    cost, a, b = _ok()
    args = dict(a=a, b=b)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        sinkhorn(cost, **args)


def test_bad_cost_raises():
    with pytest.raises(TypeError, match="torch.Tensor"):
        sinkhorn([[0.0, 1.0]])
    with pytest.raises(TypeError, match="floating dtype"):
        sinkhorn(torch.ones(2, 3, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(B, N, M\) or \(N, M\)"):
        sinkhorn(torch.ones(4))
    with pytest.raises(ValueError, match="non-empty"):
        sinkhorn(torch.ones(2, 0, 4))
    cost, a, b = _ok()
    cost[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="`cost` to be finite, got 1 NaN/Inf"):
        sinkhorn(cost, a, b, validate=True)


# ---------------------------------------------------------------------------------------
# Backend selection
# ---------------------------------------------------------------------------------------


def test_backend_dispatch(monkeypatch):
    cpu = torch.device("cpu")
    # Triton fixes its mode at its first import: import it (through the probe) under the
    # session's TRITON_INTERPRET before unsetting that, or later tests would get it compiled
    available_backends("cpu")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "torch" in available_backends("cpu")
    assert resolve_backend("auto", cpu, "detach") == "torch"
    with pytest.raises(ValueError, match="grad='unroll'"):
        resolve_backend("triton", cpu, "unroll")
    if "triton" not in available_backends("cpu"):
        with pytest.raises(RuntimeError, match="backend='triton'.*cannot run on cpu"):
            sinkhorn(torch.rand(1, 3, 2), backend="triton")
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend("auto", cpu, "detach") == "torch"
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=ENV_VAR):
        sinkhorn(torch.rand(1, 3, 2))
    # an explicit argument wins over the environment
    assert resolve_backend("torch", cpu, "detach") == "torch"


def test_import_does_not_import_triton():
    code = "import sys, ram_ot, ram_ot.ot; import ram_ot.ot._torch; print('triton' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip() == "False"


def test_benchmark_smoke(capsys):
    from ram_ot.bench import sinkhorn as bench

    assert bench.main(["--repeat", "1", "--iters", "3", "--shapes", "2,6,5"]) == 0
    out = capsys.readouterr().out
    assert "| (2, 6, 5) |" in out and "bandwidth" in out


@pytest.mark.parametrize("shape", [(2, 230, 300), (2, 300, 230)])
@pytest.mark.parametrize("reg_m", [None, 0.5])
def test_single_thread_mv_path_matches_bmm_path(monkeypatch, shape, reg_m):
    from ram_ot.ot._torch import solve_scaling

    B, N, M = shape
    cost, a, b = kcot_problem(B, N, M, dtype=torch.float64, seed=20)
    la, lb = a.log(), b.log()
    la[1, -7:] = -INF  # absent rows/columns
    lb[0, :5] = -INF
    fi = 1.0 if reg_m is None else reg_m / (reg_m + 0.02)
    kw = dict(reg=0.02, fi_a=fi, fi_b=fi, max_iter=200, tol=1e-8, check_every=10)
    ref = solve_scaling(cost, la, lb, **kw)  # several threads: bmm
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # per-problem mv, K or K^T layout
    out = solve_scaling(cost, la, lb, **kw)
    assert torch.equal(out[2], ref[2])
    for x, y in zip(out[:2], ref[:2], strict=False):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)


@pytest.mark.parametrize("balanced", [True, False])
def test_cpu_grouping_gives_the_same_results(monkeypatch, balanced):
    # The CPU path solves problems a cache-sized group at a time; problems are independent,
    # so every output must equal the one-batch solve.
    from ram_ot.ot import _torch

    gen = torch.Generator().manual_seed(3)
    cost = torch.rand(7, 13, 9, generator=gen) * 2
    reg_m = None if balanced else (0.7, 2.0)
    kw = dict(reg=0.05, reg_m=reg_m, max_iter=300, tol=1e-4, backend="torch")
    monkeypatch.setattr(_torch, "CPU_CACHE_BUDGET", 1 << 40)
    whole = sinkhorn(cost, **kw)
    monkeypatch.setattr(_torch, "CPU_CACHE_BUDGET", 2 * 13 * 9 * 4 * 4)  # groups of 4 problems
    assert _torch._cpu_group_size(cost) == 4
    grouped = sinkhorn(cost, **kw)
    assert torch.equal(whole.n_iter, grouped.n_iter)
    assert torch.equal(whole.converged, grouped.converged)
    # equal up to float32 rounding (batched products may sum in another order)
    for x, y in zip(whole[:3], grouped[:3], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reg_m", [None, 1.0])
def test_lazy_range_tests_roll_back_and_absorb(monkeypatch, reg_m):
    # At small reg the scalings leave their range within a few iterations: the CPU solver
    # notices at the end of a lazy window, replays it with a test per half-iteration, and
    # must end where the log-domain iterations (float64) do.
    from ram_ot.ot import _torch

    failed = []
    real = _torch._out_of_range

    def counting(*args):
        bad = real(*args)
        failed.append(bool(bad))
        return bad

    monkeypatch.setattr(_torch, "_out_of_range", counting)
    gen = torch.Generator().manual_seed(12)
    cost = torch.rand(4, 30, 20, generator=gen, dtype=torch.float64) * 2
    la = torch.full((4, 30), -math.log(30), dtype=torch.float64)
    lb = torch.full((4, 20), -math.log(20), dtype=torch.float64)
    fi = 1.0 if reg_m is None else reg_m / (reg_m + 5e-3)
    kw = dict(reg=5e-3, fi_a=fi, fi_b=fi, max_iter=40, tol=0.0, check_every=10)
    f, g, n, _ = _torch.solve_scaling(cost.float(), la.float(), lb.float(), **kw)
    f64, g64, _, _ = _torch.solve_lse(cost, la, lb, **kw)
    assert any(failed), "the rollback path was not exercised"
    assert n.tolist() == [40] * 4
    torch.testing.assert_close(f.double(), f64, rtol=0, atol=2e-4)
    torch.testing.assert_close(g.double(), g64, rtol=0, atol=2e-4)


@pytest.mark.parametrize("threads", [2, 1])  # bmm layout; per-problem mv with K^T stored
@pytest.mark.parametrize("reg_m", [None, 0.4])
def test_cpu_plan_from_kernel_equals_exp_of_potentials(monkeypatch, threads, reg_m):
    # The CPU solver forms the plan as u K v from its kernel, at each problem's own stop;
    # it must equal exp((f + g - C)/reg) of the returned potentials (masked entries: 0).
    cost, a, b = kcot_problem(4, 37, 29, dtype=torch.float64, seed=21)
    cost[0] *= 0.02  # stops much sooner than the others
    mask_a = torch.ones(4, 37, dtype=torch.bool)
    mask_b = torch.ones(4, 29, dtype=torch.bool)
    mask_a[1, -5:] = False
    mask_b[2, :4] = False
    a = torch.where(mask_a, a, 0.0)
    b = torch.where(mask_b, b, 0.0)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)  # feasible when balanced
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    res = sinkhorn(cost, a, b, reg=0.05, reg_m=reg_m, mask_a=mask_a, mask_b=mask_b,
                   tol=1e-7, max_iter=3000, check_every=5)  # fmt: skip
    assert len(set(res.n_iter.tolist())) > 1
    want = torch.exp((res.f[:, :, None] + res.g[:, None, :] - cost) / 0.05)
    torch.testing.assert_close(res.plan, want, rtol=1e-10, atol=1e-14)
    assert bool((res.plan[1, -5:] == 0).all()) and bool((res.plan[2, :, :4] == 0).all())


def test_cpu_solver_equals_log_domain_solver_on_random_configurations(monkeypatch):
    # The CPU fast path (scaling with absorption, lazy range tests, groups, the plan from its
    # kernel, bmm or per-problem mv) against the log-domain iterations: the same iteration
    # counts, potentials and plan on random shapes, masks, reg, reg_m per side, tol and
    # check_every (float64, where both are exact to ~1e-12).
    import random

    from ram_ot.ot import _torch

    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(48):
        B, N, M = rng.choice([1, 2, 5]), rng.choice([1, 2, 7, 33]), rng.choice([1, 3, 16, 40])
        reg = rng.choice([1.0, 0.1, 0.02, 0.005])
        fi_a = rng.choice([1.0, 0.9, 0.5])
        fi_b = rng.choice([1.0, fi_a, 0.7])
        threads = rng.choice([1, 2])
        kw = dict(reg=reg, fi_a=fi_a, fi_b=fi_b, max_iter=rng.choice([1, 5, 40]),
                  tol=rng.choice([0.0, 1e-6]), check_every=rng.choice([1, 3, 10]))  # fmt: skip
        cost = torch.rand(B, N, M, generator=gen, dtype=torch.float64) * rng.choice([1, 2, 5])
        a = torch.rand(B, N, generator=gen, dtype=torch.float64) + 0.1
        b = torch.rand(B, M, generator=gen, dtype=torch.float64) + 0.1
        if rng.random() < 0.5:  # ragged
            for i in range(B):
                a[i, rng.randrange(1, N) if N > 1 else N :] = 0
                b[i, rng.randrange(1, M) if M > 1 else M :] = 0
        a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
        la = torch.where(a > 0, a.log(), -INF)
        lb = torch.where(b > 0, b.log(), -INF)
        with monkeypatch.context() as m:
            m.setattr(torch, "get_num_threads", lambda t=threads: t)
            m.setattr(_torch, "CPU_CACHE_BUDGET", rng.choice([1 << 40, 1]))  # groups of 1
            plan = torch.empty(B, N, M, dtype=torch.float64)
            f1, g1, n1, _ = _torch.solve_potentials(cost, la, lb, **kw, plan_out=plan)
        f2, g2, n2, _ = _torch.solve_lse(cost, la, lb, **kw)
        where = f"{(B, N, M)} {kw} threads={threads}"
        assert torch.equal(n1, n2), where
        assert torch.equal(torch.isfinite(f1), torch.isfinite(f2)), where
        real_f, real_g = torch.isfinite(f2), torch.isfinite(g2)
        torch.testing.assert_close(f1[real_f], f2[real_f], rtol=0, atol=1e-8, msg=where)
        torch.testing.assert_close(g1[real_g], g2[real_g], rtol=0, atol=1e-8, msg=where)
        want = torch.exp((f1[:, :, None] + g1[:, None, :] - cost) / reg)
        torch.testing.assert_close(plan, want, rtol=1e-9, atol=1e-13, msg=where)


def test_cpu_workspace_is_reused_per_thread_and_bounded():
    import threading

    from ram_ot.ot import _torch

    a = _torch._workspace("test", (2, 3, 4), torch.float32, torch.device("cpu"))
    b = _torch._workspace("test", (4, 5), torch.float32, torch.device("cpu"))
    assert a.data_ptr() == b.data_ptr() and b.shape == (4, 5)  # reused, reshaped
    other = []
    t = threading.Thread(
        target=lambda: other.append(_torch._workspace("test", (2, 3, 4), torch.float32, "cpu"))
    )
    t.start()
    t.join()
    assert other[0].data_ptr() != a.data_ptr()  # each thread has its own
    big = (4 * _torch.CPU_CACHE_BUDGET) // 4 + 1  # float32 elements just over the bound
    x = _torch._workspace("test", (big,), torch.float32, torch.device("cpu"))
    assert x.data_ptr() != a.data_ptr()
    y = _torch._workspace("test", (2, 3, 4), torch.float32, torch.device("cpu"))
    assert y.data_ptr() == a.data_ptr()  # the big one was not kept


def test_matvec_benchmark_forms_agree_and_print(capsys):
    """Every mat-vec form the `matvec` benchmark times computes the same two products."""
    from ram_ot.bench import matvec

    K, u, v = matvec._inputs(3, 7, 5)
    ref_ktu = (u.double() @ K.double())[:, 0]  # (B, M)
    ref_kv = (v.double() @ K.double().mT)[:, 0]  # (B, N)
    forms = matvec._forms(K, u, v)
    for name, fn in forms.items():
        if name == "two reads":
            continue
        ktu, kv = (torch.as_tensor(x).reshape(3, -1).double() for x in fn())
        torch.testing.assert_close(ktu, ref_ktu, rtol=1e-5, atol=0, msg=name)
        torch.testing.assert_close(kv, ref_kv, rtol=1e-5, atol=0, msg=name)
    assert matvec.main(["--repeat", "1", "--calls", "1", "--shapes", "2,6,5"]) == 0
    out = capsys.readouterr().out
    assert "(2, 6, 5)" in out and "| embedding_bag |" in out and "| two reads | " in out


# ---------------------------------------------------------------------------------------
# torch.compile: one graph, the eager results
# ---------------------------------------------------------------------------------------


def _compile_case(reg_m, grad):
    """A ragged float64 batch whose problems stop at different tests, and the loss of a plan."""
    cost, a, b = kcot_problem(3, 9, 6, seed=21)
    cost = cost.double() * torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)[:, None, None]
    mask_a = torch.ones(3, 9, dtype=torch.bool)
    mask_a[1, 6:] = False
    W = torch.rand(3, 9, 6, generator=torch.Generator().manual_seed(22), dtype=torch.float64)

    def fn(C):
        res = sinkhorn(
            C, reg=0.2, reg_m=reg_m, mask_a=mask_a, max_iter=16, tol=1e-3, check_every=2,
            grad=grad,
        )  # fmt: skip
        return (res.plan * W).sum(), res.f, res.n_iter, res.error, res.converged

    return cost, fn


def _run_with_grad(fn, cost, grad):
    C = cost.clone().requires_grad_(grad != "detach")
    loss, *rest = fn(C)
    dC = torch.autograd.grad(loss, C)[0] if grad != "detach" else None
    return loss.detach(), rest, dC


@pytest.mark.parametrize("reg_m", [None, 0.5])
@pytest.mark.parametrize("grad", ["detach", "unroll", "implicit"])
def test_compiled_sinkhorn_is_one_graph_with_the_eager_results(reg_m, grad):
    cost, fn = _compile_case(reg_m, grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        loss, (f, n_iter, error, conv), dC = _run_with_grad(fn, cost, grad)
    assert len(set(n_iter.tolist())) > 1  # problems stop at different tests
    # fullgraph: a graph break raises; AOT autograd (what inductor gets) for the custom
    # autograd.Function of the implicit gradient, plain dynamo graphs elsewhere (faster)
    backend = "aot_eager" if grad == "implicit" else "eager"
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning from inside a graph
        c_loss, (c_f, c_n, c_err, c_conv), c_dC = _run_with_grad(compiled, cost, grad)
    assert torch.equal(c_n, n_iter) and torch.equal(c_conv, conv)
    torch.testing.assert_close(c_loss, loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c_f, f, rtol=1e-12, atol=1e-12)  # -inf on the masked rows
    torch.testing.assert_close(c_err, error, rtol=1e-9, atol=1e-15)
    if dC is not None:
        assert torch.isfinite(dC).all() and dC.abs().sum() > 0
        torch.testing.assert_close(c_dC, dC, rtol=1e-9, atol=1e-12)


def test_dynamo_explain_finds_no_graph_break():
    cost, fn = _compile_case(None, "unroll")
    explained = torch._dynamo.explain(fn)(cost.clone().requires_grad_(True))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


# ---------------------------------------------------------------------------------------
# Log-domain solver: early exit (CPU at the test, CUDA one test later, never when compiling)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU")])],
)  # fmt: skip
@pytest.mark.parametrize("fi_b", [1.0, 0.7])  # balanced, semi-relaxed
def test_log_domain_solver_exits_after_the_last_stop_with_the_same_results(
    monkeypatch, device, fi_b
):
    from ram_ot.ot import _torch

    cost, a, b = kcot_problem(4, 12, 7, seed=23, dtype=torch.float64)
    cost = cost * torch.tensor([0.2, 0.5, 1.0, 2.0], dtype=torch.float64)[:, None, None]
    kw = dict(reg=0.2, fi_a=1.0, fi_b=fi_b, max_iter=200, tol=1e-6, check_every=3)
    calls = []
    lse = _torch._lse
    monkeypatch.setattr(_torch, "_lse", lambda x, dim: calls.append(dim) or lse(x, dim))
    args = [t.to(device) for t in (cost, a.log(), b.log())]
    f, g, n_iter, error = _torch.solve_lse(*args, **kw)
    n_iter = n_iter.cpu()
    last = int(n_iter.max())
    assert len(set(n_iter.tolist())) > 1 and last < kw["max_iter"]
    # two log-sum-exps per iteration plus the first one; CUDA reads the flag one test late
    ran = (len(calls) - 1) // 2
    assert ran == (last if device == "cpu" else last + kw["check_every"])
    # every problem's results are those of a run that stops exactly at its n_iter
    for i in range(4):
        ref = _torch.solve_lse(
            cost[i : i + 1], a[i : i + 1].log(), b[i : i + 1].log(),
            **dict(kw, tol=0.0, max_iter=int(n_iter[i])),
        )  # fmt: skip
        torch.testing.assert_close(f[i].cpu(), ref[0][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g[i].cpu(), ref[1][0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(error[i].cpu(), ref[3][0], rtol=1e-8, atol=1e-15)
        assert float(error[i]) < kw["tol"]
