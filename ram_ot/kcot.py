"""Knowledge-Constrained Optimal Transport (KCOT): match regions to labels, RAM Sec. 3.3.

Given region–label cosine similarities ``sim`` (B, N, C), KCOT transports the mass of the N
regions of each image onto its C labels and reads a *matched* similarity per label off the
plan (Tan et al., "Recover and Match", CVPR 2025, arXiv 2503.15337, Sec. 3.3):

- cost ``M = 1 − softmax_C(s · sim)`` with ``s`` = `logit_scale` (100, CLIP's scale);
- region mass ``a = softmax_N(max_C sim / τ_a)`` ("label presence detection": regions that
  look like *some* label carry more mass; τ_a = 0.1), computed without gradient;
- label mass ``b = 1/C`` (uniform);
- knowledge constraint (training): a frozen teacher's region–label distribution ``P``
  (:func:`teacher_prior`) with the entries of non-ground-truth labels set to the minimum of
  ``P``; the cost becomes ``M + λ·(−log P)`` and the entropic weight ``ε + λ``;
- plan ``T = Sinkhorn(a, b, M, ε)``, and ``matched = Σ_N T ⊙ sim`` (B, C).

This module knows nothing about images or CLIP: it takes similarities from any backbone.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ram_ot._checks import (
    ConvergenceWarning,
    check_choice,
    check_floating,
    check_positive,
    check_shape,
    check_tensor,
    is_compiling,
)
from ram_ot.losses import _check_targets
from ram_ot.ot import sinkhorn

__all__ = ["KCOTOutput", "KnowledgeConstrainedOT", "teacher_prior"]

GRAD_MODES = ("detach", "unroll", "implicit")


class KCOTOutput(NamedTuple):
    """Result of :class:`KnowledgeConstrainedOT`.

    Attributes:
        matched: (B, C) float32 (float64 for float64 `sim`). ``Σ_N plan ⊙ sim``; carries the
            gradient of `sim` (and, with ``grad != "detach"``, of the plan).
        plan: (B, N, C) float32 (float64). The transport plan; rows sum to the region mass,
            columns to 1/C.
        cost: (B, N, C) float32 (float64). The cost the plan was solved for (including the
            knowledge constraint when it applied).
    """

    matched: Tensor
    plan: Tensor
    cost: Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; float16/bfloat16/float32 compute in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on `device` (a no-op where autocast does not exist)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()


def _check_nonempty(fn: str, name: str, x: Tensor, letters: str) -> None:
    """Raise ValueError if a dimension of `x` is empty."""
    for letter, size in zip(letters, x.shape, strict=False):
        if size == 0:
            raise ValueError(
                f"{fn}: expected `{name}` of shape ({', '.join(letters)}) with {letter} >= 1, "
                f"got {tuple(x.shape)}."
            )


def _check_nonnegative_number(fn: str, name: str, value: object) -> float:
    """Raise unless `value` is a finite real number >= 0; return it as a float."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: expected `{name}` to be a number >= 0, got {value!r}.") from None
    if not (0 <= v < float("inf")):
        raise ValueError(f"{fn}: expected `{name}` >= 0 and finite, got {value!r}.")
    return v


def teacher_prior(
    teacher_regions: Tensor,
    label_embeddings: Tensor,
    logit_scale: float = 100.0,
    sharpness: float = 20.0,
) -> Tensor:
    r"""Per-region label distribution of a frozen teacher, RAM Sec. 3.3 (knowledge constraint).

    .. math::
        P_{:, :, c} = \mathrm{softmax}_N\big(\kappa \cdot
            \mathrm{softmax}_C(s \cdot \cos(r_n, t_c))\big)

    with ``s`` = `logit_scale` and ``κ`` = `sharpness`: for every label, a distribution over
    the regions that the teacher thinks show it. Computed in float32 (float64 for float64
    input) with autocast disabled, so that its smallest entries (≈ e^{-κ}/N) do not
    underflow as they would in float16. The function is differentiable; wrap it in
    ``torch.no_grad()`` for a frozen teacher (:class:`~ram_ot.heads.KCOTHead` does).

    Args:
        teacher_regions: (B, N, D) floating. The teacher's region embeddings (need not be
            normalised).
        label_embeddings: (C, D) floating. Label (text) embeddings (need not be normalised).
        logit_scale: the teacher's CLIP logit scale ``s``.
        sharpness: ``κ``, the sharpening of the label probabilities before the softmax over
            regions (20 in the reference).

    Returns:
        Tensor: (B, N, C) float32 (float64). Each ``[b, :, c]`` sums to 1 over N.
    """
    fn = "teacher_prior"
    check_floating(fn, "teacher_regions", check_tensor(fn, "teacher_regions", teacher_regions))
    check_floating(fn, "label_embeddings", check_tensor(fn, "label_embeddings", label_embeddings))
    check_shape(fn, "teacher_regions", teacher_regions, [("B", None), ("N", None), ("D", None)])
    D = teacher_regions.shape[-1]
    check_shape(fn, "label_embeddings", label_embeddings, [("C", None), ("D", D)])
    _check_nonempty(fn, "teacher_regions", teacher_regions, "BND")
    _check_nonempty(fn, "label_embeddings", label_embeddings, "CD")
    s = check_positive(fn, "logit_scale", logit_scale)
    k = check_positive(fn, "sharpness", sharpness)
    dtype = _compute_dtype(teacher_regions)
    with _autocast_off(teacher_regions.device):
        r = F.normalize(teacher_regions.to(dtype), dim=-1)
        t = F.normalize(label_embeddings.to(device=r.device, dtype=dtype), dim=-1)
        logits = s * (r @ t.T)  # (B, N, D) @ (D, C) -> (B, N, C)
        return (k * logits.softmax(dim=-1)).softmax(dim=1)


class KnowledgeConstrainedOT(nn.Module):
    r"""Region-to-label matching by (knowledge-constrained) entropic optimal transport.

    Solves, per image,

    .. math::
        T = \arg\min_{T \in \Pi(a, b)} \langle T, M' \rangle - \varepsilon' H(T)

    with ``M' = M + λ(−log P̃)``, ``ε' = ε + λ`` when the knowledge constraint applies and
    ``M' = M``, ``ε' = ε`` otherwise (see the module docstring for ``M``, ``a``, ``b``, ``P̃``),
    by :func:`ram_ot.ot.sinkhorn`, and returns ``matched = Σ_N T ⊙ sim``.

    **When the constraint applies.** Exactly when both `prior` and `targets` are passed to
    :meth:`forward`, whatever ``self.training`` is (the module has no train/eval behaviour of
    its own; :class:`~ram_ot.heads.KCOTHead` decides when to build a prior).
    Entries of `prior` where ``targets == 0`` (exactly zero: soft positives and partial-label
    ``-1`` entries keep their prior) are replaced by the minimum of the **whole** `prior`
    tensor (all images of the batch, as the reference does), then clamped to at least the
    smallest normal float before the log, so a zero prior gives a large finite cost, not inf.

    **Numerics.** The cost, the masses and the solve run in float32 (float64 for float64
    `sim`) with autocast disabled, whatever the input dtype; outputs are in that dtype.
    Sinkhorn runs log-stabilised and never raises on small ``ε``; where the reference
    checks the plan for NaN and raises (its fp16 scaling-domain iterations under- and
    overflow), this module has nothing to check. Stopping uses the solver's relative
    marginal-error criterion with `tol` (the reference stops when the mean change of the row
    scaling is below 1e-3); the default ``tol=1e-5`` gives plans at least as close to the
    exact plan as the reference's rule on RAM's problems (``docs/ot.md``). When some plan stops at `max_iter` first, it is used
    as it is (as the reference does) and a :class:`~ram_ot._checks.ConvergenceWarning` is
    issued — once per module instance, not at every training step.

    Args:
        reg: entropic weight ``ε``.
        reg_prior: weight ``λ`` of the knowledge constraint (added to the cost and to ``ε``).
        logit_scale: ``s`` in the cost ``1 − softmax_C(s · sim)``.
        region_temperature: ``τ_a`` of the region mass ``softmax_N(max_C sim / τ_a)``.
        max_iter: Sinkhorn iteration cap.
        tol: Sinkhorn stopping tolerance on the L1 marginal error relative to the total
            mass (0: always run `max_iter` iterations).
        backend: Sinkhorn backend ("auto", "torch", "triton", ...; see
            :func:`ram_ot.ot.sinkhorn`).
        grad: "detach" (no gradient through the plan, as the reference), "unroll" or
            "implicit" (gradient of the plan with respect to the cost, hence to `sim`).
    """

    def __init__(
        self,
        *,
        reg: float = 0.1,
        reg_prior: float = 0.05,
        logit_scale: float = 100.0,
        region_temperature: float = 0.1,
        max_iter: int = 100,
        tol: float = 1e-5,
        backend: str = "auto",
        grad: str = "detach",
    ) -> None:
        super().__init__()
        fn = "KnowledgeConstrainedOT"
        self.reg = check_positive(fn, "reg", reg)
        self.reg_prior = _check_nonnegative_number(fn, "reg_prior", reg_prior)
        self.logit_scale = check_positive(fn, "logit_scale", logit_scale)
        self.region_temperature = check_positive(fn, "region_temperature", region_temperature)
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"{fn}: expected `max_iter` to be an int >= 1, got {max_iter!r}.")
        self.max_iter = max_iter
        self.tol = _check_nonnegative_number(fn, "tol", tol)
        if not isinstance(backend, str):
            raise TypeError(f"{fn}: expected `backend` to be a str, got {type(backend).__name__}.")
        self.backend = backend
        check_choice(fn, "grad", grad, GRAD_MODES)
        self.grad = grad
        self._warned = False  # a ConvergenceWarning was issued by this module

    def extra_repr(self) -> str:
        return (
            f"reg={self.reg}, reg_prior={self.reg_prior}, logit_scale={self.logit_scale}, "
            f"region_temperature={self.region_temperature}, max_iter={self.max_iter}, "
            f"tol={self.tol}, backend={self.backend!r}, grad={self.grad!r}"
        )

    def forward(
        self,
        sim: Tensor,
        prior: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> KCOTOutput:
        """Match regions to labels.

        Args:
            sim: (B, N, C) floating. Region–label similarities (cosines in the reference).
            prior: (B, N, C) floating, optional. Teacher distribution over regions per label
                (:func:`teacher_prior`), positive entries.
            targets: (B, C) bool, integer or floating, optional. Ground truth; entries equal
                to 0 mark the non-ground-truth labels.

        Returns:
            KCOTOutput: ``(matched (B, C), plan (B, N, C), cost (B, N, C))``, float32
            (float64 for float64 `sim`).
        """
        fn = "KnowledgeConstrainedOT"
        check_tensor(fn, "sim", sim)
        check_floating(fn, "sim", sim)
        check_shape(fn, "sim", sim, [("B", None), ("N", None), ("C", None)])
        _check_nonempty(fn, "sim", sim, "BNC")
        B, N, C = sim.shape
        if prior is not None:
            check_tensor(fn, "prior", prior)
            check_floating(fn, "prior", prior)
            check_shape(fn, "prior", prior, [("B", B), ("N", N), ("C", C)])
        if targets is not None:
            _check_targets(fn, targets, (B, C))
        constrained = prior is not None and targets is not None

        dtype = _compute_dtype(sim)
        with _autocast_off(sim.device):
            s = sim.to(dtype)
            cost = 1.0 - (self.logit_scale * s).softmax(dim=-1)
            with torch.no_grad():
                # label presence detection: (B, N, C) -> (B, N)
                a = (s.amax(dim=-1) / self.region_temperature).softmax(dim=-1)
            b = s.new_full((B, C), 1.0 / C)
            reg = self.reg
            if constrained:
                p = prior.to(device=s.device, dtype=dtype)
                non_gt = (targets.to(s.device) == 0).unsqueeze(1)  # (B, C) -> (B, 1, C)
                p = torch.where(non_gt, p.min(), p).clamp_min(torch.finfo(dtype).tiny)
                cost = cost + self.reg_prior * -torch.log(p)
                reg = self.reg + self.reg_prior
            # Under torch.compile / torch.export the solver runs exactly `max_iter`
            # iterations and checks no values (see ram_ot.ot.sinkhorn), so there is
            # nothing to silence here and nothing to report below.
            compiling = is_compiling()
            with contextlib.nullcontext() if compiling else warnings.catch_warnings():
                if not compiling:
                    # reported below, once per module, instead of once per training step
                    warnings.simplefilter("ignore", ConvergenceWarning)
                res = sinkhorn(
                    cost,
                    a,
                    b,
                    reg=reg,
                    max_iter=self.max_iter,
                    tol=self.tol,
                    backend=self.backend,
                    grad=self.grad,
                )
            plan = res.plan
            matched = (plan * s).sum(dim=1)  # (B, N, C) -> (B, C)
        if compiling:
            return KCOTOutput(matched, plan, cost)
        if self.tol > 0 and not self._warned and not bool(res.converged.all()):
            self._warned = True
            warnings.warn(
                f"{fn}: Sinkhorn reached max_iter={self.max_iter} before tol={self.tol:g} on "
                f"{int((~res.converged).sum())} of {B} images (largest marginal error "
                f"{float(res.error.max()):.3g}); their plans are used as they are, as in the "
                "reference. Raise max_iter or reg, or loosen tol. Reported once per module.",
                ConvergenceWarning,
                stacklevel=4,  # forward <- Module._call_impl <- Module.__call__ <- caller
            )
        return KCOTOutput(matched, plan, cost)
