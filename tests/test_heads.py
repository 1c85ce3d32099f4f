"""Tests for ram_ot.heads.KCOTHead.

The oracle re-derives the reference forward (model/model.py of github.com/EricTan7/RAM:
global logits, cost, teacher distribution, constraint, Sinkhorn, matched logits, fused
scores, MMC on both branches) in float64 numpy/scipy with POT's log-domain Sinkhorn.
"""

import math

import numpy as np
import ot
import pytest
import torch
from scipy.special import logsumexp, softmax

from ram_ot.heads import HeadOutput, KCOTHead
from ram_ot.kcot import KnowledgeConstrainedOT
from ram_ot.losses import AsymmetricLoss, bce, mmc_loss

B, N, C, D = 3, 10, 6, 16


def _n(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _mmc(logits, y):
    logp = logits.reshape(-1) - logsumexp(logits.reshape(-1))
    y = y.reshape(-1)
    return -(y * logp).sum() / max(y.sum(), 1.0)


def _reference_forward(g, r, t, targets=None, teacher=None, tau_loc=2e-3, tau_g=0.01):
    """Reference RAM forward from the features on, float64."""
    g, r, t = _n(g.double().numpy()), _n(r.double().numpy()), _n(t.double().numpy())
    logits_glb = g @ t.T / tau_g
    sim = np.einsum("bnd,cd->bnc", r, t)
    cost = 1.0 - softmax(100.0 * sim, axis=-1)
    reg = 0.1
    if teacher is not None:
        tl = 100.0 * np.einsum("bnd,cd->bnc", _n(teacher.double().numpy()), t)
        fm = softmax(20.0 * softmax(tl, axis=2), axis=1)
        y = np.broadcast_to(targets.numpy()[:, None, :], fm.shape)
        fm[y == 0] = fm.min()
        cost = cost - 0.05 * np.log(fm)
        reg = 0.15
    u = softmax(sim.max(axis=2) / 0.1, axis=1)
    v = np.full(C, 1.0 / C)
    plan = np.stack(
        [
            ot.bregman.sinkhorn_log(u[i], v, cost[i], reg, numItermax=10000, stopThr=1e-13)
            for i in range(len(u))
        ]
    )
    logits_loc = (plan * sim).sum(1) / tau_loc
    scores = (softmax(logits_glb, -1) + softmax(logits_loc, -1)) / 2
    loss = None
    if targets is not None:
        y = targets.double().numpy()
        loss = _mmc(logits_glb, y) + _mmc(logits_loc, y)
    return scores, logits_glb, logits_loc, plan, loss


def _features(dtype=torch.float64):
    g = torch.randn(B, D, dtype=dtype)
    r = torch.randn(B, N, D, dtype=dtype)
    t = torch.randn(C, D, dtype=dtype)
    teacher = r + 0.5 * torch.randn(B, N, D, dtype=dtype)
    targets = (torch.rand(B, C) < 0.4).float()
    targets[:, 0] = 1
    return g, r, t, teacher, targets


def _tight_head(**kw):
    return KCOTHead(KnowledgeConstrainedOT(max_iter=5000, tol=1e-11), **kw)


def _assert_matches(out, want):
    scores, lg, ll, plan, loss = want
    torch.testing.assert_close(out.logits_global, torch.from_numpy(lg))
    torch.testing.assert_close(out.plan, torch.from_numpy(plan), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(out.logits_local, torch.from_numpy(ll), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.scores, torch.from_numpy(scores), rtol=1e-6, atol=1e-9)
    if loss is None:
        assert out.loss is None
    else:
        torch.testing.assert_close(
            out.loss, torch.tensor(loss, dtype=torch.float64), rtol=1e-6, atol=1e-8
        )


def test_train_path_matches_reference():
    g, r, t, teacher, targets = _features()
    head = _tight_head().train()
    out = head(g, r, t, targets=targets, teacher_regions=teacher)
    assert isinstance(out, HeadOutput)
    _assert_matches(out, _reference_forward(g, r, t, targets, teacher))


def test_eval_path_matches_reference_and_ignores_teacher():
    g, r, t, teacher, targets = _features()
    head = _tight_head().eval()
    want = _reference_forward(g, r, t)
    _assert_matches(head(g, r, t), want)
    # in eval mode teacher_regions are not used: same plan as without, loss only adds on
    out = head(g, r, t, targets=targets, teacher_regions=teacher)
    torch.testing.assert_close(out.plan, torch.from_numpy(want[3]), rtol=1e-6, atol=1e-9)
    assert out.loss is not None and torch.isfinite(out.loss)
    # an explicit prior with targets is applied in eval mode too
    from ram_ot.kcot import teacher_prior

    prior = teacher_prior(teacher, t)
    _assert_matches(
        head(g, r, t, targets=targets, prior=prior), _reference_forward(g, r, t, targets, teacher)
    )


def test_train_without_targets_has_no_loss_and_no_constraint():
    g, r, t, teacher, _ = _features()
    out = _tight_head().train()(g, r, t, teacher_regions=teacher)
    assert out.loss is None
    torch.testing.assert_close(
        out.plan, torch.from_numpy(_reference_forward(g, r, t)[3]), rtol=1e-6, atol=1e-9
    )


@pytest.mark.filterwarnings("ignore::ram_ot._checks.ConvergenceWarning")
def test_gradients_reach_features_and_temperatures_not_plan():
    g, r, t, teacher, targets = _features(torch.float32)
    g, r, t = (x.clone().requires_grad_(True) for x in (g, r, t))
    head = KCOTHead().train()
    out = head(g, r, t, targets=targets, teacher_regions=teacher.requires_grad_(True))
    assert not out.plan.requires_grad
    out.loss.backward()
    for x in (g, r, t, head.temperature_local, head.temperature_global):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is frozen
    assert {n for n, _ in head.named_parameters()} == {"temperature_local", "temperature_global"}
    torch.testing.assert_close(head.temperature_local.detach(), torch.tensor(2e-3))
    torch.testing.assert_close(head.temperature_global.detach(), torch.tensor(0.01))


def test_implicit_grad_reaches_regions_through_plan():
    g, r, t, _, targets = _features(torch.float32)
    grads = []
    for mode in ("detach", "implicit"):
        rr = r.clone().requires_grad_(True)
        out = KCOTHead(KnowledgeConstrainedOT(grad=mode))(g, rr, t, targets=targets)
        assert out.plan.requires_grad == (mode == "implicit")
        out.loss.backward()
        assert torch.isfinite(rr.grad).all()
        grads.append(rr.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_bf16_autocast_scores_finite():
    g, r, t, teacher, targets = _features(torch.float32)
    proj = torch.nn.Linear(D, D)
    head = KCOTHead().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gg, rr, tt = proj(g), proj(r), proj(t)
        assert rr.dtype == torch.bfloat16
        out = head(gg, rr, tt, targets=targets, teacher_regions=proj(teacher))
    assert out.scores.dtype == torch.float32 and torch.isfinite(out.scores).all()
    torch.testing.assert_close(out.scores.sum(-1), torch.ones(B))
    out.loss.backward()
    assert torch.isfinite(proj.weight.grad).all()


def test_open_vocabulary_any_c_per_call():
    g, r, t, _, _ = _features(torch.float32)
    head = KCOTHead().eval()
    for c in (1, 4, 11):
        out = head(g, r, torch.randn(c, D))
        assert out.scores.shape == (B, c) and out.plan.shape == (B, N, c)


@pytest.mark.parametrize("loss", ["asl", "bce", "callable"])
def test_loss_choice(loss):
    g, r, t, _, targets = _features(torch.float32)
    fn = {"asl": AsymmetricLoss(), "bce": bce, "callable": lambda x, y: (x * y).mean()}[loss]
    head = KCOTHead(loss=fn if loss == "callable" else loss)
    out = head(g, r, t, targets=targets)
    torch.testing.assert_close(
        out.loss, fn(out.logits_global, targets) + fn(out.logits_local, targets)
    )
    assert not torch.allclose(
        out.loss, mmc_loss(out.logits_global, targets) + mmc_loss(out.logits_local, targets)
    )


def test_bad_inputs_raise():
    g, r, t, teacher, targets = _features(torch.float32)
    head = KCOTHead()
    with pytest.raises(
        ValueError,
        match=r"KCOTHead: expected `label_embeddings` of shape \(C, D\) = \(\*, 16\), got \(6, 15\)",
    ):
        head(g, r, t[:, :15])
    with pytest.raises(
        ValueError, match=r"expected `image_global` of shape \(B, D\) = \(3, 16\), got \(2, 16\)"
    ):
        head(g[:2], r, t)
    with pytest.raises(
        ValueError, match=r"expected `targets` of shape \(B, C\) = \(3, 6\), got \(3, 5\)"
    ):
        head(g, r, t, targets=targets[:, :5])
    with pytest.raises(
        ValueError,
        match=r"expected `label_embeddings` of shape \(C, D\) with C >= 1, got \(0, 16\)",
    ):
        head(g, r, t[:0])
    with pytest.raises(
        ValueError,
        match=r"expected `image_regions` of shape \(B, N, D\) with N >= 1, got \(3, 0, 16\)",
    ):
        head(g, r[:, :0], t)
    with pytest.raises(
        ValueError,
        match=r"expected `teacher_regions` of shape \(B, N, D\) = \(3, 10, 16\), got \(3, 9, 16\)",
    ):
        head(g, r, t, targets=targets, teacher_regions=teacher[:, :9])
    with pytest.raises(TypeError, match="expected `image_regions` with a floating dtype"):
        head(g, r.long(), t)
    with pytest.raises(TypeError, match="expected `targets` with a real dtype"):
        head(g, r, t, targets=targets.to(torch.complex64))
    with pytest.raises(ValueError, match="KCOTHead: expected `loss` to be one of"):
        KCOTHead(loss="focal")
    with pytest.raises(ValueError, match="KCOTHead: expected `temperature_local` > 0"):
        KCOTHead(temperature_local=0.0)


def test_wrong_width_is_blamed_on_the_input_that_has_it():
    # issue 14: regions of the wrong width D were reported as a bad `image_global`
    g, r, t, _, _ = _features(torch.float32)
    head = KCOTHead()
    with pytest.raises(
        ValueError, match=r"expected `image_regions` of shape \(B, N, D\) = \(3, 10, 16\), got "
        r"\(3, 10, 12\)"
    ):  # fmt: skip
        head(g, r[..., :12], t)
    with pytest.raises(ValueError, match=r"expected `image_global` of shape \(B, D\) = \(3, 16\)"):
        head(g[:, :12], r, t)


def test_non_finite_inputs_are_blamed_on_the_arguments_passed():
    # issue 14: NaN regions blamed sinkhorn's `a`; NaN image_global gave silent NaN scores
    g, r, t, _, _ = _features(torch.float32)
    r_nan = r.clone()
    r_nan[1, 2, 3] = math.nan
    with pytest.raises(ValueError, match=r"KCOTHead: .*`image_regions` or `label_embeddings`"):
        KCOTHead()(g, r_nan, t)
    head = KCOTHead(validate=True)
    with pytest.raises(ValueError, match=r"KCOTHead: .*`image_regions`"):
        head(g, r_nan, t)
    g_nan = g.clone()
    g_nan[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"KCOTHead: .*`image_global`"):
        head(g_nan, r, t)
    assert torch.isfinite(head(g, r, t).scores).all()
