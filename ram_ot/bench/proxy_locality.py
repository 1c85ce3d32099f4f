"""Benchmark: does the proxy CLIP show the problem RAM's "Recover" addresses (paper §3.2)?

``python -m ram_ot.bench proxy-locality [--images 500]``

CLIP's last-layer patch tokens carry poor local semantics: a region's token does not say
what is *in that region*. RAM's ladder restores locality with value-value attention. This
benchmark measures both on Emoji-COCO test scenes, with the generator's boxes as truth: for
every labelled object, the patch tokens whose centres lie inside its box are projected into
the joint space and matched against the 65 COCO label texts ("a photo of a {}."). It reports
how often the object's own label is the top-1 label:

- **box mean**: of the mean embedding of the box's tokens;
- **per patch**: of each token alone, averaged over the box's tokens;

for (a) the trunk's last-layer patch tokens (``ln_post`` + ``proj``, what plain CLIP gives),
(b) the value-value path of the training-free ladder (RAM's regions before any training),
next to (c) the global embedding of the whole image (is the object's label its top-1 among
the labels *present*?) and chance (1/65).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch
import torch.nn.functional as F


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ram_ot.bench proxy-locality", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--images", type=int, default=500, help="test scenes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pretrained", default=None, help="proxy weights file (default: shipped)")
    a = p.parse_args(argv)
    if a.images < 1:
        p.error(f"--images must be >= 1, got {a.images}")

    from PIL import Image

    from ram_ot.backbones.open_clip import PROXY_MODEL_NAME, PROXY_PRETRAINED, load_clip
    from ram_ot.data import build_transform, clip_normalization, coco_zsl_split
    from ram_ot.data.emoji_world import make_emoji_coco
    from ram_ot.model import RAM

    clip, tokenizer, _ = load_clip(PROXY_MODEL_NAME, a.pretrained or PROXY_PRETRAINED)
    size = clip.visual.image_size[0]
    patch = clip.visual.patch_size[0]
    grid = size // patch
    mean, std = clip_normalization(clip)
    tf = build_transform(size, train=False, mean=mean, std=std)
    labels = list(coco_zsl_split().gzsl)
    ram = RAM(clip, tokenizer, adapter_layers=(), n_visual_tokens=0, n_ctx=0).eval()

    counts = {k: [0, 0] for k in ("last box", "last patch", "vv box", "vv patch", "global")}
    n_obj = 0
    with tempfile.TemporaryDirectory() as root, torch.no_grad():
        make_emoji_coco(root, n_train=1, n_val=a.images, image_size=size, seed=a.seed)
        with open(
            os.path.join(root, "annotations", "instances_val2014.json"), encoding="utf-8"
        ) as f:
            doc = json.load(f)
        cats = {c["id"]: c["name"] for c in doc["categories"]}
        by_image: dict[int, list] = {}
        for ann in doc["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        text = F.normalize(
            clip.encode_text(tokenizer([f"a photo of a {c}." for c in labels])), dim=-1
        )
        for start in range(0, len(doc["images"]), 64):
            items = doc["images"][start : start + 64]
            x = torch.stack(
                [tf(Image.open(os.path.join(root, "val2014", im["file_name"])).convert("RGB"))
                 for im in items]
            )  # fmt: skip
            v = clip.visual
            v.output_tokens = True
            pooled, tokens = v(x)  # (B, D), (B, N, W)
            v.output_tokens = False
            last = F.normalize(tokens @ v.proj, dim=-1)  # (B, N, W) @ (W, D) -> (B, N, D)
            vv = F.normalize(ram.ladder(x).image_regions, dim=-1)  # (B, N, D)
            glob = F.normalize(pooled, dim=-1) @ text.T  # (B, C)
            centres = (torch.arange(grid) * patch + patch / 2).float()
            cy, cx = torch.meshgrid(centres, centres, indexing="ij")
            cy, cx = cy.flatten(), cx.flatten()  # (N,)
            for b, im in enumerate(items):
                anns = by_image.get(im["id"], [])
                present = [labels.index(cats[ann["category_id"]]) for ann in anns]
                for ann in anns:
                    c = labels.index(cats[ann["category_id"]])
                    x0, y0, w, h = ann["bbox"]
                    inside = (cx >= x0) & (cx < x0 + w) & (cy >= y0) & (cy < y0 + h)
                    if not bool(inside.any()):
                        continue
                    n_obj += 1
                    for name, emb in (("last", last[b]), ("vv", vv[b])):
                        e = emb[inside]  # (n, D)
                        box = F.normalize(e.mean(0), dim=-1) @ text.T
                        counts[f"{name} box"][0] += int(box.argmax() == c)
                        per = (e @ text.T).argmax(-1)
                        counts[f"{name} patch"][0] += float((per == c).float().mean())
                        counts[f"{name} box"][1] += 1
                        counts[f"{name} patch"][1] += 1
                    g = glob[b, present]
                    counts["global"][0] += int(present[int(g.argmax())] == c)
                    counts["global"][1] += 1
    acc = {k: hit / max(1, n) for k, (hit, n) in counts.items()}
    print(f"{n_obj} labelled objects in {a.images} scenes; {grid}x{grid} patch grid; 65 labels")
    print("top-1 = the object's own label, among all 65 labels (chance 1.54%):")
    print(
        f"  last-layer patch tokens   box mean {100 * acc['last box']:6.2f}%   per patch {100 * acc['last patch']:6.2f}%"
    )
    print(
        f"  value-value path          box mean {100 * acc['vv box']:6.2f}%   per patch {100 * acc['vv patch']:6.2f}%"
    )
    print(
        f"global embedding: the object's label ranks first among the scene's own labels "
        f"{100 * acc['global']:.2f}% of the time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
