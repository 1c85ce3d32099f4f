"""Benchmark: ``python -m ram_ot.bench sinkhorn [--repeat R] [--shapes B,N,M ...] [--reg REG]``.

Times, in one process, on the same float32 KCOT-like inputs (cost ``1 − softmax_C(100·sim)``,
region mass ``softmax_N(max_C sim / 0.1)``, uniform label mass) with 100 iterations forced:

(a) the reference implementation's scaling-domain arithmetic (:mod:`ram_ot.bench._official`),
(b) POT's batched solver ``ot.batch.bregman_projection_batch`` (given ``K = exp(-C/reg)``,
    whose computation is timed too), if POT is installed,
(c) :func:`ram_ot.ot.sinkhorn` with ``tol=0``,

and prints the times (best of R rounds that call the three in turn), the ratios, and the memory-bandwidth lower bound: the bytes
of the cost (or kernel) matrix a Sinkhorn iteration must read (two passes of B·N·M·4 bytes)
divided by the bandwidth measured here with a large ``torch.sum``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from ram_ot.bench._official import official_sinkhorn
from ram_ot.ot import sinkhorn

SHAPES = ((32, 196, 80), (32, 196, 1006), (8, 576, 1006))
LABELS = {(32, 196, 80): "COCO", (32, 196, 1006): "NUS-WIDE", (8, 576, 1006): "ViT-L/14@336"}


def kcot_problem(B: int, N: int, M: int, *, dtype: torch.dtype = torch.float32, seed: int = 0):
    """KCOT-like inputs: cost (B, N, M), region mass a (B, N), uniform label mass b (B, M)."""
    gen = torch.Generator().manual_seed(seed)
    sim = 0.2 + 0.05 * torch.randn(B, N, M, generator=gen, dtype=torch.float64)  # CLIP-like cosines
    cost = 1.0 - torch.softmax(100.0 * sim, dim=-1)
    a = torch.softmax(sim.amax(dim=-1) / 0.1, dim=-1)
    b = torch.full((B, M), 1.0 / M, dtype=torch.float64)
    return cost.to(dtype).contiguous(), a.to(dtype), b.to(dtype)


def parse_shapes(parser: argparse.ArgumentParser, values: list[str] | None) -> tuple:
    """``--shapes B,N,M ...`` as a tuple of int triples (None or empty: the three KCOT shapes)."""
    if not values:
        return SHAPES
    try:
        shapes = tuple(tuple(int(x) for x in s.split(",")) for s in values)
    except ValueError:
        parser.error(f"expected --shapes as B,N,M triples of integers, got {values}")
    if any(len(s) != 3 or min(s) < 1 for s in shapes):
        parser.error(f"expected --shapes as B,N,M triples of positive integers, got {values}")
    return shapes


def _best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best time of each function over `repeat` rounds that call them in turn.

    Interleaving spreads every solver's calls over the same stretch of time, so that a burst
    of load from other processes slows all of them alike instead of one solver's block.
    """
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def bandwidth(n_bytes: int = 1 << 28, repeat: int = 5) -> float:
    """Read bandwidth (bytes/s) of a ``torch.sum`` over a float32 buffer of `n_bytes`."""
    x = torch.rand(n_bytes // 4)
    return x.numel() * 4 / _best(lambda: x.sum(), repeat)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ram_ot.bench sinkhorn", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per solver (best is kept); default 5"
    )
    parser.add_argument("--iters", type=int, default=100, help="iterations forced on every solver")
    parser.add_argument("--reg", type=float, default=0.1, help="entropic regularisation")
    parser.add_argument(
        "--shapes", nargs="*", default=None, help="B,N,M triples (default: the three KCOT shapes)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this json file")
    args = parser.parse_args(argv)
    shapes = parse_shapes(parser, args.shapes)

    try:
        from ot.batch import bregman_projection_batch
    except ImportError:  # POT is a test-only dependency
        bregman_projection_batch = None

    bw = bandwidth()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"float32, reg={args.reg}, {args.iters} iterations forced; best of {args.repeat}; "
        f"bandwidth (torch.sum over 256 MiB) {bw / 1e9:.1f} GB/s"
    )
    header = "| shape (B, N, M) | official (a) | POT batch (b) | ours (c) | (c)/(a) | (c)/(b) | bandwidth bound | (c)/bound |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    reg, it = args.reg, args.iters
    rows = []
    for shape in shapes:
        cost, a, b = kcot_problem(*shape)
        solvers = {
            "official": lambda c=cost, a=a, b=b: official_sinkhorn(
                a, b, c, reg, max_iter=it, thresh=0.0
            ),
            "ours": lambda c=cost, a=a, b=b: sinkhorn(
                c, a, b, reg=reg, max_iter=it, tol=0.0, backend="torch"
            ),
        }
        if bregman_projection_batch is not None:
            solvers["pot"] = lambda c=cost, a=a, b=b: bregman_projection_batch(
                torch.exp(-c / reg), a, b, max_iter=it, tol=0.0
            )
        best = _best_interleaved(solvers, args.repeat)
        t_off, t_ours = best["official"], best["ours"]
        t_pot = best.get("pot", float("nan"))
        bound = it * 2 * cost.numel() * 4 / bw
        name = f"{shape} {LABELS.get(shape, '')}".strip()
        print(
            f"| {name} | {t_off * 1e3:.0f} ms | {t_pot * 1e3:.0f} ms | {t_ours * 1e3:.0f} ms | "
            f"{t_ours / t_off:.3f} | {t_ours / t_pot:.3f} | {bound * 1e3:.0f} ms | {t_ours / bound:.2f} |"
        )
        rows.append({"shape": list(shape), "label": LABELS.get(shape, ""), "official_s": t_off,
                     "pot_batch_s": t_pot, "ours_s": t_ours, "bandwidth_bound_s": bound})  # fmt: skip
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "reg": reg,
                "iterations": it, "repeat": args.repeat, "bandwidth_GBps": bw / 1e9}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    return 0
