"""Tests for ram_ot.losses: MMC, ASL and BCE against direct formulas and scikit-learn."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss

from ram_ot.losses import AsymmetricLoss, MMCLoss, _resolve_loss, bce, mmc_loss


def _batch(B=4, C=7, dtype=torch.float32):
    logits = (3 * torch.randn(B, C)).to(dtype)
    targets = (torch.rand(B, C) < 0.3).float()
    targets[0, 0] = 1.0  # at least one positive
    return logits, targets


def _mmc_direct(logits, targets):
    """-mean over positive pairs of log(exp(l_ic) / sum_jk exp(l_jk)), in float64 numpy."""
    x = logits.double().numpy()
    y = targets.double().numpy()
    z = np.exp(x - x.max()).sum()
    total, count = 0.0, 0.0
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            if y[i, c] != 0:
                total += y[i, c] * -(x[i, c] - x.max() - math.log(z))
                count += y[i, c]
    return total / max(count, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mmc_matches_direct_formula(dtype):
    logits, targets = _batch(dtype=dtype)
    got = mmc_loss(logits, targets)
    assert got.dtype == dtype
    want = torch.tensor(_mmc_direct(logits, targets), dtype=dtype)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(MMCLoss()(logits, targets.bool()), want)


def test_mmc_soft_targets_and_int_targets():
    logits, targets = _batch()
    soft = targets * 0.8 + 0.1
    torch.testing.assert_close(
        mmc_loss(logits, soft), torch.tensor(_mmc_direct(logits, soft), dtype=torch.float32)
    )
    torch.testing.assert_close(mmc_loss(logits, targets.long()), mmc_loss(logits, targets))


def test_mmc_partial_label_minus_one_is_ignored():
    # issue 14: -1 targets ("unknown") made the loss unbounded below
    logits, targets = _batch()
    partial = targets.clone()
    partial[1:3] = -1.0  # two images with unknown labels
    partial[3, :3] = -1.0
    logits = logits.clone()
    logits[1:3] = 50.0  # large logits on unknown pairs must not matter
    got = mmc_loss(logits, partial)
    assert float(got) >= 0.0
    # the same as the batch without the unknown pairs: direct formula on the known pairs only
    known = partial >= 0
    x = torch.where(known, logits, torch.tensor(-math.inf))
    log_p = x[known] - torch.logsumexp(x[known], 0)
    y = partial[known]
    want = -(y * log_p).sum() / y.sum()
    torch.testing.assert_close(got, want)
    # everything unknown: no positive, loss 0 with a finite (zero) gradient
    lg = torch.randn(2, 3, requires_grad=True)
    loss = mmc_loss(lg, -torch.ones(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and bool((lg.grad == 0).all())


def test_mmc_no_positive_is_zero_with_grad():
    logits = torch.randn(3, 5, requires_grad=True)
    loss = mmc_loss(logits, torch.zeros(3, 5))
    assert loss.requires_grad
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_mmc_masked_negative_logit_no_nan():
    logits, targets = _batch()
    targets[1, 1] = 0.0
    logits[1, 1] = -float("inf")
    logits.requires_grad_(True)
    loss = mmc_loss(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_mmc_half_precision_computes_in_float32():
    logits, targets = _batch()
    got = mmc_loss(logits.bfloat16(), targets)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, mmc_loss(logits.bfloat16().float(), targets))


def _asl_direct(x, y, gamma_neg, gamma_pos, clip, eps):
    """Elementwise ASL in float64 numpy, written from the paper's formula."""
    x = x.double().numpy()
    y = y.double().numpy()
    p = 1.0 / (1.0 + np.exp(-x))
    pm = np.minimum(1.0 - p + clip, 1.0)
    lp = np.log(np.clip(p, eps, 1 - eps))
    ln = np.log(np.clip(pm, eps, 1 - eps))
    loss = y * (1 - p) ** gamma_pos * lp + (1 - y) * (1 - pm) ** gamma_neg * ln
    return -loss.sum()


@pytest.mark.parametrize("clip", [0.05, 0.0])
def test_asl_matches_direct_formula(clip):
    logits, targets = _batch(B=5, C=9, dtype=torch.float64)
    asl = AsymmetricLoss(clip=clip)
    assert (asl.gamma_neg, asl.gamma_pos, asl.eps) == (4.0, 1.0, 1e-8)
    want = _asl_direct(logits, targets, 4.0, 1.0, clip, 1e-8)
    torch.testing.assert_close(asl(logits, targets), torch.tensor(want, dtype=torch.float64))
    got32 = asl(logits.float(), targets)
    torch.testing.assert_close(got32, torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    mean = AsymmetricLoss(clip=clip, reduction="mean")(logits, targets)
    torch.testing.assert_close(mean, torch.tensor(want / targets.numel(), dtype=torch.float64))


def test_asl_without_focusing_is_bce_sum():
    logits, targets = _batch(dtype=torch.float64)
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0, eps=1e-12)
    want = F.binary_cross_entropy_with_logits(logits, targets.double(), reduction="sum")
    torch.testing.assert_close(asl(logits, targets), want)


def test_asl_focal_grad_switch():
    logits, targets = _batch()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    AsymmetricLoss()(a, targets).backward()
    AsymmetricLoss(disable_focal_grad=True)(b, targets).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert not torch.allclose(a.grad, b.grad)


def test_bce_matches_sklearn():
    logits, targets = _batch(B=6, C=5, dtype=torch.float64)
    prob = torch.sigmoid(logits).numpy().reshape(-1)
    want = log_loss(targets.numpy().reshape(-1), prob, labels=[0, 1])
    torch.testing.assert_close(bce(logits, targets), torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("fn", [mmc_loss, bce, AsymmetricLoss()])
def test_bad_inputs_raise(fn):
    logits, targets = _batch()
    with pytest.raises(
        ValueError, match=r"expected `targets` of shape \(B, C\) = \(4, 7\), got \(4, 6\)"
    ):
        fn(logits, targets[:, :6])
    with pytest.raises(ValueError, match=r"expected `logits` of shape \(B, C\)"):
        fn(logits.reshape(-1), targets.reshape(-1))
    with pytest.raises(TypeError, match="expected `logits` with a floating dtype"):
        fn(logits.long(), targets)
    with pytest.raises(TypeError, match="expected `targets` with a real dtype"):
        fn(logits, targets.to(torch.complex64))
    with pytest.raises(TypeError, match="expected `targets` to be a torch.Tensor"):
        fn(logits, targets.tolist())


def test_resolve_loss():
    assert _resolve_loss("f", "mmc") is mmc_loss
    assert _resolve_loss("f", "bce") is bce
    assert isinstance(_resolve_loss("f", "asl"), AsymmetricLoss)
    custom = lambda x, y: x.sum()  # noqa: E731
    assert _resolve_loss("f", custom) is custom
    with pytest.raises(
        ValueError, match="f: expected `loss` to be one of 'mmc', 'asl', 'bce', got 'focal'"
    ):
        _resolve_loss("f", "focal")
    with pytest.raises(TypeError, match="f: expected `loss`"):
        _resolve_loss("f", 3)
    with pytest.raises(ValueError, match="AsymmetricLoss: expected `gamma_neg` >= 0"):
        AsymmetricLoss(gamma_neg=-1)
