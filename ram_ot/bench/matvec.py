"""Benchmark: ``python -m ram_ot.bench matvec [--repeat R] [--shapes B,N,M ...]``.

Times, on the CPU, the ways torch (and numpy) can do the two batched matrix-vector products
of one scaling-domain Sinkhorn iteration, ``Kv`` (N per problem) and ``Kᵀu`` (M per
problem), for a batch of B kernels of N × M in float32:

* ``bmm rows, copy`` — ``bmm(uᵀ, K)`` and ``bmm(vᵀ, Kᵀ)`` on a transposed copy (what
  :func:`ram_ot.ot.sinkhorn` does for N·M <= 2^16);
* ``bmm rows, view`` — the same with ``Kᵀ`` a transposed view (what it does above 2^16);
* ``bmm columns`` — ``bmm(K, v)`` and ``bmm(Kᵀ, u)`` on a fresh transposed copy, as the
  reference implementation does;
* ``mul + sum`` — broadcast products reduced over the other side (a temporary of B·N·M);
* ``embedding_bag`` — FBGEMM's weighted row sums (``per_sample_weights``) over K and its
  copy: each product as a sum of weighted rows;
* ``numpy matmul`` — numpy's stacked ``matmul`` (its own BLAS, one thread) on K and the copy;

and, as the floor of any method that reads K and its copy once each per iteration from
where they lie, the time of ``K.sum()`` plus ``Kᵀ.sum()`` (``two reads``). It prints the
best time per iteration (both products) of `R` rounds of 200 calls, and its ratio to that
floor. It shows which form a machine favours, and how far the two-product iteration is from
its memory floor.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ram_ot.bench.sinkhorn import LABELS, kcot_problem, parse_shapes


def _best_per_call(fn: Callable[[], object], repeat: int, calls: int) -> float:
    for _ in range(10):
        fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def _inputs(B: int, N: int, M: int) -> tuple[Tensor, Tensor, Tensor]:
    """A KCOT-like kernel ``K`` (B, N, M) and positive row vectors ``u`` (B, 1, N), ``v`` (B, 1, M)."""
    cost, _, _ = kcot_problem(B, N, M)
    gen = torch.Generator().manual_seed(1)
    u = 0.5 + torch.rand(B, 1, N, generator=gen)
    v = 0.5 + torch.rand(B, 1, M, generator=gen)
    return torch.exp(-cost / 0.1), u, v


def _forms(K: Tensor, u: Tensor, v: Tensor) -> dict[str, Callable[[], object]]:
    """The candidate forms; each but ``two reads`` returns ``(Kᵀu, Kv)`` in some layout."""
    B, N, M = K.shape
    KT = K.transpose(1, 2).contiguous()
    Ktu, Kv = torch.empty(B, 1, M), torch.empty(B, 1, N)
    flat, flat_t = K.view(B * N, M), KT.view(B * M, N)
    idx_n, off_n = torch.arange(B * N), torch.arange(0, B * N, N)
    idx_m, off_m = torch.arange(B * M), torch.arange(0, B * M, M)
    Kn, KTn, un, vn = K.numpy(), KT.numpy(), u.numpy(), v.numpy()
    Ktun, Kvn = Ktu.numpy(), Kv.numpy()

    def columns() -> tuple[Tensor, Tensor]:
        return torch.matmul(K.transpose(1, 2).contiguous(), u.mT), torch.matmul(K, v.mT)

    return {
        "bmm rows, copy": lambda: (
            torch.bmm(u, K, out=Ktu),
            torch.bmm(v, KT, out=Kv),
        ),
        "bmm rows, view": lambda: (
            torch.bmm(u, K, out=Ktu),
            torch.bmm(v, K.transpose(1, 2), out=Kv),
        ),
        "bmm columns": columns,
        "mul + sum": lambda: ((K * u.mT).sum(1), (K * v).sum(2)),
        "embedding_bag": lambda: (
            F.embedding_bag(idx_n, flat, off_n, mode="sum", per_sample_weights=u.view(-1)),
            F.embedding_bag(idx_m, flat_t, off_m, mode="sum", per_sample_weights=v.view(-1)),
        ),
        "numpy matmul": lambda: (
            np.matmul(un, Kn, out=Ktun),
            np.matmul(vn, KTn, out=Kvn),
        ),
        "two reads": lambda: (K.sum(), KT.sum()),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ram_ot.bench matvec", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repeat", type=int, default=5, help="rounds per form (best is kept)")
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument(
        "--shapes", nargs="*", default=None, help="B,N,M triples (default: the three KCOT shapes)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.calls < 1:
        parser.error(f"expected --repeat and --calls >= 1, got {args.repeat} and {args.calls}")
    shapes = parse_shapes(parser, args.shapes)

    print(
        f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.machine()}; float32; µs per iteration (Kv and Kᵀu), best of {args.repeat} "
        f"rounds of {args.calls} calls; ratio to 'two reads' (K.sum() + Kᵀ.sum())"
    )
    for B, N, M in shapes:
        forms = _forms(*_inputs(B, N, M))
        times = {name: _best_per_call(fn, args.repeat, args.calls) for name, fn in forms.items()}
        floor = times["two reads"]
        label = LABELS.get((B, N, M), "")
        print(f"\n({B}, {N}, {M}) {label}".rstrip())
        print("| form | µs / iteration | / two reads |")
        print("|---|---|---|")
        for name, t in times.items():
            print(f"| {name} | {t * 1e6:.1f} | {t / floor:.2f} |")
    return 0
