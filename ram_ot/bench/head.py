"""Benchmark: KCOTHead forward+backward as a fraction of a ViT-B/16 image forward.

``python -m ram_ot.bench head [--batch 32] [--regions 196] [--labels 80] [--dim 512]
[--repeats 3] [--device cpu]``

Both are measured in the same process on the same batch size: the baseline is
``open_clip`` ViT-B-16's ``encode_image`` (randomly initialised, ``pretrained=None``; the
speed does not depend on the weights) under ``torch.no_grad()`` on 224 px images; the head
runs forward+backward on random features of the shapes a ViT-B/16 would give (N = 196
regions, D = 512). The head is timed on its eval path (no constraint), on its training path
(prior + targets: the knowledge constraint) and on the training path with
``grad="implicit"``. Times are medians over ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_vit(open_clip: object, batch: int, repeats: int, device: torch.device) -> float:
    """Median time of a randomly initialised ViT-B-16 ``encode_image`` on 224 px images."""
    model = open_clip.create_model("ViT-B-16", pretrained=None).to(device).eval()
    images = torch.randn(batch, 3, 224, 224, device=device)

    def vit_forward() -> object:
        with torch.no_grad():
            return model.encode_image(images)

    return _median_time(vit_forward, repeats, device)


def main(argv: list[str]) -> int:
    """Run the benchmark and print a markdown table; returns 0."""
    import open_clip

    from ram_ot.heads import KCOTHead
    from ram_ot.kcot import KnowledgeConstrainedOT, teacher_prior

    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench head", description=__doc__.splitlines()[0]
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--regions", type=int, default=196)
    p.add_argument("--labels", type=int, default=80)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    B, N, C, D = args.batch, args.regions, args.labels, args.dim
    torch.manual_seed(0)

    t_vit = _time_vit(open_clip, B, args.repeats, device)

    g = torch.randn(B, D, device=device, requires_grad=True)
    r = torch.randn(B, N, D, device=device, requires_grad=True)
    t = torch.randn(C, D, device=device, requires_grad=True)
    targets = (torch.rand(B, C, device=device) < 0.05).float()
    prior = teacher_prior(torch.randn(B, N, D, device=device), t.detach())

    def head_step(head: KCOTHead, constrained: bool) -> Callable[[], object]:
        def run() -> object:
            out = head(g, r, t, targets=targets, prior=prior if constrained else None)
            out.loss.backward()
            return out

        return run

    rows = []
    for name, head, constrained in (
        ("eval path (no constraint)", KCOTHead(), False),
        ("training path (prior + targets)", KCOTHead(), True),
        ("training path, grad=implicit", KCOTHead(KnowledgeConstrainedOT(grad="implicit")), True),
    ):
        head = head.to(device)
        t_head = _median_time(head_step(head, constrained), args.repeats, device)
        rows.append((name, t_head))

    threads = torch.get_num_threads()
    print(f"# KCOTHead forward+backward vs ViT-B/16 image forward (B={B}, N={N}, C={C}, D={D})")
    print(
        f"device: {device}, torch {torch.__version__}, {threads} threads, {platform.processor() or platform.machine()}"
    )
    print()
    print("| what | time (ms) | fraction of ViT-B/16 forward |")
    print("|---|---:|---:|")
    print(f"| ViT-B/16 `encode_image`, no grad (baseline) | {1e3 * t_vit:.1f} | 1 |")
    for name, t_head in rows:
        print(f"| KCOTHead fwd+bwd, {name} | {1e3 * t_head:.1f} | {100 * t_head / t_vit:.2f}% |")
    return 0
