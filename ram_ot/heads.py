"""KCOTHead: RAM's recognition head, a bolt-on for any backbone, RAM Sec. 3.3–3.4.

The head turns a global image embedding, region embeddings and label embeddings — from any
backbone: open_clip, timm, a CNN feature map flattened to regions — into per-label scores
(Tan et al., "Recover and Match", CVPR 2025, arXiv 2503.15337):

- global branch: ``ℓ_glb = cos(global, labels) / τ_g``;
- local branch: ``sim = cos(regions, labels)``, KCOT matching
  (:class:`~ram_ot.kcot.KnowledgeConstrainedOT`) gives ``matched = Σ_N T ⊙ sim`` and
  ``ℓ_loc = matched / τ_loc``;
- ``scores = (softmax_C ℓ_glb + softmax_C ℓ_loc) / 2``;
- ``loss = L(ℓ_glb, y) + L(ℓ_loc, y)`` with the MMC loss by default (Sec. 3.4).

τ_g and τ_loc are plain learnable parameters, as in the reference. Nothing depends on the
label set: C may change from call to call (open vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ram_ot._checks import (
    check_finite,
    check_floating,
    check_positive,
    check_shape,
    check_tensor,
)
from ram_ot.kcot import (
    KnowledgeConstrainedOT,
    _autocast_off,
    _check_nonempty,
    _compute_dtype,
    teacher_prior,
)
from ram_ot.losses import _check_targets, _resolve_loss

__all__ = ["HeadOutput", "KCOTHead"]


class HeadOutput(NamedTuple):
    """Result of :class:`KCOTHead` (float32 throughout; float64 for float64 `image_regions`).

    Attributes:
        scores: (B, C) float32. Mean of the two branches'
            softmax over labels; each row sums to 1.
        logits_global: (B, C) float32. ``cos(global, labels) / τ_g``.
        logits_local: (B, C) float32. ``Σ_N plan ⊙ sim / τ_loc``.
        plan: (B, N, C) float32. The KCOT transport plan.
        loss: () float32 when `targets` were given, else None.
    """

    scores: Tensor
    logits_global: Tensor
    logits_local: Tensor
    plan: Tensor
    loss: Tensor | None


class KCOTHead(nn.Module):
    r"""Global + KCOT-matched local branches, fused scores and the training loss.

    **Knowledge constraint.** A `prior` passed to :meth:`forward` is handed to the KCOT
    module, which applies the constraint exactly when `targets` are given too (in training
    and in eval mode alike: a caller who passes both asks for it). When no `prior` is passed
    but `teacher_regions` are, the head builds ``prior = teacher_prior(teacher_regions,
    label_embeddings)`` under ``torch.no_grad()`` — only in training mode and only with
    `targets`, as the reference uses its teacher only when training; otherwise
    `teacher_regions` are ignored, so one call serves the training and the evaluation loop.

    **Numerics.** The head normalises and multiplies in float32 (float64 when
    `image_regions` is float64) with autocast disabled, whatever the input dtype: the
    logits divide cosines by small temperatures (2e-3), which half precision would round
    coarsely. Its outputs are float32 (float64 for float64 `image_regions`). The cost of
    this is negligible next to the backbone.

    Args:
        kcot: the matching module; default ``KnowledgeConstrainedOT()`` with the paper's
            settings.
        temperature_local: initial τ_loc (the reference's ``temperature_loc``).
        temperature_global: initial τ_g (the reference's ``temperature``, ``1/logit_scale``).
        loss: "mmc" (default), "asl", "bce" or a callable ``(logits (B, C), targets (B, C))
            -> scalar``, applied to both branches.
        device: device of the temperature parameters.
        dtype: dtype of the temperature parameters (default float32).
        validate: also check that the embeddings passed to :meth:`forward` hold no NaN/inf
            (one device sync per call), with an error naming the argument. Without it a
            NaN in `image_global` gives NaN scores, and a NaN in `image_regions` or
            `label_embeddings` raises an error that names those two.
    """

    def __init__(
        self,
        kcot: KnowledgeConstrainedOT | None = None,
        *,
        temperature_local: float = 2e-3,
        temperature_global: float = 0.01,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "mmc",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        validate: bool = False,
    ) -> None:
        super().__init__()
        fn = "KCOTHead"
        self.validate = bool(validate)
        if kcot is None:
            kcot = KnowledgeConstrainedOT()
        elif not isinstance(kcot, nn.Module):
            raise TypeError(
                f"{fn}: expected `kcot` to be a KnowledgeConstrainedOT (or nn.Module), got {type(kcot).__name__}."
            )
        self.kcot = kcot
        factory = {"device": device, "dtype": dtype or torch.float32}
        tl = check_positive(fn, "temperature_local", temperature_local)
        tg = check_positive(fn, "temperature_global", temperature_global)
        self.temperature_local = nn.Parameter(torch.tensor(tl, **factory))
        self.temperature_global = nn.Parameter(torch.tensor(tg, **factory))
        self.criterion = _resolve_loss(fn, loss)

    def forward(
        self,
        image_global: Tensor,
        image_regions: Tensor,
        label_embeddings: Tensor,
        targets: Tensor | None = None,
        teacher_regions: Tensor | None = None,
        prior: Tensor | None = None,
    ) -> HeadOutput:
        """Score every label for every image.

        Args:
            image_global: (B, D) floating. Global image embeddings (e.g. CLS after the
                projection); need not be normalised.
            image_regions: (B, N, D) floating. Region embeddings (patch tokens projected to
                the label space, or a flattened feature map).
            label_embeddings: (C, D) floating. Label (text) embeddings; any C per call.
            targets: (B, C) bool, integer or floating, optional. Multi-hot ground truth;
                enables the loss and (with a prior) the knowledge constraint.
            teacher_regions: (B, N, D) floating, optional. A frozen teacher's region
                embeddings; used only in training mode with `targets` and no `prior`.
            prior: (B, N, C) floating, optional. A ready teacher distribution
                (:func:`~ram_ot.kcot.teacher_prior`), e.g. computed with the teacher's own
                label embeddings.

        Returns:
            HeadOutput: ``(scores, logits_global, logits_local, plan, loss)``; see
            :class:`HeadOutput`.
        """
        fn = "KCOTHead"
        for name, x in (
            ("image_global", image_global),
            ("image_regions", image_regions),
            ("label_embeddings", label_embeddings),
        ):
            check_tensor(fn, name, x)
            check_floating(fn, name, x)
        check_shape(fn, "image_regions", image_regions, [("B", None), ("N", None), ("D", None)])
        check_shape(fn, "image_global", image_global, [("B", None), ("D", None)])
        check_shape(fn, "label_embeddings", label_embeddings, [("C", None), ("D", None)])
        # the width D that two of the three inputs agree on, so the odd one out is blamed
        d_g, d_r, d_t = image_global.shape[1], image_regions.shape[2], label_embeddings.shape[1]
        D = d_g if d_g in (d_r, d_t) else d_r
        B, N = image_regions.shape[:2]
        check_shape(fn, "image_regions", image_regions, [("B", B), ("N", N), ("D", D)])
        check_shape(fn, "image_global", image_global, [("B", B), ("D", D)])
        check_shape(fn, "label_embeddings", label_embeddings, [("C", None), ("D", D)])
        _check_nonempty(fn, "image_regions", image_regions, "BND")
        _check_nonempty(fn, "label_embeddings", label_embeddings, "CD")
        C = label_embeddings.shape[0]
        if targets is not None:
            _check_targets(fn, targets, (B, C))
        if prior is not None:
            check_tensor(fn, "prior", prior)
            check_floating(fn, "prior", prior)
            check_shape(fn, "prior", prior, [("B", B), ("N", N), ("C", C)])
        if teacher_regions is not None:
            check_tensor(fn, "teacher_regions", teacher_regions)
            check_floating(fn, "teacher_regions", teacher_regions)
            check_shape(fn, "teacher_regions", teacher_regions, [("B", B), ("N", N), ("D", D)])

        if self.validate:
            for name, x in (
                ("image_global", image_global),
                ("image_regions", image_regions),
                ("label_embeddings", label_embeddings),
                ("teacher_regions", teacher_regions),
                ("prior", prior),
            ):
                if x is not None:
                    check_finite(fn, name, x)
        dtype = _compute_dtype(image_regions)
        with _autocast_off(image_regions.device):
            g = F.normalize(image_global.to(dtype), dim=-1)
            r = F.normalize(image_regions.to(dtype), dim=-1)
            t = F.normalize(label_embeddings.to(dtype), dim=-1)
            logits_global = (g @ t.T) / self.temperature_global  # (B, D) @ (D, C) -> (B, C)
            sim = r @ t.T  # (B, N, D) @ (D, C) -> (B, N, C)
            if (
                prior is None
                and teacher_regions is not None
                and targets is not None
                and self.training
            ):
                with torch.no_grad():
                    prior = teacher_prior(teacher_regions, label_embeddings)
            try:
                out = self.kcot(sim, prior, targets)
            except ValueError as exc:
                # the solver's mass check is the first to see a NaN/inf similarity (the
                # region mass is softmax(max sim / τ)); say which inputs the user passed
                if "expected `a` to be finite" not in str(exc):
                    raise
                raise ValueError(
                    f"{fn}: the region-label similarities are not finite: `image_regions` or "
                    "`label_embeddings` hold NaN/inf (construct the head with validate=True "
                    "to find which)."
                ) from exc
            logits_local = out.matched / self.temperature_local
            scores = (logits_global.softmax(dim=-1) + logits_local.softmax(dim=-1)) / 2
            loss = None
            if targets is not None:
                loss = self.criterion(logits_global, targets) + self.criterion(
                    logits_local, targets
                )
        return HeadOutput(scores, logits_global, logits_local, out.plan, loss)
