"""PromptEncoder: label names -> label embeddings with a frozen CLIP text tower, RAM §3.2.

Label names are put in a template ("a photo of a {}.") and encoded by the frozen open_clip
text tower; the EOT token's output, projected, is the label embedding (C, D). Optionally a
few learnable context tokens ("deep prompts", the reference's ``DEPTH_TEXT [9, 10, 11]``
and ``TEXT_CTX 4``), shared by all labels, are inserted right after the start token at
the chosen text layers and dropped again after each of them (Tan et al., "Recover and
Match", CVPR 2025, arXiv 2503.15337; the deep prompting of MaPLe/VPT-deep).

Without deep prompts the features are frozen: they equal open_clip's ``encode_text`` of the
templated names and are cached per label list. With deep prompts the frozen layers before the
first prompted one are cached (``cache_text``, see ``docs/prompts.md``).
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


def _run_block(blk: nn.Module, x: Tensor, mask: Tensor, batch_first: bool) -> Tensor:
    """One text block on batch-first `x` (N, L, W), whatever the tower's own layout."""
    if batch_first:
        return blk(x, attn_mask=mask)
    return blk(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)


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

    **Caching and chunks.** With `cache_text` (default), per label list (the last 8): the
    hidden states entering the first prompted layer are computed once without gradients, and
    each call runs only the prompted layers, on the labels' own positions (the positions all
    labels share once, the last layer at the EOT token only); the final features are cached
    whenever they carry no gradient (frozen features, or gradients off). Entries are
    recomputed when a tensor they depend on changes (version counter, storage, dtype,
    device), so the results are those of the whole tower to float rounding. Labels are
    encoded `chunk_size` at a time, so long vocabularies (NUS-WIDE's 1006) fit in memory.

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
        cache_text: cache as above (False: the whole tower on every call, nothing cached);
            also settable later as the attribute ``cache_text``.
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
        cache_text: bool = True,
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
        if not isinstance(cache_text, bool):
            raise TypeError(f"{fn}: expected `cache_text` to be a bool, got {cache_text!r}.")
        self.cache_text = cache_text
        self._cache: OrderedDict = OrderedDict()  # label names -> final features
        self._state_cache: OrderedDict = OrderedDict()  # texts -> _Prepared
        # False: the cached path runs the prompted layers on whole sequences (benchmark only)
        self._own_positions_only = True
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
        self.clear_cache()
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

    def _layer(
        self,
        i: int,
        blk: nn.Module,
        x: Tensor,
        mask: Tensor,
        mask_p: Tensor,
        batch_first: bool,
        ctx_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Text layer `i` on (C, n, W) `x`: its prompts inserted after SOS, run, dropped again.

        The prompts are cast to `ctx_dtype` (default: `x`'s); ``cat`` promotes as it does.
        """
        ctx = self.deep_embeds[str(i)] if str(i) in self.deep_embeds else None
        if ctx is None:
            return _run_block(blk, x, mask, batch_first)
        ctx = ctx.to(ctx_dtype or x.dtype).expand(x.shape[0], -1, -1)  # (C, n_ctx, W)
        x = _run_block(blk, torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1), mask_p, batch_first)
        return torch.cat([x[:, :1], x[:, 1 + self.n_ctx :]], dim=1)

    def _encode_deep(self, tokens: Tensor) -> Tensor:
        """(C, L) int64 token ids -> (C, D) features through the deep-prompted tower."""
        text = _text_parts("PromptEncoder", self.clip_model)
        eot = _eot_index(text, tokens)
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
            x = self._layer(i, blk, x, mask, mask_p, batch_first, ctx_dtype=cast)
        x = text.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (C, n, Wt) -> (C, Wt)
        proj = text.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    # -- caching ---------------------------------------------------------------------
    def _prefix_tensors(self, text: nn.Module) -> list[Tensor]:
        """Every tensor the hidden state entering the first prompted layer depends on."""
        first = self.deep_layers[0]
        out = [text.token_embedding.weight, text.positional_embedding]
        for blk in text.transformer.resblocks[:first]:
            out += list(blk.parameters()) + list(blk.buffers())
        return out

    def _all_tensors(self, text: nn.Module) -> list[Tensor]:
        """Every tensor the final features depend on (text tower and prompts)."""
        out = [text.positional_embedding]
        for name in ("token_embedding", "transformer", "ln_final"):
            mod = getattr(text, name)
            out += list(mod.parameters()) + list(mod.buffers())
        proj = getattr(text, "text_projection", None)
        if isinstance(proj, nn.Module):
            out += list(proj.parameters())
        elif isinstance(proj, Tensor):
            out.append(proj)
        return out + list(self.deep_embeds.parameters())

    def _context_key(self, device: torch.device) -> tuple:
        """What besides the weights changes the numbers: device, autocast, inference mode."""
        return (str(device), _autocast_key(device), torch.is_inference_mode_enabled())

    def _prepare(self, tokens: Tensor, text: nn.Module) -> _Prepared | None:
        """Hidden states entering the first prompted layer, split into shared and own parts.

        Returns None when the fast layout does not apply (no shared start token, or a text
        block the fast evaluation does not know); the caller then runs the plain tower.
        """
        eot = _eot_index(text, tokens)
        first = self.deep_layers[0]
        blocks = list(text.transformer.resblocks)
        if getattr(text, "cls_emb", None) is not None or not all(
            _fast_block_ok(b) for b in blocks[first:]
        ):
            return None
        # positions every label shares (causal attention: their states are shared too),
        # always short of the first EOT so every label keeps one own position
        same = (tokens == tokens[:1]).all(dim=0).long()
        s = min(int(same.cumprod(0).sum()), int(eot.min()))
        if s < 1:
            return None
        lengths = eot - s + 1  # own positions per label, EOT included
        order = torch.argsort(lengths.cpu(), stable=True)
        x_all = self._run_prefix_layers(tokens, eot, text)  # list of (B, n_b, W), label order
        shared = x_all[0][:1, :s]
        width = int(lengths.max())
        own = torch.cat(
            [F.pad(x[:, s:], (0, 0, 0, width - (x.shape[1] - s))) for x in x_all], dim=0
        )  # (C, width, W); rows after a label's EOT are never read by it (causal)
        # one chunk per own length (split at `chunk_size`): no padding to compute on
        chunks, start = [], 0
        for count in torch.unique_consecutive(lengths.cpu()[order], return_counts=True)[1]:
            for c in range(start, start + int(count), self.chunk_size):
                idx = order[c : min(c + self.chunk_size, start + int(count))].to(tokens.device)
                m = int(lengths[idx].max())
                chunks.append((idx, own[idx, :m], lengths[idx] - 1))
            start += int(count)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return _Prepared(shared, chunks, inverse.to(tokens.device))

    def _run_prefix_layers(self, tokens: Tensor, eot: Tensor, text: nn.Module) -> list[Tensor]:
        """The plain tower up to (not including) the first prompted layer, chunk by chunk."""
        tr = text.transformer
        cast = tr.get_cast_dtype()
        batch_first = getattr(tr, "batch_first", True)
        outs = []
        for c in range(0, tokens.shape[0], self.chunk_size):
            tok = tokens[c : c + self.chunk_size]
            n = int(eot[c : c + self.chunk_size].max()) + 1
            tok = tok[:, :n]
            x = text.token_embedding(tok).to(cast) + text.positional_embedding[:n].to(cast)
            mask = _causal_mask(n, x.device, x.dtype)
            for blk in tr.resblocks[: self.deep_layers[0]]:
                x = _run_block(blk, x, mask, batch_first)
            outs.append(x)
        return outs

    def _prepared(self, texts: tuple[str, ...], device: torch.device) -> _Prepared | None:
        """The cached `_Prepared` of `texts`, recomputed when the weights it rests on change."""
        text = _text_parts("PromptEncoder", self.clip_model)
        tensors = self._prefix_tensors(text)
        if any(t.requires_grad for t in tensors):  # a trainable early layer: nothing to cache
            return self._prepare(self._tokens(texts, device), text)
        key = (texts, self._context_key(device))
        sig = _signature(tensors)
        hit = self._state_cache.get(key)
        if hit is not None and hit[0] == sig:
            self._state_cache.move_to_end(key)
            return hit[1]
        with torch.no_grad():
            prep = self._prepare(self._tokens(texts, device), text)
        self._state_cache[key] = (sig, prep)
        while len(self._state_cache) > _CACHE_SIZE:
            self._state_cache.popitem(last=False)
        return prep

    def _encode_cached(self, texts: tuple[str, ...], device: torch.device) -> Tensor:
        """(C, D) features from the cached early layers, then only the prompted layers."""
        prep = self._prepared(texts, device)
        if prep is None:
            return self._encode_plain(texts, device)
        text = _text_parts("PromptEncoder", self.clip_model)
        if not self._own_positions_only:
            return self._finish(text, self._cached_full(prep, text), prep)
        blocks = list(text.transformer.resblocks)
        first, depth, n_ctx = self.deep_layers[0], len(blocks), self.n_ctx
        batch_first = getattr(text.transformer, "batch_first", True)
        # the shared positions, once: their keys/values at every layer from `first` on
        shared_kv, h = [], prep.shared
        for i in range(first, depth):
            ctx = self.deep_embeds[str(i)] if str(i) in self.deep_embeds else None
            if ctx is not None:
                h = torch.cat([h[:, :1], ctx.to(h.dtype)[None], h[:, 1:]], dim=1)
            shared_kv.append(_keys_values(blocks[i], h))
            if i < depth - 1:
                mask = _causal_mask(h.shape[1], h.device, h.dtype)
                h = _run_block(blocks[i], h, mask, batch_first)
                if ctx is not None:
                    h = torch.cat([h[:, :1], h[:, 1 + n_ctx :]], dim=1)
        outs = []
        for _idx, x, last in prep.chunks:
            for i in range(first, depth - 1):
                x = _own_block(blocks[i], x, shared_kv[i - first], None)
            x = _own_block(blocks[-1], x, shared_kv[-1], last)  # (B, 1, W): the EOT only
            outs.append(x[:, 0])
        return self._finish(text, outs, prep)

    def _cached_full(self, prep: _Prepared, text: nn.Module) -> list[Tensor]:
        """The prompted layers on whole sequences (shared + own positions): for comparison."""
        tr = text.transformer
        batch_first = getattr(tr, "batch_first", True)
        n_ctx, s = self.n_ctx, prep.shared.shape[1]
        outs = []
        for _idx, own, last in prep.chunks:
            x = torch.cat([prep.shared.expand(own.shape[0], -1, -1), own], dim=1)
            n = x.shape[1]
            mask = _causal_mask(n, x.device, x.dtype)
            mask_p = _causal_mask(n + n_ctx, x.device, x.dtype)
            for i in range(self.deep_layers[0], len(tr.resblocks)):
                x = self._layer(i, tr.resblocks[i], x, mask, mask_p, batch_first)
            outs.append(x[torch.arange(x.shape[0], device=x.device), s + last])
        return outs

    def _finish(self, text: nn.Module, outs: list[Tensor], prep: _Prepared) -> Tensor:
        """EOT states of the chunks -> (C, D) features in the given label order."""
        x = text.ln_final(torch.cat(outs, dim=0)[prep.inverse])
        proj = text.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def _encode_plain(self, texts: Sequence[str], device: torch.device) -> Tensor:
        outs = []
        for s in range(0, len(texts), self.chunk_size):
            tokens = self._tokens(texts[s : s + self.chunk_size], device)
            outs.append(
                self.clip_model.encode_text(tokens) if self.frozen else self._encode_deep(tokens)
            )
        return torch.cat(outs, dim=0)

    def _encode(self, texts: Sequence[str], device: torch.device) -> Tensor:
        if self.cache_text and not self.frozen:
            return self._encode_cached(tuple(texts), device)
        return self._encode_plain(texts, device)

    def clear_cache(self) -> None:
        """Drop every cached hidden state and feature (they are recomputed on the next call)."""
        self._cache.clear()
        self._state_cache.clear()

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
        # final features are cached when they carry no gradient: frozen, or gradients off
        use_cache = self.cache_text and (self.frozen or not torch.is_grad_enabled())
        if use_cache:
            key = (names, self._context_key(device))
            sig = _signature(self._feature_tensors())
            hit = self._cache.get(key)
            if hit is not None and hit[0] == sig:
                self._cache.move_to_end(key)
                return hit[1]
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
        if use_cache:
            self._cache[key] = (sig, out)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return out

    def _feature_tensors(self) -> list[Tensor]:
        """What the final features rest on: the whole CLIP when frozen (``encode_text`` of any
        tower), else the text parts the deep-prompted encoding reads, and the prompts."""
        if self.frozen:
            return [*self.clip_model.parameters(), *self.clip_model.buffers()]
        return self._all_tensors(_text_parts("PromptEncoder", self.clip_model))


class _Prepared:
    """Hidden states entering the first prompted layer for one label list.

    ``shared``: (1, s, W), the positions every label has in common (start token and the
    template's words before the label); ``chunks``: (label indices, (B, m, W) own positions
    from s to the EOT token, padded after it, (B,) EOT index within them), labels sorted by
    length; ``inverse``: the permutation back to the given label order.
    """

    __slots__ = ("shared", "chunks", "inverse")

    def __init__(self, shared: Tensor, chunks: list, inverse: Tensor) -> None:
        self.shared, self.chunks, self.inverse = shared, chunks, inverse


def _signature(tensors: Iterable[Tensor]) -> tuple:
    """Changes whenever a tensor is written in place, replaced, moved or cast."""
    return tuple((t._version, t.data_ptr(), t.dtype, t.device, t.shape) for t in tensors)


def _autocast_key(device: torch.device) -> tuple:
    try:
        on = torch.is_autocast_enabled(device.type)
        return (on, torch.get_autocast_dtype(device.type) if on else None)
    except (TypeError, AttributeError, RuntimeError):  # torch < 2.4
        return (torch.is_autocast_enabled(), torch.is_autocast_cpu_enabled())


def _eot_index(text: nn.Module, tokens: Tensor) -> Tensor:
    pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
        return (tokens == eos_id).int().argmax(dim=-1)
    raise TypeError(
        f"PromptEncoder: deep prompts need EOT pooling, the text tower pools {pool_type!r}."
    )


def _fast_block_ok(blk: nn.Module) -> bool:
    """True for a plain open_clip ResidualAttentionBlock (what `_own_block` re-derives)."""
    try:
        from open_clip.transformer import ResidualAttentionBlock
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return False
    attn = getattr(blk, "attn", None)
    return (
        type(blk).forward is ResidualAttentionBlock.forward
        and not hasattr(blk, "ln_1_kv")
        and isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and attn.bias_v is None
        and not attn.add_zero_attn
        and (attn.dropout == 0.0 or not attn.training)
    )


def _keys_values(blk: nn.Module, h: Tensor) -> tuple[Tensor, Tensor]:
    """(1, s, W) hidden states -> their (1, heads, s, W/heads) keys and values in `blk`."""
    attn = blk.attn
    w, b = attn.in_proj_weight, attn.in_proj_bias
    width = w.shape[1]
    kv = F.linear(blk.ln_1(h), w[width:], None if b is None else b[width:])
    k, v = kv.split(width, dim=-1)
    return _heads(k, attn.num_heads), _heads(v, attn.num_heads)


def _heads(x: Tensor, n_heads: int) -> Tensor:
    b, n, w = x.shape
    return x.view(b, n, n_heads, w // n_heads).transpose(1, 2)


def _own_block(
    blk: nn.Module, x: Tensor, shared_kv: tuple[Tensor, Tensor], last: Tensor | None
) -> Tensor:
    """One text block on the labels' own positions, attending to the shared ones too.

    The same function as ``blk(cat([shared, x]), causal mask)`` restricted to the rows of
    `x`: queries only at the own positions (at the EOT position alone when `last` is given,
    the last layer), keys and values of the shared positions computed once for all labels.
    """
    attn = blk.attn
    w, b = attn.in_proj_weight, attn.in_proj_bias
    width, heads = w.shape[1], attn.num_heads
    bsz, m, _ = x.shape
    h = blk.ln_1(x)
    kv = F.linear(h, w[width:], None if b is None else b[width:])
    k_own, v_own = kv.split(width, dim=-1)
    k_sh, v_sh = shared_kv
    s = k_sh.shape[2]
    k = torch.cat([k_sh.expand(bsz, -1, -1, -1), _heads(k_own, heads)], dim=2)
    v = torch.cat([v_sh.expand(bsz, -1, -1, -1), _heads(v_own, heads)], dim=2)
    pos = torch.arange(m, device=x.device)
    if last is None:  # every own position: the shared ones, then causal among the own
        mask = torch.cat(
            [torch.ones(m, s, dtype=torch.bool, device=x.device), pos[None] <= pos[:, None]], 1
        )
        q_in, res = h, x
    else:  # one query per label, at its EOT
        rows = torch.arange(bsz, device=x.device)
        q_in, res = h[rows, last][:, None], x[rows, last][:, None]
        mask = torch.cat(
            [
                torch.ones(bsz, s, dtype=torch.bool, device=x.device),
                pos[None] <= last.to(x.device)[:, None],
            ],
            1,
        )[:, None, None]  # (B, 1, 1, s + m)
    q = F.linear(q_in, w[:width], None if b is None else b[:width])
    o = F.scaled_dot_product_attention(_heads(q, heads), k, v, attn_mask=mask)
    o = o.transpose(1, 2).reshape(bsz, q.shape[1], width)
    y = res + blk.ls_1(attn.out_proj(o))
    return y + blk.ls_2(blk.mlp(blk.ln_2(y)))
