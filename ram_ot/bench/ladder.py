"""Benchmark: memory of a RAM training step and the cost of the shared-trunk teacher.

``python -m ram_ot.bench ladder [--model ViT-B-16] [--batch 8] [--labels 80] [--repeats 3]``

1. **Peak memory** of one training step (forward + backward, no optimiser state) of
   - ``ram``: :class:`~ram_ot.model.RAM` with the reference defaults (ladder with adapters
     and visual tokens on the last 3 layers, deep text prompts, KCOT head, teacher on);
   - ``finetune``: fine-tuning the whole image tower of the same CLIP (trainable ViT,
     frozen text features, CLIP logits with a BCE loss).
   Each runs in its own fresh subprocess on CPU with random weights (no download), glibc
   told to serve blocks over 128 KiB by mmap (``MALLOC_MMAP_THRESHOLD_``, so freed tensors
   leave the resident set at once): one warm-up step, gradients dropped, ``malloc_trim``,
   then the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``)
   during the measured step minus the resident size just before it. Linux only.
2. **Teacher cost**: median wall time of a training step with the teacher (shared trunk,
   :class:`~ram_ot.adapters.LadderLocalAdapter` ``with_teacher=True``) over the same step
   without it (``use_teacher=False``), and of the step plus a *separate* frozen teacher
   forward (what a second model would cost), all in this process.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

__all__ = ["main"]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - non-glibc
        pass


def _setup(kind: str, args: argparse.Namespace):
    """Build the model of `kind` and return a closure running one training step."""
    from ram_ot.backbones.open_clip import load_clip
    from ram_ot.model import RAM

    torch.manual_seed(0)
    clip_model, tokenizer, _ = load_clip(args.model, pretrained=None)
    size = tuple(clip_model.visual.image_size)
    images = torch.randn(args.batch, 3, *size)
    labels = [f"label number {i}" for i in range(args.labels)]
    targets = (torch.rand(args.batch, args.labels) < 0.1).float()
    targets[:, 0] = 1

    if kind == "finetune":
        clip_model.visual.requires_grad_(True).train()
        with torch.no_grad():
            text = torch.nn.functional.normalize(clip_model.encode_text(tokenizer(labels)), dim=-1)

        def step():
            img = torch.nn.functional.normalize(clip_model.encode_image(images), dim=-1)
            logits = 100.0 * img @ text.T
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
            loss.backward()

        params = list(clip_model.visual.parameters())
        return step, params, None

    model = RAM(clip_model, tokenizer, use_teacher=(kind != "ram-noteacher")).train()

    def step():
        model(images, labels, targets).loss.backward()

    return step, list(model.parameters()), (model, images, labels, targets)


def _child(kind: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    step, params, _ = _setup(kind, args)
    step()  # warm-up (lazy allocations, caches)
    for p in params:
        p.grad = None
    _trim()
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    print(json.dumps({"kind": kind, "base_kib": base, "peak_kib": peak, "seconds": dt}))


def _measure_memory(kind: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "ram_ot.bench.ladder",
        "--child",
        kind,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--labels",
        str(args.labels),
        "--threads",
        str(args.threads),
    ]
    # Large blocks straight from mmap and back on free: the resident size then follows the
    # live tensors instead of glibc's heap high-water mark (same setting for every child).
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MALLOC_MMAP_THRESHOLD_="131072")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ladder benchmark child {kind!r} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _time_teacher(args: argparse.Namespace) -> dict:
    from ram_ot.adapters import LadderLocalAdapter

    torch.set_num_threads(args.threads)
    _, _, (model, images, labels, targets) = _setup("ram", args)
    separate = LadderLocalAdapter(model.clip_model.visual, adapter_layers=(), n_visual_tokens=0)

    def run(use_teacher: bool, second_model: bool = False) -> float:
        model.use_teacher = use_teacher
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(images, labels, targets).loss.backward()
        if second_model:
            with torch.no_grad():
                separate(images)
        return time.perf_counter() - t0

    run(True)  # warm-up
    times: dict[str, list[float]] = {"without": [], "shared": [], "separate": []}
    for _ in range(args.repeats):  # interleaved, so that load changes hit all three alike
        times["shared"].append(run(True))
        times["without"].append(run(False))
        times["separate"].append(run(False, second_model=True))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ram_ot.bench ladder", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--labels", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        _child(args.child, args)
        return 0

    print(
        f"ladder benchmark: {args.model}, random weights, {args.batch} images, {args.labels} labels, "
        f"CPU, {args.threads} threads, torch {torch.__version__}"
    )
    if not args.skip_memory:
        if not os.path.exists("/proc/self/clear_refs"):
            print("memory: skipped (needs Linux /proc/self/clear_refs)")
        else:
            rows = {k: _measure_memory(k, args) for k in ("finetune", "ram", "ram-noteacher")}
            ft = rows["finetune"]["peak_kib"] - rows["finetune"]["base_kib"]
            print(
                "\npeak memory of one training step (fwd + bwd), above the resident size before it:"
            )
            print("| step | peak MiB | ratio to fine-tuning the ViT |")
            print("|---|---:|---:|")
            for k in ("finetune", "ram", "ram-noteacher"):
                d = rows[k]["peak_kib"] - rows[k]["base_kib"]
                print(f"| {k} | {d / 1024:.0f} | {d / ft:.2f} |")
    if not args.skip_time:
        t = _time_teacher(args)
        print(f"\ntraining step time (median of {args.repeats}, interleaved):")
        print("| step | seconds | ratio to no teacher |")
        print("|---|---:|---:|")
        for k, name in (
            ("without", "no teacher"),
            ("shared", "teacher, shared trunk (RAM)"),
            ("separate", "teacher as a separate frozen forward"),
        ):
            print(f"| {name} | {t[k]:.2f} | {t[k] / t['without']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
