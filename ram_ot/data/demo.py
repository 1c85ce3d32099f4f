"""A small synthetic COCO-format dataset for demos and tests (no download needed).

:func:`make_demo_coco` draws coloured shapes ("red circle", "blue square", ...) on noisy
backgrounds and writes them exactly as COCO 2014 is laid out on disk::

    <root>/annotations/instances_train2014.json
    <root>/annotations/instances_val2014.json
    <root>/annotations/demo_split.json        {"seen": [...], "unseen": [...]}
    <root>/train2014/COCO_train2014_000000000001.jpg ...
    <root>/val2014/COCO_val2014_000000000001.jpg ...

Every drawn shape is one instance annotation (bbox, polygon segmentation, area), so the
image-level labels derived from the instances file are exactly the classes drawn. Some
classes are unseen (absent from training labels, present in val), so the zero-shot and
generalised zero-shot protocols of :func:`ram_ot.data.coco_zsl_datasets` run unchanged.
"""

from __future__ import annotations

import json
import math
import os
import random
from typing import NamedTuple, Union

from ram_ot.data.splits import ClassSplit

__all__ = ["DEMO_CLASSES", "DEMO_UNSEEN", "DemoDataset", "make_demo_coco"]

PathLike = Union[str, "os.PathLike[str]"]

_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
}
_SHAPES = ("circle", "square", "triangle", "cross")
DEMO_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for s in _SHAPES for c in _COLORS)
"""The 16 demo labels: 4 colours x 4 shapes."""
DEMO_UNSEEN: tuple[str, ...] = (
    "blue triangle", "green cross", "red square", "red triangle", "yellow circle", "yellow cross",
)  # fmt: skip
"""Demo labels held out of training (each colour and shape is still seen in other pairs)."""


class DemoDataset(NamedTuple):
    """Where :func:`make_demo_coco` wrote its files.

    Attributes:
        root: the dataset directory (COCO layout).
        split: seen / unseen labels.
        split_file: path of ``annotations/demo_split.json``.
        n_train: number of training images. n_val: number of val images.
    """

    root: str
    split: ClassSplit
    split_file: str
    n_train: int
    n_val: int


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "circle":
        return [
            (cx + r * math.cos(2 * math.pi * i / 16), cy + r * math.sin(2 * math.pi * i / 16))
            for i in range(16)
        ]
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    w = r / 3  # cross: a 12-gon
    return [
        (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
        (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
    ]  # fmt: skip


def _area(poly: list[tuple[float, float]]) -> float:
    return (
        abs(
            sum(
                x0 * y1 - x1 * y0
                for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=False)
            )
        )
        / 2.0
    )


def _write_part(
    root: str, part: str, n: int, image_size: int, classes: tuple[str, ...], rng: random.Random
) -> None:
    from PIL import Image, ImageDraw

    img_dir = os.path.join(root, f"{part}2014")
    os.makedirs(img_dir, exist_ok=True)
    cat_id = {name: i + 1 for i, name in enumerate(DEMO_CLASSES)}
    images, anns = [], []
    for image_id in range(1, n + 1):
        base = tuple(rng.randint(170, 250) for _ in range(3))
        im = Image.new("RGB", (image_size, image_size), base)
        draw = ImageDraw.Draw(im)
        for _ in range(image_size // 4):  # speckle noise
            x, y = rng.randrange(image_size), rng.randrange(image_size)
            draw.point((x, y), fill=tuple(max(0, c - rng.randint(20, 60)) for c in base))
        for name in rng.sample(classes, rng.randint(1, 3)):
            color, shape = name.split(" ")
            r = rng.uniform(0.12, 0.22) * image_size
            cx, cy = rng.uniform(r, image_size - r), rng.uniform(r, image_size - r)
            poly = [(round(x, 2), round(y, 2)) for x, y in _polygon(shape, cx, cy, r)]
            draw.polygon(poly, fill=_COLORS[color])
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            anns.append({
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat_id[name],
                "segmentation": [[v for p in poly for v in p]],
                "area": _area(poly),
                "bbox": [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)],
                "iscrowd": 0,
            })  # fmt: skip
        file_name = f"COCO_{part}2014_{image_id:012d}.jpg"
        im.save(os.path.join(img_dir, file_name), quality=92)
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
    doc = {
        "info": {
            "description": "ram-ot synthetic demo data (coloured shapes)",
            "version": "1.0",
            "year": 2014,
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": cat_id[c], "name": c, "supercategory": "shape"} for c in DEMO_CLASSES
        ],
    }
    with open(
        os.path.join(root, "annotations", f"instances_{part}2014.json"), "w", encoding="utf-8"
    ) as f:
        json.dump(doc, f)


def make_demo_coco(
    root: PathLike,
    *,
    n_train: int = 192,
    n_val: int = 96,
    image_size: int = 64,
    seed: int = 0,
) -> DemoDataset:
    """Write a small COCO-2014-format dataset of coloured shapes to `root`.

    Training images draw only seen classes (as in a zero-shot benchmark, no unseen object
    appears in training images); val images draw from all 16 classes. The result is a pure
    function of the arguments (same files for the same seed).

    Args:
        root: output directory (created; existing demo files are overwritten).
        n_train: number of training images. n_val: number of val images.
        image_size: side of the square images in pixels.
        seed: random seed of the drawing.

    Returns:
        :class:`DemoDataset` with the root and the split.
    """
    for name, v, lo in (
        ("n_train", n_train, 1),
        ("n_val", n_val, 1),
        ("image_size", image_size, 16),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"make_demo_coco: expected `{name}` to be an int >= {lo}, got {v!r}.")
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    split = ClassSplit.make([c for c in DEMO_CLASSES if c not in DEMO_UNSEEN], DEMO_UNSEEN)
    rng = random.Random(seed)
    _write_part(root, "train", n_train, image_size, split.seen, rng)
    _write_part(root, "val", n_val, image_size, DEMO_CLASSES, rng)
    split_file = os.path.join(root, "annotations", "demo_split.json")
    with open(split_file, "w", encoding="utf-8") as f:
        json.dump({"seen": list(split.seen), "unseen": list(split.unseen)}, f, indent=1)
    return DemoDataset(root, split, split_file, n_train, n_val)
