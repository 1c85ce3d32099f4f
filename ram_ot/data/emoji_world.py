"""The Emoji world: named objects in cluttered scenes, for the proxy CLIP and Emoji-COCO.

No pretrained CLIP and no COCO image reach the machines that build and test ram-ot, so the
library carries a small world in which the paper's whole experiment (pretraining, seen /
unseen split, training, ZSL / GZSL evaluation, ablations; paper §4) runs on a CPU:

- **Concepts** are the 1,357 single-code-point sprites of Noto Color Emoji (Apache-2.0), each
  named by its Unicode name in lower case ("cat", "bus", "closed umbrella"). They ship as a
  sprite atlas (``ram_ot/data/emoji/atlas.png``, rendered once by
  ``examples/render_emoji_atlas.py``), so nothing needs the font at run time.
- **Scenes** (:func:`render_scenes`): 1 to 4 labelled sprites at random scale, position and
  rotation, overlapping (occlusion), over textured backgrounds, with optional unlabelled
  *distractor* sprites from outside the label set (the paper's "irrelevant regions").
  Vectorised in torch (``grid_sample``) and seeded: the same seed gives the same pixels.
- **Emoji-COCO** (:func:`make_emoji_coco`): COCO's 65 zero-shot class names (48 seen / 17
  unseen, :func:`ram_ot.data.coco_zsl_split`), each mapped to one sprite by
  ``ram_ot/data/emoji/coco_map.json``, written in the COCO 2014 on-disk layout so that
  :func:`ram_ot.data.coco_zsl_datasets` and ``examples/train_coco.py`` read it unchanged.
  Training images carry only seen labels; unseen objects never appear in them.

See ``docs/proxy_world.md`` for what the world shows and what it cannot.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ram_ot.data.splits import ClassSplit, coco_zsl_split

__all__ = [
    "EmojiAtlas",
    "EmojiCOCO",
    "Scenes",
    "caption",
    "coco_sprite_map",
    "distractor_pool",
    "load_atlas",
    "make_emoji_coco",
    "render_scenes",
    "sample_layout",
]

PathLike = Union[str, "os.PathLike[str]"]
_DIR = Path(__file__).resolve().parent / "emoji"
# words too common in Unicode names to mark a sprite as "looking like" a COCO class
_STOPWORDS = frozenset(
    "a an and of with the in on face symbol black white small large sign".split()
)


class EmojiAtlas(NamedTuple):
    """The shipped sprite atlas.

    Attributes:
        sprites: (K, 4, S, S) float32 in [0, 1], straight (not premultiplied) RGBA.
        names: K concept names (lower-case Unicode names), unique.
        codepoints: K code points as ``"U+1F408"`` strings.
    """

    sprites: Tensor
    names: tuple[str, ...]
    codepoints: tuple[str, ...]

    def index(self, name: str) -> int:
        """Row of the concept called `name` (ValueError if there is none)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"EmojiAtlas.index: no concept named {name!r}.") from None


@functools.lru_cache(maxsize=1)
def load_atlas() -> EmojiAtlas:
    """Load the shipped sprite atlas (cached; about 0.2 s the first time)."""
    import numpy as np
    from PIL import Image

    with open(_DIR / "atlas.json", encoding="utf-8") as f:
        meta = json.load(f)
    s, cols = int(meta["sprite_size"]), int(meta["columns"])
    concepts = meta["concepts"]
    with Image.open(_DIR / "atlas.png") as im:
        pixels = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    grid = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255)  # (4, R*S, cols*S)
    rows = grid.shape[1] // s
    tiles = grid.reshape(4, rows, s, cols, s).permute(1, 3, 0, 2, 4)  # (R, cols, 4, S, S)
    sprites = tiles.reshape(rows * cols, 4, s, s)[: len(concepts)].contiguous()
    return EmojiAtlas(
        sprites,
        tuple(c["name"] for c in concepts),
        tuple(c["codepoint"] for c in concepts),
    )


@functools.lru_cache(maxsize=1)
def coco_sprite_map() -> dict[str, str]:
    """COCO class name -> sprite (concept) name, for the 65 classes of the zero-shot split.

    The table (``ram_ot/data/emoji/coco_map.json``) also carries a note per class where no
    sprite fits the COCO name and the closest one was taken (e.g. "sink" -> "potable water
    symbol", a running tap).
    """
    with open(_DIR / "coco_map.json", encoding="utf-8") as f:
        rows = json.load(f)["classes"]
    return {r["coco_name"]: r["sprite"] for r in rows}


def _words(name: str) -> set[str]:
    return {w for w in name.replace("-", " ").split() if w not in _STOPWORDS}


def distractor_pool(atlas: EmojiAtlas, labels: dict[str, str]) -> list[int]:
    """Atlas rows usable as unlabelled distractors for a label set.

    Args:
        atlas: the sprite atlas.
        labels: label name -> sprite name (e.g. :func:`coco_sprite_map`).

    Returns:
        Rows of every concept that is none of the label sprites and shares no content word
        with a label or its sprite's name ("dog face" and "hot dog" are not distractors for
        "dog"), so a distractor never looks like a label it is not annotated with.
    """
    taken = set(labels.values())
    words: set[str] = set()
    for label, sprite in labels.items():
        words |= _words(label) | _words(sprite)
    return [i for i, n in enumerate(atlas.names) if n not in taken and not (_words(n) & words)]


class Scenes(NamedTuple):
    """A batch of rendered scenes.

    Attributes:
        images: (B, 3, H, W) uint8 RGB.
        boxes: per scene, one ``(x, y, w, h)`` box in pixels per labelled object, in the
            order of the scene's objects (the box of the sprite's opaque pixels).
    """

    images: Tensor
    boxes: list[list[tuple[float, float, float, float]]]


def sample_layout(
    n_objects: Sequence[int],
    image_size: int,
    generator: torch.Generator,
    *,
    n_distractors: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random placements: labelled objects on a jittered 2x2 grid, distractors anywhere.

    Args:
        n_objects: per scene, the number of labelled objects (1 to 4).
        image_size: H = W of the scenes in pixels.
        generator: the random source.
        n_distractors: per scene, the number of distractors (default none).

    Returns:
        ``(cx, cy, size, angle)``, each (B, J) float32 with J = max objects + max
        distractors; slots ``[0, n_distractors)`` are the distractors (drawn first, behind),
        the next ``n_objects`` slots the labelled objects; unused slots have size 0.
    """
    B = len(n_objects)
    k = torch.as_tensor(list(n_objects), dtype=torch.long).reshape(B, 1)
    nd = (
        torch.zeros(B, 1, dtype=torch.long)
        if n_distractors is None
        else (torch.as_tensor(list(n_distractors), dtype=torch.long).reshape(B, 1))
    )
    J = int(k.max()) + int(nd.max()) if B else 0
    H = float(image_size)
    u = torch.rand(B, J, 4, generator=generator)
    angle = (u[..., 3] - 0.5) * math.radians(50)  # +-25 degrees
    cells = torch.argsort(torch.rand(B, 4, generator=generator), dim=1)  # a 2x2 cell per object
    slot = torch.arange(J).reshape(1, J)
    obj = slot - nd  # (B, J): index of the labelled object in the slot, < 0 for distractors
    is_dis, is_obj = slot < nd, (obj >= 0) & (obj < k)
    single = is_obj & (k == 1)
    # sizes: distractors 0.2-0.35 H; a lone object 0.45-0.75 H; several objects 0.34-0.52 H
    size = torch.where(is_dis, 0.2 + 0.15 * u[..., 2], 0.34 + 0.18 * u[..., 2])
    size = torch.where(single, 0.45 + 0.3 * u[..., 2], size) * H
    free_x = size / 2 + (H - size) * u[..., 0]  # anywhere inside the image
    free_y = size / 2 + (H - size) * u[..., 1]
    cell = torch.gather(cells, 1, obj.clamp(0, 3))
    grid_x = H * (0.25 + 0.5 * (cell % 2)) + H * 0.24 * (u[..., 0] - 0.5)
    grid_y = H * (0.25 + 0.5 * (cell // 2)) + H * 0.24 * (u[..., 1] - 0.5)
    on_grid = is_obj & ~single
    cx = torch.where(on_grid, grid_x, free_x)
    cy = torch.where(on_grid, grid_y, free_y)
    size = torch.where(is_dis | is_obj, size, torch.zeros_like(size))
    return cx, cy, size, angle


def _backgrounds(B: int, H: int, generator: torch.Generator) -> Tensor:
    """(B, 3, H, H) float32 textured backgrounds: two colours mixed by noise or stripes."""
    c1 = 0.25 + 0.75 * torch.rand(B, 3, 1, 1, generator=generator)
    c2 = 0.25 + 0.75 * torch.rand(B, 3, 1, 1, generator=generator)
    noise = F.interpolate(
        torch.randn(B, 1, 5, 5, generator=generator), size=(H, H), mode="bicubic",
        align_corners=False,
    )  # fmt: skip
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(H).float(), indexing="ij")
    phi = torch.rand(B, 1, 1, 1, generator=generator) * math.pi
    freq = (0.15 + 0.6 * torch.rand(B, 1, 1, 1, generator=generator)) * 2 * math.pi / 8
    stripes = torch.sin(freq * (xs * torch.cos(phi) + ys * torch.sin(phi)))
    kind = torch.rand(B, 1, 1, 1, generator=generator)
    pattern = torch.where(kind < 0.5, noise, stripes)
    t = torch.sigmoid(3 * pattern)
    bg = c1 * (1 - t) + c2 * t
    grain = 0.04 * torch.randn(B, 1, H, H, generator=generator)
    return (bg + grain).clamp_(0, 1)


def render_scenes(
    atlas: EmojiAtlas,
    objects: Sequence[Sequence[int]],
    *,
    image_size: int = 64,
    generator: torch.Generator | None = None,
    distractors: Sequence[Sequence[int]] | None = None,
) -> Scenes:
    """Draw scenes of sprites over textured backgrounds.

    Args:
        atlas: the sprite atlas (:func:`load_atlas`).
        objects: per scene, the atlas rows of its labelled objects (1 to 4 each).
        image_size: H = W in pixels (>= 16).
        generator: random source (default: a fresh one seeded 0).
        distractors: per scene, atlas rows of unlabelled sprites drawn behind the objects.

    Returns:
        :class:`Scenes`: uint8 images and one box per labelled object.
    """
    B = len(objects)
    if B == 0:
        raise ValueError("render_scenes: expected at least one scene in `objects`, got 0.")
    for b, objs in enumerate(objects):
        if not 1 <= len(objs) <= 4:
            raise ValueError(
                f"render_scenes: expected 1 to 4 labelled objects per scene in `objects`, "
                f"got {len(objs)} in scene {b}."
            )
    if image_size < 16:
        raise ValueError(f"render_scenes: expected `image_size` >= 16, got {image_size}.")
    dis = [[] for _ in range(B)] if distractors is None else [list(d) for d in distractors]
    if len(dis) != B:
        raise ValueError(f"render_scenes: expected `distractors` for {B} scenes, got {len(dis)}.")
    g = torch.Generator().manual_seed(0) if generator is None else generator
    H = image_size
    cx, cy, size, angle = sample_layout(
        [len(o) for o in objects], H, g, n_distractors=[len(d) for d in dis]
    )
    J = cx.shape[1]
    K = atlas.sprites.shape[0]
    idx = torch.zeros(B, J, dtype=torch.long)
    for b in range(B):
        rows = list(dis[b]) + list(objects[b])
        if any(not 0 <= r < K for r in rows):
            raise ValueError(f"render_scenes: atlas rows must lie in [0, {K}), got {rows}.")
        idx[b, : len(rows)] = torch.tensor(rows, dtype=torch.long)
    images = _backgrounds(B, H, g)
    # affine map from output coords (normalised, [-1, 1]) into each sprite's coords
    half = (size / H).clamp_min(1e-6)  # sprite half-side in normalised units
    cos, sin = torch.cos(angle), torch.sin(angle)
    ccx, ccy = 2 * cx / H - 1, 2 * cy / H - 1
    a11, a12, a21, a22 = cos / half, sin / half, -sin / half, cos / half
    theta = torch.stack(
        [
            torch.stack([a11, a12, -(a11 * ccx + a12 * ccy)], -1),
            torch.stack([a21, a22, -(a21 * ccx + a22 * ccy)], -1),
        ],
        -2,
    ).reshape(B * J, 2, 3)  # (B, J, 2, 3) -> (B*J, 2, 3)
    src = atlas.sprites[idx.reshape(-1)]  # (B*J, 4, S, S)
    src = torch.cat([src[:, :3] * src[:, 3:], src[:, 3:]], 1)  # premultiplied
    grid = F.affine_grid(theta, [B * J, 4, H, H], align_corners=False)
    warped = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = warped.reshape(B, J, 4, H, H)
    used = (size > 0).float().reshape(B, J, 1, 1, 1)
    warped = warped * used
    for j in range(J):  # back to front
        alpha = warped[:, j, 3:]
        images = images * (1 - alpha) + warped[:, j, :3]
    mask = warped[:, :, 3] > 0.5  # (B, J, H, W)
    xs_any, ys_any = mask.any(2), mask.any(3)  # (B, J, W), (B, J, H)
    x0, y0 = xs_any.float().argmax(-1), ys_any.float().argmax(-1)  # first opaque column / row
    x1 = H - 1 - xs_any.flip(-1).float().argmax(-1)
    y1 = H - 1 - ys_any.flip(-1).float().argmax(-1)
    seen = xs_any.any(-1)
    wh = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], -1).float() * seen[..., None]
    wh = wh.tolist()  # (B, J, 4)
    boxes = [
        [tuple(wh[b][j]) for j in range(len(dis[b]), len(dis[b]) + len(objects[b]))]
        for b in range(B)
    ]
    return Scenes((images * 255).round_().to(torch.uint8), boxes)


def caption(names: Sequence[str]) -> str:
    """The pretraining caption of a scene: "a photo of a cat, a bus and a cake."."""
    names = list(names)
    if not names:
        raise ValueError("caption: expected at least one name, got 0.")
    items = [f"a {n}" for n in names]
    body = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return f"a photo of {body}."


class EmojiCOCO(NamedTuple):
    """Where :func:`make_emoji_coco` wrote its files.

    Attributes:
        root: the dataset directory (COCO 2014 layout).
        split: the 48 seen / 17 unseen COCO labels.
        n_train: training images (seen labels only). n_val: test images (all 65 labels).
    """

    root: str
    split: ClassSplit
    n_train: int
    n_val: int


def _draw_labels(
    classes: Sequence[str], n: int, g: torch.Generator, max_objects: int
) -> list[list[int]]:
    """n label sets: 1..max_objects distinct class indices each, fewer objects more often."""
    weights = torch.tensor([1.0 / (k + 1) for k in range(max_objects)])
    counts = torch.multinomial(weights, n, replacement=True, generator=g) + 1
    out = []
    for k in counts.tolist():
        out.append(torch.randperm(len(classes), generator=g)[:k].tolist())
    return out


def _write_coco_part(
    root: str,
    part: str,
    classes: Sequence[str],
    n: int,
    *,
    image_size: int,
    g: torch.Generator,
    max_objects: int,
    max_distractors: int,
    chunk: int = 256,
) -> None:
    from PIL import Image

    atlas = load_atlas()
    sprite_of = coco_sprite_map()
    split = coco_zsl_split()
    all_names = list(split.gzsl)
    cat_id = {name: i + 1 for i, name in enumerate(all_names)}
    pool = distractor_pool(atlas, sprite_of)
    img_dir = os.path.join(root, f"{part}2014")
    os.makedirs(img_dir, exist_ok=True)
    images, anns = [], []
    label_sets = _draw_labels(classes, n, g, max_objects)
    n_dis = torch.randint(0, max_distractors + 1, (n,), generator=g).tolist()
    for start in range(0, n, chunk):
        sets = label_sets[start : start + chunk]
        rows = [[atlas.index(sprite_of[classes[c]]) for c in s] for s in sets]
        dis = [
            [pool[int(i)] for i in torch.randint(0, len(pool), (k,), generator=g)]
            for k in n_dis[start : start + chunk]
        ]
        scenes = render_scenes(atlas, rows, image_size=image_size, generator=g, distractors=dis)
        for i, s in enumerate(sets):
            image_id = start + i + 1
            file_name = f"COCO_{part}2014_{image_id:012d}.png"
            pixels = scenes.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(os.path.join(img_dir, file_name))
            images.append(
                {"id": image_id, "file_name": file_name, "width": image_size,
                 "height": image_size}
            )  # fmt: skip
            for c, box in zip(s, scenes.boxes[i], strict=True):
                x, y, w, h = box
                anns.append({
                    "id": len(anns) + 1, "image_id": image_id,
                    "category_id": cat_id[classes[c]], "bbox": [x, y, w, h],
                    "area": w * h, "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                })  # fmt: skip
    doc = {
        "info": {"description": "ram-ot Emoji-COCO (Noto Color Emoji sprites)", "version": "1.0",
                 "year": 2014},
        "licenses": [{"id": 1, "name": "Apache-2.0 (Noto Color Emoji images)"}],
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": cat_id[c], "name": c, "supercategory": "emoji"} for c in all_names
        ],
    }  # fmt: skip
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(
        os.path.join(root, "annotations", f"instances_{part}2014.json"), "w", encoding="utf-8"
    ) as f:
        json.dump(doc, f)


def make_emoji_coco(
    root: PathLike,
    *,
    n_train: int = 2000,
    n_val: int = 1000,
    image_size: int = 64,
    max_objects: int = 4,
    max_distractors: int = 2,
    seed: int = 0,
) -> EmojiCOCO:
    """Write Emoji-COCO in the COCO 2014 layout (``annotations/instances_{train,val}2014.json``).

    Training scenes draw their labelled objects from the 48 seen classes only; test
    ("val2014") scenes draw from all 65, so ZSL evaluation has unseen images and GZSL ranks
    all 65 labels in ``sorted(seen) + sorted(unseen)`` order. Each scene holds 1 to
    `max_objects` labelled objects (fewer more often) and 0 to `max_distractors` unlabelled
    sprites from :func:`distractor_pool`. Deterministic: the same arguments give the same
    files. Images are PNG (lossless, so the pixels are the generator's).

    Args:
        root: output directory (created).
        n_train: training images. n_val: test images.
        image_size: H = W in pixels.
        max_objects: 1..4 labelled objects per scene.
        max_distractors: distractors per scene (uniform in 0..max).
        seed: random seed.

    Returns:
        :class:`EmojiCOCO`.
    """
    for name, v, lo in (
        ("n_train", n_train, 1), ("n_val", n_val, 1), ("image_size", image_size, 16),
        ("max_distractors", max_distractors, 0),
    ):  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"make_emoji_coco: expected `{name}` to be an int >= {lo}, got {v!r}.")
    if (
        isinstance(max_objects, bool)
        or not isinstance(max_objects, int)
        or not 1 <= max_objects <= 4
    ):
        raise ValueError(
            f"make_emoji_coco: expected `max_objects` to be an int in 1..4, got {max_objects!r}."
        )
    root = os.fspath(root)
    split = coco_zsl_split()
    g = torch.Generator().manual_seed(seed)
    kw = dict(image_size=image_size, g=g, max_objects=max_objects, max_distractors=max_distractors)
    _write_coco_part(root, "train", split.seen, n_train, **kw)
    _write_coco_part(root, "val", split.gzsl, n_val, **kw)
    return EmojiCOCO(root, split, n_train, n_val)
