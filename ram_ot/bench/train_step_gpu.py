"""Benchmark: one whole RAM training step on a GPU, per Sinkhorn backend, with peak memory.

``python -m ram_ot.bench train-step-gpu [--config coco nus] [--batch-size 32] [--amp fp16]
[--backends triton torch] [--repeats 20]``

The step is :func:`ram_ot.training.train_step` as the training script runs it: forward with
targets under float16 autocast, the GradScaler'd backward, both optimisers' steps. The model
is :class:`~ram_ot.model.RAM` over a ViT-B/16 with random weights (no download), with the
official preset's text prompt layers, adapter layers and local temperature
(:data:`ram_ot.training.PRESETS`), over the preset's seen labels: 48 for COCO, 925 for
NUS-WIDE (generated names; their tokens, not their meaning, set the cost). Every variant runs
in this process on the same batch. Time is the median over `repeats` steps, each timed with
CUDA events after `warmup` steps; memory is ``torch.cuda.max_memory_allocated`` over one
step, after ``reset_peak_memory_stats``, minus the memory allocated before it (weights,
optimiser state and the batch).

Variants: each Sinkhorn backend in `backends` (``"triton"``: the fused kernel; ``"torch"``:
the pure-PyTorch solver, what users without Triton get), with the text cache on
(``PromptEncoder.cache_text``, the default); the first backend also with it off.

``--device cpu`` runs the same code on the CPU (perf_counter timing, no memory figure): for
the test of this module and for CPU comparisons at small batches (no fp16 autocast there).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

__all__ = ["main"]

SEEN_LABELS = {"coco": 48, "nus": 925}


def _labels(n: int) -> list[str]:
    """`n` distinct label names of one to three words, deterministic."""
    words = [
        "red", "small", "wooden", "old", "bright", "street", "river", "garden", "winter",
        "city", "tree", "boat", "bird", "house", "road", "sky", "flower", "car", "dog", "lamp",
    ]  # fmt: skip
    out = []
    i = 0
    while len(out) < n:
        k = 1 + i % 3
        out.append(" ".join(words[(i * (7 + j) + 3 * j) % len(words)] for j in range(k)) + f" {i}")
        i += 1
    return out


def _build(args: argparse.Namespace, config: str, device: torch.device):
    from ram_ot.backbones.open_clip import load_clip
    from ram_ot.model import RAM
    from ram_ot.training import PRESETS, build_optimizers, make_grad_scaler

    preset = PRESETS[config]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip_model, tokenizer, _ = load_clip(args.model, pretrained=None, device=device)
    kwargs = {}
    if args.model == "ViT-B-16":  # the presets' layer indices are a 12-layer tower's
        kwargs = dict(
            text_deep_layers=preset.text_deep_layers, adapter_layers=preset.adapter_layers
        )
    model = RAM(
        clip_model, tokenizer, temperature_local=preset.temperature_local, device=device, **kwargs
    ).train()
    n = args.labels or SEEN_LABELS[config]
    labels = _labels(n)
    size = tuple(clip_model.visual.image_size)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, *size, generator=g).to(device)
    targets = (torch.rand(args.batch_size, n, generator=g) < 3.0 / n).float()
    targets[:, 0] = 1.0  # every image has a positive
    targets = targets.to(device)
    optimizers = build_optimizers(model, lr=5e-5)
    amp = args.amp == "fp16" and device.type == "cuda"
    scaler = make_grad_scaler(device, enabled=amp)
    return model, labels, images, targets, optimizers, scaler, amp


def _run_variant(args, setup, device, backend: str, cache: bool) -> dict:
    from ram_ot.bench.sinkhorn_gpu import _timer
    from ram_ot.training import train_step

    model, labels, images, targets, optimizers, scaler, amp = setup
    model.head.kcot.backend = backend
    model.prompts.cache_text = cache

    def step() -> None:
        train_step(model, images, targets, labels, optimizers, scaler=scaler, amp=amp)

    for _ in range(args.warmup):
        step()
    timer = _timer(device)  # CUDA events on a GPU
    times = [timer(step) for _ in range(args.repeats)]
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return {"ms": statistics.median(times), "min_ms": min(times), "peak_mib": peak}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench train-step-gpu", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config", nargs="+", choices=sorted(SEEN_LABELS), default=["coco", "nus"])
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--labels", type=int, default=None, help="override the preset's seen labels")
    p.add_argument("--amp", choices=("fp16", "none"), default="fp16")
    p.add_argument("--backends", nargs="+", default=["triton", "torch"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    for name in ("batch_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("train-step-gpu: no CUDA device here; nothing measured", flush=True)
        return 1
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (test run)"
    t0 = time.perf_counter()
    for config in args.config:
        setup = _build(args, config, device)
        model, labels = setup[0], setup[1]
        variants = [(b, f"backend={b}, text cache on", True) for b in args.backends]
        variants.append((args.backends[0], f"backend={args.backends[0]}, text cache off", False))
        print(
            f"\n{config}: RAM({args.model}, random weights), batch {args.batch_size}, "
            f"{len(labels)} labels, prompts at text layers {model.prompts.deep_layers}, "
            f"adapters at {model.ladder.adapter_layers}",
            flush=True,
        )
        amp = args.amp if device.type == "cuda" else "none (CPU)"
        print(f"device {where}, autocast {amp}, median of {args.repeats} steps")
        print("| variant | ms/step | ratio | min ms | peak MiB over weights |")
        print("|---|---:|---:|---:|---:|")
        base = None
        for backend, name, cache in variants:
            try:
                r = _run_variant(args, setup, device, backend, cache)
            except Exception as e:  # report, and time the other variants
                print(
                    f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | |"
                )
                continue
            base = base or r["ms"]
            peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            print(f"| {name} | {r['ms']:.2f} | {r['ms'] / base:.3f} | {r['min_ms']:.2f} | {peak} |")
        del setup, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0
