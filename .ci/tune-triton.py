"""Time the Triton Sinkhorn kernel's variants and launch settings on a CUDA GPU.

    python .ci/tune-triton.py            # prints one table; needs CUDA

The thresholds in ``ram_ot/ot/_triton.py`` (which variant "auto" takes, the resident
variant's warps) were read off this table; ``python -m ram_ot.bench sinkhorn-gpu`` then
times the chosen settings against the baselines. Every timed configuration is also checked
against the torch backend (plans within 1e-4 relative), so a fast wrong kernel shows up.
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from ram_ot.bench.sinkhorn_gpu import _measure, _timer
from ram_ot.ot import _torch, _triton

SHAPES = [(32, 196, 80), (128, 196, 80), (32, 49, 80), (32, 196, 20), (32, 100, 100),
          (32, 128, 128), (32, 64, 64), (8, 256, 80)]  # fmt: skip
ITERS, REPEATS = 100, 15


def _time(fn) -> float:
    """Median milliseconds of `fn` over REPEATS calls after 3 warm-ups (CUDA events)."""
    return _measure(fn, _timer(torch.device("cuda")), 3, REPEATS)


def main() -> int:
    if not torch.cuda.is_available():
        print("tune-triton: no CUDA device")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'(B, N, M)':<16} {'variant':<14} {'warps':>5} {'ms':>9} {'us/iter':>8}  check")
    bad = 0
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        bsz, n, m = shape
        cost = (1 - (torch.randn(shape, generator=gen) * 3).softmax(-1)).cuda()
        la = (torch.randn(bsz, n, generator=gen) * 2).log_softmax(-1).cuda()
        lb = torch.full((bsz, m), -torch.log(torch.tensor(float(m))).item()).cuda()
        kw = dict(reg=0.1, max_iter=ITERS, tol=0.0, check_every=10)
        ref = _torch.solve_lse(cost, la, lb, fi_a=1.0, fi_b=1.0, **kw)
        ref_plan = torch.exp((ref[0][:, :, None] + ref[1][:, None, :] - cost) / 0.1)
        runs = []
        if _triton._resident_fits(n, m, cost.dtype) or n * m <= 32768:
            for warps in (4, 8, 16, 32):
                call = partial(_triton.solve_potentials, cost, la, lb, fi_a=1.0, fi_b=1.0, **kw)
                runs.append(
                    ("resident", warps, partial(call, _variant="resident", _num_warps=warps))
                )
        for variant in ("onchip", "stream", "split", "auto"):
            if variant == "onchip" and _triton._config(n, m, cost.dtype, "onchip").block_n * \
                    _triton._config(n, m, cost.dtype, "onchip").block_m > 32768:  # fmt: skip
                continue
            call = partial(_triton.solve_potentials, cost, la, lb, fi_a=1.0, fi_b=1.0, **kw)
            runs.append((variant, 0, partial(call, _variant=variant)))
        for name, warps, fn in runs:
            try:
                ms = _time(fn)
                f, g, _, _ = fn()
                plan = torch.exp((f[:, :, None] + g[:, None, :] - cost) / 0.1)
                rel = float((plan - ref_plan).abs().max() / ref_plan.abs().max())
                check = f"{rel:.1e}" + ("" if rel < 1e-4 else "  WRONG")
                bad += rel >= 1e-4
            except Exception as exc:  # a configuration that does not compile: report it
                ms, check = float("nan"), f"failed: {type(exc).__name__}: {str(exc)[:100]}"
            print(f"{str(shape):<16} {name:<14} {warps or '-':>5} {ms:>9.3f} "
                  f"{ms * 1e3 / ITERS:>8.1f}  {check}")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
