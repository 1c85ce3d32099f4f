"""Load a frozen open_clip model for RAM (paper §3.1 "Recover", §4.1 implementation details).

RAM keeps the whole CLIP model frozen: the image tower is the *trunk* read by the ladder
(:class:`ram_ot.adapters.LadderLocalAdapter`) and the text tower encodes label names
(:class:`ram_ot.prompts.PromptEncoder`). This module builds such a model by name, with weights
from an open_clip pretrained tag, from a local checkpoint file, or none at all (random
initialisation, no download), and freezes it.

The package ships one extra architecture, :data:`TINY_MODEL_NAME` (``"RAM-Tiny-ViT"``: 32 px
images, 8 px patches, 4 layers of width 64 in each tower, 32-d joint space), registered with
open_clip the first time :func:`load_clip` is asked for it. It exists so that tests, examples
and smoke runs work offline in well under a second; its random weights carry no meaning.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "PROXY_MODEL_NAME",
    "PROXY_PRETRAINED",
    "TINY_MODEL_NAME",
    "freeze",
    "load_clip",
    "resize_positional_embedding",
    "wrap_clip",
]

TINY_MODEL_NAME = "RAM-Tiny-ViT"
"""Name of the tiny ViT config shipped with the package (random weights only)."""
PROXY_MODEL_NAME = "RAM-Proxy-ViT"
"""Name of the proxy CLIP config; its weights ship under the pretrained tag ``"emoji"``."""
PROXY_PRETRAINED = "emoji"
"""Pretrained tag of the proxy CLIP weights shipped with the package (``ram_ot/backbones/proxy/``)."""

_CONFIG_DIR = Path(__file__).resolve().parent
_REGISTERED = False
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def _register_configs() -> None:
    """Register the package's json configs with open_clip (once, on first use)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import open_clip

    for name in (TINY_MODEL_NAME, PROXY_MODEL_NAME):
        if name not in open_clip.list_models():
            open_clip.add_model_config(_CONFIG_DIR / f"{name}.json")
    _REGISTERED = True


def freeze(module: nn.Module) -> nn.Module:
    """Switch off gradients for every parameter of `module` and put it in eval mode.

    Args:
        module: any module, changed in place.

    Returns:
        The same module.
    """
    module.requires_grad_(False)
    module.eval()
    return module


def _preprocess_for(clip_model: nn.Module) -> Callable[[Any], torch.Tensor]:
    """The open_clip evaluation transform (resize, centre crop, normalise) of `clip_model`."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = getattr(clip_model.visual, "preprocess_cfg", None)
    if cfg is None:
        size = getattr(clip_model.visual, "image_size", 224)
        cfg = {"size": size}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def _is_proxy_weights(pretrained: str) -> bool:
    """True for the proxy's pretrained tag or a packed proxy file (see ``proxy.py``)."""
    if pretrained == PROXY_PRETRAINED:
        return True
    return os.path.isfile(pretrained) and _packed_format(pretrained)


def _packed_format(path: str) -> bool:
    try:
        pack = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a plain torch file: leave it to open_clip
        return False
    return isinstance(pack, dict) and pack.get("format") == "ram-ot proxy clip v1"


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or (os.altsep is not None and os.altsep in pretrained)
        or pretrained.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


class _DropRandomInitNotice(logging.Filter):
    """Drop open_clip's "No pretrained weights loaded" notice (random init was asked for)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    """While building a model with ``pretrained=None``, silence open_clip's root-logger notice."""
    if not active:
        yield
        return
    root = logging.getLogger()
    notice = _DropRandomInitNotice()
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


def load_clip(
    model_name: str = "ViT-B-16",
    pretrained: str | os.PathLike | None = "openai",
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    cache_dir: str | None = None,
) -> tuple[nn.Module, Callable[..., torch.Tensor], Callable[[Any], torch.Tensor]]:
    """Build a frozen open_clip model, its tokenizer and its evaluation transform.

    Args:
        model_name: an open_clip architecture name (``"ViT-B-16"``, ``"ViT-L-14"``, ...,
            ``"hf-hub:org/repo"``), :data:`TINY_MODEL_NAME` or :data:`PROXY_MODEL_NAME`.
        pretrained: where the weights come from: an open_clip pretrained tag (``"openai"``,
            ``"laion2b_s34b_b88k"``; downloaded once into `cache_dir`), a local checkpoint
            file (never downloads), or None for random initialisation (never downloads).
            :data:`PROXY_MODEL_NAME` with :data:`PROXY_PRETRAINED` (``"emoji"``) loads the
            proxy CLIP's weights shipped with the package (offline).
        device: where to put the model (default: CPU).
        precision: open_clip precision string (``"fp32"``, ``"fp16"``, ``"bf16"``, ``"amp"``).
        cache_dir: download cache for pretrained tags.

    Returns:
        ``(clip_model, tokenizer, preprocess)``: the model with every parameter frozen
        (``requires_grad=False``) and in eval mode; the tokenizer (list of strings -> (C, L)
        int64 token ids); the PIL -> (3, H, W) float32 evaluation transform.

    Raises:
        FileNotFoundError: `pretrained` looks like a path but no such file exists.
        ValueError: `model_name` is not an open_clip architecture.

    Example:
        >>> from ram_ot.backbones.open_clip import TINY_MODEL_NAME, load_clip
        >>> model, tokenizer, preprocess = load_clip(TINY_MODEL_NAME, pretrained=None)
        >>> model.visual.image_size
        (32, 32)
    """
    import open_clip

    if not isinstance(model_name, str):
        raise TypeError(
            f"load_clip: expected `model_name` to be a str, got {type(model_name).__name__}."
        )
    _register_configs()
    if not model_name.startswith(("hf-hub:", "local-dir:")) and model_name.replace(
        "/", "-"
    ) not in (open_clip.list_models()):
        raise ValueError(
            f"load_clip: expected `model_name` to be an open_clip architecture "
            f"(e.g. 'ViT-B-16' or {TINY_MODEL_NAME!r}), got {model_name!r}."
        )
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        if not pretrained:
            pretrained = None
        elif _looks_like_path(pretrained) and not os.path.isfile(pretrained):
            raise FileNotFoundError(
                f"load_clip: `pretrained` checkpoint file {pretrained!r} does not exist."
            )
    device = torch.device("cpu") if device is None else torch.device(device)
    if model_name == PROXY_MODEL_NAME and pretrained is not None and _is_proxy_weights(pretrained):
        # the shipped proxy CLIP (or a packed file of the same kind): weights from the package
        from ram_ot.backbones.proxy import load_proxy_weights

        with _quiet_random_init(True):
            model = open_clip.create_model(
                model_name, pretrained=None, precision=precision, pretrained_image=False,
                pretrained_text=False,
            )  # fmt: skip
        load_proxy_weights(model, None if pretrained == PROXY_PRETRAINED else pretrained)
        model.to(device)
        tokenizer = open_clip.get_tokenizer(model_name)
        return freeze(model), tokenizer, _preprocess_for(model)
    # With no CLIP checkpoint, also skip the default per-tower weights (hf text towers would
    # otherwise be downloaded): pretrained=None means no download on any code path.
    with _quiet_random_init(pretrained is None):
        model = open_clip.create_model(
            model_name,
            pretrained=pretrained,
            precision=precision,
            device=device,
            cache_dir=cache_dir,
            pretrained_image=False,
            pretrained_text=pretrained is not None,
        )
    tokenizer = open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    return freeze(model), tokenizer, _preprocess_for(model)


def wrap_clip(
    clip_model: nn.Module,
    tokenizer: Callable[..., torch.Tensor] | None = None,
    *,
    model_name: str | None = None,
) -> tuple[nn.Module, Callable[..., torch.Tensor], Callable[[Any], torch.Tensor]]:
    """Accept an already built open_clip model: freeze it and find its tokenizer and transform.

    Args:
        clip_model: an open_clip ``CLIP`` / ``CustomTextCLIP`` model (frozen in place).
        tokenizer: its tokenizer; default: ``open_clip.get_tokenizer(model_name)`` when
            `model_name` is given, else open_clip's BPE ``SimpleTokenizer`` with the model's
            context length.
        model_name: the architecture name, used only to find the tokenizer.

    Returns:
        ``(clip_model, tokenizer, preprocess)`` as :func:`load_clip` returns them.
    """
    import open_clip

    if not isinstance(clip_model, nn.Module) or not hasattr(clip_model, "visual"):
        raise TypeError(
            f"wrap_clip: expected `clip_model` to be an open_clip model with a `visual` tower, "
            f"got {type(clip_model).__name__}."
        )
    if tokenizer is None:
        if model_name is not None:
            _register_configs()
            tokenizer = open_clip.get_tokenizer(model_name)
        else:
            context_length = int(getattr(clip_model, "context_length", 77))
            tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    return freeze(clip_model), tokenizer, _preprocess_for(clip_model)


@torch.no_grad()
def resize_positional_embedding(
    visual: nn.Module, image_size: int | tuple[int, int], *, mode: str = "bilinear"
) -> nn.Module:
    """Let a ViT take `image_size` inputs: interpolate its positional-embedding grid in place.

    As the official code's ``resize_pos_embed`` (``clip/model.py``): the class token's
    embedding is kept, the ``(h, w)`` grid of patch embeddings is resized to
    ``(H / patch, W / patch)`` with ``F.interpolate(mode, align_corners=False)`` (bilinear
    in the official code), and the tower's ``image_size`` / ``grid_size`` are updated.

    Args:
        visual: an open_clip ``VisionTransformer`` (``clip_model.visual``).
        image_size: the new input side, or ``(H, W)``; multiples of the patch size.
        mode: ``"bilinear"`` (official) or ``"bicubic"`` (open_clip's own ``resize_pos_embed``).

    Returns:
        `visual`, changed in place (a no-op when the grid already has that size).
    """
    fn = "resize_positional_embedding"
    if not hasattr(visual, "positional_embedding") or not hasattr(visual, "conv1"):
        raise TypeError(
            f"{fn}: expected an open_clip VisionTransformer, got {type(visual).__name__}."
        )
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"{fn}: expected `mode` in ('bilinear', 'bicubic'), got {mode!r}.")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    patch = tuple(int(p) for p in visual.conv1.kernel_size)
    if len(size) != 2 or any(int(s) < patch[i] or int(s) % patch[i] for i, s in enumerate(size)):
        raise ValueError(
            f"{fn}: expected `image_size` to be a positive multiple of the patch size {patch}, "
            f"got {image_size!r}."
        )
    new_grid = (int(size[0]) // patch[0], int(size[1]) // patch[1])
    old_grid = tuple(int(g) for g in visual.grid_size)
    pos = visual.positional_embedding  # (1 + h*w, W)
    if new_grid != old_grid:
        cls_tok, grid = pos[:1], pos[1:]
        width = grid.shape[-1]
        grid = grid.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)  # (1, W, h, w)
        grid = torch.nn.functional.interpolate(
            grid.float(), size=new_grid, mode=mode, align_corners=False
        ).to(pos.dtype)
        grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width)  # (H*W, W)
        new = torch.cat([cls_tok, grid], dim=0)
        visual.positional_embedding = nn.Parameter(new, requires_grad=pos.requires_grad)
    visual.grid_size = new_grid
    visual.image_size = (int(size[0]), int(size[1]))
    return visual
