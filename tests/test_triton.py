"""Tests of the fused Triton Sinkhorn kernel (``ram_ot/ot/_triton.py``).

On a machine without CUDA the kernel runs on CPU tensors through Triton's interpreter. Triton
reads ``TRITON_INTERPRET`` when it is first imported (``triton.language`` jit-decorates its own
helpers then), so it is set here, at collection, before anything in this process imports
triton. On a CUDA machine it is left alone: the ``cuda`` tests run the compiled kernel and the
interpreter tests are skipped with the probe's reason.

Oracles: POT's log-domain Sinkhorn (written elsewhere) first, then the torch backend
(``ram_ot.ot._torch``), which follows the same iteration and convergence-test contract.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from ram_ot.ot import _torch, _triton, sinkhorn  # noqa: E402
from ram_ot.ot._dispatch import resolve_backend  # noqa: E402

CPU = torch.device("cpu")
_OK_CPU, _WHY_CPU = _triton.probe(CPU)
needs_interpreter = pytest.mark.skipif(not _OK_CPU, reason=f"Triton on CPU: {_WHY_CPU}")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

pytestmark = pytest.mark.triton


def _problem(B, N, M, *, dtype=torch.float32, masked=False, seed=0, scale=2.0):
    """Random costs in [0, scale), random positive masses; ragged masks when `masked`."""
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(B, N, M, generator=gen, dtype=dtype) * scale
    a = torch.rand(B, N, generator=gen, dtype=dtype) + 0.2
    b = torch.rand(B, M, generator=gen, dtype=dtype) + 0.2
    mask_a = mask_b = None
    if masked:
        mask_a = torch.ones(B, N, dtype=torch.bool)
        mask_b = torch.ones(B, M, dtype=torch.bool)
        for i in range(B):
            mask_a[i, N - (i % max(N - 1, 1)) :] = N == 1  # drop up to N-1 trailing rows
            mask_b[i, M - ((i + 1) % max(M - 1, 1)) :] = M == 1
        mask_a[:, 0] = True
        mask_b[:, 0] = True
        a = torch.where(mask_a, a, torch.zeros_like(a))
        b = torch.where(mask_b, b, torch.zeros_like(b))
    a = a / a.sum(1, keepdim=True)
    b = b / b.sum(1, keepdim=True)
    return cost, a, b, mask_a, mask_b


def _logs(a, b):
    la = torch.where(a > 0, a.clamp_min(1e-300).log(), torch.full_like(a, -math.inf))
    lb = torch.where(b > 0, b.clamp_min(1e-300).log(), torch.full_like(b, -math.inf))
    return la, lb


def _plan(f, g, cost, reg):
    return torch.exp((f[:, :, None] + g[:, None, :] - cost) / reg)


def _assert_plans_close(p, q, rel=1e-4):
    """Plans within `rel` relative (to the largest entry) and elementwise."""
    torch.testing.assert_close(p, q, rtol=rel, atol=rel * float(q.abs().max()))


# ------------------------------------------------------------------------------------------
# probe and dispatch
# ------------------------------------------------------------------------------------------


def test_probe_cpu_matches_the_environment():
    ok, reason = _triton.probe(CPU)
    assert isinstance(reason, str) and reason
    if not torch.cuda.is_available():
        # this module set TRITON_INTERPRET=1 before triton was imported: the interpreter must run
        assert ok, reason
    env = os.environ.get("TRITON_INTERPRET", "0") == "1"
    assert ok == (env and _triton._interpret_mode())
    if not ok:
        assert "TRITON_INTERPRET" in reason


def test_probe_other_device_says_why():
    ok, reason = _triton.probe(torch.device("meta"))
    assert not ok
    assert "meta" in reason


@needs_interpreter
def test_explicit_triton_on_cpu_runs_and_auto_stays_on_torch():
    cost, a, b, _, _ = _problem(2, 5, 4)
    res = sinkhorn(cost, a, b, backend="triton", max_iter=5, tol=0.0)
    ref = sinkhorn(cost, a, b, backend="torch", max_iter=5, tol=0.0)
    _assert_plans_close(res.plan, ref.plan)
    assert res.n_iter.tolist() == [5, 5]
    assert resolve_backend("auto", CPU, "detach") == "torch"  # auto takes Triton on CUDA only


def test_unsupported_dtype_and_shape_raise():
    if not _OK_CPU:
        pytest.skip(_WHY_CPU)
    cost = torch.rand(1, 3, 3, dtype=torch.float16)
    la = torch.zeros(1, 3, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        _triton.solve_potentials(
            cost, la, la, reg=0.1, fi_a=1.0, fi_b=1.0, max_iter=1, tol=0.0, check_every=1
        )
    cost = torch.rand(1, 3, 3)
    with pytest.raises(ValueError, match="log_a"):
        _triton.solve_potentials(
            cost,
            torch.zeros(1, 2),
            torch.zeros(1, 3),
            reg=0.1,
            fi_a=1.0,
            fi_b=1.0,
            max_iter=1,
            tol=0.0,
            check_every=1,
        )


# ------------------------------------------------------------------------------------------
# the kernel against POT and the torch backend (interpreter)
# ------------------------------------------------------------------------------------------


@needs_interpreter
def test_balanced_plan_matches_pot_float64():
    ot = pytest.importorskip("ot")
    cost, a, b, _, _ = _problem(2, 6, 5, dtype=torch.float64, scale=1.0)
    res = sinkhorn(cost, a, b, reg=1.0, max_iter=30, tol=1e-11, check_every=5, backend="triton")
    assert bool(res.converged.all())
    for i in range(2):
        want = ot.sinkhorn(
            a[i].numpy(), b[i].numpy(), cost[i].numpy(), 1.0, method="sinkhorn_log", stopThr=1e-13
        )
        torch.testing.assert_close(res.plan[i], torch.from_numpy(want), rtol=1e-7, atol=1e-10)


@needs_interpreter
def test_unbalanced_plan_matches_pot_float64():
    ot = pytest.importorskip("ot")
    cost, a, b, _, _ = _problem(1, 5, 4, dtype=torch.float64, scale=1.0)
    res = sinkhorn(
        cost, a, b, reg=1.0, reg_m=1.0, max_iter=40, tol=1e-12, check_every=5, backend="triton"
    )
    want = ot.unbalanced.sinkhorn_unbalanced(
        a[0].numpy(), b[0].numpy(), cost[0].numpy(), 1.0, 1.0, method="sinkhorn_stabilized", stopThr=1e-14,
        numItermax=2000,
    )  # fmt: skip
    torch.testing.assert_close(res.plan[0], torch.from_numpy(want), rtol=1e-6, atol=1e-10)


SHAPES = [
    pytest.param((1, 1, 1), "auto", id="1x1x1"),
    pytest.param((3, 7, 5), "auto", id="odd-onchip"),
    pytest.param((2, 1, 9), "auto", id="N=1"),
    pytest.param((1, 65, 129), "stream", id="stream-cross-blocks"),  # 64 x 128 blocks
    pytest.param((2, 33, 17), "onchip", id="onchip-padded"),
    pytest.param((1, 33, 130), "split", id="split-cross-blocks"),  # 32 x 128 blocks
    pytest.param((1, 1, 1), "split", id="split-1x1x1"),
    pytest.param((2, 37, 80), "resident", id="resident-two-column-chunks"),  # 64 + 16 columns
    pytest.param((1, 5, 64), "resident", id="resident-one-chunk"),
    pytest.param((1, 1, 1), "resident", id="resident-1x1x1"),
]


@needs_interpreter
@pytest.mark.parametrize("shape,variant", SHAPES)
@pytest.mark.parametrize("fi", [1.0, 0.8], ids=["balanced", "unbalanced"])
def test_potentials_match_torch_backend(shape, variant, fi):
    B, N, M = shape
    cost, a, b, _, _ = _problem(B, N, M, masked=N > 2 and M > 2, seed=N + M)
    la, lb = _logs(a, b)
    kw = dict(reg=0.1, fi_a=fi, fi_b=fi, max_iter=12, tol=1e-5, check_every=4)
    f, g, n_iter, err = _triton.solve_potentials(cost, la, lb, **kw, _variant=variant)
    f0, g0, n0, e0 = _torch.solve_lse(cost, la, lb, **kw)
    assert f.dtype == g.dtype == err.dtype == torch.float32 and n_iter.dtype == torch.int64
    assert torch.equal(torch.isneginf(f), torch.isneginf(f0)) and torch.equal(
        torch.isneginf(g), torch.isneginf(g0)
    )
    assert n_iter.tolist() == n0.tolist()
    torch.testing.assert_close(err, e0, rtol=1e-3, atol=1e-6)
    p, p0 = _plan(f, g, cost, 0.1), _plan(f0, g0, cost, 0.1)
    assert torch.isfinite(p).all()
    _assert_plans_close(p, p0)
    # masked rows / columns carry exactly zero plan
    assert bool((p[torch.isneginf(la)] == 0).all()) and bool(
        (p.transpose(1, 2)[torch.isneginf(lb)] == 0).all()
    )


@needs_interpreter
def test_onchip_and_streamed_variants_agree():
    cost, a, b, _, _ = _problem(2, 70, 150, seed=3)
    la, lb = _logs(a, b)
    kw = dict(reg=0.1, fi_a=1.0, fi_b=1.0, max_iter=6, tol=0.0, check_every=1)
    on = _triton.solve_potentials(cost, la, lb, **kw, _variant="onchip")
    st = _triton.solve_potentials(cost, la, lb, **kw, _variant="stream")
    _assert_plans_close(_plan(on[0], on[1], cost, 0.1), _plan(st[0], st[1], cost, 0.1), rel=1e-5)
    assert on[2].tolist() == st[2].tolist() == [6, 6]


@needs_interpreter
def test_float64_matches_torch_backend():
    cost, a, b, mask_a, mask_b = _problem(2, 9, 6, dtype=torch.float64, masked=True)
    for reg_m in (None, 0.5):
        kw = dict(reg=0.05, reg_m=reg_m, mask_a=mask_a, mask_b=mask_b, max_iter=15, tol=0.0)
        res = sinkhorn(cost, a, b, backend="triton", **kw)
        ref = sinkhorn(cost, a, b, backend="torch", **kw)
        assert res.plan.dtype == res.f.dtype == torch.float64
        torch.testing.assert_close(res.plan, ref.plan, rtol=1e-10, atol=1e-13)


@needs_interpreter
def test_small_reg_no_nan_and_float32_error_like_torch():
    """reg = 1e-3 with costs in [0, 2]: the kernel's float32 error against a float64 oracle is
    at most about that of the torch backend in float32 (flash-attention-style criterion)."""
    cost, a, b, _, _ = _problem(2, 9, 7, seed=5)
    la, lb = _logs(a, b)
    kw = dict(reg=1e-3, fi_a=1.0, fi_b=1.0, max_iter=20, tol=0.0, check_every=1)
    f, g, n_iter, err = _triton.solve_potentials(cost, la, lb, **kw)
    f32 = _torch.solve_lse(cost, la, lb, **kw)
    f64 = _torch.solve_lse(cost.double(), la.double(), lb.double(), **kw)
    assert torch.isfinite(f).all() and torch.isfinite(g).all() and torch.isfinite(err).all()
    p = _plan(f.double(), g.double(), cost.double(), 1e-3)
    p32 = _plan(f32[0].double(), f32[1].double(), cost.double(), 1e-3)
    p64 = _plan(f64[0], f64[1], cost.double(), 1e-3)
    assert torch.isfinite(p).all()
    e_kernel = float((p - p64).abs().max())
    e_torch = float((p32 - p64).abs().max())
    assert e_kernel <= 2.0 * e_torch + 1e-6, (e_kernel, e_torch)
    # potentials agree in cost units to float32 resolution of the scaled problem (|C|/reg = 2000)
    torch.testing.assert_close(f.double(), f64[0], rtol=0, atol=2e-5)


@needs_interpreter
@pytest.mark.parametrize("fi", [1.0, 0.9], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("variant", ["auto", "split"])
def test_early_stop_per_problem(fi, variant):
    # problems of different difficulty (costs scaled by 0.05 and 0.5) stop at different k
    cost, a, b, _, _ = _problem(2, 6, 5, seed=7)
    cost = cost * torch.tensor([0.05, 0.5])[:, None, None]
    la, lb = _logs(a, b)
    kw = dict(reg=0.1, fi_a=fi, fi_b=fi, max_iter=45, tol=1e-4, check_every=3)
    f, g, n_iter, err = _triton.solve_potentials(cost, la, lb, **kw, _variant=variant)
    f0, g0, n0, e0 = _torch.solve_lse(cost, la, lb, **kw)
    assert n_iter.tolist() == n0.tolist()
    assert bool((n_iter < 45).all()) and len(set(n_iter.tolist())) > 1
    assert bool((n_iter % 3 == 0).all())
    assert bool((err < 1e-4).all())
    torch.testing.assert_close(err, e0, rtol=1e-2, atol=1e-6)  # float32 sums of N terms
    _assert_plans_close(_plan(f, g, cost, 0.1), _plan(f0, g0, cost, 0.1))


@needs_interpreter
def test_unbalanced_first_iteration_error_is_inf_like_torch():
    cost, a, b, _, _ = _problem(1, 3, 4)
    la, lb = _logs(a, b)
    kw = dict(reg=0.1, fi_a=0.5, fi_b=0.5, max_iter=1, tol=1e-3, check_every=1)
    out = _triton.solve_potentials(cost, la, lb, **kw)
    ref = _torch.solve_lse(cost, la, lb, **kw)
    assert out[2].tolist() == ref[2].tolist() == [1]
    assert math.isinf(float(out[3][0])) and math.isinf(float(ref[3][0]))


# ------------------------------------------------------------------------------------------
# gradients through the frontend
# ------------------------------------------------------------------------------------------


@needs_interpreter
def test_implicit_gradient_matches_torch_backend():
    cost, a, b, _, _ = _problem(2, 5, 4, dtype=torch.float64, seed=11)
    w = torch.rand(2, 5, 4, dtype=torch.float64)
    grads = []
    for backend in ("triton", "torch"):
        c = cost.clone().requires_grad_(True)
        res = sinkhorn(
            c,
            a,
            b,
            reg=0.5,
            max_iter=40,
            tol=1e-10,
            check_every=5,
            backend=backend,
            grad="implicit",
        )
        (res.plan * w).sum().backward()
        grads.append(c.grad)
    assert torch.isfinite(grads[0]).all()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-9)


@needs_interpreter
def test_detach_has_no_gradient():
    cost, a, b, _, _ = _problem(1, 4, 3)
    c = cost.clone().requires_grad_(True)
    res = sinkhorn(c, a, b, max_iter=3, tol=0.0, backend="triton", grad="detach")
    assert not res.plan.requires_grad


def test_unroll_with_triton_is_refused():
    if not _OK_CPU:
        pytest.skip(_WHY_CPU)
    cost, a, b, _, _ = _problem(1, 4, 3)
    with pytest.raises(ValueError, match="unroll"):
        sinkhorn(cost, a, b, backend="triton", grad="unroll")


# ------------------------------------------------------------------------------------------
# compiled mode without a GPU: the kernel must compile for sm_90 (ptxas ships with Triton)
# ------------------------------------------------------------------------------------------

_COMPILE_SCRIPT = """
import sys
from ram_ot.ot import _triton
for variant, balanced in (("onchip", False), ("stream", True), ("split", False), ("resident", True)):
    info = _triton._compile_report(arch=90, dtype="fp32", variant=variant, balanced=balanced)
    print(variant, balanced, info)
"""


def test_kernel_compiles_for_sm90_without_gpu():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    lines = [line for line in lines if "registers" in line]
    assert len(lines) == 2 + 4 + 1, out.stdout  # on-chip, streamed, 4 split kernels, resident


# ------------------------------------------------------------------------------------------
# real GPU
# ------------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("shape", [(32, 196, 80), (8, 576, 1006), (3, 1, 7)])
@pytest.mark.parametrize("reg_m", [None, 1.0])
def test_cuda_matches_torch_backend(shape, reg_m):
    ok, why = _triton.probe(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    cost, a, b, mask_a, mask_b = _problem(*shape, masked=True)
    cost, a, b, mask_a, mask_b = (t.cuda() for t in (cost, a, b, mask_a, mask_b))
    kw = dict(
        reg=0.1, reg_m=reg_m, mask_a=mask_a, mask_b=mask_b, max_iter=50, tol=1e-4, check_every=5
    )
    res = sinkhorn(cost, a, b, backend="triton", **kw)
    ref = sinkhorn(cost, a, b, backend="torch", **kw)
    assert res.n_iter.tolist() == ref.n_iter.tolist()
    _assert_plans_close(res.plan, ref.plan)


@pytest.mark.cuda
@needs_cuda
def test_cuda_float64_and_small_reg():
    ok, why = _triton.probe(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    cost, a, b, _, _ = _problem(4, 196, 80, dtype=torch.float64)
    cost, a, b = cost.cuda(), a.cuda(), b.cuda()
    res = sinkhorn(cost, a, b, reg=1e-3, max_iter=30, tol=0.0, backend="triton")
    ref = sinkhorn(cost, a, b, reg=1e-3, max_iter=30, tol=0.0, backend="torch")
    assert torch.isfinite(res.plan).all()
    torch.testing.assert_close(res.plan, ref.plan, rtol=1e-9, atol=1e-12)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("variant", ["resident", "onchip", "stream", "split"])
@pytest.mark.parametrize("fi", [1.0, 0.8], ids=["balanced", "unbalanced"])
@pytest.mark.parametrize("shape", [(5, 33, 17), (2, 65, 129), (1, 1, 1), (3, 196, 80)])
def test_cuda_variants_match_torch_backend(variant, fi, shape):
    ok, why = _triton.probe(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    B, N, M = shape
    pow2 = _triton.triton.next_power_of_2
    if variant == "onchip" and pow2(N) * pow2(M) > 32768:
        pytest.skip("padded tile too large for registers")
    if variant == "resident" and not _triton._resident_fits(N, M, torch.float32):
        pytest.skip("tile too large for registers")
    cost, a, b, _, _ = _problem(B, N, M, masked=N > 2 and M > 2, seed=N + M)
    la, lb = _logs(a, b)
    cost, la, lb = cost.cuda(), la.cuda(), lb.cuda()
    kw = dict(reg=0.1, fi_a=fi, fi_b=fi, max_iter=40, tol=1e-5, check_every=4)
    f, g, n_iter, err = _triton.solve_potentials(cost, la, lb, **kw, _variant=variant)
    f0, g0, n0, e0 = _torch.solve_lse(cost, la, lb, **kw)
    assert n_iter.tolist() == n0.tolist()
    assert torch.equal(torch.isneginf(f), torch.isneginf(f0))
    torch.testing.assert_close(err, e0, rtol=1e-2, atol=1e-6)
    _assert_plans_close(_plan(f, g, cost, 0.1), _plan(f0, g0, cost, 0.1))


@pytest.mark.cuda
@needs_cuda
def test_cuda_auto_dispatch_gradients_and_autocast():
    ok, why = _triton.probe(torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    dev = torch.device("cuda")
    assert resolve_backend("auto", dev, "detach") == "triton"
    assert resolve_backend("auto", dev, "unroll") == "torch"
    cost, a, b, _, _ = _problem(3, 20, 9, dtype=torch.float64, seed=4)
    cost, a, b = cost.to(dev), a.to(dev), b.to(dev)
    w = torch.rand(cost.shape, dtype=torch.float64, device=dev)
    grads = []
    for backend in ("triton", "torch"):
        c = cost.clone().requires_grad_(True)
        res = sinkhorn(c, a, b, reg=0.3, max_iter=300, tol=1e-10, backend=backend, grad="implicit")
        (res.plan * w).sum().backward()
        grads.append(c.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-9)
    # half precision in, float32 iterations, plan back in the input dtype (also under autocast)
    c16 = cost.to(torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        res = sinkhorn(c16, a.float(), b.float(), max_iter=50, tol=0.0)
    ref = sinkhorn(c16.float(), a.float(), b.float(), max_iter=50, tol=0.0, backend="torch")
    assert res.plan.dtype == torch.bfloat16 and res.f.dtype == torch.float32
    torch.testing.assert_close(res.plan.float(), ref.plan, rtol=1e-2, atol=1e-4)


@pytest.mark.cuda
@needs_cuda
def test_cuda_kcot_head_matches_cpu():
    from ram_ot import KCOTHead

    torch.manual_seed(0)
    head = KCOTHead()
    g, regions, labels = torch.randn(4, 32), torch.randn(4, 49, 32), torch.randn(10, 32)
    teacher = regions + 0.1 * torch.randn_like(regions)
    targets = torch.rand(4, 10) < 0.3
    want = head(g, regions, labels, targets=targets, teacher_regions=teacher)
    head_cuda = KCOTHead().cuda()
    got = head_cuda(*(t.cuda() for t in (g, regions, labels)), targets=targets.cuda(),
                    teacher_regions=teacher.cuda())  # fmt: skip
    for name in ("scores", "logits_global", "logits_local", "plan", "loss"):
        torch.testing.assert_close(
            getattr(got, name).cpu(), getattr(want, name), rtol=1e-4, atol=1e-5
        )
