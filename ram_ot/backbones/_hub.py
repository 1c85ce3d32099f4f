"""Fail fast, in one line, when CLIP weights would have to be downloaded and cannot be.

open_clip downloads a pretrained tag's weights on first use; offline, huggingface_hub
retries for about a minute and open_clip then raises a chain of three tracebacks. Before
asking open_clip for a hub tag (or an ``hf-hub:`` model), :func:`ensure_reachable` checks
whether the files are already cached; when they are not, and the machine is offline
(``HF_HUB_OFFLINE=1`` or a 3-second connection probe fails), it raises
:class:`WeightsUnavailableError` with one line saying how to give a local file instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

__all__ = ["WeightsUnavailableError", "ensure_reachable"]

_PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


class WeightsUnavailableError(RuntimeError):
    """CLIP weights are neither cached nor downloadable here (the message says what to do)."""


def _offline_env() -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]}"
    return None


def _can_connect(host: str, port: int = 443) -> bool:
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _hf_cached(repo_id: str, filenames: tuple[str, ...], cache_dir: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip then cannot use the hub either
        return False
    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(hit, str) and os.path.isfile(hit):
            return True
    return False


_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _needs(model_name: str, pretrained: str | None, cache_dir: str | None) -> tuple[str, str] | None:
    """``(host, what)`` of a download that would be needed, or None when nothing is."""
    if model_name.startswith("hf-hub:"):
        repo = model_name[len("hf-hub:") :]
        if not _hf_cached(repo, ("open_clip_config.json",), cache_dir) or not _hf_cached(
            repo, _WEIGHT_FILES, cache_dir
        ):
            return "huggingface.co", f"the hub model {repo!r}"
        return None
    if pretrained is None:
        return None
    from ram_ot.backbones.open_clip import PROXY_MODEL_NAME, PROXY_PRETRAINED

    if model_name == PROXY_MODEL_NAME and pretrained == PROXY_PRETRAINED:
        return None  # shipped with the package
    from ram_ot.backbones.open_clip import _looks_like_path

    if _looks_like_path(pretrained) or os.path.isfile(pretrained):
        return None
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"unknown pretrained tag {pretrained!r} for {model_name!r} (known: "
            f"{', '.join(tags) or 'none'}); or give a local checkpoint file."
        )
    if "file" in cfg:
        return None
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", ""): default files
        names = (filename,) if filename else _WEIGHT_FILES
        if filename.endswith(".bin"):
            names = (filename[: -len(".bin")] + ".safetensors", filename)
        if _hf_cached(repo, names, cache_dir):
            return None
        return "huggingface.co", f"the weights of {model_name!r} / {pretrained!r}"
    url = cfg.get("url", "")
    if url:
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        if os.path.isfile(os.path.join(root, os.path.basename(url))):
            return None
        return urlparse(url).hostname or "", f"the weights of {model_name!r} / {pretrained!r}"
    return None


def ensure_reachable(
    fn: str, model_name: str, pretrained: str | None, *, cache_dir: str | None = None
) -> None:
    """Raise :class:`WeightsUnavailableError` at once if the CLIP weights cannot be had.

    Args:
        fn: the caller's name, for the message.
        model_name: open_clip architecture or ``hf-hub:org/repo``.
        pretrained: pretrained tag, local file or None.
        cache_dir: the download cache open_clip will use.

    Raises:
        WeightsUnavailableError: not cached and offline (one-line message).
        ValueError: an unknown pretrained tag.
    """
    try:
        need = _needs(model_name, pretrained, cache_dir)
    except ValueError as exc:
        raise ValueError(f"{fn}: {exc}") from None
    if need is None:
        return
    host, what = need
    why = _offline_env()
    if why is None and host and not _can_connect(host):
        why = f"{host} cannot be reached"
    if why is not None:
        raise WeightsUnavailableError(
            f"{fn}: {what} are not in the cache and cannot be downloaded ({why}); give a local "
            "checkpoint file instead, e.g. --pretrained /path/to/open_clip_model.safetensors "
            "(Python: pretrained='/path/to/file')."
        )
