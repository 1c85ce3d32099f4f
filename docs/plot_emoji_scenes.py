"""Figure for docs/proxy_world.md: Emoji-COCO test scenes with their boxes and labels."""

import json
import os
import tempfile

from PIL import Image, ImageDraw

from ram_ot.data.emoji_world import make_emoji_coco

root = tempfile.mkdtemp()
make_emoji_coco(root, n_train=1, n_val=12, image_size=64, seed=5)
doc = json.load(open(os.path.join(root, "annotations", "instances_val2014.json")))
cats = {c["id"]: c["name"] for c in doc["categories"]}
S = 4  # upscale
tiles = []
for im in doc["images"][:12]:
    img = (
        Image.open(os.path.join(root, "val2014", im["file_name"]))
        .convert("RGB")
        .resize((64 * S, 64 * S), Image.NEAREST)
    )
    canvas = Image.new("RGB", (64 * S, 64 * S + 44), "white")
    canvas.paste(img, (0, 0))
    d = ImageDraw.Draw(canvas)
    names = []
    for a in doc["annotations"]:
        if a["image_id"] == im["id"]:
            x, y, w, h = a["bbox"]
            d.rectangle(
                [x * S, y * S, (x + w) * S - 1, (y + h) * S - 1], outline=(255, 0, 0), width=2
            )
            names.append(cats[a["category_id"]])
    d.text((4, 64 * S + 4), ", ".join(names)[:40], fill="black")
    d.text((4, 64 * S + 22), ", ".join(names)[40:80], fill="black")
    tiles.append(canvas)
W, H = tiles[0].size
out = Image.new("RGB", (6 * W, 2 * H), "white")
for i, t in enumerate(tiles):
    out.paste(t, ((i % 6) * W, (i // 6) * H))
out.save("docs/img/emoji_coco_scenes.png", optimize=True)
print(out.size, os.path.getsize("docs/img/emoji_coco_scenes.png"))
