"""Reference points and ablations for RAM's results (paper §4.3, Tables 4-5).

- :func:`chance_level`: what uniformly random scores get on a test set (mean ± std);
- :class:`GlobalOnly`: a RAM whose loss and scores use the global branch only — with
  ``n_ctx=0`` and no adapters this is zero-shot CLIP, with prompts it is CoOp-like prompt
  tuning;
- :class:`PooledMatching`: a drop-in for :class:`~ram_ot.kcot.KnowledgeConstrainedOT` that
  pools region-label similarities over regions (mean or max) instead of transporting them;
- :func:`build_baseline`: the rows of ``python -m ram_ot.bench proxy`` by name.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ram_ot.kcot import KCOTOutput, KnowledgeConstrainedOT

__all__ = ["BASELINES", "GlobalOnly", "PooledMatching", "build_baseline", "chance_level"]

BASELINES = (
    "zero-shot-clip",
    "training-free-ram",
    "prompt-tuning",
    "ladder-mean",
    "ladder-max",
    "ladder-kcot-no-prior",
    "ram",
)
"""Names accepted by :func:`build_baseline`, in the order of the benchmark's rows."""


def chance_level(
    targets: Tensor, *, ks: Sequence[int] = (3, 5), n_draws: int = 20, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Mean and std of mAP and F1@K for uniformly random scores on `targets`.

    Args:
        targets: (B, C) bool or {0, 1}. The test set's ground truth.
        ks: the K of F1@K.
        n_draws: random score draws.
        seed: seed of the draws.

    Returns:
        ``{"mAP": (mean, std), "F1@3": (mean, std), ...}`` as fractions.
    """
    from ram_ot.metrics import MultiLabelMetrics

    if targets.dim() != 2:
        raise ValueError(
            f"chance_level: expected `targets` of shape (B, C), got {tuple(targets.shape)}."
        )
    if n_draws < 2:
        raise ValueError(f"chance_level: expected `n_draws` >= 2, got {n_draws}.")
    targets = targets.float()
    g = torch.Generator().manual_seed(seed)
    keys = ["mAP"] + [f"F1@{k}" for k in ks]
    vals: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n_draws):
        m = MultiLabelMetrics(targets.shape[1], ks=tuple(ks))
        m.update(torch.rand(targets.shape, generator=g), targets)
        d = m.compute().as_dict()
        for k in keys:
            vals[k].append(float(d[k]))
    return {k: (statistics.mean(v), statistics.stdev(v)) for k, v in vals.items()}


class PooledMatching(nn.Module):
    """Local logits by pooling similarities over regions, in place of KCOT (no transport).

    ``matched[b, c] = mean_n sim[b, n, c]`` (``mode="mean"``) or ``max_n`` (``"max"``). The
    returned ``plan`` is the pooling weight (1/N, or one-hot on the best region) so that code
    reading plans keeps working; `prior` and `targets` are ignored.
    """

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "max"):
            raise ValueError(f"PooledMatching: expected `mode` 'mean' or 'max', got {mode!r}.")
        self.mode = mode

    def forward(
        self, sim: Tensor, prior: Tensor | None = None, targets: Tensor | None = None
    ) -> KCOTOutput:
        """(B, N, C) similarities -> :class:`~ram_ot.kcot.KCOTOutput` with (B, C) ``matched``."""
        if sim.dim() != 3:
            raise ValueError(
                f"PooledMatching: expected `sim` of shape (B, N, C), got {tuple(sim.shape)}."
            )
        N = sim.shape[1]
        if self.mode == "mean":
            weights = torch.full_like(sim, 1.0 / N)
        else:
            weights = torch.zeros_like(sim).scatter_(1, sim.argmax(1, keepdim=True), 1.0)
        return KCOTOutput((weights * sim).sum(1), weights, 1 - sim)  # (B, N, C) -> (B, C)


class GlobalOnly(nn.Module):
    """Wrap a :class:`~ram_ot.model.RAM` so its loss (MMC) and scores use the global branch only.

    Scores are ``softmax_C(logits_global)``; the other outputs are RAM's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def ladder(self) -> nn.Module:
        return self.model.ladder

    def param_groups(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        """The wrapped model's optimiser groups (see :func:`ram_ot.training.build_optimizers`)."""
        return self.model.param_groups(*args, **kwargs)

    def forward(self, images: Tensor, labels: Any, targets: Tensor | None = None):
        from ram_ot.losses import mmc_loss

        out = self.model(images, labels, targets)
        loss = None if targets is None else mmc_loss(out.logits_global, targets)
        return out._replace(scores=out.logits_global.softmax(-1), loss=loss)


def build_baseline(
    name: str, clip_model: nn.Module, tokenizer: Callable[..., Tensor], **kwargs: Any
) -> nn.Module:
    """One of :data:`BASELINES` over a frozen CLIP (extra `kwargs` go to :class:`~ram_ot.model.RAM`).

    - ``zero-shot-clip``: global CLIP embedding vs ``"a photo of a {}."``, no training;
    - ``training-free-ram``: value-value regions + KCOT with no adapter, token or prompt;
    - ``prompt-tuning``: deep text prompts trained on the global branch only;
    - ``ladder-mean`` / ``ladder-max``: the full ladder, regions pooled instead of matched;
    - ``ladder-kcot-no-prior``: the full ladder + KCOT without the knowledge constraint;
    - ``ram``: the full model.
    """
    from ram_ot.model import RAM

    if name not in BASELINES:
        raise ValueError(f"build_baseline: expected `name` in {BASELINES}, got {name!r}.")
    free = {**kwargs, "adapter_layers": (), "n_visual_tokens": 0}
    if name == "zero-shot-clip":
        return GlobalOnly(RAM(clip_model, tokenizer, **{**free, "n_ctx": 0}))
    if name == "training-free-ram":
        return RAM(clip_model, tokenizer, **{**free, "n_ctx": 0})
    if name == "prompt-tuning":
        return GlobalOnly(RAM(clip_model, tokenizer, **free))
    if name in ("ladder-mean", "ladder-max"):
        pool = PooledMatching(name.split("-")[1])
        return RAM(clip_model, tokenizer, kcot=pool, use_teacher=False, **kwargs)
    if name == "ladder-kcot-no-prior":
        scale = float(clip_model.logit_scale.exp())
        kcot = KnowledgeConstrainedOT(logit_scale=scale)
        return RAM(clip_model, tokenizer, kcot=kcot, use_teacher=False, **kwargs)
    return RAM(clip_model, tokenizer, **kwargs)
