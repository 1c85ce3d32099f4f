"""Open-vocabulary multi-label recognition metrics (paper §4.1 "Evaluation metrics").

RAM is evaluated like its predecessors (BiAM, MKT, DualCoOp): mean average precision over
the label set, and precision / recall / F1 of each image's top-K labels, K = 3 and 5, in two
settings:

* **ZSL** — the test images that hold at least one unseen label, ranked over the unseen
  labels only;
* **GZSL** — the test images ranked over seen + unseen labels (label order
  ``sorted(seen) + sorted(unseen)``).

Definitions (``s`` scores (N, C), ``y`` binary targets (N, C)):

* AP of class c is the non-interpolated average precision of scikit-learn's
  ``average_precision_score``: ``AP = Σ_t (R_t − R_{t−1}) P_t`` over the distinct score
  thresholds t in decreasing order; tied scores form one threshold. A class with no
  positive image has no AP (NaN); mAP averages the classes that have one and reports how
  many were left out.
* Top-K predictions: the K highest scores of each row; among equal scores the lower label
  index wins (a stable descending sort), so the result never depends on the device.
  ``TP_c, FP_c, FN_c`` count per class. Overall ``OP = ΣTP / (N·K)``, ``OR = ΣTP / Σ#GT``,
  ``OF1 = 2·OP·OR / (OP + OR)``. Per class ``P_c = TP_c / (TP_c + FP_c)``,
  ``R_c = TP_c / (TP_c + FN_c)`` with 0/0 read as 0 (scikit-learn's ``zero_division=0``;
  the reference's convention), ``CP`` and ``CR`` their means over **all** C classes and
  ``CF1 = 2·CP·CR / (CP + CR)`` (the F1 of the means, as the reference computes it). Any
  F1 whose P and R are both 0 is 0.

:class:`MultiLabelMetrics` accumulates these over batches: top-K counts are summed exactly
per batch, and the scores kept for AP stay on the CPU in the chunks they arrived in; AP is
computed a block of classes at a time, so no (N, C) array (nor its sort indices) is ever
built. :meth:`MultiLabelMetrics.merge` and :meth:`MultiLabelMetrics.sync` join the states
of several processes (``torch.distributed``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ram_ot._checks import check_choice, check_shape, check_tensor

__all__ = [
    "APResult",
    "EvalResult",
    "MultiLabelMetrics",
    "PRF1",
    "SplitResult",
    "average_precision",
    "calibrate_thresholds",
    "evaluate",
    "mean_average_precision",
    "precision_recall_f1_at_k",
]

ArrayLike = Tensor | np.ndarray

# Classes per AP block: keeps the temporary (N, block) sort buffers small.
_AP_BLOCK = 64


class PRF1(NamedTuple):
    """Top-K precision / recall / F1, overall (``O*``) and per class averaged (``C*``).

    All fields are Python floats in [0, 1].
    """

    OP: float
    OR: float
    OF1: float
    CP: float
    CR: float
    CF1: float


class APResult(NamedTuple):
    """Mean average precision.

    Attributes:
        mAP: float. Mean AP over the classes that have at least one positive (NaN if none has).
        ap: (C,) float64. AP per class; NaN for a class without positive.
        n_excluded: int. Number of classes left out of the mean (no positive image).
    """

    mAP: float
    ap: Tensor
    n_excluded: int


class SplitResult(NamedTuple):
    """Metrics of one evaluation split (ZSL or GZSL).

    Attributes:
        mAP: float. Mean AP over the classes with a positive.
        ap: (C,) float64. AP per class (NaN without positive).
        n_excluded: int. Classes left out of the mAP.
        at_k: dict ``K -> PRF1``.
        n_images: int. Number of images evaluated.
    """

    mAP: float
    ap: Tensor
    n_excluded: int
    at_k: dict[int, PRF1]
    n_images: int

    def as_dict(self) -> dict[str, float]:
        """Flat JSON-friendly summary: ``mAP``, ``n_excluded``, ``n_images``, ``F1@K``, ``OP@K`` …"""
        out: dict[str, Any] = {
            "mAP": self.mAP,
            "n_excluded": self.n_excluded,
            "n_images": self.n_images,
        }
        for k, r in sorted(self.at_k.items()):
            out[f"F1@{k}"] = r.OF1
            for name, v in r._asdict().items():
                out[f"{name}@{k}"] = v
        return out


class EvalResult(NamedTuple):
    """ZSL and GZSL metrics of one evaluation.

    Attributes:
        zsl: metrics over the unseen labels on the unseen test set.
        gzsl: metrics over seen + unseen labels.
        score: which model output was ranked (``"scores"``: fused softmax scores, the
            reference's choice; or e.g. ``"logits_global"``).
    """

    zsl: SplitResult
    gzsl: SplitResult
    score: str = "scores"

    def as_dict(self) -> dict[str, Any]:
        """``{"score": ..., "zsl": {...}, "gzsl": {...}}`` with :meth:`SplitResult.as_dict` entries."""
        return {"score": self.score, "zsl": self.zsl.as_dict(), "gzsl": self.gzsl.as_dict()}


def _as_tensor(fn: str, name: str, x: Any) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    check_tensor(fn, name, x)
    return x


def _check_pair(fn: str, scores: Any, targets: Any) -> tuple[Tensor, Tensor]:
    """Validate (N, C) scores and targets; return float scores and bool targets on the CPU-or-same device."""
    scores = _as_tensor(fn, "scores", scores)
    targets = _as_tensor(fn, "targets", targets)
    check_shape(fn, "scores", scores, [("N", None), ("C", None)])
    check_shape(fn, "targets", targets, [("N", scores.shape[0]), ("C", scores.shape[1])])
    if not (scores.is_floating_point() or scores.dtype in (torch.int32, torch.int64)):
        raise TypeError(
            f"{fn}: expected `scores` with a floating dtype, got {str(scores.dtype).replace('torch.', '')}."
        )
    if targets.dtype == torch.bool:
        t = targets
    else:
        # The reference marks negatives with -1 or 0; anything > 0 is a positive.
        t = targets > 0
    return scores, t


def _ap_columns(scores: Tensor, targets: Tensor) -> Tensor:
    """AP of each column. scores (N, C) float, targets (N, C) bool -> (C,) float64."""
    n = scores.shape[0]
    s, order = torch.sort(scores.double(), dim=0, descending=True)
    y = torch.gather(targets, 0, order).double()  # (N, C) positives in rank order
    tp = torch.cumsum(y, dim=0)  # (N, C)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device).unsqueeze(1)  # (N, 1)
    # A tie group of equal scores is one threshold: every member gets the precision at the
    # group's last row. end[i] is the row index of the end of i's group.
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:-1] = s[1:] != s[:-1]
    idx = torch.arange(n, device=scores.device).unsqueeze(1).expand_as(s)
    end = torch.where(is_end, idx, torch.full_like(idx, n - 1))
    end = torch.flip(torch.cummin(torch.flip(end, [0]), dim=0).values, [0])  # (N, C)
    precision = torch.gather(tp / rank, 0, end)  # (N, C)
    n_pos = y.sum(0)  # (C,)
    ap = (y * precision).sum(0) / n_pos
    return torch.where(n_pos > 0, ap, torch.full_like(ap, math.nan))


def average_precision(scores: ArrayLike, targets: ArrayLike) -> Tensor:
    """Average precision of each class (non-interpolated, as scikit-learn).

    Args:
        scores: (N, C) float. Higher means more likely present. NaN scores are not allowed.
        targets: (N, C) bool, int or float. Positive where > 0 (so {0, 1} and {-1, 1} both work).

    Returns:
        (C,) float64 on the device of `scores`: AP per class, NaN for a class without a
        positive image.

    Example:
        >>> average_precision(torch.tensor([[0.9], [0.1], [0.5]]), torch.tensor([[1], [0], [1]]))
        tensor([1.], dtype=torch.float64)
    """
    scores, t = _check_pair("average_precision", scores, targets)
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        return torch.full((scores.shape[1],), math.nan, dtype=torch.float64, device=scores.device)
    blocks = [
        _ap_columns(scores[:, i : i + _AP_BLOCK], t[:, i : i + _AP_BLOCK])
        for i in range(0, scores.shape[1], _AP_BLOCK)
    ]
    return torch.cat(blocks)


def calibrate_thresholds(scores: ArrayLike, targets: ArrayLike) -> Tensor:
    r"""Per-class F1-optimal decision thresholds (predict class c when ``score >= t_c``).

    For each column c, every distinct score value ``t`` of that column is a candidate; the
    rule ``s >= t`` gives ``TP, FP, FN`` and ``F1 = 2·TP / (2·TP + FP + FN)``. The returned
    ``t_c`` is the candidate with the largest F1; among equal F1 the **largest** ``t`` wins
    (the most conservative rule). Tied scores are one candidate, so the rule never splits
    them. Fit on a validation split, never on the test split.

    Args:
        scores: (N, C) floating. Any score that is larger for "more present" (for the tagger,
            the presence probability of :mod:`ram_ot.tagger`).
        targets: (N, C) bool / int / float; entries > 0 are positives.

    Returns:
        (C,) float64 on the device of `scores`: the thresholds; NaN for a class without a
        positive (no threshold can be fitted for it).

    Example:
        >>> calibrate_thresholds(torch.tensor([[0.9], [0.4], [0.6]]), torch.tensor([[1], [0], [1]]))
        tensor([0.6000], dtype=torch.float64)
    """
    fn = "calibrate_thresholds"
    s, t = _check_pair(fn, scores, targets)
    n = s.shape[0]
    if n == 0:
        raise ValueError(f"{fn}: expected `scores` of shape (N, C) with N >= 1, got {tuple(s.shape)}.")
    s, order = torch.sort(s.double(), dim=0, descending=True, stable=True)  # (N, C)
    y = torch.gather(t, 0, order).double()
    tp = torch.cumsum(y, dim=0)  # (N, C): TP of the rule "s >= s[i]" at a tie group's end
    n_pos = y.sum(0)  # (C,)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=s.device).unsqueeze(1)  # (N, 1)
    f1 = 2 * tp / (rank + n_pos)  # 2TP / (2TP + FP + FN) = 2TP / (#predicted + #positive)
    is_end = torch.ones_like(s, dtype=torch.bool)
    is_end[:-1] = s[1:] != s[:-1]  # only the last row of a tie group is a valid cut
    f1 = torch.where(is_end, f1, torch.full_like(f1, -1.0))
    best = f1.argmax(dim=0)  # first maximum = largest threshold among equal F1
    thr = s.gather(0, best.unsqueeze(0)).squeeze(0)
    return torch.where(n_pos > 0, thr, torch.full_like(thr, math.nan))


def _map_of(ap: Tensor) -> APResult:
    valid = ~torch.isnan(ap)
    n_valid = int(valid.sum())
    m = float(ap[valid].mean()) if n_valid else math.nan
    return APResult(m, ap, int(ap.numel() - n_valid))


def mean_average_precision(scores: ArrayLike, targets: ArrayLike) -> APResult:
    """Mean of the per-class AP over the classes with at least one positive.

    Args:
        scores: (N, C) float. Scores.
        targets: (N, C) bool/int/float. Positive where > 0.

    Returns:
        ``APResult(mAP, ap, n_excluded)``; `n_excluded` counts the classes without positive,
        which have ``ap = NaN`` and are not in the mean.
    """
    return _map_of(average_precision(scores, targets))


def _check_k(fn: str, k: Any, n_classes: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{fn}: expected `k` to be an int, got {type(k).__name__}.")
    if not 1 <= int(k) <= n_classes:
        raise ValueError(f"{fn}: expected `k` in [1, C] = [1, {n_classes}], got {k}.")
    return int(k)


def _topk_mask(scores: Tensor, k: int) -> Tensor:
    """(N, C) bool: the k highest scores of each row; ties go to the lower column index."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]  # (N, k)
    pred = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    pred.scatter_(1, order, True)
    return pred


def _counts(scores: Tensor, targets: Tensor, k: int) -> Tensor:
    """(3, C) int64 rows TP, FP, FN of the top-k predictions."""
    pred = _topk_mask(scores, k)
    tp = (pred & targets).sum(0)
    fp = (pred & ~targets).sum(0)
    fn = (~pred & targets).sum(0)
    return torch.stack([tp, fp, fn]).long()


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _prf1_from_counts(counts: Tensor) -> PRF1:
    tp, fp, fn = (c.double() for c in counts.cpu())
    stp, sfp, sfn = float(tp.sum()), float(fp.sum()), float(fn.sum())
    op = stp / (stp + sfp) if stp + sfp > 0 else 0.0
    orr = stp / (stp + sfn) if stp + sfn > 0 else 0.0
    pc = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), torch.zeros_like(tp))
    rc = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), torch.zeros_like(tp))
    cp = float(pc.mean()) if pc.numel() else 0.0
    cr = float(rc.mean()) if rc.numel() else 0.0
    return PRF1(op, orr, _f1(op, orr), cp, cr, _f1(cp, cr))


def precision_recall_f1_at_k(scores: ArrayLike, targets: ArrayLike, k: int) -> PRF1:
    """Precision, recall and F1 of the top-`k` labels of each image.

    Args:
        scores: (N, C) float. Scores; the `k` highest of a row are its predictions (ties:
            lower label index first).
        targets: (N, C) bool/int/float. Positive where > 0.
        k: int in [1, C].

    Returns:
        ``PRF1(OP, OR, OF1, CP, CR, CF1)``; see the module docstring for the definitions and
        the zero-division rule (0/0 = 0, classes averaged over all C).
    """
    fn = "precision_recall_f1_at_k"
    scores, t = _check_pair(fn, scores, targets)
    k = _check_k(fn, k, scores.shape[1])
    return _prf1_from_counts(_counts(scores, t, k))


class MultiLabelMetrics:
    """Streaming mAP and top-K P/R/F1 over batches.

    Args:
        num_classes: C, the number of labels ranked.
        ks: the K of the top-K metrics (default 3 and 5); each must be <= C.
        keep_scores: keep the scores for mAP (default). Set False to compute only the
            top-K metrics in constant memory; :meth:`compute` then returns ``mAP = NaN``.

    Scores are moved to the CPU and stored as float32 (float64 stays float64) in the
    chunks they arrive in; targets as bool. Top-K counts are updated per batch.

    Example:
        >>> m = MultiLabelMetrics(17)
        >>> for scores, targets in batches:  # doctest: +SKIP
        ...     m.update(scores, targets)
        >>> m.sync()  # doctest: +SKIP  (under torch.distributed: join all ranks)
        >>> res = m.compute()  # doctest: +SKIP
    """

    def __init__(
        self, num_classes: int, *, ks: Sequence[int] = (3, 5), keep_scores: bool = True
    ) -> None:
        fn = "MultiLabelMetrics"
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, (int, np.integer))
            or num_classes < 1
        ):
            raise ValueError(
                f"{fn}: expected `num_classes` to be an int >= 1, got {num_classes!r}."
            )
        self.num_classes = int(num_classes)
        self.ks = tuple(_check_k(fn, k, self.num_classes) for k in ks)
        self.keep_scores = bool(keep_scores)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []
        self._counts = {k: torch.zeros(3, self.num_classes, dtype=torch.long) for k in self.ks}
        self.n_images = 0

    @torch.no_grad()
    def update(self, scores: ArrayLike, targets: ArrayLike) -> None:
        """Add a batch.

        Args:
            scores: (B, C) float. Scores of the batch (any device); must be finite.
            targets: (B, C) bool/int/float. Positive where > 0.

        Raises:
            ValueError: wrong shapes, or NaN/inf scores.
        """
        fn = "MultiLabelMetrics.update"
        scores, t = _check_pair(fn, scores, targets)
        if scores.shape[1] != self.num_classes:
            raise ValueError(
                f"{fn}: expected `scores` of shape (B, C) = (*, {self.num_classes}), got {tuple(scores.shape)}."
            )
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):  # one sync; update syncs for the counts anyway
            i, c = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"{fn}: expected finite `scores`, got {int(bad.sum())} NaN/inf entries (first "
                f"at image {i}, label {c}: {float(scores[i, c])}); a NaN score cannot be ranked "
                "and would make mAP meaningless. Check the model's outputs (loss or "
                "temperature blow-up) before evaluating."
            )
        for k in self.ks:
            self._counts[k] += _counts(scores, t, k).cpu()
        if self.keep_scores:
            s = scores.detach()
            s = s if s.dtype == torch.float64 else s.float()
            self._scores.append(s.cpu())
            self._targets.append(t.cpu())
        self.n_images += int(scores.shape[0])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to merge this state into another one (CPU tensors)."""
        return {
            "num_classes": self.num_classes,
            "ks": self.ks,
            "keep_scores": self.keep_scores,
            "scores": list(self._scores),
            "targets": list(self._targets),
            "counts": {k: v.clone() for k, v in self._counts.items()},
            "n_images": self.n_images,
        }

    def merge(self, *others: MultiLabelMetrics | dict[str, Any]) -> MultiLabelMetrics:
        """Add the batches of other accumulators (or their :meth:`state_dict`) to this one.

        Returns:
            self.
        """
        for o in others:
            st = o.state_dict() if isinstance(o, MultiLabelMetrics) else o
            if st["num_classes"] != self.num_classes or tuple(st["ks"]) != self.ks:
                raise ValueError(
                    "MultiLabelMetrics.merge: expected states with num_classes="
                    f"{self.num_classes} and ks={self.ks}, got num_classes={st['num_classes']} and ks={tuple(st['ks'])}."
                )
            for k in self.ks:
                self._counts[k] += st["counts"][k]
            if self.keep_scores:
                if not st["keep_scores"]:
                    raise ValueError(
                        "MultiLabelMetrics.merge: cannot merge a state without scores into one that keeps them."
                    )
                self._scores.extend(st["scores"])
                self._targets.extend(st["targets"])
            self.n_images += int(st["n_images"])
        return self

    def sync(self, group: Any | None = None) -> MultiLabelMetrics:
        """Join the states of all ranks of a ``torch.distributed`` process group, in rank order.

        Does nothing when torch.distributed is not initialised. Every rank ends with the same
        state, so every rank can call :meth:`compute`. Uses ``all_gather_object`` (CPU
        tensors; works with gloo and nccl).

        Returns:
            self.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size(group)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, self.state_dict(), group=group)
        self.reset()
        return self.merge(*gathered)

    def _ap(self) -> Tensor:
        if not self._scores:
            return torch.full((self.num_classes,), math.nan, dtype=torch.float64)
        blocks = []
        for i in range(0, self.num_classes, _AP_BLOCK):
            # Only C_block columns of all the chunks are joined at a time.
            s = torch.cat([c[:, i : i + _AP_BLOCK] for c in self._scores])  # (N, C_block)
            t = torch.cat([c[:, i : i + _AP_BLOCK] for c in self._targets])
            blocks.append(_ap_columns(s, t))
        return torch.cat(blocks)

    def compute(self) -> SplitResult:
        """Metrics over everything added since the last :meth:`reset`.

        Returns:
            ``SplitResult(mAP, ap, n_excluded, at_k, n_images)``.
        """
        if self.keep_scores:
            mres = _map_of(self._ap())
        else:
            mres = APResult(
                math.nan,
                torch.full((self.num_classes,), math.nan, dtype=torch.float64),
                self.num_classes,
            )
        at_k = {k: _prf1_from_counts(self._counts[k]) for k in self.ks}
        return SplitResult(mres.mAP, mres.ap, mres.n_excluded, at_k, self.n_images)


def _split(fn: str, scores: Any, targets: Any, ks: Iterable[int]) -> SplitResult:
    scores, t = _check_pair(fn, scores, targets)
    m = MultiLabelMetrics(scores.shape[1], ks=tuple(ks))
    m.update(scores, t)
    return m.compute()


def evaluate(
    zsl_scores: ArrayLike,
    zsl_targets: ArrayLike,
    gzsl_scores: ArrayLike,
    gzsl_targets: ArrayLike,
    *,
    ks: Sequence[int] = (3, 5),
    score: str = "scores",
) -> EvalResult:
    """ZSL and GZSL mAP and top-K P/R/F1 in one call (paper §4.1 protocol).

    Args:
        zsl_scores: (N_u, C_u) float. Scores of the unseen test images over the unseen
            labels only, columns in ``sorted(unseen)`` order.
        zsl_targets: (N_u, C_u) bool/int/float. Their unseen ground truth.
        gzsl_scores: (N, C_s + C_u) float. Scores of the GZSL test images over
            ``sorted(seen) + sorted(unseen)``.
        gzsl_targets: (N, C_s + C_u) bool/int/float. Their ground truth, same column order.
        ks: the K of the top-K metrics (default 3 and 5).
        score: name of the model output that produced the scores, recorded in the result
            (``"scores"``: fused softmax scores, the reference's choice; ``"logits_global"``…).

    Returns:
        ``EvalResult(zsl, gzsl, score)``; ``result.zsl.mAP``, ``result.gzsl.at_k[3].OF1``, …
    """
    check_choice("evaluate", "score", score, ("scores", "logits_global", "logits_local"))
    return EvalResult(
        _split("evaluate", zsl_scores, zsl_targets, ks),
        _split("evaluate", gzsl_scores, gzsl_targets, ks),
        score,
    )
