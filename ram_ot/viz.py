"""Where did each label take its mass from? Heatmaps of the KCOT transport plan, RAM Sec. 3.3.

The plan ``T`` (N, C) of an image says how much of region n's mass went to label c. Its
column ``T[:, c]``, reshaped to the H×W patch grid, is a map of the regions label c was
matched to; the teacher prior ``P[:, :, c]`` (:func:`ram_ot.kcot.teacher_prior`) is the
frozen CLIP's own guess of the same. This module turns such columns into heatmaps over the
image, with PIL and numpy only (no plotting library).

- :func:`plan_heatmaps`: (N, C) -> C maps (H, W) in [0, 1] (each column divided by its max);
- :func:`upsample`: a grid map -> the image's size (bilinear);
- :func:`overlay`: a map over an image as a colour overlay (PIL RGB);
- :func:`save_explanations`: the overlays of several labels (and their prior) as PNGs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["overlay", "plan_heatmaps", "save_explanations", "upsample"]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def plan_heatmaps(plan: Any, grid: tuple[int, int]) -> np.ndarray:
    """Per-label maps of a transport plan (or teacher prior) on the patch grid.

    Args:
        plan: (N, C) or (B, N, C) tensor / array, N = H·W regions in row-major grid order.
        grid: ``(H, W)`` of the patch grid.

    Returns:
        ndarray: (C, H, W) (or (B, C, H, W)) float32 in [0, 1], each map divided by its
        maximum (an all-zero column stays zero).
    """
    p = _to_numpy(plan)
    h, w = (int(grid[0]), int(grid[1]))
    if p.ndim not in (2, 3) or p.shape[-2] != h * w:
        raise ValueError(
            f"plan_heatmaps: expected `plan` of shape (N, C) or (B, N, C) with N = H·W = {h * w}, "
            f"got {tuple(p.shape)}."
        )
    maps = np.moveaxis(p, -1, -2).reshape(*p.shape[:-2], p.shape[-1], h, w)  # (.., N, C) -> (.., C, H, W)
    peak = maps.max(axis=(-2, -1), keepdims=True)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1), 0).astype(np.float32)


def upsample(heatmap: Any, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) map to the image size ``(width, height)`` (PIL's order), bilinear.

    Returns:
        ndarray: (height, width) float32.
    """
    from PIL import Image

    m = _to_numpy(heatmap)
    if m.ndim != 2:
        raise ValueError(f"upsample: expected `heatmap` of shape (H, W), got {tuple(m.shape)}.")
    im = Image.fromarray(m).resize((int(size[0]), int(size[1])), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def _colormap(v: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8, a blue-green-yellow-red ramp (piecewise linear)."""
    stops = np.array([0.0, 0.33, 0.66, 1.0])
    colors = np.array([[0, 0, 130], [0, 170, 170], [240, 220, 0], [220, 20, 20]], dtype=np.float32)
    v = np.clip(v, 0, 1)
    rgb = np.stack([np.interp(v, stops, colors[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def overlay(image: Any, heatmap: Any, *, alpha: float = 0.5) -> Any:
    """Draw `heatmap` (H, W in [0, 1], any grid) over a PIL image; returns a PIL RGB image."""
    from PIL import Image

    image = image.convert("RGB")
    m = upsample(heatmap, image.size)
    colour = Image.fromarray(_colormap(m))
    a = float(alpha)
    if not 0 <= a <= 1:
        raise ValueError(f"overlay: expected `alpha` in [0, 1], got {alpha!r}.")
    return Image.blend(image, colour, a)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "label"


def save_explanations(
    image: Any,
    plan: Any,
    labels: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    grid: tuple[int, int],
    prior: Any = None,
    prefix: str = "",
    alpha: float = 0.5,
) -> list[Path]:
    """Write one PNG per label: the image with its plan heatmap (and its prior, side by side).

    Args:
        image: the PIL image that was tagged (any size).
        plan: (N, C) plan of that image over the C `labels`.
        labels: the C label names (used in the file names).
        out_dir: directory (created).
        grid: ``(H, W)`` patch grid, N = H·W.
        prior: (N, C) teacher prior, optional: drawn to the right of the plan's overlay.
        prefix: file-name prefix (e.g. the image's stem).
        alpha: overlay opacity.

    Returns:
        The paths written, ``<out_dir>/<prefix>_<label>.png``, in label order.
    """
    from PIL import Image

    maps = plan_heatmaps(plan, grid)
    if maps.shape[0] != len(labels):
        raise ValueError(
            f"save_explanations: expected {maps.shape[0]} `labels` (the plan's C), got {len(labels)}."
        )
    pmaps = plan_heatmaps(prior, grid) if prior is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, name in enumerate(labels):
        panel = overlay(image, maps[c], alpha=alpha)
        if pmaps is not None:
            right = overlay(image, pmaps[c], alpha=alpha)
            both = Image.new("RGB", (panel.width * 2 + 4, panel.height), (255, 255, 255))
            both.paste(panel, (0, 0))
            both.paste(right, (panel.width + 4, 0))
            panel = both
        stem = f"{_slug(prefix)}_{_slug(name)}" if prefix else _slug(name)
        p = out / f"{stem}.png"
        panel.save(p)
        paths.append(p)
    return paths
