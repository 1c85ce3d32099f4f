"""Render the Emoji world's sprite atlas from the Noto Color Emoji font (run once, by maintainers).

The package ships the result (``ram_ot/data/emoji/atlas.png`` + ``atlas.json``), so nothing
needs the font at run time and every platform sees the same pixels. Only this script needs
the font (Debian: ``apt-get install fonts-noto-color-emoji``; its images are Apache-2.0)::

    python examples/render_emoji_atlas.py                       # writes into ram_ot/data/emoji/
    python examples/render_emoji_atlas.py --font /path/NotoColorEmoji.ttf --sprite-size 32

Every single-code-point glyph of the font that has a Unicode name becomes one concept, named
by ``unicodedata.name`` in lower case ("cat", "bus", "closed umbrella"). Left out: ASCII
(digits, ``#``, ``*``), joiners, variation selectors, skin-tone and hair components,
regional-indicator letters, tag characters and private-use code points.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "ram_ot", "data", "emoji")
_STRIKE = 109  # the one bitmap size of Noto Color Emoji's CBDT table


def _excluded(cp: int) -> bool:
    return (
        cp < 0xA9
        or 0x200B <= cp <= 0x200F  # joiners and marks
        or 0x20D0 <= cp <= 0x20FF  # combining marks (keycap)
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0x1F1E6 <= cp <= 0x1F1FF  # regional-indicator letters (flags come in pairs)
        or 0x1F3FB <= cp <= 0x1F3FF  # skin-tone modifiers
        or 0x1F9B0 <= cp <= 0x1F9B3  # hair components
        or 0xE0000 <= cp <= 0xE007F  # tags
        or 0xE000 <= cp <= 0xF8FF  # private use
        or cp >= 0xF0000
    )


def concepts(font_path: str) -> list[tuple[int, str]]:
    """(code point, lower-case Unicode name) of every single-code-point sprite of the font."""
    from fontTools.ttLib import TTFont

    cmap = TTFont(font_path).getBestCmap()
    out = []
    for cp in sorted(cmap):
        if _excluded(cp):
            continue
        name = unicodedata.name(chr(cp), "")
        if name:
            out.append((cp, name.lower()))
    return out


def render(font_path: str, cp: int, size: int):
    """One glyph as a (size, size) RGBA image: cropped to its alpha, centred, downscaled."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, _STRIKE)
    canvas = Image.new("RGBA", (2 * _STRIKE, 2 * _STRIKE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text(
        (_STRIKE // 4, _STRIKE // 4), chr(cp), font=font, embedded_color=True
    )
    box = canvas.getchannel("A").getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    # premultiplied resize, so transparent pixels do not bleed their colour into the edges
    return square.convert("RGBa").resize((size, size), Image.LANCZOS).convert("RGBA")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--font", default=DEFAULT_FONT, help="path of NotoColorEmoji.ttf")
    p.add_argument("--sprite-size", type=int, default=32, help="side of each sprite in pixels")
    p.add_argument("--columns", type=int, default=40, help="sprites per atlas row")
    p.add_argument("--out-dir", default=OUT_DIR, help="where atlas.png and atlas.json go")
    args = p.parse_args(argv)
    if not os.path.isfile(args.font):
        p.error(
            f"--font {args.font!r} does not exist; install it with "
            "`apt-get install fonts-noto-color-emoji` or pass its path."
        )
    from PIL import Image

    items = []
    for cp, name in concepts(args.font):
        sprite = render(args.font, cp, args.sprite_size)
        if sprite is not None:
            items.append((cp, name, sprite))
    s, cols = args.sprite_size, args.columns
    rows = -(-len(items) // cols)
    atlas = Image.new("RGBA", (cols * s, rows * s), (0, 0, 0, 0))
    for i, (_, _, sprite) in enumerate(items):
        atlas.paste(sprite, ((i % cols) * s, (i // cols) * s))
    os.makedirs(args.out_dir, exist_ok=True)
    atlas.save(os.path.join(args.out_dir, "atlas.png"), optimize=True)
    meta = {
        "source": "Noto Color Emoji (github.com/googlefonts/noto-emoji), images Apache-2.0",
        "font_file": os.path.basename(args.font),
        "sprite_size": s,
        "columns": cols,
        "concepts": [{"codepoint": f"U+{cp:04X}", "name": name} for cp, name, _ in items],
    }
    with open(os.path.join(args.out_dir, "atlas.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=0, ensure_ascii=False)
        f.write("\n")
    print(f"{len(items)} sprites of {s}x{s} px -> {args.out_dir}/atlas.png ({cols}x{rows})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
