"""The exact text-side cache of PromptEncoder: same features and gradients, and invalidation."""

import pytest
import torch

import ram_ot.prompts as prompts_mod
from ram_ot.prompts import PromptEncoder

NAMES = [
    "cat",
    "traffic light",
    "a very long and oddly specific label name for testing",
    "dog",
    "tv",
    "hot dog stand",
    "person",
]
COCO_LAYERS = (9, 10, 11)
NUS_LAYERS = (6, 7, 8, 9, 10, 11)


def _tower(seed: int = 0):
    """A tiny random open_clip CLIP with a 12-layer text tower (the presets' layer indices)."""
    import open_clip

    from ram_ot.backbones.open_clip import TINY_MODEL_NAME, freeze, load_clip

    _, tok, _ = load_clip(TINY_MODEL_NAME, pretrained=None)  # registers the tokenizer config
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 12},
    )
    with torch.no_grad():  # larger residual updates than open_clip's init: layers matter more
        for p in model.transformer.parameters():
            if p.dim() == 2:
                p.normal_(std=0.2)
    return freeze(model), tok


@pytest.fixture(scope="module")
def tower():
    return _tower()


def _pair(model, tok, **kw):
    torch.manual_seed(3)
    on = PromptEncoder(model, tok, **kw)
    off = PromptEncoder(model, tok, cache_text=False, **kw)
    off.load_state_dict(on.state_dict())
    return on, off


def _grads(enc, names, weight):
    for p in enc.parameters():
        p.grad = None
    out = enc(names)
    (out * weight[: len(names)]).sum().backward()
    return out, [p.grad.clone() for p in enc.parameters()]


def _close(a, b, tol=1e-4):
    assert a.shape == b.shape
    scale = b.abs().max().clamp_min(1e-12)
    assert float((a - b).abs().max() / scale) < tol, float((a - b).abs().max() / scale)


@pytest.mark.parametrize(
    "layers, kw",
    [
        (COCO_LAYERS, {}),
        (NUS_LAYERS, {}),
        (NUS_LAYERS, {"chunk_size": 2}),
        (COCO_LAYERS, {"templates": ["{}", "a photo of a {}.", "there is a {} here"]}),
        ((0,), {}),
        ((0, 5, 11), {"n_ctx": 2}),
        ((11,), {"n_ctx": 1}),
        ((4, 6), {}),  # the last layer has no prompts
    ],
)
def test_cached_equals_uncached_features_and_gradients(tower, layers, kw):
    model, tok = tower
    on, off = _pair(model, tok, deep_layers=layers, **kw)
    w = torch.randn(len(NAMES), 32)
    f_off, g_off = _grads(off, NAMES, w)
    for _ in range(2):  # cache filled, then cache hit
        f_on, g_on = _grads(on, NAMES, w)
        torch.testing.assert_close(f_on, f_off, rtol=1e-5, atol=1e-5)
        for a, b in zip(g_on, g_off, strict=True):
            _close(a, b)
    assert on._state_cache and not off._state_cache


def test_one_label_and_labels_of_one_length(tower):
    model, tok = tower
    on, off = _pair(model, tok, deep_layers=NUS_LAYERS)
    for names in (["cat"], ["cat", "dog", "tv"]):
        torch.testing.assert_close(on(names), off(names), rtol=1e-5, atol=1e-5)


def test_early_layers_run_once_per_label_list(tower, monkeypatch):
    model, tok = tower
    enc = PromptEncoder(model, tok, deep_layers=NUS_LAYERS)
    calls = []
    real = PromptEncoder._run_prefix_layers
    monkeypatch.setattr(
        PromptEncoder, "_run_prefix_layers", lambda self, *a: calls.append(1) or real(self, *a)
    )
    for _ in range(3):
        enc(NAMES).sum().backward()
    assert len(calls) == 1
    enc(NAMES[:3])
    assert len(calls) == 2
    # the cache is no part of the state dict
    assert set(enc.state_dict()) == {f"deep_embeds.{i}" for i in NUS_LAYERS}


def test_new_labels_are_encoded_afresh(tower):
    model, tok = tower
    on, off = _pair(model, tok, deep_layers=COCO_LAYERS)
    on(NAMES)
    other = ["zebra crossing", "kite", "red fire hydrant"]
    torch.testing.assert_close(on(other), off(other), rtol=1e-5, atol=1e-5)


def test_optimizer_step_on_a_trainable_early_text_weight():
    model, tok = _tower(1)
    on, off = _pair(model, tok, deep_layers=NUS_LAYERS)
    w = torch.randn(len(NAMES), 32)
    before = on(NAMES).detach()  # fills the cache
    weight = model.transformer.resblocks[2].mlp.c_fc.weight
    weight.requires_grad_(True)
    opt = torch.optim.SGD([weight], lr=1.0)
    # trainable: the cache is bypassed, the weight gets the same gradient as without it
    _grads(off, NAMES, w)
    g_ref = weight.grad.clone()
    weight.grad = None
    f_on, _ = _grads(on, NAMES, w)
    assert weight.grad is not None
    _close(weight.grad, g_ref)
    opt.step()
    weight.requires_grad_(False)
    # frozen again, with new values: the cached hidden states are stale and recomputed
    after = on(NAMES)
    torch.testing.assert_close(after, off(NAMES), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)


def test_in_place_change_of_a_frozen_text_weight():
    model, tok = _tower(2)
    on, off = _pair(model, tok, deep_layers=COCO_LAYERS)
    on(NAMES)
    with torch.no_grad():
        model.positional_embedding.mul_(3.0)
    torch.testing.assert_close(on(NAMES), off(NAMES), rtol=1e-5, atol=1e-5)


def test_cast_to_float64():
    model, tok = _tower(3)
    on, off = _pair(model, tok, deep_layers=NUS_LAYERS)
    on(NAMES)
    model.to(torch.float64)  # the CLIP alone: the encoder's _apply does not see it
    out = on(NAMES)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, off(NAMES), rtol=1e-6, atol=1e-6)
    on.to(torch.float32)  # the encoder with its CLIP
    assert on(NAMES).dtype == torch.float32


def test_load_state_dict_into_the_clip():
    model, tok = _tower(4)
    other, _ = _tower(5)
    on, off = _pair(model, tok, deep_layers=COCO_LAYERS)
    before = on(NAMES).detach()
    model.load_state_dict(other.state_dict())
    after = on(NAMES)
    torch.testing.assert_close(after, off(NAMES), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)


def test_eval_features_cached_until_the_prompts_change(tower):
    model, tok = tower
    on, off = _pair(model, tok, deep_layers=COCO_LAYERS)
    on.eval()
    with torch.no_grad():
        a = on(NAMES)
        assert on(NAMES) is a  # cached final features
    # a training step on the prompts
    on.train()
    opt = torch.optim.SGD(on.parameters(), lr=10.0)
    on(NAMES).square().sum().backward()
    opt.step()
    on.eval()
    with torch.no_grad():
        b = on(NAMES)
        assert b is not a and not torch.allclose(a, b, atol=1e-3)
        off.load_state_dict(on.state_dict())
        torch.testing.assert_close(b, off(NAMES), rtol=1e-5, atol=1e-5)
        # new prompts loaded from a state dict
        state = {k: torch.randn_like(v) for k, v in on.state_dict().items()}
        on.load_state_dict(state)
        off.load_state_dict(state)
        torch.testing.assert_close(on(NAMES), off(NAMES), rtol=1e-5, atol=1e-5)
    # with gradients on, the features are never served from the eval cache
    out = on(NAMES)
    assert out.requires_grad


def test_frozen_features_follow_the_clip():
    model, tok = _tower(6)
    enc = PromptEncoder(model, tok, n_ctx=0)
    a = enc(NAMES)
    assert enc(NAMES) is a
    with torch.no_grad():
        model.ln_final.weight.mul_(2.0)
    b = enc(NAMES)
    assert b is not a
    with torch.no_grad():
        ref = model.encode_text(tok([f"a photo of a {n}." for n in NAMES]))
    assert torch.equal(b, ref)


def test_cache_off_caches_nothing(tower):
    model, tok = tower
    frozen = PromptEncoder(model, tok, n_ctx=0, cache_text=False)
    assert frozen(NAMES) is not frozen(NAMES)
    enc = PromptEncoder(model, tok, deep_layers=COCO_LAYERS, cache_text=False).eval()
    with torch.no_grad():
        assert enc(NAMES) is not enc(NAMES)
    assert not enc._cache and not enc._state_cache
    with pytest.raises(TypeError, match="cache_text"):
        PromptEncoder(model, tok, cache_text="yes")


def test_unknown_blocks_fall_back_to_the_whole_tower(tower, monkeypatch):
    model, tok = tower
    on, off = _pair(model, tok, deep_layers=COCO_LAYERS)
    monkeypatch.setattr(prompts_mod, "_fast_block_ok", lambda blk: False)
    torch.testing.assert_close(on(NAMES), off(NAMES), rtol=1e-5, atol=1e-5)


def test_ram_passes_the_switch_on(tiny_clip):
    from ram_ot.model import RAM

    model, tok, _ = tiny_clip
    assert RAM(model, tok).prompts.cache_text
    ram = RAM(model, tok, cache_text=False)
    assert not ram.prompts.cache_text and not ram.teacher_prompts.cache_text


def test_text_side_benchmark_runs(capsys):
    from ram_ot.backbones.open_clip import TINY_MODEL_NAME
    from ram_ot.bench.text_side import main

    argv = ["--model", TINY_MODEL_NAME, "--config", "coco", "--labels", "6", "--repeats", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "6 labels" in out and "| train step, cache on (default) |" in out
