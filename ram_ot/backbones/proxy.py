"""The proxy CLIP: a small open_clip model pretrained on the Emoji world, shipped with ram-ot.

No real CLIP weights reach the machines that build and test this project, so ram-ot makes
its own: :data:`~ram_ot.backbones.open_clip.PROXY_MODEL_NAME` (``"RAM-Proxy-ViT"``: 64 px images, 8 px patches (an 8x8
token grid), 4 layers of width 128 in each tower, 128-d joint space, context length 32),
pretrained contrastively with open_clip's own ``ClipLoss`` on generated scenes captioned
with their objects ("a photo of a cat, a bus and a cake."), drawing on every concept of the
world, as real CLIP saw everything (:func:`pretrain_proxy_clip`,
``examples/pretrain_proxy_clip.py``). Its weights ship with the package under the
pretrained tag :data:`~ram_ot.backbones.open_clip.PROXY_PRETRAINED`, so ``load_clip(PROXY_MODEL_NAME,
pretrained=PROXY_PRETRAINED)`` works offline on any machine.

The token embedding (49,408 x 128) would dominate the file. Only the rows that the world's
captions and labels use are ever trained (the others start at zero, get no gradient and
weight decay keeps them at zero), so the file stores those rows and their ids, and
:func:`load_proxy_weights` rebuilds the full table with zeros elsewhere.

It is a proxy: it shows that the method and the code work end to end, never what RAM
scores on COCO. See ``docs/proxy_world.md``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "PROXY_MODEL_NAME",
    "PROXY_PRETRAINED",
    "PretrainConfig",
    "load_proxy_weights",
    "pack_proxy_weights",
    "pretrain_proxy_clip",
    "proxy_vocabulary",
    "zero_shot_top1",
]

from ram_ot.backbones.open_clip import PROXY_MODEL_NAME, PROXY_PRETRAINED

_DIR = Path(__file__).resolve().parent
PROXY_WEIGHTS = _DIR / "proxy" / f"{PROXY_MODEL_NAME}-{PROXY_PRETRAINED}.pt"
_TEMPLATE_TEXT = "a photo of a , and ."


def proxy_vocabulary() -> list[str]:
    """Every name the world uses: concept names, COCO class names (aliases), template words."""
    from ram_ot.data.emoji_world import coco_sprite_map, load_atlas

    names = list(load_atlas().names) + list(coco_sprite_map())
    return names + [_TEMPLATE_TEXT]


def _used_token_ids(tokenizer: Callable[..., Tensor]) -> Tensor:
    """Sorted ids of every BPE token of :func:`proxy_vocabulary` (with start/end tokens)."""
    ids = tokenizer(proxy_vocabulary())  # (V, L)
    return torch.unique(ids.flatten())


def pack_proxy_weights(model: nn.Module, tokenizer: Callable[..., Tensor]) -> dict[str, Any]:
    """The compact, ``weights_only``-loadable form of a proxy CLIP state (fp16).

    Returns:
        ``{"format", "model_name", "state_dict", "token_ids", "token_rows"}`` where
        ``state_dict`` lacks ``token_embedding.weight`` and ``token_rows`` (V', D) holds its
        rows ``token_ids`` (V',). Raises ValueError when another row is not zero.
    """
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    table = sd.pop("token_embedding.weight")
    ids = _used_token_ids(tokenizer)
    rest = torch.ones(table.shape[0], dtype=torch.bool)
    rest[ids] = False
    if rest.any() and table[rest].abs().max() > 0:
        raise ValueError(
            "pack_proxy_weights: token-embedding rows outside the world's vocabulary are not "
            "zero; the model was not trained by pretrain_proxy_clip."
        )
    return {
        "format": "ram-ot proxy clip v1",
        "model_name": PROXY_MODEL_NAME,
        "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
        "token_ids": ids,
        "token_rows": table[ids].half(),
        "vocab_size": table.shape[0],
    }


def load_proxy_weights(model: nn.Module, path: str | os.PathLike | None = None) -> nn.Module:
    """Load packed proxy weights (default: the shipped ones) into an open_clip `model`.

    Args:
        model: a ``RAM-Proxy-ViT`` open_clip model (changed in place).
        path: a file written by :func:`pack_proxy_weights` (+ ``torch.save``).

    Returns:
        The same model.
    """
    path = PROXY_WEIGHTS if path is None else Path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"load_proxy_weights: proxy CLIP weights not found at {path}; reinstall ram-ot "
            "or run examples/pretrain_proxy_clip.py."
        )
    pack = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(pack, dict) or pack.get("format") != "ram-ot proxy clip v1":
        raise ValueError(f"load_proxy_weights: {path} is not a packed proxy CLIP file.")
    ref = model.state_dict()
    table = torch.zeros_like(ref["token_embedding.weight"])
    table[pack["token_ids"]] = pack["token_rows"].to(table.dtype)
    sd = {k: v.to(ref[k].dtype) for k, v in pack["state_dict"].items()}
    sd["token_embedding.weight"] = table
    model.load_state_dict(sd, strict=True)
    return model


class PretrainConfig(NamedTuple):
    """The pretraining recipe (defaults: the shipped proxy's).

    Attributes:
        steps: optimiser steps. batch_size: scenes per step.
        lr, betas, weight_decay, warmup: AdamW with linear warm-up then cosine decay to 0.
        object_weights: relative frequency of scenes with 1, 2, 3, 4 objects.
        alias_prob: chance that a sprite with a COCO alias is captioned by the COCO name.
        seed: random seed (scenes, captions and initialisation).
        eval_every, save_every: steps between zero-shot evaluations / checkpoints.
        threads: torch threads (0: leave torch's default).
        bf16: run the forward under bfloat16 autocast (on CPU about 1.6x faster matmuls).
    """

    steps: int = 3000
    batch_size: int = 256
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.2
    warmup: int = 100
    object_weights: tuple[float, float, float, float] = (0.4, 0.3, 0.2, 0.1)
    alias_prob: float = 0.5
    seed: int = 0
    eval_every: int = 250
    save_every: int = 250
    threads: int = 0
    bf16: bool = True


def _scene_batch(
    atlas: Any,
    aliases: dict[str, list[str]],
    n: int,
    weights: Tensor,
    g: torch.Generator,
    alias_prob: float,
    image_size: int,
) -> tuple[Tensor, list[str]]:
    from ram_ot.data.emoji_world import caption, render_scenes

    K = len(atlas.names)
    counts = (torch.multinomial(weights, n, replacement=True, generator=g) + 1).tolist()
    objs = [torch.randperm(K, generator=g)[:k].tolist() for k in counts]
    scenes = render_scenes(atlas, objs, image_size=image_size, generator=g)
    coins = torch.rand(n, 4, generator=g).tolist()
    texts = []
    for o, c in zip(objs, coins, strict=True):
        names = []
        for i, idx in enumerate(o):
            name = atlas.names[idx]
            alts = aliases.get(name)
            names.append(alts[0] if alts and c[i] < alias_prob else name)
        texts.append(caption(names))
    return scenes.images, texts


def _normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean).reshape(1, 3, 1, 1)
    s = torch.tensor(std).reshape(1, 3, 1, 1)
    return (images.float() / 255 - m) / s


@torch.no_grad()
def zero_shot_top1(
    model: nn.Module,
    tokenizer: Callable[..., Tensor],
    labels: Sequence[str],
    sprites: Sequence[str],
    *,
    n_per_label: int = 8,
    image_size: int | None = None,
    seed: int = 1234,
) -> float:
    """Top-1 accuracy of zero-shot classification of single-object scenes.

    Each of `sprites` (atlas concept names) is drawn alone `n_per_label` times; the model
    ranks `labels` (its text names, same order) by cosine with ``"a photo of a {label}."``.

    Returns:
        float: the accuracy, in [0, 1]; chance is ``1 / len(labels)``.
    """
    from ram_ot.data.emoji_world import load_atlas, render_scenes

    atlas = load_atlas()
    size = image_size or model.visual.image_size[0]
    g = torch.Generator().manual_seed(seed)
    rows = [atlas.index(s) for s in sprites for _ in range(n_per_label)]
    truth = torch.arange(len(sprites)).repeat_interleave(n_per_label)
    images = render_scenes(atlas, [[r] for r in rows], image_size=size, generator=g).images
    pc = model.visual.preprocess_cfg
    x = _normalise(images, pc["mean"], pc["std"])
    was = model.training
    model.eval()
    text = model.encode_text(tokenizer([f"a photo of a {lab}." for lab in labels]), normalize=True)
    feats = torch.cat(
        [model.encode_image(x[i : i + 256], normalize=True) for i in range(0, len(x), 256)]
    )
    model.train(was)
    return float((feats @ text.T).argmax(1).eq(truth).float().mean())


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def pretrain_proxy_clip(
    output_dir: str | os.PathLike,
    cfg: PretrainConfig | None = None,
    *,
    log: Callable[[str], None] = print,
) -> nn.Module:
    """Pretrain the proxy CLIP from scratch; resumable from ``<output_dir>/pretrain_last.pt``.

    Writes ``pretrain_last.pt`` (model, optimiser, step, RNG) every ``cfg.save_every`` steps
    and at the end, ``pretrain_log.jsonl`` (loss, lr, zero-shot top-1 over the 65 COCO
    names), and the packed weights ``RAM-Proxy-ViT-emoji.pt`` at the end.

    Returns:
        The trained open_clip model (eval mode).
    """
    import open_clip
    from open_clip.loss import ClipLoss

    cfg = PretrainConfig() if cfg is None else cfg

    from ram_ot.backbones.open_clip import _register_configs
    from ram_ot.data.emoji_world import coco_sprite_map, load_atlas

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _register_configs()
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(PROXY_MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(PROXY_MODEL_NAME)
    with torch.no_grad():  # rows outside the world's vocabulary stay zero for ever
        keep = torch.zeros(model.token_embedding.weight.shape[0], dtype=torch.bool)
        keep[_used_token_ids(tokenizer)] = True
        model.token_embedding.weight[~keep] = 0
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, eps=1e-6,
    )  # fmt: skip
    g = torch.Generator().manual_seed(cfg.seed + 1)
    step = 0
    ckpt = out / "pretrain_last.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        log(f"resumed from {ckpt} at step {step}")
    atlas = load_atlas()
    sprite_of = coco_sprite_map()
    aliases: dict[str, list[str]] = {}
    for coco, sprite in sprite_of.items():
        if coco != sprite:
            aliases.setdefault(sprite, []).append(coco)
    coco_names = list(sprite_of)
    coco_sprites = [sprite_of[c] for c in coco_names]
    weights = torch.tensor(cfg.object_weights, dtype=torch.float)
    pc = model.visual.preprocess_cfg
    size = model.visual.image_size[0]
    loss_fn = ClipLoss()
    logf = open(out / "pretrain_log.jsonl", "a", encoding="utf-8")

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "generator": g.get_state(), "torch_rng": torch.get_rng_state(),
             "config": list(cfg)},
            tmp,
        )  # fmt: skip
        os.replace(tmp, ckpt)

    model.train()
    t0, seen_loss = time.time(), []
    while step < cfg.steps:
        images, texts = _scene_batch(
            atlas, aliases, cfg.batch_size, weights, g, cfg.alias_prob, size
        )
        x = _normalise(images, pc["mean"], pc["std"])
        lr = _lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            img_f, txt_f, scale = model(x, tokenizer(texts))
        loss = loss_fn(img_f.float(), txt_f.float(), scale.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        seen_loss.append(float(loss.detach()))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = zero_shot_top1(model, tokenizer, coco_names, coco_sprites)
            rec = {"step": step, "loss": sum(seen_loss) / len(seen_loss), "lr": lr,
                   "zs_top1_coco65": acc, "logit_scale": float(model.logit_scale.exp()),
                   "elapsed_s": round(time.time() - t0, 1)}  # fmt: skip
            seen_loss = []
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log(json.dumps(rec))
        if step % cfg.save_every == 0 or step == cfg.steps:
            save()
    logf.close()
    model.eval()
    torch.save(pack_proxy_weights(model, tokenizer), out / PROXY_WEIGHTS.name)
    return model
