"""Benchmark: the text side of a RAM training step, with the text cache off and on.

``python -m ram_ot.bench text-side [--config nus coco] [--repeats 3] [--threads 2]
[--device cpu]``

One :class:`~ram_ot.prompts.PromptEncoder` over a ViT-B/16 text tower with random weights
(width 512, 12 layers; no download), with the official preset's deep prompt layers
(:data:`ram_ot.training.PRESETS`: 6-11 for NUS-WIDE, 9-11 for COCO) and 4 prompt tokens,
over generated label names (925 for NUS-WIDE's seen labels, 80 for COCO; their tokens, not
their meaning, set the cost). A step is what training pays on the text side: the forward
over every label, a loss on the features and the backward to the prompts. Variants, all in
this process, interleaved, on the same labels:

- ``cache off``: ``cache_text=False``, the whole tower on every call (as before the cache);
- ``cache on, whole sequences``: the cached early layers, then the prompted layers on
  every position (the cache alone);
- ``cache on``: the default: cached early layers, prompted layers on the labels' own
  positions only, the last layer at the EOT token only.

Also timed: one forward with gradients off (evaluation), cache off against cache on when
the features are already cached. Each figure is the median over `repeats` (after one
warm-up call, which fills the cache); the ratio is cache off over the variant. Every variant
is checked against ``cache off`` (features and prompt gradients) before it is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

__all__ = ["main"]

N_LABELS = {"coco": 80, "nus": 925}


def _build(model_name: str, device: torch.device):
    from ram_ot.backbones.open_clip import load_clip

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip_model, tokenizer, _ = load_clip(model_name, pretrained=None, device=device)
    return clip_model, tokenizer


def _encoder(clip_model, tokenizer, layers, variant: str, device):
    from ram_ot.prompts import PromptEncoder

    torch.manual_seed(0)  # the same prompts in every variant
    enc = PromptEncoder(
        clip_model, tokenizer, n_ctx=4, deep_layers=layers, cache_text=variant != "off",
        device=device,
    )  # fmt: skip
    enc._own_positions_only = variant == "on"
    return enc.train()


def _step(enc, labels, weight) -> list[torch.Tensor]:
    for p in enc.parameters():
        p.grad = None
    (enc(labels) * weight).sum().backward()
    return [p.grad for p in enc.parameters()]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench text-side", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--config", nargs="+", choices=sorted(N_LABELS), default=["nus", "coco"])
    p.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights)")
    p.add_argument("--labels", type=int, default=None, help="override the number of labels")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("text-side: no CUDA device here; nothing measured", flush=True)
        return 1
    from ram_ot.bench.sinkhorn_gpu import _timer
    from ram_ot.bench.train_step_gpu import _labels
    from ram_ot.training import PRESETS

    wall_timer = _timer(device)

    def timer(fn) -> tuple[float, float]:  # (wall ms, process CPU ms)
        c0 = time.process_time()
        w = wall_timer(fn)
        return w, (time.process_time() - c0) * 1e3

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    clip_model, tokenizer = _build(args.model, device)
    depth = len(clip_model.transformer.resblocks)
    t0 = time.perf_counter()
    for config in args.config:
        layers = PRESETS[config].text_deep_layers if depth == 12 else None
        labels = _labels(args.labels or N_LABELS[config])
        encs = {
            v: _encoder(clip_model, tokenizer, layers, v, device) for v in ("off", "full", "on")
        }
        g = torch.Generator().manual_seed(2)
        dim = encs["off"](labels[:1]).shape[-1]
        weight = torch.randn(len(labels), dim, generator=g).to(device)
        ref = _step(encs["off"], labels, weight)
        for v in ("full", "on"):  # warm-up (fills the cache) and the check against cache off
            got = _step(encs[v], labels, weight)
            err = max(
                float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref, strict=True)
            )
            if not err < 1e-4:
                raise AssertionError(f"text-side: {v} differs from cache off by {err:.2e}")
        ms: dict[str, list[tuple[float, float]]] = {v: [] for v in encs}
        ev: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        for _ in range(args.repeats):
            for v, enc in encs.items():
                ms[v].append(timer(lambda enc=enc, lb=labels, w=weight: _step(enc, lb, w)))
            for v in ev:
                enc = encs[v].eval()
                with torch.no_grad():
                    enc(labels)  # cache on: fills the feature cache
                    ev[v].append(timer(lambda enc=enc, lb=labels: enc(lb)))
                enc.train()
        tokens = tokenizer([f"a photo of a {n}." for n in labels])
        lens = tokens.argmax(dim=-1) + 1
        print(
            f"\n{config}: PromptEncoder({args.model} text tower, random weights), "
            f"{len(labels)} labels ({int(lens.min())}-{int(lens.max())} tokens), 4 prompt "
            f"tokens at text layers {encs['on'].deep_layers}"
        )
        print(
            f"device {where}, {torch.get_num_threads()} thread(s), median of {args.repeats}; "
            "ratio = cache off / variant; CPU = process time"
        )
        print("| text side | wall ms | ratio | CPU ms | ratio |")
        print("|---|---:|---:|---:|---:|")
        names = {
            "off": "train step (fwd+bwd), cache off",
            "full": "train step, cache on, whole sequences",
            "on": "train step, cache on (default)",
            "eval off": "eval forward (no grad), cache off",
            "eval on": "eval forward (no grad), cache on",
        }
        rows = {**ms, **{f"eval {v}": t for v, t in ev.items()}}
        for v, name in names.items():
            w = statistics.median(t[0] for t in rows[v])
            c = statistics.median(t[1] for t in rows[v])
            base = rows["off" if v in ms else "eval off"]
            bw = statistics.median(t[0] for t in base)
            bc = statistics.median(t[1] for t in base)
            print(f"| {name} | {w:.2f} | {bw / w:.2f} | {c:.2f} | {bc / max(c, 1e-9):.2f} |")
        del encs
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0
