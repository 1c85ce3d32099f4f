"""ZSL / GZSL evaluation of a model over test loaders (gathered over ranks when distributed)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ram_ot.metrics import EvalResult, MultiLabelMetrics, SplitResult
from ram_ot.training.amp import autocast
from ram_ot.training.distributed import unwrap
from ram_ot.training.loop import NonFiniteError

__all__ = ["evaluate_split", "evaluate_zsl"]


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    labels: Sequence[str],
    *,
    device: torch.device | str,
    ks: Sequence[int] = (3, 5),
    amp: bool = False,
    score: str = "scores",
    progress: bool = False,
    desc: str = "eval",
) -> SplitResult:
    """Score one test split and compute its metrics (gathered over ranks under torch.distributed).

    Args:
        model: ``model(images, labels)`` returns an object with a `score` attribute (B, C).
        loader: yields (B, 3, H, W) images and (B, C) targets over `labels`; under DDP give
            each rank its own shard (:class:`ShardSampler`).
        labels: the C label names ranked.
        device: where batches go. ks: top-K values. amp: autocast the forward.
        score: which output is ranked (``"scores"``, the reference's fused softmax, by default).
        progress: tqdm bar. desc: its label.

    Returns:
        :class:`ram_ot.metrics.SplitResult` (the same on every rank).

    Raises:
        NonFiniteError: a score is NaN or infinite.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = MultiLabelMetrics(len(labels), ks=tuple(k for k in ks if k <= len(labels)))
    it: Iterable[Any] = loader
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    text = None
    for images, targets in it:
        images = images.to(device, non_blocking=True)
        with autocast(device, enabled=amp):
            if text is None and hasattr(model, "encode_labels"):
                text = model.encode_labels(list(labels))  # the label embeddings, once per split
            out = model(images, text if text is not None else list(labels))
        scores = getattr(out, score).float()
        finite = torch.isfinite(scores)
        if not bool(finite.all()):
            raise NonFiniteError("scores", float(scores[~finite][0]), where=f" in {desc}")
        metrics.update(scores, targets)
    metrics.sync()
    model.train(was_training)
    return metrics.compute()


def evaluate_zsl(
    model: nn.Module,
    zsl_loader: Iterable[tuple[Tensor, Tensor]],
    gzsl_loader: Iterable[tuple[Tensor, Tensor]],
    *,
    unseen: Sequence[str],
    gzsl_labels: Sequence[str],
    device: torch.device | str,
    ks: Sequence[int] = (3, 5),
    amp: bool = False,
    score: str = "scores",
    progress: bool = False,
) -> EvalResult:
    """ZSL (unseen labels on the unseen test set) and GZSL (all labels) metrics in one call.

    Args:
        model: see :func:`evaluate_split` (a DDP wrapper is unwrapped).
        zsl_loader: batches with targets over `unseen`.
        gzsl_loader: batches with targets over `gzsl_labels` = ``sorted(seen) + sorted(unseen)``.
        unseen, gzsl_labels: the label lists.
        device, ks, amp, score, progress: see :func:`evaluate_split`.

    Returns:
        :class:`ram_ot.metrics.EvalResult`.
    """
    m = unwrap(model)
    common = dict(device=device, ks=ks, amp=amp, score=score, progress=progress)
    zsl = evaluate_split(m, zsl_loader, unseen, desc="ZSL", **common)
    gzsl = evaluate_split(m, gzsl_loader, gzsl_labels, desc="GZSL", **common)
    return EvalResult(zsl, gzsl, score)
