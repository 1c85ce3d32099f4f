"""Benchmark: the training step of ``examples/train_coco.py`` against a bare loop, on CPU.

``python -m ram_ot.bench train-step [--steps 20] [--batch-size 32] [--repeats 3]``

Same model (RAM over the tiny random open_clip config), same in-memory batches, same two
optimisers. The *bare* loop does forward, backward and the optimiser steps only. The
*script* loop is :func:`ram_ot.training.train_one_epoch` as the example calls it: LR
schedulers, EMA update, running-loss bookkeeping and a tqdm bar (written to a null stream);
*script + checkpoint* adds the per-epoch atomic ``last.pt`` write. Each variant runs
`repeats` times, interleaved; the medians of wall time and of process CPU time are compared.
Ratios, not seconds, are the result: the 2-core build machine is shared, which is why the
CPU-time ratio (with ``--threads 1``) is the steadier figure.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings

import torch


def _build(batch_size: int, n_labels: int, steps: int):
    from ram_ot.backbones.open_clip import TINY_MODEL_NAME
    from ram_ot.model import build_ram

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_ram(TINY_MODEL_NAME, None)
    h, w = model.ladder.image_size
    labels = [f"label {i}" for i in range(n_labels)]
    batches = []
    for _ in range(steps):
        targets = (torch.rand(batch_size, n_labels) < 0.2).float()
        targets[:, 0] = 1.0  # every image has a positive
        batches.append((torch.randn(batch_size, 3, h, w), targets))
    return model, labels, batches


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench train-step", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--labels", type=int, default=48, help="number of (seen) labels, as COCO")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ram_ot.training import (
        ModelEMA,
        build_optimizers,
        build_schedulers,
        save_checkpoint,
        train_one_epoch,
    )

    model, labels, batches = _build(args.batch_size, args.labels, args.steps)
    optimizers = build_optimizers(model, lr=5e-5)
    schedulers = build_schedulers(optimizers, total_steps=10**6, warmup_steps=10)
    ema = ModelEMA(model)
    tmp = tempfile.mkdtemp(prefix="ram_ot_bench_")

    def bare() -> None:
        model.train()
        for images, targets in batches:
            for o in optimizers:
                o.zero_grad(set_to_none=True)
            model(images, labels, targets).loss.backward()
            for o in optimizers:
                o.step()

    def script(checkpoint: bool) -> None:
        import tqdm.auto

        real = tqdm.auto.tqdm
        tqdm.auto.tqdm = lambda *a, **k: real(
            *a, **{**k, "file": io.StringIO()}
        )  # bar drawn, not shown
        try:
            train_one_epoch(
                model,
                batches,
                labels,
                optimizers,
                device="cpu",
                schedulers=schedulers,
                ema=ema,
                progress=True,
            )
        finally:
            tqdm.auto.tqdm = real
        if checkpoint:
            save_checkpoint(
                os.path.join(tmp, "last.pt"),
                model=model,
                optimizers=optimizers,
                schedulers=schedulers,
                ema=ema,
            )

    variants = {
        "bare loop": bare,
        "script step": lambda: script(False),
        "script + checkpoint": lambda: script(True),
    }
    bare()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - t0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)
    print(
        f"train-step: RAM(RAM-Tiny-ViT), batch {args.batch_size}, {args.labels} labels, "
        f"{args.steps} steps x {args.repeats} repeats, {torch.get_num_threads()} thread(s), CPU"
    )
    print(f"{'variant':<22}{'wall ms/step':>14}{'ratio':>8}{'CPU ms/step':>14}{'ratio':>8}")
    base_w, base_c = statistics.median(wall["bare loop"]), statistics.median(cpu["bare loop"])
    for name in variants:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<22}{1000 * w:>14.1f}{w / base_w:>8.3f}{1000 * c:>14.1f}{c / base_c:>8.3f}")
    print("(medians over repeats; CPU = process time, less sensitive to other jobs on the machine)")
    return 0
