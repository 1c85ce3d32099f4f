"""ram_ot.metrics against scikit-learn (the oracle), in float32 and float64, with ties."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from ram_ot.metrics import (
    MultiLabelMetrics,
    average_precision,
    evaluate,
    mean_average_precision,
    precision_recall_f1_at_k,
)


def _data(n, c, *, dtype, ties, seed=0):
    g = np.random.default_rng(seed)
    if ties:
        scores = g.integers(0, 4, size=(n, c)).astype(dtype)  # many equal scores
    else:
        scores = g.random((n, c)).astype(dtype)
    targets = (g.random((n, c)) < 0.3).astype(np.int64)
    targets[:, 0] = 0  # a class without positive
    targets[0, 1:] = 1  # every other class has one
    return scores, targets


def _sk_ap(scores, targets):
    return np.array(
        [
            average_precision_score(targets[:, c], scores[:, c]) if targets[:, c].any() else np.nan
            for c in range(scores.shape[1])
        ]
    )


def _sk_topk(scores, targets, k):
    # Prediction set by a stable descending sort (the documented tie rule), built with numpy.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    pred = np.zeros_like(targets)
    np.put_along_axis(pred, order, 1, axis=1)
    op = precision_score(targets, pred, average="micro", zero_division=0)
    orr = recall_score(targets, pred, average="micro", zero_division=0)
    of1 = f1_score(targets, pred, average="micro", zero_division=0)
    cp = precision_score(targets, pred, average="macro", zero_division=0)
    cr = recall_score(targets, pred, average="macro", zero_division=0)
    cf1 = 0.0 if cp + cr == 0 else 2 * cp * cr / (cp + cr)
    return np.array([op, orr, of1, cp, cr, cf1]), pred


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(dtype, ties):
    scores, targets = _data(97, 70, dtype=dtype, ties=ties)  # 70 > one class block of 64
    ap = average_precision(torch.from_numpy(scores), torch.from_numpy(targets))
    assert ap.dtype == torch.float64 and ap.shape == (70,)
    np.testing.assert_allclose(
        ap.numpy(), _sk_ap(scores, targets), rtol=1e-12, atol=1e-12, equal_nan=True
    )
    assert math.isnan(float(ap[0]))


def test_mean_average_precision_excludes_and_counts_classes_without_positive():
    scores, targets = _data(40, 9, dtype=np.float64, ties=False)
    targets[:, 3] = 0
    res = mean_average_precision(scores, targets)
    ref = _sk_ap(scores, targets)
    assert res.n_excluded == 2
    assert res.mAP == pytest.approx(np.nanmean(ref), rel=1e-12)


def test_targets_minus_one_are_negatives():
    scores, targets = _data(30, 5, dtype=np.float32, ties=True)
    signed = np.where(targets > 0, 1, -1)
    torch.testing.assert_close(
        average_precision(scores, signed), average_precision(scores, targets), equal_nan=True
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_topk_prf1_matches_sklearn(dtype, ties, k):
    scores, targets = _data(53, 11, dtype=dtype, ties=ties, seed=k)
    ref, pred = _sk_topk(scores, targets, k)
    got = precision_recall_f1_at_k(torch.from_numpy(scores), torch.from_numpy(targets), k)
    np.testing.assert_allclose(np.array(got), ref, rtol=1e-12, atol=1e-12)
    # OP is ΣTP/(N·K) since every image predicts exactly K labels (DESIGN.md §5).
    assert got.OP == pytest.approx((pred & targets).sum() / (53 * k), rel=1e-12)


def test_topk_ties_go_to_lower_label_index():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    got = precision_recall_f1_at_k(scores, torch.tensor([[1, 1, 0, 0]]), 2)
    assert got.OP == 1.0 and got.OR == 1.0
    got = precision_recall_f1_at_k(scores, torch.tensor([[0, 0, 1, 0]]), 2)
    assert got.OP == 0.0 and got.OF1 == 0.0 and got.CF1 == 0.0


def test_streaming_and_merge_equal_one_shot():
    scores, targets = _data(101, 23, dtype=np.float32, ties=True)
    one = MultiLabelMetrics(23)
    one.update(scores, targets)
    a, b = MultiLabelMetrics(23), MultiLabelMetrics(23)
    for i in range(0, 101, 16):
        (a if (i // 16) % 2 == 0 else b).update(
            torch.from_numpy(scores[i : i + 16]), torch.from_numpy(targets[i : i + 16])
        )
    merged = a.merge(b.state_dict()).compute()
    ref = one.compute()
    assert merged.n_images == ref.n_images == 101
    # AP does not depend on the order of the images; top-K counts are sums.
    np.testing.assert_allclose(
        merged.ap.numpy(), _sk_ap(scores, targets), rtol=1e-12, equal_nan=True
    )
    assert merged.mAP == pytest.approx(ref.mAP, rel=1e-12)
    for k in (3, 5):
        np.testing.assert_allclose(
            np.array(merged.at_k[k]), _sk_topk(scores, targets, k)[0], rtol=1e-12
        )
    one.reset()
    assert one.n_images == 0 and math.isnan(one.compute().mAP)


def test_evaluate_reports_zsl_and_gzsl():
    zs, zt = _data(31, 6, dtype=np.float32, ties=False, seed=1)
    gs, gt = _data(45, 14, dtype=np.float32, ties=False, seed=2)
    res = evaluate(zs, zt, gs, gt)
    assert res.score == "scores"
    assert res.zsl.mAP == pytest.approx(np.nanmean(_sk_ap(zs, zt)), rel=1e-9)
    assert res.gzsl.mAP == pytest.approx(np.nanmean(_sk_ap(gs, gt)), rel=1e-9)
    assert res.gzsl.at_k[5].OF1 == pytest.approx(_sk_topk(gs, gt, 5)[0][2], rel=1e-12)
    d = res.as_dict()
    assert d["zsl"]["F1@3"] == res.zsl.at_k[3].OF1 and d["gzsl"]["n_excluded"] == 1


def test_errors_name_the_argument():
    with pytest.raises(
        ValueError,
        match=r"average_precision: expected `targets` of shape \(N, C\) = \(4, 3\), got \(4, 2\)",
    ):
        average_precision(torch.rand(4, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"expected `k` in \[1, C\] = \[1, 3\], got 4"):
        precision_recall_f1_at_k(torch.rand(4, 3), torch.ones(4, 3), 4)
    with pytest.raises(TypeError, match="expected `scores` to be a torch.Tensor"):
        average_precision([[0.1]], torch.ones(1, 1))
    m = MultiLabelMetrics(5)
    with pytest.raises(
        ValueError,
        match=r"MultiLabelMetrics.update: expected `scores` of shape \(B, C\) = \(\*, 5\)",
    ):
        m.update(torch.rand(2, 4), torch.ones(2, 4))


def test_update_rejects_non_finite_scores():
    # issue 14: NaN scores were accepted and reported mAP 0.5
    m = MultiLabelMetrics(6)
    scores = torch.rand(3, 6)
    targets = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1]])
    for bad in (math.nan, math.inf):
        s = scores.clone()
        s[2, 1] = bad
        with pytest.raises(ValueError, match=r"finite `scores`.*image 2, label 1"):
            m.update(s, targets)
    assert m.n_images == 0  # nothing was added
    m.update(scores, targets)
    assert m.n_images == 3
