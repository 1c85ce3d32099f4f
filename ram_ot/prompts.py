"""PromptEncoder: label names -> label embeddings with a frozen CLIP text tower, RAM §3.2.

Label names are put in a template ("a photo of a {}.") and encoded by the frozen open_clip
text tower; the EOT token's output, projected, is the label embedding (C, D). Optionally a
few learnable context tokens ("deep prompts", the reference's ``DEPTH_TEXT [9, 10, 11]``
and ``TEXT_CTX 4``), shared by all labels, are inserted right after the start token at
the chosen text layers and dropped again after each of them (Tan et al., "Recover and
Match", CVPR 2025, arXiv 2503.15337; the deep prompting of MaPLe/VPT-deep).

Without deep prompts the features are frozen: they equal open_clip's ``encode_text`` of the
templated names and are cached per label list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ram_ot.backbones.open_clip import freeze

__all__ = ["PromptEncoder"]

_CACHE_SIZE = 8


def _text_parts(fn: str, clip_model: nn.Module) -> nn.Module:
    """The module holding the text tower's pieces (the CLIP itself, or its ``.text``)."""
    for holder in (clip_model, getattr(clip_model, "text", None)):
        if holder is not None and all(
            hasattr(holder, a)
            for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")
        ):
            return holder
    raise TypeError(
        f"{fn}: deep prompts need an open_clip text transformer (token_embedding, "
        f"positional_embedding, transformer, ln_final); {type(clip_model).__name__} has none."
    )


def _causal_mask(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)


class PromptEncoder(nn.Module):
    """Encode label names into label embeddings with a frozen CLIP text tower.

    **Deep prompts** (``n_ctx > 0`` and non-empty `deep_layers`): at each layer ``l`` in
    `deep_layers` the sequence becomes ``[SOS, p_l^1..p_l^n_ctx, tok_1, ...]`` for that
    block only (the block's causal mask grows by ``n_ctx``), then the prompt positions are
    dropped, so every other layer, the positional embedding and the EOT pooling see the
    original positions. The text tower is frozen; only the prompts learn.

    **Templates.** One template (default ``"a photo of a {}."``): the embedding is the text
    tower's raw output, as in the reference. Several (`templates`): prompt ensembling — the
    mean of the L2-normalised embeddings over templates, renormalised (unit norm).

    **Caching and chunks.** Frozen features (no deep prompts) are computed without
    gradients and cached per label list (the last 8 lists). Labels are encoded
    `chunk_size` at a time, so long vocabularies (NUS-WIDE's 1006) fit in memory.

    Deviation from the reference: it cuts the sequence at 77 while the prompts are in it
    (a label of more than 72 tokens would lose its EOT token in those layers); here the
    sequence is cut after the last EOT of the chunk instead, which gives the same features
    for all shorter labels (causal attention: later positions never reach the EOT) and
    skips the padding, several times faster for short label names.

    Args:
        clip_model: an open_clip CLIP model (frozen in place; held by reference).
        tokenizer: its tokenizer (list of str -> (C, L) int64).
        template: format string with one ``{}``.
        templates: several format strings for prompt ensembling (overrides `template`).
        n_ctx: learnable tokens per deep layer (0: frozen features).
        deep_layers: text layers that get prompts (negative counts from the end); default:
            the last 3.
        chunk_size: labels encoded per text-tower call.
        device: device of the prompts (default: the CLIP's).
        dtype: dtype of the prompts (default float32).
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[..., Tensor],
        *,
        template: str = "a photo of a {}.",
        templates: Sequence[str] | None = None,
        n_ctx: int = 4,
        deep_layers: Sequence[int] | None = None,
        chunk_size: int = 256,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fn = "PromptEncoder"
        if not callable(tokenizer):
            raise TypeError(
                f"{fn}: expected `tokenizer` to be callable, got {type(tokenizer).__name__}."
            )
        tpls = [template] if templates is None else list(templates)
        if not tpls:
            raise ValueError(f"{fn}: expected `templates` to hold at least one template, got none.")
        for t in tpls:
            if not isinstance(t, str) or t.count("{}") != 1:
                raise ValueError(
                    f"{fn}: expected each template to be a str with one '{{}}', got {t!r}."
                )
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 0:
            raise ValueError(f"{fn}: expected `n_ctx` to be an int >= 0, got {n_ctx!r}.")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"{fn}: expected `chunk_size` to be an int >= 1, got {chunk_size!r}.")
        object.__setattr__(self, "clip_model", freeze(clip_model))  # by reference
        self.tokenizer = tokenizer
        self.templates = tuple(tpls)
        self.n_ctx = n_ctx
        self.chunk_size = chunk_size
        self._cache: OrderedDict = OrderedDict()
        self.deep_layers: tuple[int, ...] = ()
        self.deep_embeds = nn.ParameterDict()
        if n_ctx > 0:
            text = _text_parts(fn, clip_model)
            depth = len(text.transformer.resblocks)
            from ram_ot.adapters import _layer_list

            self.deep_layers = _layer_list(
                fn, "deep_layers", deep_layers, depth, range(max(0, depth - 3), depth)
            )
            width = text.transformer.width
            if device is None:
                device = text.token_embedding.weight.device
            for i in self.deep_layers:
                self.deep_embeds[str(i)] = nn.Parameter(
                    torch.empty(n_ctx, width, device=device, dtype=dtype).normal_(std=0.02)
                )

    @property
    def frozen(self) -> bool:
        """True when no learnable prompt is used (the features are cached)."""
        return len(self.deep_embeds) == 0

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        super()._apply(fn, recurse)
        self.clip_model._apply(fn)
        self._cache.clear()
        return self

    def train(self, mode: bool = True) -> PromptEncoder:
        super().train(mode)
        self.clip_model.eval()
        return self

    def _check_classnames(self, classnames: Iterable[str]) -> tuple[str, ...]:
        fn = "PromptEncoder"
        if isinstance(classnames, str):
            raise TypeError(
                f"{fn}: expected `classnames` to be a sequence of str, got a single str {classnames!r}."
            )
        try:
            names = tuple(classnames)
        except TypeError:
            raise TypeError(
                f"{fn}: expected `classnames` to be a sequence of str, got {type(classnames).__name__}."
            ) from None
        if not names:
            raise ValueError(f"{fn}: expected `classnames` to hold at least one label, got 0.")
        for n in names:
            if not isinstance(n, str):
                raise TypeError(
                    f"{fn}: expected `classnames` to hold str, got {type(n).__name__} {n!r}."
                )
        return names

    def _tokens(self, texts: Sequence[str], device: torch.device) -> Tensor:
        return self.tokenizer(list(texts)).to(device)

    def _encode_deep(self, tokens: Tensor) -> Tensor:
        """(C, L) int64 token ids -> (C, D) features through the deep-prompted tower."""
        text = _text_parts("PromptEncoder", self.clip_model)
        pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        if pool_type == "argmax":
            eot = tokens.argmax(dim=-1)
        elif pool_type == "eos":
            eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
            eot = (tokens == eos_id).int().argmax(dim=-1)
        else:
            raise TypeError(
                f"PromptEncoder: deep prompts need EOT pooling, the text tower pools {pool_type!r}."
            )
        if getattr(text, "cls_emb", None) is not None:
            raise TypeError(
                "PromptEncoder: deep prompts do not support text towers with a class token."
            )
        n = int(eot.max()) + 1
        tokens = tokens[:, :n]  # causal: positions after the last EOT never reach an EOT
        tr = text.transformer
        cast = tr.get_cast_dtype()
        x = text.token_embedding(tokens).to(cast) + text.positional_embedding[:n].to(
            cast
        )  # (C, n, Wt)
        mask = _causal_mask(n, x.device, x.dtype)
        mask_p = _causal_mask(n + self.n_ctx, x.device, x.dtype)
        batch_first = getattr(tr, "batch_first", True)
        for i, blk in enumerate(tr.resblocks):
            ctx = self.deep_embeds[str(i)] if str(i) in self.deep_embeds else None
            if ctx is not None:
                ctx = ctx.to(cast).expand(x.shape[0], -1, -1)  # (C, n_ctx, Wt)
                x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)  # insert after SOS
            m = mask if ctx is None else mask_p
            x = (
                blk(x, attn_mask=m)
                if batch_first
                else blk(x.transpose(0, 1), attn_mask=m).transpose(0, 1)
            )
            if ctx is not None:
                x = torch.cat([x[:, :1], x[:, 1 + self.n_ctx :]], dim=1)  # drop the prompts
        x = text.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (C, n, Wt) -> (C, Wt)
        proj = text.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def _encode(self, texts: Sequence[str], device: torch.device) -> Tensor:
        outs = []
        for s in range(0, len(texts), self.chunk_size):
            tokens = self._tokens(texts[s : s + self.chunk_size], device)
            outs.append(
                self.clip_model.encode_text(tokens) if self.frozen else self._encode_deep(tokens)
            )
        return torch.cat(outs, dim=0)

    def forward(self, classnames: Sequence[str]) -> Tensor:
        """Embed label names.

        Args:
            classnames: C >= 1 label names (free text).

        Returns:
            Tensor: (C, D) in the text tower's dtype, one embedding per label (unit norm when
            several templates are ensembled, raw text-tower output otherwise).
        """
        names = self._check_classnames(classnames)
        device = (
            self.clip_model.token_embedding.weight.device
            if hasattr(self.clip_model, "token_embedding")
            else next(self.clip_model.parameters()).device
        )
        if self.frozen:
            key = (names, str(device))
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        ctx = (
            torch.no_grad()
            if self.frozen
            else torch.enable_grad()
            if torch.is_grad_enabled()
            else torch.no_grad()
        )
        with ctx:
            feats = [self._encode([t.format(n) for n in names], device) for t in self.templates]
            if len(feats) == 1:
                out = feats[0]
            else:
                out = F.normalize(
                    torch.stack([F.normalize(f, dim=-1) for f in feats]).mean(dim=0), dim=-1
                )
        if self.frozen:
            self._cache[key] = out
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return out
