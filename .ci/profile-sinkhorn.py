"""Where the time of one ``sinkhorn`` call goes on a CUDA GPU (RAM's COCO shape).

    python .ci/profile-sinkhorn.py

Prints the frontend's time next to the kernel's alone, and torch.profiler's table of the
operators and kernels of a few calls (the frontend's validation, masses, plan and the
convergence check are small kernels and host syncs around the one Sinkhorn launch).
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from ram_ot.bench.sinkhorn_gpu import _measure, _timer
from ram_ot.ot import _triton, sinkhorn


def _ms(fn, repeats: int = 20) -> float:
    """Median milliseconds of `fn` over `repeats` calls after 3 warm-ups (CUDA events)."""
    return _measure(fn, _timer(torch.device("cuda")), 3, repeats)


def main() -> int:
    if not torch.cuda.is_available():
        print("profile-sinkhorn: no CUDA device")
        return 0
    gen = torch.Generator().manual_seed(0)
    cost = (1 - (torch.randn(32, 196, 80, generator=gen) * 3).softmax(-1)).cuda()
    a = (torch.randn(32, 196, generator=gen) * 2).softmax(-1).cuda()
    b = torch.full((32, 80), 1 / 80).cuda()
    la, lb = a.log(), b.log()
    for tol in (0.0, 1e-3):
        full = _ms(lambda t=tol: sinkhorn(cost, a, b, tol=t, max_iter=100))
        kern = _ms(lambda t=tol: _triton.solve_potentials(
            cost, la, lb, reg=0.1, fi_a=1.0, fi_b=1.0, max_iter=100, tol=t, check_every=10))  # fmt: skip
        res = sinkhorn(cost, a, b, tol=tol, max_iter=100)
        print(f"tol={tol:g}: sinkhorn() {full:.3f} ms, kernel alone {kern:.3f} ms, "
              f"iterations {sorted(set(res.n_iter.tolist()))}")  # fmt: skip
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            sinkhorn(cost, a, b, max_iter=100)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
