"""Multi-label classification losses: MMC, asymmetric loss (ASL) and binary cross-entropy.

RAM (Tan et al., CVPR 2025, arXiv 2503.15337) trains both its global and its matched local
logits with the **multi-matching contrastive (MMC)** loss of Sec. 3.4: one softmax over all
``B × C`` image–label logits of the batch, averaged ``−log p`` over the positive pairs. For the
partial-label setting the paper uses the **asymmetric loss** (Ridnik et al., ICCV 2021), and
``bce`` is the plain baseline.

All three take logits (B, C) and targets (B, C) and compute in float32 (float64 if the logits
are float64), also when called under autocast with half-precision logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ram_ot._checks import check_choice, check_floating, check_shape, check_tensor

__all__ = ["mmc_loss", "MMCLoss", "AsymmetricLoss", "bce"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_targets(fn: str, targets: object, shape: tuple[int, ...], letters: str = "BC") -> Tensor:
    """Raise unless `targets` is a real (bool, integer or floating) tensor of `shape`.

    Args:
        fn: name of the public function, first word of the message.
        targets: the candidate tensor.
        shape: the expected shape.
        letters: one dimension letter per entry of `shape`, for the message.

    Returns:
        Tensor: `targets`, unchanged.
    """
    t = check_tensor(fn, "targets", targets)
    if t.is_complex():
        raise TypeError(
            f"{fn}: expected `targets` with a real dtype (bool, integer or floating), got {str(t.dtype).replace('torch.', '')}."
        )
    check_shape(fn, "targets", t, list(zip(letters, shape, strict=False)))
    return t


def _check_logits(fn: str, logits: object) -> Tensor:
    x = check_tensor(fn, "logits", logits)
    check_floating(fn, "logits", x)
    check_shape(fn, "logits", x, [("B", None), ("C", None)])
    return x


def mmc_loss(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Multi-matching contrastive (MMC) loss, RAM Sec. 3.4.

    One softmax over all ``B·C`` logits of the batch; the loss is the mean of ``−log p`` over
    the positive pairs, weighted by the targets (soft targets allowed):

    .. math::
        \log p_{ic} = \ell_{ic} - \log \sum_{j,k} e^{\ell_{jk}}, \qquad
        \mathcal{L} = -\frac{\sum_{i,c} y_{ic} \log p_{ic}}{\max\left(\sum_{i,c} y_{ic}, 1\right)}

    (the denominator is 1 when the targets sum to less than 1e-6, as the reference does). A
    batch without any positive gives a loss of exactly 0 that is still attached to the graph
    (its gradient is zero), never NaN.

    Negative targets (the partial-label convention ``-1``: "unknown") are ignored: such a
    pair is neither a positive nor part of the softmax (as the reference's ``logits_mask``
    masks logits out), so the loss is the one of the batch without those pairs and stays
    >= 0.

    Args:
        logits: (B, C) floating. Image–label logits.
        targets: (B, C) bool, integer or floating. 1 (or a soft weight) where label c is in
            image i, 0 elsewhere, negative (-1) where unknown (ignored).

    Returns:
        Tensor: () float32 (float64 for float64 logits). The loss.
    """
    x = _check_logits("mmc_loss", logits)
    y = _check_targets("mmc_loss", targets, tuple(x.shape))
    dtype = _compute_dtype(x)
    x = x.to(dtype).reshape(-1)  # (B, C) -> (B*C,)
    y = y.to(dtype).reshape(-1)  # (B, C) -> (B*C,)
    known = y >= 0  # -1: unknown (partial labels), left out of the softmax
    keep = known | ~known.any()  # no known pair at all: keep every logit (no positive anyway)
    log_p = x - torch.logsumexp(torch.where(keep, x, torch.full_like(x, -math.inf)), dim=0)
    # `where` rather than a product: 0 · (−inf) would be NaN for a masked-out logit.
    pos = y > 0
    weighted = torch.where(pos, y * log_p, torch.zeros_like(log_p))
    n_pos = torch.where(pos, y, torch.zeros_like(y)).sum()
    n_pos = torch.where(n_pos < 1e-6, torch.ones_like(n_pos), n_pos)
    return -(weighted.sum() / n_pos)


class MMCLoss(nn.Module):
    """Module form of :func:`mmc_loss` (no parameters)."""

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """See :func:`mmc_loss`.

        Args:
            logits: (B, C) floating. Image–label logits.
            targets: (B, C) bool, integer or floating. Multi-hot targets.

        Returns:
            Tensor: () float32. The loss.
        """
        return mmc_loss(logits, targets)


class AsymmetricLoss(nn.Module):
    r"""Asymmetric loss for multi-label classification (Ridnik et al., ICCV 2021).

    With ``p = σ(ℓ)``, the shifted negative probability ``p_m = min(1 − p + m, 1)`` (``m`` =
    `clip`), both clamped to ``[eps, 1 − eps]`` before the log:

    .. math::
        \mathcal{L} = -\sum_{i,c} y\,(1-p)^{\gamma_+}\log p
                      + (1-y)\,(1-p_m)^{\gamma_-}\log p_m

    This is the behaviour of the reference ``AsymmetricLoss`` (sum over the batch by default).

    Args:
        gamma_neg: focusing exponent γ₋ of the negatives.
        gamma_pos: focusing exponent γ₊ of the positives.
        clip: probability margin ``m`` added to the negatives' ``1 − p`` (0 or None: none).
        eps: clamp of the probabilities before the log.
        disable_focal_grad: compute the focusing weights without gradient.
        reduction: "sum" (the reference), "mean" (over the B·C entries) or "none".
    """

    def __init__(
        self,
        *,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float | None = 0.05,
        eps: float = 1e-8,
        disable_focal_grad: bool = False,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        fn = "AsymmetricLoss"
        for name, v in (("gamma_neg", gamma_neg), ("gamma_pos", gamma_pos)):
            if not (float(v) >= 0 and math.isfinite(float(v))):
                raise ValueError(f"{fn}: expected `{name}` >= 0 and finite, got {v!r}.")
        if clip is not None and not (0 <= float(clip) < 1):
            raise ValueError(f"{fn}: expected `clip` in [0, 1) or None, got {clip!r}.")
        if not (0 < float(eps) < 0.5):
            raise ValueError(f"{fn}: expected `eps` in (0, 0.5), got {eps!r}.")
        check_choice(fn, "reduction", reduction, ("sum", "mean", "none"))
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = 0.0 if clip is None else float(clip)
        self.eps = float(eps)
        self.disable_focal_grad = bool(disable_focal_grad)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
            f"eps={self.eps}, reduction={self.reduction!r}"
        )

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: (B, C) floating. Multi-label logits.
            targets: (B, C) bool, integer or floating. Multi-hot (or soft) targets in [0, 1].

        Returns:
            Tensor: () float32 (float64 for float64 logits) for "sum"/"mean"; (B, C) for "none".
        """
        x = _check_logits("AsymmetricLoss", logits)
        y = _check_targets("AsymmetricLoss", targets, tuple(x.shape))
        dtype = _compute_dtype(x)
        x = x.to(dtype)
        y = y.to(dtype)
        lo, hi = math.log(self.eps), math.log1p(-self.eps)
        p_pos = torch.sigmoid(x)
        # log(clamp(p, eps, 1 - eps)) == clamp(log σ(x), log eps, log(1 - eps)), without the
        # rounding of 1 - eps to 1 in float32.
        log_pos = F.logsigmoid(x).clamp(lo, hi)
        if self.clip > 0:
            p_neg = (torch.sigmoid(-x) + self.clip).clamp(max=1.0)
            log_neg = torch.log(p_neg.clamp(self.eps, 1.0 - self.eps))
        else:
            p_neg = torch.sigmoid(-x)
            log_neg = F.logsigmoid(-x).clamp(lo, hi)
        loss = y * log_pos + (1 - y) * log_neg
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.disable_focal_grad):
                pt = p_pos * y + p_neg * (1 - y)
                gamma = self.gamma_pos * y + self.gamma_neg * (1 - y)
                weight = torch.pow(1 - pt, gamma)
            loss = loss * weight
        loss = -loss
        if self.reduction == "sum":
            return loss.sum()
        if self.reduction == "mean":
            return loss.mean()
        return loss


def bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, averaged over all B·C entries.

    Args:
        logits: (B, C) floating. Multi-label logits.
        targets: (B, C) bool, integer or floating. Multi-hot (or soft) targets in [0, 1].

    Returns:
        Tensor: () float32 (float64 for float64 logits). The loss.
    """
    x = _check_logits("bce", logits)
    y = _check_targets("bce", targets, tuple(x.shape))
    dtype = _compute_dtype(x)
    return F.binary_cross_entropy_with_logits(x.to(dtype), y.to(dtype), reduction="mean")


_NAMED: dict[str, Callable[[], LossFn]] = {
    "mmc": lambda: mmc_loss,
    "asl": lambda: AsymmetricLoss(),
    "bce": lambda: bce,
}


def _resolve_loss(fn: str, loss: str | LossFn) -> LossFn:
    """Turn ``"mmc" | "asl" | "bce"`` or a callable ``(logits, targets) -> scalar`` into a callable."""
    if isinstance(loss, str):
        check_choice(fn, "loss", loss, tuple(_NAMED))
        return _NAMED[loss]()
    if not callable(loss):
        raise TypeError(
            f"{fn}: expected `loss` to be one of 'mmc', 'asl', 'bce' or a callable, got {type(loss).__name__}."
        )
    return loss
