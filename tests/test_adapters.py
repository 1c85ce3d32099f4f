"""LocalAdapter and LadderLocalAdapter against open_clip's own forward and re-derivations."""

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ram_ot.adapters import LadderLocalAdapter, LocalAdapter


def _odd_clip():
    """A second architecture: non-square 48x32 images, patch 16, width 48, 3 layers, LayerScale."""
    torch.manual_seed(7)
    model = open_clip.CLIP(
        embed_dim=24,
        vision_cfg={
            "image_size": (48, 32),
            "patch_size": 16,
            "width": 48,
            "layers": 3,
            "head_width": 16,
            "ls_init_value": 0.5,
        },
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    )
    # LayerScale starts at a constant: randomise it so a wrong use of ls_1 shows
    for blk in model.visual.transformer.resblocks:
        blk.ls_1.gamma.data.uniform_(0.2, 1.5)
        blk.ls_2.gamma.data.uniform_(0.2, 1.5)
    return model.eval().requires_grad_(False)


@pytest.fixture(params=["tiny", "odd"])
def clip_model(request, tiny_clip):
    return tiny_clip[0] if request.param == "tiny" else _odd_clip()


def _images(model, b=3):
    h, w = model.visual.image_size
    return torch.randn(b, 3, h, w)


def _reference_vv_regions(visual, images, surgery):
    """Independent re-derivation of the plain value–value path (explicit per-head math)."""
    x = visual._embeds(images)
    x_loc = x
    for i, blk in enumerate(visual.transformer.resblocks):
        h = blk.ln_1(x)
        if i in surgery:
            W = h.shape[-1]
            nh = blk.attn.num_heads
            d = W // nh
            v = h @ blk.attn.in_proj_weight[2 * W :].T + blk.attn.in_proj_bias[2 * W :]
            out = torch.zeros_like(v)
            for k in range(nh):
                vk = v[..., k * d : (k + 1) * d]
                a = torch.softmax(vk @ vk.transpose(1, 2) / d**0.5, dim=-1)
                out[..., k * d : (k + 1) * d] = a @ vk
            x_loc = x_loc + blk.ls_1(blk.attn.out_proj(out))
        x = blk(x)
    return visual.ln_post(x_loc[:, 1:]) @ visual.proj


def test_plain_ladder_equals_open_clip_encode_image(clip_model):
    ladder = LadderLocalAdapter(clip_model.visual, adapter_layers=(), n_visual_tokens=0)
    images = _images(clip_model)
    out = ladder(images)
    with torch.no_grad():
        ref = clip_model.encode_image(images)
    assert torch.equal(out.image_global, ref)
    gh, gw = clip_model.visual.grid_size
    assert out.image_regions.shape == (3, gh * gw, clip_model.visual.output_dim)
    assert out.teacher_regions is None


@pytest.mark.parametrize("surgery", [None, (0, 2)])
def test_plain_ladder_regions_are_value_value_path(clip_model, surgery):
    ladder = LadderLocalAdapter(
        clip_model.visual, adapter_layers=(), n_visual_tokens=0, surgery_layers=surgery
    )
    images = _images(clip_model)
    depth = len(clip_model.visual.transformer.resblocks)
    with torch.no_grad():
        ref = _reference_vv_regions(
            clip_model.visual, images, set(range(depth)) if surgery is None else set(surgery)
        )
    torch.testing.assert_close(ladder(images).image_regions, ref, rtol=1e-5, atol=1e-5)


def test_global_with_adapters_but_no_tokens_is_still_clip(clip_model):
    # adapters only touch the side path; without tokens the trunk is CLIP's
    ladder = LadderLocalAdapter(clip_model.visual, n_visual_tokens=0)
    images = _images(clip_model)
    labels = torch.randn(4, clip_model.visual.output_dim)
    with torch.no_grad():
        assert torch.equal(ladder(images, labels).image_global, clip_model.encode_image(images))


def test_teacher_equals_separate_frozen_copy(clip_model):
    ladder = LadderLocalAdapter(clip_model.visual).train()
    teacher = LadderLocalAdapter(
        copy.deepcopy(clip_model.visual), adapter_layers=(), n_visual_tokens=0
    )
    images = _images(clip_model)
    labels = torch.randn(5, clip_model.visual.output_dim)
    out = ladder(images, labels, with_teacher=True)
    ref = teacher(images).image_regions
    torch.testing.assert_close(out.teacher_regions, ref, rtol=0, atol=0)
    assert not out.teacher_regions.requires_grad
    # the student differs from the teacher (adapters and tokens act)
    assert not torch.allclose(out.image_regions, ref)


def test_visual_tokens_change_only_adapted_layers_onwards(tiny_clip):
    model = tiny_clip[0]
    ladder = LadderLocalAdapter(model.visual, adapter_layers=(-1,), n_visual_tokens=4)
    images = _images(model)
    with torch.no_grad():
        base = model.encode_image(images)
        g = ladder(images).image_global
        assert not torch.allclose(g, base)  # tokens join the last block's attention
        ladder.visual_embeds["3"].zero_()
        # zero tokens still take part in the attention: the global embedding still differs
        assert not torch.allclose(ladder(images).image_global, base)


def test_trunk_frozen_and_trainables_get_gradients(tiny_clip):
    model = tiny_clip[0]
    ladder = LadderLocalAdapter(model.visual).train()
    assert not any(p.requires_grad for p in model.visual.parameters())
    out = ladder(_images(model), torch.randn(5, 32))
    (out.image_global.square().sum() + out.image_regions.square().sum()).backward()
    assert all(p.grad is None for p in model.visual.parameters())
    names = [n for n, p in ladder.named_parameters()]
    assert names and all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in ladder.parameters()
    ), names
    assert {n.split(".")[0] for n in names} == {"adapters", "visual_embeds"}
    assert not model.visual.training and ladder.training


def test_gradients_keep_the_parameters_strides(tiny_clip):
    """DDP copies each gradient into a bucket laid out like its parameter and warns ("Grad
    strides do not match bucket view strides") when the strides differ, even on size-1 dims:
    the adapter's 1x1 convolutions on a transposed (channels-last) view did exactly that."""
    ladder = LadderLocalAdapter(tiny_clip[0].visual).train()
    out = ladder(_images(tiny_clip[0]), torch.randn(5, 32))
    (out.image_global.square().sum() + out.image_regions.square().sum()).backward()
    mismatched = {
        n: (p.stride(), p.grad.stride())
        for n, p in ladder.named_parameters()
        if p.grad is not None and p.grad.stride() != p.stride()
    }
    assert not mismatched
    assert sum(p.dim() == 4 and p.shape[2:] == (1, 1) for p in ladder.parameters()) >= 2


def test_no_trunk_activation_kept_without_tokens(tiny_clip):
    """With n_visual_tokens=0 autograd keeps nothing of the trunk's MLP (4 x width) activations."""
    model = tiny_clip[0]
    width = 64
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    for n_tok, expect in ((0, False), (4, True)):
        shapes.clear()
        ladder = LadderLocalAdapter(model.visual, n_visual_tokens=n_tok).train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ladder(_images(model), torch.randn(5, 32))
        assert any(s[-1:] == (4 * width,) for s in shapes) is expect


def test_state_dict_has_no_trunk_and_device_moves_trunk(tiny_clip):
    model = copy.deepcopy(tiny_clip[0])
    ladder = LadderLocalAdapter(model.visual, n_visual_tokens=2)
    assert all(k.startswith(("adapters.", "visual_embeds.")) for k in ladder.state_dict())
    ladder.double()
    assert model.visual.conv1.weight.dtype == torch.float64
    out = ladder(_images(model).double(), torch.randn(3, 32, dtype=torch.float64))
    assert out.image_regions.dtype == torch.float64


def test_local_adapter_matches_rederivation():
    """Channel-first re-derivation of the adapter (as the reference lays it out)."""
    torch.manual_seed(3)
    ad = LocalAdapter(16, 8, kernel_size=3).eval()
    for m in ad.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 1 + 12, 16)  # grid 3 x 4
    t = torch.randn(5, 8)
    out = ad(x, (3, 4), t)

    B, tok = 2, 12
    grid = x[:, 1:].transpose(1, 2).reshape(B, 16, 3, 4)
    s1 = ad.stream1(grid).reshape(B, -1, tok)
    s2 = ad.stream3(grid).reshape(B, -1, tok)
    kv = F.layer_norm(t, (8,), ad.norm_kv.weight, ad.norm_kv.bias)
    for s, ln in ((s1, ad.norm_q1), (s2, ad.norm_q3)):
        q = F.layer_norm(s.permute(0, 2, 1), (8,), ln.weight, ln.bias)
        s += (torch.softmax(q @ kv.T * 8**-0.5, dim=-1) @ kv).permute(0, 2, 1)
    s1, s2 = s1.reshape(B, -1, 3, 4), s2.reshape(B, -1, 3, 4)
    cat = torch.cat([s1, s2], 1)
    agg = torch.cat([cat.mean(1, keepdim=True), cat.max(1, keepdim=True)[0]], 1)
    y = torch.sigmoid(F.conv2d(agg, ad.gate.weight, padding=1))
    ref = (
        F.conv2d(s1 * y[:, 0:1] + s2 * y[:, 1:2], ad.out.weight)
        .reshape(B, 16, tok)
        .permute(0, 2, 1)
    )
    torch.testing.assert_close(out[:, 1:], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, :1], x[:, :1])  # CLS passes through
    no_text = ad(x, (3, 4), None)
    assert no_text.shape == out.shape and not torch.allclose(no_text, out)


def test_bad_inputs_raise_clear_errors(tiny_clip):
    model = tiny_clip[0]
    ladder = LadderLocalAdapter(model.visual)
    with pytest.raises(
        ValueError,
        match=r"`images` of shape \(B, 3, H, W\) = \(\*, 3, 32, 32\), got \(2, 3, 64, 64\)",
    ):
        ladder(torch.randn(2, 3, 64, 64))
    with pytest.raises(
        ValueError, match=r"`label_embeddings` of shape \(C, D\) = \(\*, 32\), got \(4, 31\)"
    ):
        ladder(torch.randn(1, 3, 32, 32), torch.randn(4, 31))
    with pytest.raises(ValueError, match="C >= 1"):
        ladder(torch.randn(1, 3, 32, 32), torch.randn(0, 32))
    with pytest.raises(TypeError, match="floating"):
        ladder(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="adapter_layers"):
        LadderLocalAdapter(model.visual, adapter_layers=(4,))
    with pytest.raises(TypeError, match="VisionTransformer"):
        LadderLocalAdapter(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        LocalAdapter(8, 8, kernel_size=2)


def test_vit_b16_architecture_shapes():
    """The real ViT-B-16 architecture (random weights, no download): shapes and teacher."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    ladder = LadderLocalAdapter(model.visual)
    assert ladder.adapter_layers == (9, 10, 11) and ladder.surgery_layers == tuple(range(12))
    with torch.no_grad():
        out = ladder(torch.randn(1, 3, 224, 224), torch.randn(3, 512), with_teacher=True)
    assert out.image_global.shape == (1, 512)
    assert out.image_regions.shape == out.teacher_regions.shape == (1, 196, 512)
