"""Pretrain the proxy CLIP (``RAM-Proxy-ViT``) on generated Emoji-world scenes, from scratch.

The package already ships the result (``load_clip("RAM-Proxy-ViT", pretrained="emoji")``);
this script is how it was made (see ``docs/proxy_world.md`` for the exact command and its
log). It trains a small open_clip ViT + text transformer with open_clip's ``ClipLoss`` on
scenes of 1-4 sprites captioned "a photo of a cat, a bus and a cake.", drawing on all 1,357
concepts. Resumable: run the same command again after a crash and it continues from
``<output-dir>/pretrain_last.pt``::

    python examples/pretrain_proxy_clip.py --output-dir runs/proxy            # the shipped recipe
    python examples/pretrain_proxy_clip.py --output-dir runs/proxy --install  # + copy into the package

Writes ``pretrain_log.jsonl`` (loss, lr, zero-shot top-1 over the 65 COCO names every
``--eval-every`` steps) and, at the end, the packed weights ``RAM-Proxy-ViT-emoji.pt``.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from ram_ot.backbones.proxy import PROXY_WEIGHTS, PretrainConfig, pretrain_proxy_clip


def main(argv: list[str] | None = None) -> int:
    d = PretrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", required=True)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--no-bf16", action="store_true", help="forward in float32")
    p.add_argument("--install", action="store_true", help=f"copy the result to {PROXY_WEIGHTS}")
    a = p.parse_args(argv)
    for name in ("steps", "batch_size", "warmup", "eval_every", "save_every"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    cfg = d._replace(
        steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup,
        weight_decay=a.weight_decay, seed=a.seed, eval_every=a.eval_every,
        save_every=a.save_every, threads=a.threads, bf16=not a.no_bf16,
    )  # fmt: skip
    pretrain_proxy_clip(a.output_dir, cfg)
    if a.install:
        PROXY_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f"{a.output_dir}/{PROXY_WEIGHTS.name}", PROXY_WEIGHTS)
        print(f"installed {PROXY_WEIGHTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
