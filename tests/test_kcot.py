"""Tests for ram_ot.kcot: teacher prior and knowledge-constrained OT.

The oracle is a re-derivation of the reference computation (model/model.py of
github.com/EricTan7/RAM: cost, build_weights, generate_teacher_distribution, the constraint)
written here in float64 numpy/scipy, with POT's log-domain Sinkhorn as the OT solver.
"""

import warnings

import numpy as np
import ot
import pytest
import torch
from scipy.special import softmax

from ram_ot._checks import ConvergenceWarning
from ram_ot.kcot import KCOTOutput, KnowledgeConstrainedOT, teacher_prior

B, N, C, D = 2, 12, 5, 8


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _prior_oracle(regions, labels, logit_scale=100.0, sharpness=20.0):
    r = _normalize(regions.double().numpy())
    t = _normalize(labels.double().numpy())
    logits = logit_scale * np.einsum("bnd,cd->bnc", r, t)
    return softmax(sharpness * softmax(logits, axis=2), axis=1)


def _kcot_oracle(
    sim, prior=None, targets=None, reg=0.1, reg_prior=0.05, logit_scale=100.0, tau=0.1
):
    """The reference forward's matching part, in float64 with POT as the OT solver."""
    s = sim.double().numpy()
    cost = 1.0 - softmax(logit_scale * s, axis=-1)
    if prior is not None and targets is not None:
        fm = prior.double().numpy().copy()
        gt = np.broadcast_to(targets.numpy()[:, None, :], fm.shape)
        fm[gt == 0] = fm.min()
        cost = cost + reg_prior * -np.log(fm)
        reg = reg + reg_prior
    u = softmax(s.max(axis=2) / tau, axis=1)
    v = np.full((s.shape[0], s.shape[2]), 1.0 / s.shape[2])
    plan = np.stack(
        [
            ot.bregman.sinkhorn_log(u[i], v[i], cost[i], reg, numItermax=10000, stopThr=1e-13)
            for i in range(s.shape[0])
        ]
    )
    return (plan * s).sum(axis=1), plan, cost


def _inputs(dtype=torch.float64):
    regions = torch.randn(B, N, D, dtype=dtype)
    labels = torch.randn(C, D, dtype=dtype)
    sim = torch.einsum(
        "bnd,cd->bnc",
        torch.nn.functional.normalize(regions, dim=-1),
        torch.nn.functional.normalize(labels, dim=-1),
    )
    targets = torch.zeros(B, C)
    targets[0, [0, 2]] = 1
    targets[1, [1]] = 1
    return regions, labels, sim, targets


def _tight(**kw):
    return KnowledgeConstrainedOT(max_iter=5000, tol=1e-11, **kw)


def test_teacher_prior_matches_reference():
    regions, labels, _, _ = _inputs()
    got = teacher_prior(regions, labels)
    assert got.shape == (B, N, C) and got.dtype == torch.float64
    torch.testing.assert_close(got, torch.from_numpy(_prior_oracle(regions, labels)))
    got32 = teacher_prior(regions.half(), labels.half(), logit_scale=50.0, sharpness=5.0)
    assert got32.dtype == torch.float32
    want32 = _prior_oracle(regions.half().float(), labels.half().float(), 50.0, 5.0)
    torch.testing.assert_close(got32, torch.from_numpy(want32).float(), rtol=1e-4, atol=1e-6)


def test_eval_path_matches_reference():
    _, _, sim, targets = _inputs()
    out = _tight()(sim)
    assert isinstance(out, KCOTOutput)
    matched, plan, cost = _kcot_oracle(sim)
    torch.testing.assert_close(out.cost, torch.from_numpy(cost))
    torch.testing.assert_close(out.plan, torch.from_numpy(plan), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.matched, torch.from_numpy(matched), rtol=1e-6, atol=1e-9)
    # a prior without targets (or targets without a prior) does not constrain
    prior = teacher_prior(*_inputs()[:2])
    torch.testing.assert_close(_tight()(sim, prior=prior).plan, out.plan)
    torch.testing.assert_close(_tight()(sim, targets=targets).plan, out.plan)


def test_train_path_matches_reference():
    regions, labels, sim, targets = _inputs()
    prior = teacher_prior(regions + 0.5 * torch.randn_like(regions), labels)
    out = _tight()(sim, prior=prior, targets=targets)
    matched, plan, cost = _kcot_oracle(sim, prior, targets)
    torch.testing.assert_close(out.cost, torch.from_numpy(cost))
    torch.testing.assert_close(out.plan, torch.from_numpy(plan), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.matched, torch.from_numpy(matched), rtol=1e-6, atol=1e-9)
    # float32 input: same answer to float32 accuracy
    out32 = KnowledgeConstrainedOT(max_iter=2000, tol=1e-6)(
        sim.float(), prior=prior.float(), targets=targets
    )
    assert out32.plan.dtype == torch.float32
    torch.testing.assert_close(out32.plan, torch.from_numpy(plan).float(), rtol=1e-3, atol=1e-5)


def test_plan_marginals():
    _, _, sim, _ = _inputs()
    out = _tight()(sim)
    a = torch.softmax(sim.amax(-1) / 0.1, dim=-1)
    torch.testing.assert_close(out.plan.sum(-1), a)
    torch.testing.assert_close(out.plan.sum(1), torch.full((B, C), 1.0 / C, dtype=torch.float64))


def test_constraint_moves_mass_to_teacher_regions():
    # uninformative student similarities; a teacher that sees label c in regions 2c, 2c+1
    sim = 0.05 * torch.randn(B, N, C, dtype=torch.float64)
    teacher = torch.full((B, N, C), 1e-3, dtype=torch.float64)
    for c in range(C):
        teacher[:, 2 * c : 2 * c + 2, c] = 1.0
    prior = teacher / teacher.sum(1, keepdim=True)
    _, _, _, targets = _inputs()
    kcot = _tight()
    free = kcot(sim).plan
    constrained = kcot(sim, prior=prior, targets=targets).plan
    for b, c in targets.nonzero().tolist():
        share_free = free[b, 2 * c : 2 * c + 2, c].sum() / free[b, :, c].sum()
        share_kc = constrained[b, 2 * c : 2 * c + 2, c].sum() / constrained[b, :, c].sum()
        assert share_kc > share_free, (b, c, share_kc, share_free)
        assert share_kc > 2 / N  # more than the uniform share of two regions


def test_gradient_not_through_plan_by_default():
    _, _, sim, _ = _inputs()
    sim = sim.clone().requires_grad_(True)
    out = _tight()(sim)
    assert not out.plan.requires_grad
    w = torch.randn(B, C, dtype=torch.float64)
    (out.matched * w).sum().backward()
    # plan is a constant: d/d sim of sum_n plan * sim * w = plan * w
    torch.testing.assert_close(sim.grad, out.plan * w[:, None, :])


def test_implicit_gradient_through_plan():
    regions, labels, sim, targets = _inputs()
    prior = teacher_prior(regions, labels)
    grads = {}
    for mode in ("detach", "implicit", "unroll"):
        s = sim.clone().requires_grad_(True)
        out = KnowledgeConstrainedOT(grad=mode, max_iter=3000, tol=1e-10)(
            s, prior=prior, targets=targets
        )
        assert out.plan.requires_grad == (mode != "detach")
        out.matched.sum().backward()
        assert torch.isfinite(s.grad).all()
        grads[mode] = s.grad
    assert not torch.allclose(grads["implicit"], grads["detach"])
    torch.testing.assert_close(grads["implicit"], grads["unroll"], rtol=1e-4, atol=1e-6)


def test_half_precision_runs_in_float32():
    _, _, sim, targets = _inputs()
    prior = teacher_prior(*_inputs()[:2])
    for dt in (torch.float16, torch.bfloat16):
        out = KnowledgeConstrainedOT()(sim.to(dt), prior=prior.to(dt), targets=targets)
        assert out.plan.dtype == out.matched.dtype == out.cost.dtype == torch.float32
        ref = KnowledgeConstrainedOT()(
            sim.to(dt).float(), prior=prior.to(dt).float(), targets=targets
        )
        torch.testing.assert_close(out.plan, ref.plan)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = KnowledgeConstrainedOT()(sim.float(), prior=prior.float(), targets=targets)
    assert out.plan.dtype == torch.float32 and torch.isfinite(out.matched).all()


def test_convergence_warning_once_per_module():
    _, _, sim, _ = _inputs()
    kcot = KnowledgeConstrainedOT(max_iter=1, tol=1e-12)
    with pytest.warns(
        ConvergenceWarning, match="KnowledgeConstrainedOT: Sinkhorn reached max_iter=1"
    ) as rec:
        kcot(sim)
    assert len(rec) == 1 and rec[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = kcot(sim)  # second non-converged call: no warning
    assert torch.isfinite(out.plan).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KnowledgeConstrainedOT(max_iter=3, tol=0)(sim)  # tol=0: fixed iteration count, no warning


@pytest.mark.filterwarnings("ignore::ram_ot._checks.ConvergenceWarning")
def test_small_reg_and_zero_prior_stay_finite():
    _, _, sim, targets = _inputs()
    prior = torch.zeros(B, N, C, dtype=torch.float64)
    prior[:, 0, :] = 1.0  # zeros elsewhere: -log 0 would be inf
    out = KnowledgeConstrainedOT(reg=1e-3, reg_prior=1e-3)(
        sim.float(), prior=prior, targets=targets
    )
    assert (
        torch.isfinite(out.plan).all()
        and torch.isfinite(out.cost).all()
        and torch.isfinite(out.matched).all()
    )


def test_bad_inputs_raise():
    _, _, sim, targets = _inputs()
    kcot = KnowledgeConstrainedOT()
    with pytest.raises(
        ValueError,
        match=r"KnowledgeConstrainedOT: expected `sim` of shape \(B, N, C\), got \(2, 12\)",
    ):
        kcot(sim[..., 0])
    with pytest.raises(
        ValueError, match=r"expected `sim` of shape \(B, N, C\) with N >= 1, got \(2, 0, 5\)"
    ):
        kcot(sim[:, :0])
    with pytest.raises(ValueError, match=r"with C >= 1, got \(2, 12, 0\)"):
        kcot(sim[..., :0])
    with pytest.raises(TypeError, match="expected `sim` with a floating dtype"):
        kcot(sim.long())
    with pytest.raises(TypeError, match="expected `sim` to be a torch.Tensor"):
        kcot(sim.numpy())
    with pytest.raises(
        ValueError, match=r"expected `targets` of shape \(B, C\) = \(2, 5\), got \(2, 4\)"
    ):
        kcot(sim, targets=targets[:, :4])
    with pytest.raises(
        ValueError, match=r"expected `prior` of shape \(B, N, C\) = \(2, 12, 5\), got \(2, 11, 5\)"
    ):
        kcot(sim, prior=sim[:, :11].abs(), targets=targets)
    with pytest.raises(
        ValueError,
        match=r"teacher_prior: expected `label_embeddings` of shape \(C, D\) = \(\*, 8\), got \(5, 7\)",
    ):
        teacher_prior(torch.randn(B, N, D), torch.randn(C, D - 1))
    with pytest.raises(ValueError, match="expected `reg` > 0"):
        KnowledgeConstrainedOT(reg=0)
    with pytest.raises(ValueError, match="expected `grad` to be one of"):
        KnowledgeConstrainedOT(grad="auto")
    with pytest.raises(ValueError, match="expected `max_iter` to be an int >= 1"):
        KnowledgeConstrainedOT(max_iter=0)
    with pytest.raises(ValueError, match="expected `reg_prior` >= 0 and finite"):
        KnowledgeConstrainedOT(reg_prior=-0.1)
    with pytest.raises(TypeError, match="expected `tol` to be a number >= 0"):
        KnowledgeConstrainedOT(tol="small")
    with pytest.raises(TypeError):
        KnowledgeConstrainedOT(0.1)  # configuration is keyword-only
