"""Outputs and figures of docs/tagger.md: a tagger trained on the proxy world, its tags and heatmaps.

    python docs/plot_tagger_explain.py [--run-dir DIR]

Trains RAM on Emoji-COCO with the shipped proxy CLIP exactly as ``ram-ot train --demo
--demo-images 2000 800 --seed 0 --output-dir DIR`` (the run of ``python -m ram_ot.bench
tagger``: 3 epochs, about 2-6 minutes on 2 CPU cores), unless DIR already holds its
``tagger.pt``. Then, from DIR (so the paths printed are the
relative ones of the docs):

- prints what the Python calls of docs/tagger.md print (``Tagger.predict`` with top-3, the
  calibrated thresholds and free-text labels) and the output of ``ram-ot tag`` in its
  formats, including ``--explain``;
- writes ``docs/img/tagger-explain-<n>.png``: for the first three test scenes with two or
  more distinct objects, all of seen labels, the scene with its ground-truth boxes, then for the tagger's top-3 labels the
  transport plan's heatmap (top row) and the frozen teacher's prior (bottom row), from
  :meth:`ram_ot.Tagger.explain`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from ram_ot import viz
from ram_ot.cli.main import main as ram_ot
from ram_ot.tagger import Tagger

IMG = Path(__file__).resolve().parent / "img"
SCALE = 2  # the 64 px scenes drawn at 128 px
CAPTION = 16


def train(run_dir: Path) -> None:
    from ram_ot.cli.train import main

    args = ["--demo", "--demo-images", "2000", "800", "--seed", "0", "--no-progress",
            "--output-dir", str(run_dir)]  # fmt: skip
    print("$ ram-ot train " + " ".join(args))
    assert main(args) == 0


def shell(*argv: str) -> None:
    """Run ``ram-ot ARGV`` and print it with its output, as in a terminal."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = ram_ot(list(argv))
    print("$ ram-ot " + " ".join(f'"{a}"' if " " in a or "," in a else a for a in argv))
    print(out.getvalue(), end="")
    assert rc == 0, rc


def scenes(n: int, labels: list[str], *, unseen: bool = False) -> list[tuple[str, list]]:
    """The first `n` test scenes with >= 2 distinct labels, all in `labels` (or, `unseen`: one
    of them not in `labels`): ``(path, [(label, box)])``."""
    doc = json.loads(Path("demo_data/annotations/instances_val2014.json").read_text())
    cats = {c["id"]: c["name"] for c in doc["categories"]}
    out = []
    for im in doc["images"]:
        objs = [(cats[a["category_id"]], a["bbox"]) for a in doc["annotations"]
                if a["image_id"] == im["id"]]  # fmt: skip
        names = {name for name, _ in objs}
        if len(names) >= 2 and (names <= set(labels)) != unseen:
            out.append((f"demo_data/val2014/{im['file_name']}", objs))
        if len(out) == n:
            break
    return out


def tile(image: Image.Image, caption: str) -> Image.Image:
    w, h = image.size
    t = Image.new("RGB", (w, h + CAPTION), "white")
    t.paste(image, (0, 0))
    ImageDraw.Draw(t).text((3, h + 2), caption[:22], fill="black")
    return t


def figure(tagger: Tagger, path: str, objects: list, out: Path) -> list[str]:
    pil = Image.open(path).convert("RGB")
    big = pil.resize((pil.width * SCALE, pil.height * SCALE), Image.Resampling.NEAREST)
    boxed = big.copy()
    d = ImageDraw.Draw(boxed)
    for _, (x, y, w, h) in objects:
        d.rectangle([x * SCALE, y * SCALE, (x + w) * SCALE - 1, (y + h) * SCALE - 1],
                    outline=(255, 0, 0), width=2)  # fmt: skip
    maps = tagger.explain(path, top_k=3)  # {label: map at the image's size}
    names = [k for k in maps if k != "_files"]
    # the prior: the same call's teacher prior, through the tagger's forward
    x = tagger.transform(pil).unsqueeze(0)
    res = tagger.forward(x, tagger.labels, with_prior=True)
    cols = [tagger.labels.index(n) for n in names]
    grid = tuple(tagger.model.ladder.grid_size)
    prior = viz.plan_heatmaps(res.prior[0][:, cols], grid)
    plan = viz.plan_heatmaps(res.plan[0][:, cols], grid)
    top = [tile(boxed, "objects (boxes)")] + [tile(viz.overlay(big, m), f"plan: {n}") for n, m in
                                   zip(names, plan, strict=True)]  # fmt: skip
    bottom = [tile(big, "teacher prior:")] + [tile(viz.overlay(big, m), f"prior: {n}") for n, m in
                                              zip(names, prior, strict=True)]  # fmt: skip
    W, H = top[0].size
    fig = Image.new("RGB", (len(top) * (W + 4) - 4, 2 * H + 4), "white")
    for r, row in enumerate((top, bottom)):
        for c, t in enumerate(row):
            fig.paste(t, (c * (W + 4), r * (H + 4)))
    fig = fig.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    fig.save(out, optimize=True)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default=os.path.join(tempfile.gettempdir(), "ram_ot_docs_tagger"))
    args = p.parse_args()
    run = Path(args.run_dir).resolve()
    if not (run / "tagger.pt").is_file():
        train(run)
    os.chdir(run)  # the docs' paths are relative to the run directory
    tagger = Tagger.load("tagger.pt", device="cpu")
    cal = tagger.calibration
    print(f"# tagger: {len(tagger.labels)} labels; default threshold {cal.default_threshold:.3f}")
    chosen = scenes(3, tagger.labels)
    doc = json.loads(Path("demo_data/annotations/instances_val2014.json").read_text())
    unseen = sorted({c["name"] for c in doc["categories"]} - set(tagger.labels))
    print(f"# unseen labels: {unseen}")
    zsl_scenes = scenes(2, tagger.labels, unseen=True)
    zsl = [path for path, _ in zsl_scenes]
    for path, objs in zsl_scenes:
        print(f"# {path}: {', '.join(sorted({n for n, _ in objs}))}")
    images = [path for path, _ in chosen]
    for path, objs in chosen:
        print(f"# {path}: {', '.join(sorted({n for n, _ in objs}))}")

    for title, call in [
        ("top-3", lambda: tagger.predict(images, top_k=3)),
        ("calibrated thresholds", lambda: tagger.predict(images)),
        ("presence scores", lambda: tagger.predict(images, score="presence")),
        ("free text, top-2", lambda: tagger.predict(zsl, unseen, top_k=2)),
        ("free text, default threshold", lambda: tagger.predict(zsl, unseen, score="presence")),
    ]:
        print(f">>> {title}")
        for tags in call():
            print([(t.label, round(t.score, 3)) for t in tags])

    shell("tag", images[0], "--checkpoint", "tagger.pt", "--top-k", "3", "--no-progress")
    shell("tag", *images[:2], "--checkpoint", "tagger.pt", "--no-progress")
    shell("tag", *zsl, "--checkpoint", "tagger.pt", "--labels", ",".join(unseen), "--top-k", "2",
          "--format", "csv", "--no-progress")  # fmt: skip
    shell("tag", *zsl, "--checkpoint", "tagger.pt", "--labels", ",".join(unseen), "--score",
          "presence", "--no-progress")  # fmt: skip
    shell("tag", images[0], "--checkpoint", "tagger.pt", "--top-k", "2", "--format", "json",
          "--explain", "heatmaps", "--no-progress")  # fmt: skip
    print("$ ls heatmaps")
    print("  ".join(sorted(os.listdir("heatmaps"))))

    IMG.mkdir(exist_ok=True)
    for i, (path, objs) in enumerate(chosen, 1):
        out = IMG / f"tagger-explain-{i}.png"
        names = figure(tagger, path, objs, out)
        print(f"wrote {out.relative_to(IMG.parent.parent)} ({out.stat().st_size // 1024} KB): "
              f"{path}, top-3 {names}")  # fmt: skip


if __name__ == "__main__":
    main()
