"""Backbones: loading frozen open_clip models for the RAM ladder (paper §3.1, §4.1).

Only this sub-package, :mod:`ram_ot.adapters`, :mod:`ram_ot.prompts` and :mod:`ram_ot.model`
know about open_clip; the matching parts (``ot/``, ``kcot.py``, ``heads.py``) never import it.
"""

from ram_ot.backbones.open_clip import (
    PROXY_MODEL_NAME,
    PROXY_PRETRAINED,
    TINY_MODEL_NAME,
    freeze,
    load_clip,
    resize_positional_embedding,
    wrap_clip,
)

__all__ = [
    "PROXY_MODEL_NAME",
    "PROXY_PRETRAINED",
    "TINY_MODEL_NAME",
    "freeze",
    "load_clip",
    "resize_positional_embedding",
    "wrap_clip",
]
