"""PromptEncoder against open_clip's encode_text and a re-derivation of deep prompting."""

import pytest
import torch
import torch.nn.functional as F

from ram_ot.prompts import PromptEncoder

NAMES = [
    "cat",
    "traffic light",
    "a very long and oddly specific label name for testing",
    "dog",
    "tv",
]


def test_frozen_features_equal_encode_text_and_are_cached(tiny_clip):
    model, tok, _ = tiny_clip
    enc = PromptEncoder(model, tok, n_ctx=0)
    out = enc(NAMES)
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
    assert torch.equal(out, ref)
    assert enc(list(NAMES)) is out  # cached per label list
    assert enc(NAMES[:2]) is not out
    assert not out.requires_grad and list(enc.parameters()) == []


def test_chunks_give_the_same_features(tiny_clip):
    model, tok, _ = tiny_clip
    torch.manual_seed(0)
    a = PromptEncoder(model, tok, n_ctx=2)
    torch.manual_seed(0)
    b = PromptEncoder(model, tok, n_ctx=2, chunk_size=2)
    torch.testing.assert_close(a(NAMES), b(NAMES), rtol=1e-5, atol=1e-6)
    assert a(NAMES).shape == (5, 32)


def test_long_vocabulary_in_chunks(tiny_clip):
    model, tok, _ = tiny_clip
    names = [f"label {i}" for i in range(300)]  # 3 chunks, the last one partial
    out = PromptEncoder(model, tok, n_ctx=0, chunk_size=128)(names)
    assert out.shape == (300, 32)
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n}." for n in names[-6:]]))
    torch.testing.assert_close(out[-6:], ref, rtol=1e-5, atol=1e-6)


def test_deep_path_without_prompts_equals_encode_text(tiny_clip):
    """The deep-prompt code path (trimmed sequence, own causal mask) with the prompts removed."""
    model, tok, _ = tiny_clip
    enc = PromptEncoder(model, tok, n_ctx=2)
    enc.deep_embeds = torch.nn.ParameterDict()
    tokens = tok([f"a photo of a {n}." for n in NAMES])
    with torch.no_grad():
        torch.testing.assert_close(
            enc._encode_deep(tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-5
        )


def _reference_deep(model, tokens, embeds, n_ctx):
    """Deep prompting as the reference lays it out: full 77 tokens, cut at 77 in prompted layers."""
    L = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding
    for i, blk in enumerate(model.transformer.resblocks):
        if str(i) in embeds:
            ctx = embeds[str(i)].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)
            pad, x = x[:, L:], x[:, :L]
            x = blk(x, attn_mask=model.attn_mask)
            x = torch.cat([x[:, :1], x[:, 1 + n_ctx :], pad], dim=1)
        else:
            x = blk(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


@pytest.mark.parametrize("layers", [None, (0, 2)])
def test_deep_prompts_match_reference_layout(tiny_clip, layers):
    model, tok, _ = tiny_clip
    enc = PromptEncoder(model, tok, n_ctx=3, deep_layers=layers)
    assert enc.deep_layers == ((1, 2, 3) if layers is None else layers)
    out = enc(NAMES)
    tokens = tok([f"a photo of a {n}." for n in NAMES])
    ref = _reference_deep(model, tokens, enc.deep_embeds, 3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_text_tower_frozen_prompts_learn(tiny_clip):
    model, tok, _ = tiny_clip
    enc = PromptEncoder(model, tok).train()
    enc(NAMES).square().sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert len(list(enc.parameters())) == 3
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert not model.training


def test_template_ensembling(tiny_clip):
    model, tok, _ = tiny_clip
    tpls = ["a photo of a {}.", "a blurry photo of the {}.", "{}"]
    out = PromptEncoder(model, tok, n_ctx=0, templates=tpls)(NAMES)
    with torch.no_grad():
        feats = [
            F.normalize(model.encode_text(tok([t.format(n) for n in NAMES])), dim=-1) for t in tpls
        ]
    ref = F.normalize(sum(feats) / 3, dim=-1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))


def test_bad_inputs(tiny_clip):
    model, tok, _ = tiny_clip
    enc = PromptEncoder(model, tok, n_ctx=0)
    with pytest.raises(ValueError, match="at least one label, got 0"):
        enc([])
    with pytest.raises(TypeError, match="single str"):
        enc("cat")
    with pytest.raises(TypeError, match="hold str"):
        enc(["cat", 3])
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        PromptEncoder(model, tok, template="a photo")
    with pytest.raises(ValueError, match="deep_layers"):
        PromptEncoder(model, tok, deep_layers=(7,))
