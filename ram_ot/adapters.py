"""Ladder Local Adapter over a frozen open_clip ViT, RAM §3.2 ("Recover").

CLIP's patch tokens carry poor local semantics. RAM keeps the ViT frozen (the *trunk*) and
runs a side path (the *ladder*) that reads the trunk's hidden states layer by layer and
accumulates its own residual stream ``x_loc`` of local tokens (Tan et al., "Recover and
Match", CVPR 2025, arXiv 2503.15337):

- ``x_loc`` starts as the trunk's input tokens (after ``ln_pre``);
- at every *surgery* layer ``l`` (default: all) it adds a value–value self-attention of the
  trunk's normalised tokens, through the block's own value and output projections:
  ``x_loc += out_proj(softmax(v vᵀ / √d_h) v)`` with ``v = ln_1(x_l) W_v + b_v`` per head
  (the CLIP-Surgery attention that restores locality). The trunk's MLP is not applied;
- at every *adapted* layer (default: the last 3) a :class:`LocalAdapter` of the trunk's
  tokens after the block, conditioned on the label embeddings, is added too, and
  ``n_visual_tokens`` learnable tokens join the trunk's sequence for that block only;
- regions = ``ln_post(x_loc)[:, 1:] @ proj``; the global embedding is the trunk's pooled
  output, exactly as open_clip's ``encode_image`` computes it.

The frozen teacher of the knowledge constraint (§3.3) — the same CLIP with the value–value
path but no adapters and no tokens — equals the student up to the first adapted layer, so
:class:`LadderLocalAdapter` computes it in the same forward pass: it shares the trunk up to
that layer and runs only the remaining layers a second time, without gradients.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ram_ot._checks import check_floating, check_shape, check_tensor
from ram_ot.backbones.open_clip import freeze

__all__ = ["LadderOutput", "LocalAdapter", "LadderLocalAdapter"]


class LadderOutput(NamedTuple):
    """Result of :class:`LadderLocalAdapter`.

    Attributes:
        image_global: (B, D) trunk dtype. The trunk's pooled embedding after ``proj``.
        image_regions: (B, N, D) trunk dtype. The ladder's region embeddings.
        teacher_regions: (B, N, D) trunk dtype, or None. The frozen teacher's region
            embeddings (value–value path, no adapters, no tokens), computed without
            gradients; None unless ``with_teacher=True``.
    """

    image_global: Tensor
    image_regions: Tensor
    teacher_regions: Tensor | None


class LocalAdapter(nn.Module):
    """Text-conditioned convolutional adapter on the token grid, RAM §3.2 (Fig. 3).

    For patch tokens ``x`` (B, H·W, width) laid out on their H×W grid:

    1. two streams ``s_k = GELU(BN(conv_k(x)))``, k = 1×1 and 3×3, width → text_dim;
    2. each refined by parameter-free cross-attention to the label embeddings ``t``:
       ``s_k += softmax(LN_k(s_k) LN_t(t)ᵀ / √text_dim) LN_t(t)``;
    3. a spatial gate from the channel mean and max of ``[s_1, s_2]``:
       ``g = sigmoid(conv_{k×k}([mean, max]))`` (2 channels);
    4. ``out = conv_{1×1}(g_1 s_1 + g_2 s_2)``, text_dim → width.

    The CLS token passes through unchanged (as in the reference, where the adapter output
    replaces the CLS position by the input CLS).

    Without label embeddings (``label_embeddings=None``) step 2 is skipped: the adapter is a
    purely visual gated two-stream convolution. This keeps the ladder usable as a plain
    feature extractor; RAM itself always passes the labels.

    Args:
        width: channels of the trunk's tokens.
        text_dim: width of the label embeddings (the CLIP joint space).
        kernel_size: side of the gate convolution (odd; the reference's ``KERNEL_SIZE``).
        device: device of the parameters.
        dtype: dtype of the parameters (default float32).
    """

    def __init__(
        self,
        width: int,
        text_dim: int,
        *,
        kernel_size: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fn = "LocalAdapter"
        for name, v in (("width", width), ("text_dim", text_dim), ("kernel_size", kernel_size)):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{fn}: expected `{name}` to be an int, got {type(v).__name__}.")
            if v < 1:
                raise ValueError(f"{fn}: expected `{name}` >= 1, got {v}.")
        if kernel_size % 2 == 0:
            raise ValueError(f"{fn}: expected an odd `kernel_size`, got {kernel_size}.")
        f = {"device": device, "dtype": dtype}
        self.width, self.text_dim, self.kernel_size = width, text_dim, kernel_size
        self.stream1 = nn.Sequential(
            nn.Conv2d(width, text_dim, 1, bias=False, **f), nn.BatchNorm2d(text_dim, **f), nn.GELU()
        )
        self.stream3 = nn.Sequential(
            nn.Conv2d(width, text_dim, 3, padding=1, bias=False, **f),
            nn.BatchNorm2d(text_dim, **f),
            nn.GELU(),
        )
        self.norm_q1 = nn.LayerNorm(text_dim, **f)
        self.norm_q3 = nn.LayerNorm(text_dim, **f)
        self.norm_kv = nn.LayerNorm(text_dim, **f)
        self.gate = nn.Conv2d(2, 2, kernel_size, padding=kernel_size // 2, bias=False, **f)
        self.out = nn.Conv2d(text_dim, width, 1, bias=False, **f)

    def _cross_attend(self, s: Tensor, norm_q: nn.LayerNorm, kv: Tensor) -> Tensor:
        """(B, N, Dt) stream, (C, Dt) normalised labels -> (B, N, Dt) refined stream."""
        q = norm_q(s)
        attn = (q @ kv.T) * self.text_dim**-0.5  # (B, N, Dt) @ (Dt, C) -> (B, N, C)
        return s + attn.softmax(dim=-1) @ kv  # (B, N, C) @ (C, Dt) -> (B, N, Dt)

    def forward(
        self,
        tokens: Tensor,
        grid_size: tuple[int, int],
        label_embeddings: Tensor | None = None,
    ) -> Tensor:
        """Adapt the patch tokens of one layer.

        Args:
            tokens: (B, 1 + H·W, width) floating. CLS first, then the patch tokens in
                row-major grid order (open_clip's batch-first layout).
            grid_size: ``(H, W)`` of the patch grid.
            label_embeddings: (C, text_dim) floating, or None (skip the cross-attention).

        Returns:
            (B, 1 + H·W, width), dtype of `tokens`: the input CLS, then the adapted patches.
        """
        fn = "LocalAdapter"
        h, w = grid_size
        check_floating(fn, "tokens", tokens)
        check_shape(
            fn, "tokens", tokens, [("B", None), ("1+H*W", 1 + h * w), ("width", self.width)]
        )
        B = tokens.shape[0]
        in_dtype = tokens.dtype
        p_dtype = self.out.weight.dtype
        cls, x = tokens[:, :1], tokens[:, 1:].to(p_dtype)
        # (B, H*W, width) -> (B, width, H, W). Made contiguous: a transposed view is laid out
        # channels-last, and the convolutions then return the 1x1 weights' gradients with
        # channels-last strides on their size-1 dims, which DDP reports on every run ("Grad
        # strides do not match bucket view strides").
        x = x.transpose(1, 2).reshape(B, self.width, h, w).contiguous()
        s1 = self.stream1(x).flatten(2).transpose(1, 2)  # (B, Dt, H, W) -> (B, H*W, Dt)
        s3 = self.stream3(x).flatten(2).transpose(1, 2)
        if label_embeddings is not None:
            check_floating(fn, "label_embeddings", label_embeddings)
            check_shape(
                fn, "label_embeddings", label_embeddings, [("C", None), ("D", self.text_dim)]
            )
            kv = self.norm_kv(label_embeddings.to(p_dtype))
            s1 = self._cross_attend(s1, self.norm_q1, kv)
            s3 = self._cross_attend(s3, self.norm_q3, kv)
        s1 = s1.transpose(1, 2).reshape(B, self.text_dim, h, w)  # (B, H*W, Dt) -> (B, Dt, H, W)
        s3 = s3.transpose(1, 2).reshape(B, self.text_dim, h, w)
        # channel mean and max of [s1, s3] (B, 2*Dt, H, W), without materialising the concat
        mean = (s1.mean(dim=1, keepdim=True) + s3.mean(dim=1, keepdim=True)) / 2
        peak = torch.maximum(s1.amax(dim=1, keepdim=True), s3.amax(dim=1, keepdim=True))
        pooled = torch.cat([mean, peak], dim=1)  # (B, 2, H, W)
        g = torch.sigmoid(self.gate(pooled))  # (B, 2, H, W)
        y = self.out((s1 * g[:, :1] + s3 * g[:, 1:2]).contiguous())  # (B, width, H, W)
        y = y.flatten(2).transpose(1, 2).to(in_dtype)  # (B, width, H, W) -> (B, H*W, width)
        return torch.cat([cls, y], dim=1)


def _layer_list(
    fn: str, name: str, layers: Iterable[int] | None, depth: int, default: Sequence[int]
) -> tuple[int, ...]:
    """Normalise layer indices (negative counts from the end), validate, sort, dedupe."""
    if layers is None:
        return tuple(default)
    try:
        items = list(layers)
    except TypeError:
        raise TypeError(
            f"{fn}: expected `{name}` to be a sequence of ints, got {layers!r}."
        ) from None
    out = set()
    for i in items:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"{fn}: expected `{name}` to hold ints, got {i!r}.")
        if not -depth <= i < depth:
            raise ValueError(
                f"{fn}: expected `{name}` in [-{depth}, {depth}) for a {depth}-layer trunk, got {i}."
            )
        out.add(i % depth)
    return tuple(sorted(out))


def _check_visual(fn: str, visual: nn.Module) -> None:
    """Raise TypeError unless `visual` is an open_clip ViT the ladder can read."""
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise TypeError(
            f"{fn}: expected `visual` to be an open_clip VisionTransformer (a ViT CLIP), "
            f"got {type(visual).__name__}."
        )
    if visual.attn_pool is not None or visual.proj is None:
        raise TypeError(f"{fn}: ViTs with attentional pooling or without `proj` are not supported.")
    for i, blk in enumerate(visual.transformer.resblocks):
        attn = getattr(blk, "attn", None)
        if (
            not isinstance(blk, ResidualAttentionBlock)
            or not isinstance(attn, nn.MultiheadAttention)
            or attn.in_proj_weight is None
            or hasattr(blk, "ln_1_kv")
        ):
            raise TypeError(
                f"{fn}: expected block {i} to be open_clip's standard ResidualAttentionBlock "
                f"(nn.MultiheadAttention self-attention), got {type(blk).__name__}."
            )


def _attention(blk: nn.Module, h: Tensor, batch_first: bool) -> Tensor:
    """The block's own multi-head self-attention of (B, T, width) normalised tokens."""
    if batch_first:
        return blk.attention(q_x=h)
    return blk.attention(q_x=h.transpose(0, 1)).transpose(0, 1)  # the block runs (T, B, width)


def _block(blk: nn.Module, x: Tensor, h: Tensor, batch_first: bool) -> Tensor:
    """One open_clip ResidualAttentionBlock given ``h = ln_1(x)`` (same ops as ``blk(x)``)."""
    x = x + blk.ls_1(_attention(blk, h, batch_first))
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def value_value_attention(blk: nn.Module, h: Tensor) -> Tensor:
    """Value–value self-attention of one block, through its output projection.

    ``out_proj(softmax(v vᵀ / √d_h) v)`` per head, with ``v = h W_v + b_v`` the block's own
    value projection (the last third of ``in_proj_weight``), then the block's LayerScale
    ``ls_1`` (identity for OpenAI CLIP).

    Args:
        blk: an open_clip ``ResidualAttentionBlock``.
        h: (B, T, width) floating. The block's normalised input ``ln_1(x)``.

    Returns:
        (B, T, width), dtype of `h`.
    """
    attn = blk.attn
    B, T, W = h.shape
    heads = attn.num_heads
    bias = attn.in_proj_bias[2 * W :] if attn.in_proj_bias is not None else None
    v = F.linear(h, attn.in_proj_weight[2 * W :], bias)
    v = v.view(B, T, heads, W // heads).transpose(1, 2)  # (B, T, W) -> (B, heads, T, W/heads)
    o = F.scaled_dot_product_attention(v, v, v)  # default scale 1/sqrt(W/heads)
    o = o.transpose(1, 2).reshape(B, T, W)  # (B, heads, T, W/heads) -> (B, T, W)
    return blk.ls_1(attn.out_proj(o))


class LadderLocalAdapter(nn.Module):
    """The RAM ladder: value–value side path + LocalAdapters over a frozen open_clip ViT.

    See the module docstring for the computation. The trunk (`visual`) is frozen when the
    ladder is built and is held by reference, not registered as a submodule:
    ``parameters()``, ``state_dict()`` and ``train()`` see only the adapters and the visual
    tokens (the trunk stays in eval mode), while ``.to()`` / ``.half()`` move the trunk too.

    **Memory.** Trunk layers before the first layer that receives visual tokens run under
    ``torch.no_grad()``; from there on the trunk keeps a graph only because the tokens (and
    through them the adapters' inputs and the global embedding) need one. With
    ``n_visual_tokens=0`` no trunk activation is kept at all.

    **Teacher.** With ``with_teacher=True`` the teacher's regions — the value–value path of
    the same trunk without adapters and tokens, over the same `surgery_layers` — are
    computed by sharing the trunk and side path up to the first adapted layer and running
    only the remaining layers again, without gradients. They equal what a separate
    ``LadderLocalAdapter(visual, adapter_layers=(), n_visual_tokens=0)`` returns.

    Args:
        visual: an open_clip ``VisionTransformer`` (``clip_model.visual``), any width, depth,
            patch and image size; frozen in place.
        adapter_layers: indices of the adapted layers (negative counts from the end);
            default: the last 3 (the reference's ``DEPTH_VISION [9, 10, 11]`` on ViT-B).
        n_visual_tokens: learnable tokens appended to the trunk's sequence at each adapted
            layer (the reference's ``VISION_ADAPT`` = 8); init normal, std 0.02.
        kernel_size: gate convolution size of the LocalAdapters (``KERNEL_SIZE`` = 3).
        surgery_layers: layers whose value–value attention is added to the side path;
            default: all (the reference's ``SAA_LAYER``).
        text_dim: width of the label embeddings; default ``visual.output_dim``.
        device: device of the new parameters (default: the trunk's).
        dtype: dtype of the new parameters (default float32).
    """

    def __init__(
        self,
        visual: nn.Module,
        *,
        adapter_layers: Sequence[int] | None = None,
        n_visual_tokens: int = 8,
        kernel_size: int = 3,
        surgery_layers: Sequence[int] | None = None,
        text_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fn = "LadderLocalAdapter"
        _check_visual(fn, visual)
        object.__setattr__(self, "visual", freeze(visual))  # by reference: not a submodule
        depth = len(visual.transformer.resblocks)
        self.depth = depth
        self.width = int(visual.conv1.out_channels)
        self.text_dim = int(visual.output_dim if text_dim is None else text_dim)
        self.adapter_layers = _layer_list(
            fn, "adapter_layers", adapter_layers, depth, range(max(0, depth - 3), depth)
        )
        self.surgery_layers = _layer_list(fn, "surgery_layers", surgery_layers, depth, range(depth))
        if (
            not isinstance(n_visual_tokens, int)
            or isinstance(n_visual_tokens, bool)
            or n_visual_tokens < 0
        ):
            raise ValueError(
                f"{fn}: expected `n_visual_tokens` to be an int >= 0, got {n_visual_tokens!r}."
            )
        self.n_visual_tokens = n_visual_tokens
        if device is None:
            device = visual.conv1.weight.device
        f = {"device": device, "dtype": dtype}
        self.adapters = nn.ModuleDict(
            {
                str(i): LocalAdapter(self.width, self.text_dim, kernel_size=kernel_size, **f)
                for i in self.adapter_layers
            }
        )
        self.visual_embeds = nn.ParameterDict()
        if n_visual_tokens > 0:
            for i in self.adapter_layers:
                self.visual_embeds[str(i)] = nn.Parameter(
                    torch.empty(n_visual_tokens, self.width, **f).normal_(std=0.02)
                )

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        super()._apply(fn, recurse)
        self.visual._apply(fn)  # the trunk is held by reference; move it along
        return self

    def train(self, mode: bool = True) -> LadderLocalAdapter:
        super().train(mode)
        self.visual.eval()  # the frozen trunk never leaves eval mode
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels that the trunk's positional embedding fixes."""
        return tuple(self.visual.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(H, W)`` of the patch grid; N = H·W regions."""
        return tuple(self.visual.grid_size)

    def _regions(self, x_loc: Tensor) -> Tensor:
        return self.visual.ln_post(x_loc[:, 1:]) @ self.visual.proj  # (B, N, W) -> (B, N, D)

    def forward(
        self,
        images: Tensor,
        label_embeddings: Tensor | None = None,
        *,
        with_teacher: bool = False,
    ) -> LadderOutput:
        """Run the trunk and the ladder.

        Args:
            images: (B, 3, H, W) floating, normalised as the CLIP's preprocess does; H, W
                must equal the trunk's ``image_size``.
            label_embeddings: (C, D) floating, optional. Label (text) embeddings that
                condition the LocalAdapters; None skips their cross-attention.
            with_teacher: also return the teacher's region embeddings.

        Returns:
            LadderOutput: ``(image_global (B, D), image_regions (B, N, D), teacher_regions
            (B, N, D) or None)``.
        """
        fn = "LadderLocalAdapter"
        visual = self.visual
        check_tensor(fn, "images", images)
        check_floating(fn, "images", images)
        ih, iw = self.image_size
        check_shape(fn, "images", images, [("B", None), ("3", 3), ("H", ih), ("W", iw)])
        if images.shape[0] == 0:
            raise ValueError(
                f"{fn}: expected `images` of shape (B, 3, H, W) with B >= 1, got {tuple(images.shape)}."
            )
        if label_embeddings is not None:
            check_tensor(fn, "label_embeddings", label_embeddings)
            check_floating(fn, "label_embeddings", label_embeddings)
            check_shape(
                fn, "label_embeddings", label_embeddings, [("C", None), ("D", self.text_dim)]
            )
            if label_embeddings.shape[0] == 0:
                raise ValueError(
                    f"{fn}: expected `label_embeddings` of shape (C, D) with C >= 1, got {tuple(label_embeddings.shape)}."
                )
        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", True)
        surgery = set(self.surgery_layers)
        adapted = set(self.adapter_layers)
        first_adapted = min(adapted) if adapted else self.depth
        dtype = visual.conv1.weight.dtype

        # Shared part: identical for student and teacher, nothing learnable -> no graph.
        # It includes ln_1 and the value-value attention of the first adapted layer: its
        # input has no visual tokens yet (they join inside that block).
        with torch.no_grad():
            x = visual._embeds(images.to(dtype))  # (B, 1+N, W)
            x_loc = x
            for i in range(first_adapted):
                h = blocks[i].ln_1(x)
                if i in surgery:
                    x_loc = x_loc + value_value_attention(blocks[i], h)
                x = _block(blocks[i], x, h, batch_first)
            if first_adapted < self.depth:
                h_first = blocks[first_adapted].ln_1(x)
                if first_adapted in surgery:
                    x_loc = x_loc + value_value_attention(blocks[first_adapted], h_first)

        teacher_regions = None
        if with_teacher:
            with torch.no_grad():
                xt_loc = x_loc
                last = max((i for i in surgery if i >= first_adapted), default=-1)
                if last > first_adapted:  # the teacher's own trunk from the first adapted layer
                    xt = _block(blocks[first_adapted], x, h_first, batch_first)
                    for i in range(first_adapted + 1, last + 1):
                        h = blocks[i].ln_1(xt)
                        if i in surgery:
                            xt_loc = xt_loc + value_value_attention(blocks[i], h)
                        if i < last:  # the trunk after the last surgery layer is not needed
                            xt = _block(blocks[i], xt, h, batch_first)
                teacher_regions = self._regions(xt_loc)

        T = x.shape[1]
        for i in range(first_adapted, self.depth):
            blk = blocks[i]
            if i == first_adapted:
                h = h_first  # value-value attention already added above
            else:
                h = blk.ln_1(x)
                if i in surgery:
                    x_loc = x_loc + value_value_attention(blk, h)
            key = str(i)
            if i in adapted and key in self.visual_embeds:
                tok = self.visual_embeds[key].to(dtype).expand(x.shape[0], -1, -1)  # (B, n_tok, W)
                xa = torch.cat([x, tok], dim=1)
                ha = torch.cat([h, blk.ln_1(tok)], dim=1)  # ln_1 is per token
                x = _block(blk, xa, ha, batch_first)[:, :T]  # drop the tokens after the block
            else:
                x = _block(blk, x, h, batch_first)
            if i in adapted:
                x_loc = x_loc + self.adapters[key](x, self.grid_size, label_embeddings).to(
                    x_loc.dtype
                )

        pooled, _ = visual._pool(x)
        image_global = pooled @ visual.proj  # as open_clip's VisionTransformer.forward
        return LadderOutput(image_global, self._regions(x_loc), teacher_regions)
