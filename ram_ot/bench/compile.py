"""Benchmark: eager against ``torch.compile`` for RAM's inference forward and training step.

``python -m ram_ot.bench compile [--model proxy|tiny] [--batch-size 32] [--labels 48]
[--repeats 10] [--device cpu|cuda] [--backend inductor] [--parts inference train]``

Model: RAM over the shipped proxy CLIP (``RAM-Proxy-ViT``, ``emoji`` weights; 64 px, 64
regions) or the tiny random open_clip ViT, `labels` labels, a batch of random images.

*Inference* (no grad, eval mode), all over the same fixed label set:

- ``RAM eager``: ``model(images, label_embeddings)``, Sinkhorn stopping at ``tol=1e-5``
  (what an eager caller runs today; the baseline of the ratios);
- ``InferenceModule eager``: :class:`ram_ot.inference.InferenceModule`, all ``max_iter``
  Sinkhorn iterations (``tol=0``);
- ``InferenceModule compiled``: the same module under ``torch.compile(fullgraph=True)``.

*Training step* (train mode, targets, knowledge constraint): label embeddings through the
prompted text tower (eager in every variant: it is outside the compiled region), then the
ladder + head forward with the loss, then ``backward()``; no optimiser step:

- ``RAM eager``: ``model(images, emb, targets, teacher_labels=t)`` (``tol=1e-5``);
- ``RAM eager, tol=0``: the same with all ``max_iter`` iterations, as the compiled graph runs;
- ``RAM compiled``: ``torch.compile(model, fullgraph=True)`` of the same call.

The compile time is the wall time of the first compiled call (tracing and code generation
included). Steady-state times are medians over `repeats` calls after two warm-up calls, the
variants interleaved; on CUDA they are measured with CUDA events. Ratios are eager / variant
(> 1: faster than the baseline), all measured in this process.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch


def _build(name: str, device: torch.device):
    from ram_ot.backbones.open_clip import TINY_MODEL_NAME
    from ram_ot.model import build_ram

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "proxy":
            model = build_ram("RAM-Proxy-ViT", "emoji", device=device)
        else:
            model = build_ram(TINY_MODEL_NAME, None, device=device)
    return model


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _first_call(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _measure(
    variants: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    from ram_ot.bench.sinkhorn_gpu import _timer

    timer_ms = _timer(device)  # CUDA events on a GPU

    def timer(fn: Callable[[], object]) -> float:
        return timer_ms(fn) / 1000.0

    for fn in variants.values():  # warm-up (the compiled ones are compiled already)
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timer(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def _report(title: str, med: dict[str, float], compile_s: dict[str, float]) -> None:
    base = next(iter(med.values()))
    print(title)
    print(f"  {'variant':<28}{'ms/call':>10}{'ratio':>8}{'compile s':>11}")
    for name, t in med.items():
        c = f"{compile_s[name]:.1f}" if name in compile_s else "-"
        print(f"  {name:<28}{1000 * t:>10.2f}{base / t:>8.2f}{c:>11}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench compile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model", choices=("proxy", "tiny"), default="proxy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--labels", type=int, default=48, help="fixed label set size (COCO seen: 48)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=100, help="Sinkhorn iterations (compiled)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--mode", default=None, help="torch.compile mode (default: the default)")
    p.add_argument(
        "--parts", nargs="+", choices=("inference", "train"), default=["inference", "train"]
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from ram_ot.inference import InferenceModule
    from ram_ot.kcot import KnowledgeConstrainedOT

    model = _build(args.model, device)
    kcot = model.head.kcot
    model.head.kcot = KnowledgeConstrainedOT(
        reg=kcot.reg,
        reg_prior=kcot.reg_prior,
        logit_scale=kcot.logit_scale,
        region_temperature=kcot.region_temperature,
        max_iter=args.max_iter,
        tol=kcot.tol,
        backend=kcot.backend,
    )
    h, w = model.ladder.image_size
    g = torch.Generator().manual_seed(0)
    labels = [f"label {i}" for i in range(args.labels)]
    images = torch.randn(args.batch_size, 3, h, w, generator=g).to(device)
    targets = (torch.rand(args.batch_size, args.labels, generator=g) < 0.1).float()
    targets[:, 0] = 1.0
    targets = targets.to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(
        f"compile: RAM({'RAM-Proxy-ViT emoji' if args.model == 'proxy' else 'RAM-Tiny-ViT'}), "
        f"{h} px, {model.ladder.grid_size[0] * model.ladder.grid_size[1]} regions, batch "
        f"{args.batch_size}, {args.labels} labels, Sinkhorn max_iter {args.max_iter}, "
        f"backend {args.backend}{'' if args.mode is None else ' mode ' + args.mode}, "
        f"{torch.get_num_threads()} thread(s), {device.type} ({where}), torch {torch.__version__}"
    )
    opts = {"fullgraph": True, "backend": args.backend}
    if args.mode is not None:
        opts["mode"] = args.mode

    if "inference" in args.parts:
        model.eval()
        with torch.no_grad():
            emb = model.encode_labels(labels)
        module = InferenceModule(model, emb, max_iter=args.max_iter)
        compiled = torch.compile(module, **opts)
        with torch.no_grad():
            compile_s = {"InferenceModule compiled": _first_call(lambda: compiled(images), device)}
            ref = module(images)["scores"]
            out = compiled(images)["scores"]
            eager_ram = model(images, emb).scores
            med = _measure(
                {
                    "RAM eager (tol=1e-5)": lambda: model(images, emb),
                    "InferenceModule eager": lambda: module(images),
                    "InferenceModule compiled": lambda: compiled(images),
                },
                args.repeats,
                device,
            )
        _report("inference (no grad):", med, compile_s)
        print(
            f"  max |scores| difference: compiled vs eager module {(out - ref).abs().max():.2e}, "
            f"module vs RAM eager (tol) {(ref - eager_ram).abs().max():.2e}"
        )

    if "train" in args.parts:
        model.train()
        with torch.no_grad():
            teacher = model.teacher_prompts(labels)
        compiled_model = torch.compile(model, **opts)

        def step(m: Callable, tol: float | None = None) -> torch.Tensor:
            old = model.head.kcot.tol
            if tol is not None:
                model.head.kcot.tol = tol
            try:
                emb = model.encode_labels(labels)
                loss = m(images, emb, targets, teacher_labels=teacher).loss
                loss.backward()
            finally:
                model.head.kcot.tol = old
            model.zero_grad(set_to_none=True)
            return loss.detach()

        compile_s = {"RAM compiled": _first_call(lambda: step(compiled_model), device)}
        med = _measure(
            {
                "RAM eager (tol=1e-5)": lambda: step(model),
                "RAM eager, tol=0": lambda: step(model, 0.0),
                "RAM compiled": lambda: step(compiled_model),
            },
            args.repeats,
            device,
        )
        _report("training step (forward + loss + backward):", med, compile_s)
    print("(medians; ratio = first row's time / row's time; compile = first compiled call)")
    return 0
