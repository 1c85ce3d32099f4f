"""Tag image files with free-text labels using a frozen CLIP, training-free.

RAM's "Recover" and "Match" also work without any training: the value–value side path of a
frozen CLIP gives region embeddings with local semantics, and KCOT matches regions to
labels at inference. This script prints, for every image, the top-k labels by

- RAM (training-free): the fused score of the CLIP global branch and the KCOT-matched
  value–value regions (``RAM(..., adapter_layers=(), n_visual_tokens=0, n_ctx=0)``);
- plain CLIP: the softmax of the global zero-shot logits.

Run::

    python examples/zero_shot_tagging.py photo1.jpg photos/ --labels "cat,dog,sofa,tv" \
        --model ViT-B-16 --pretrained openai           # or a local checkpoint file

Without weights (``--pretrained none``) it runs a randomly initialised model and warns that
the tags are meaningless (useful as a smoke test offline).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from PIL import Image

from ram_ot.backbones.open_clip import load_clip
from ram_ot.model import RAM

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _image_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise SystemExit(f"zero_shot_tagging: no such file or directory: {p}")
    if not files:
        raise SystemExit("zero_shot_tagging: no image files given.")
    return files


def _format(labels: list[str], probs: torch.Tensor, k: int) -> str:
    top = probs.topk(min(k, len(labels)))
    return ", ".join(f"{labels[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files or directories")
    parser.add_argument("--labels", required=True, help="comma-separated label names")
    parser.add_argument("--model", default="ViT-B-16", help="open_clip architecture name")
    parser.add_argument(
        "--pretrained", default="openai", help="open_clip tag, local checkpoint file, or 'none' (random)"
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    labels = [s.strip() for s in args.labels.split(",") if s.strip()]
    if not labels:
        parser.error("--labels holds no label name")
    pretrained = None if args.pretrained.lower() in ("", "none") else args.pretrained
    if pretrained is None:
        warnings.warn(
            "no pretrained weights: running a randomly initialised model, its tags are meaningless.",
            UserWarning,
            stacklevel=1,
        )
    clip_model, tokenizer, preprocess = load_clip(args.model, pretrained, device=args.device)
    # Training-free RAM: value-value regions + KCOT, no adapters, tokens or prompts.
    model = RAM(clip_model, tokenizer, adapter_layers=(), n_visual_tokens=0, n_ctx=0).eval()
    device = clip_model.visual.conv1.weight.device

    files = _image_files(args.images)
    print(f"{len(files)} images, {len(labels)} labels, model {args.model} ({args.pretrained})")
    with torch.no_grad():
        label_emb = model.encode_labels(labels)
        for s in range(0, len(files), args.batch_size):
            batch = files[s : s + args.batch_size]
            images = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in batch]).to(device)
            out = model(images, label_emb)
            clip_probs = out.logits_global.softmax(dim=-1)
            for f, ram_p, clip_p in zip(batch, out.scores, clip_probs, strict=False):
                print(f"{f.name}")
                print(f"  RAM (v-v regions + KCOT): {_format(labels, ram_p, args.top_k)}")
                print(f"  CLIP global:              {_format(labels, clip_p, args.top_k)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
