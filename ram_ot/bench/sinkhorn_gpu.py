"""GPU benchmark of the Sinkhorn backends: ``python -m ram_ot.bench sinkhorn-gpu``.

Times, at RAM's three benchmark shapes (paper Sec. 3.3; B images x N regions x M labels):

* ``official``: the reference solver's arithmetic (scaling-domain Sinkhorn, two batched
  mat-vecs, a transposed copy of the kernel and a host sync per iteration), from
  ``ram_ot.bench._official`` when it exists, else the minimal re-implementation below;
* ``torch``: ``sinkhorn(..., backend="torch")`` (plan included);
* ``triton``: ``sinkhorn(..., backend="triton")`` (plan included), and the kernel alone
  (``_triton.solve_potentials``) in its automatic, register-resident, on-chip, streamed and
  split variants;
* ``pot``: POT's batched log-domain solver ``ot.batch.solve_batch(method="log_sinkhorn")``;

all with ``max_iter`` iterations forced (``tol=0``), timed with CUDA events (median of
``--repeats`` calls after ``--warmup``). It prints each time, the speed-up over ``official``
and the HBM lower bound: bytes of the cost tensor read once / device bandwidth, the
bandwidth measured here with a large device-to-device copy.

Without CUDA it prints a message and exits with status 0. ``--interpret --small`` runs the
same code path on small CPU problems through Triton's interpreter (a smoke test, not a
measurement).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

SHAPES = ((32, 196, 80), (32, 196, 1006), (8, 576, 1006))
SMALL_SHAPES = ((2, 7, 5), (2, 20, 70), (1, 70, 130))


class Row(NamedTuple):
    shape: tuple[int, int, int]
    method: str
    ms: float  # median milliseconds per call (nan when it failed)
    note: str


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench sinkhorn-gpu", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--iters", type=int, default=100, help="Sinkhorn iterations, forced (tol=0); default 100"
    )
    p.add_argument(
        "--repeats", type=int, default=20, help="timed calls per method (median); default 20"
    )
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed calls first (compilation); default 3"
    )
    p.add_argument(
        "--reg", type=float, default=0.1, help="entropic regularisation; default 0.1 (RAM's)"
    )
    p.add_argument(
        "--shapes", default=None, help="comma-separated BxNxM list; default the three RAM shapes"
    )
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--no-pot", action="store_true", help="skip POT's batched solver")
    p.add_argument(
        "--interpret",
        action="store_true",
        help="CPU smoke test through Triton's interpreter (sets TRITON_INTERPRET=1; not a measurement)",
    )
    p.add_argument(
        "--small", action="store_true", help="small shapes and few iterations (with --interpret)"
    )
    p.add_argument(
        "--markdown", action="store_true", help="print the results as a markdown table too"
    )
    args = p.parse_args(argv)
    if args.shapes:
        try:
            args.shapes = tuple(
                tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")
            )
            if any(len(s) != 3 or min(s) < 1 for s in args.shapes):
                raise ValueError
        except ValueError:
            p.error(f"--shapes: expected e.g. 32x196x80,8x576x1006, got {args.shapes!r}")
    elif args.small:
        args.shapes = SMALL_SHAPES
    else:
        args.shapes = SHAPES
    if args.small:
        args.iters = min(args.iters, 5)
        args.repeats = min(args.repeats, 2)
        args.warmup = min(args.warmup, 1)
    return args


# ---------------------------------------------------------------------------------------------
# the official solver's arithmetic (used when ram_ot.bench._official is absent)
# ---------------------------------------------------------------------------------------------


def _official_fallback(a, b, cost, reg: float, max_iter: int, thresh: float):
    """Scaling-domain balanced Sinkhorn as the reference runs it (arithmetic only).

    ``K = exp(-C/reg)``; per iteration ``u = a / (K v)``, ``v = b / (Kᵀ u)`` with an explicit
    contiguous transpose of ``K``, the mean change of ``u`` and a host-synchronising test.
    """
    import torch

    kernel = torch.exp(-cost / reg)  # (B, N, M)
    u = torch.ones_like(a)
    v = torch.ones_like(b)
    for _ in range(max_iter):
        u_prev = u
        u = a / torch.bmm(kernel, v[:, :, None])[:, :, 0]  # (B, N, M) @ (B, M, 1) -> (B, N)
        kt = kernel.transpose(
            1, 2
        ).contiguous()  # (B, M, N), copied every iteration like the reference
        v = b / torch.bmm(kt, u[:, :, None])[:, :, 0]  # (B, M, N) @ (B, N, 1) -> (B, M)
        change = (u - u_prev).abs().mean(dim=1)
        if bool((change < thresh).all()):  # one host sync per iteration
            break
    return u[:, :, None] * kernel * v[:, None, :]


def _official_solver() -> tuple[Callable, str]:
    try:
        from ram_ot.bench import _official  # written alongside the CPU benchmark, if present
    except ImportError:
        return _official_fallback, "ram_ot.bench.sinkhorn_gpu._official_fallback"
    for name in ("sinkhorn_official", "official_sinkhorn", "sinkhorn", "Sinkhorn"):
        fn = getattr(_official, name, None)
        if callable(fn):
            return fn, f"ram_ot.bench._official.{name}"
    return (
        _official_fallback,
        "ram_ot.bench.sinkhorn_gpu._official_fallback (no solver found in _official)",
    )


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


def _timer(device):
    import torch

    if device.type == "cuda":

        def run(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

    else:

        def run(fn: Callable[[], object]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3

    return run


def _measure(fn: Callable[[], object], timer, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timer(fn) for _ in range(repeats))


def _bandwidth_gbs(device) -> float:
    """Device memory bandwidth (GB/s) from a 1 GiB device-to-device copy (read + write)."""
    import torch

    n = (1 << 30) // 4
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = _measure(partial(dst.copy_, src), _timer(device), 3, 10)
    src = dst = None
    torch.cuda.empty_cache()
    return 2 * n * 4 / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    args = _parse(argv)
    if args.interpret:
        # Triton reads TRITON_INTERPRET at its first import: set it before anything imports it
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from ram_ot.ot import _triton, sinkhorn

    if args.interpret:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print(
            "sinkhorn-gpu: no CUDA device here, nothing measured. Run it on a CUDA machine, or "
            "`python -m ram_ot.bench sinkhorn-gpu --interpret --small` for a CPU smoke test of the code path."
        )
        return 0
    ok, why = _triton.probe(device)
    dtype = getattr(torch, args.dtype)
    timer = _timer(device)
    official, official_name = _official_solver()

    print(
        f"sinkhorn-gpu: iters={args.iters} (tol=0) reg={args.reg} dtype={args.dtype} repeats={args.repeats}"
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        print(
            f"device: {props.name} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
        )
        bw = _bandwidth_gbs(device)
        print(f"measured bandwidth (1 GiB device copy): {bw:.0f} GB/s")
    else:
        bw = float("nan")
        print("device: CPU through Triton's interpreter (smoke test: the times below mean nothing)")
    print(f"triton backend: {'available' if ok else 'NOT available'} ({why})")
    print(f"official solver: {official_name}")

    rows: list[Row] = []
    for shape in args.shapes:
        B, N, M = shape
        gen = torch.Generator(device="cpu").manual_seed(0)
        # RAM-like inputs: cost 1 - softmax over labels, region mass softmax, uniform label mass
        logits = torch.randn(B, N, M, generator=gen) * 3.0
        cost = (1.0 - logits.softmax(dim=-1)).to(device=device, dtype=dtype).contiguous()
        a = (torch.randn(B, N, generator=gen) * 2).softmax(dim=-1).to(device=device, dtype=dtype)
        b = torch.full((B, M), 1.0 / M, dtype=dtype, device=device)
        kw = dict(reg=args.reg, max_iter=args.iters, tol=0.0)
        methods = _methods(args, cost, a, b, ok, official, sinkhorn, _triton)
        for name, fn, why in methods:
            if why:
                rows.append(Row(shape, name, math.nan, why))
                continue
            try:
                ms = _measure(fn, timer, args.warmup, args.repeats)
                rows.append(Row(shape, name, ms, ""))
            except (
                Exception
            ) as exc:  # report and go on: one failing baseline must not hide the rest
                rows.append(
                    Row(shape, name, math.nan, f"failed: {type(exc).__name__}: {str(exc)[:120]}")
                )
        if ok:
            rows.append(_agreement(shape, cost, a, b, sinkhorn, kw))
        if device.type == "cuda":
            del cost, logits
            torch.cuda.empty_cache()

    _report(rows, args, bw, torch.finfo(dtype).bits // 8)
    return 0


def _methods(
    args, cost, a, b, ok: bool, official, sinkhorn, _triton
) -> list[tuple[str, Callable[[], object], str]]:
    """(name, call, why-skipped) per timed method for one problem batch ("" = run it)."""
    la, lb = a.log(), b.log()
    kw = dict(reg=args.reg, max_iter=args.iters, tol=0.0)
    kern = dict(reg=args.reg, fi_a=1.0, fi_b=1.0, max_iter=args.iters, tol=0.0, check_every=10)
    no_triton = "" if ok else "skipped: triton unavailable"
    out: list[tuple[str, Callable[[], object], str]] = [
        ("official", lambda: official(a, b, cost, args.reg, args.iters, -1.0), ""),
        ("torch", lambda: sinkhorn(cost, a, b, backend="torch", **kw), ""),
        ("triton", lambda: sinkhorn(cost, a, b, backend="triton", **kw), no_triton),
    ]
    _, n, m = cost.shape
    padded = _triton.triton.next_power_of_2(n) * _triton.triton.next_power_of_2(m) if ok else 0
    for variant in ("auto", "resident", "onchip", "stream", "split"):
        why = no_triton
        if not why and variant == "onchip" and padded > 32768:
            why = f"skipped: padded tile of {padded} values does not fit in registers"
        if not why and variant == "resident" and not _triton._resident_fits(n, m, cost.dtype):
            why = "skipped: the tile does not fit in registers"
        call = partial(_triton.solve_potentials, cost, la, lb, **kern, _variant=variant)
        out.append((f"triton kernel ({variant})", call, why))
    if not args.no_pot:
        pot_kw = dict(
            reg=args.reg,
            a=a,
            b=b,
            max_iter=args.iters,
            tol=0.0,
            method="log_sinkhorn",
            grad="detach",
        )
        out.append(("pot batch", partial(_pot, cost, **pot_kw), ""))
    return out


def _pot(cost, **kw):
    from ot.batch import solve_batch

    return solve_batch(cost, **kw).plan


def _agreement(shape, cost, a, b, sinkhorn, kw) -> Row:
    """Largest plan difference triton vs torch, relative to the largest plan entry."""
    p_tr = sinkhorn(cost, a, b, backend="triton", **kw).plan
    p_to = sinkhorn(cost, a, b, backend="torch", **kw).plan
    rel = float((p_tr - p_to).abs().max() / p_to.abs().max())
    return Row(shape, "check", math.nan, f"max|plan_triton - plan_torch| / max|plan| = {rel:.2e}")


def _report(rows: list[Row], args, bw: float, itemsize: int) -> None:
    out = []
    for shape in args.shapes:
        sub = [r for r in rows if r.shape == shape]
        base = next((r.ms for r in sub if r.method == "official"), math.nan)
        B, N, M = shape
        nbytes = B * N * M * itemsize
        bound_ms = nbytes / (bw * 1e9) * 1e3 if bw == bw else math.nan
        bound_txt = f"{bound_ms * 1e3:.2f} us" if bound_ms == bound_ms else "n/a (no GPU)"
        print(
            f"\n(B, N, M) = {shape}: cost {nbytes / 2**20:.1f} MiB, HBM bound (cost read once) {bound_txt}"
        )
        print(f"  {'method':<24} {'ms':>10} {'vs official':>12} {'vs HBM bound':>13}  note")
        for r in sub:
            if r.method == "check":
                print(f"  {r.note}")
                continue
            speed = base / r.ms if r.ms == r.ms and base == base else math.nan
            bound = r.ms / bound_ms if r.ms == r.ms and bound_ms == bound_ms else math.nan
            print(f"  {r.method:<24} {r.ms:>10.3f} {speed:>11.1f}x {bound:>12.0f}x  {r.note}")
            out.append((shape, r.method, r.ms, speed, bound, r.note))
        if shape == (32, 196, 80):
            tk = next((r.ms for r in sub if r.method == "triton kernel (auto)"), math.nan)
            if tk == tk and base == base:
                print(
                    f"  target >= 20x official: {'met' if base / tk >= 20 else 'NOT met'} ({base / tk:.1f}x)"
                )
            if tk == tk and bound_ms == bound_ms:
                print(
                    f"  target within 3x of HBM bound: {'met' if tk <= 3 * bound_ms else 'NOT met'} ({tk / bound_ms:.0f}x)"
                )
    if args.markdown:
        print(
            "\n| (B, N, M) | method | ms | vs official | vs HBM bound | note |\n|---|---|---:|---:|---:|---|"
        )
        for shape, method, ms, speed, bound, note in out:
            print(f"| {shape} | {method} | {ms:.3f} | {speed:.1f}x | {bound:.0f}x | {note} |")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
