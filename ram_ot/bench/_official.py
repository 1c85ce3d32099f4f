"""The reference implementation's Sinkhorn arithmetic, re-expressed for baselines and tests.

The official RAM code (github.com/EricTan7/RAM, ``model/ot_solver.py``) solves the KCOT
problem in the *scaling domain*: it forms ``K = exp(-M/reg)`` once, then alternates
``r = a / (K c)`` and ``c = b / (Kᵀ r)``, where every iteration makes a fresh contiguous copy
of ``Kᵀ`` and tests ``mean_i |r_i − r'_i| < thresh`` on the host (a device sync per
iteration); the plan is ``r cᵀ ⊙ K``. Under the training autocast the cost and ``K`` are
float32 (softmax and exp are on CUDA autocast's float32 list) but both products of every
iteration run in float16 (matmul is on its float16 list); passing float16 tensors here
rounds the same products (and, more strictly, ``K`` and ``r`` themselves).

This module is written from that description, for two uses only: the speed baseline of
``python -m ram_ot.bench sinkhorn`` and the test that shows its NaN at small ``reg``. It is not
part of the public API.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["official_sinkhorn"]


def official_sinkhorn(
    a: Tensor, b: Tensor, cost: Tensor, reg: float, max_iter: int = 100, thresh: float = 1e-3
) -> Tensor:
    """Scaling-domain Sinkhorn with the reference's order of operations.

    Args:
        a: (B, N) floating. Row masses.
        b: (B, M) floating. Column masses.
        cost: (B, N, M) floating. Costs; the arithmetic runs in this dtype (float16 under
            the reference's autocast).
        reg: entropic regularisation.
        max_iter: maximum number of iterations.
        thresh: stop when ``mean_i |r_i − r'_i| < thresh`` for every problem (the reference
            fixes 1e-3; 0 forces `max_iter` iterations with the same per-iteration work).

    Returns:
        (B, N, M) dtype of `cost`. The plan ``r cᵀ ⊙ K`` (NaN where the scalings blew up).
    """
    kernel = torch.exp(-cost / reg)  # (B, N, M)
    r = torch.ones_like(a)
    c = torch.ones_like(b)
    for _ in range(max_iter):
        r_prev = r
        r = a / torch.matmul(kernel, c[:, :, None])[:, :, 0]  # (B, N, M) @ (B, M, 1) -> (B, N)
        kernel_t = kernel.transpose(1, 2).contiguous()  # a fresh transposed copy every iteration
        c = b / torch.matmul(kernel_t, r[:, :, None])[:, :, 0]  # (B, M, N) @ (B, N, 1) -> (B, M)
        change = (r - r_prev).abs().mean(dim=1)
        if bool((change < thresh).all()):  # host sync every iteration
            break
    return torch.matmul(r[:, :, None], c[:, None, :]) * kernel
