"""Loading frozen open_clip models: tiny config, local checkpoint files, built models."""

import open_clip
import pytest
import torch
from PIL import Image

from ram_ot.backbones.open_clip import TINY_MODEL_NAME, load_clip, wrap_clip


def test_tiny_model_is_frozen_and_usable(tiny_clip):
    model, tok, preprocess = tiny_clip
    assert isinstance(model, open_clip.CLIP)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert tuple(model.visual.image_size) == (32, 32)
    tokens = tok(["a photo of a cat.", "dog"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    image = preprocess(Image.new("RGB", (50, 40), (200, 10, 10)))
    assert image.shape == (3, 32, 32)
    with torch.no_grad():
        assert model.encode_image(image[None]).shape == (1, 32)
        assert model.encode_text(tokens).shape == (2, 32)
    assert TINY_MODEL_NAME in open_clip.list_models()  # registered on first use


def test_local_checkpoint_file_loads_those_weights(tmp_path, tiny_clip):
    model = tiny_clip[0]
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded, _, _ = load_clip(TINY_MODEL_NAME, pretrained=str(path))
    for (k, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=False
    ):
        assert torch.equal(a, b), k
    assert not any(p.requires_grad for p in loaded.parameters())


def test_random_init_differs_from_checkpoint(tiny_clip):
    torch.manual_seed(99)
    other, _, _ = load_clip(TINY_MODEL_NAME, pretrained=None)
    assert not torch.equal(other.visual.conv1.weight, tiny_clip[0].visual.conv1.weight)


def test_wrap_built_model():
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    model.train()
    wrapped, tok, preprocess = wrap_clip(model)
    assert wrapped is model and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tok(["cat"]).shape == (1, 77)
    assert preprocess(Image.new("RGB", (32, 32))).shape == (3, 32, 32)


def test_bad_arguments():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip(TINY_MODEL_NAME, pretrained="/nonexistent/dir/weights.pt")
    with pytest.raises(ValueError, match="open_clip architecture"):
        load_clip("ViT-Nonexistent-99", pretrained=None)
    with pytest.raises(TypeError, match="model_name"):
        load_clip(3, pretrained=None)
    with pytest.raises(TypeError, match="visual"):
        wrap_clip(torch.nn.Linear(2, 2))


def _bilinear_reference(grid, out_hw):
    """Half-pixel-centre bilinear resize (align_corners=False), written with numpy.interp.

    grid: (h, w, D). Output pixel i samples source coordinate (i + 0.5)·(in / out) − 0.5,
    clamped to the grid; bilinear is separable: interpolate along rows, then columns.
    """
    import numpy as np

    def axis(a, n_out, dim):
        n_in = a.shape[dim]
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        a = np.moveaxis(a, dim, -1)
        out = np.apply_along_axis(lambda v: np.interp(x, np.arange(n_in), v), -1, a)
        return np.moveaxis(out, -1, dim)

    g = grid.double().numpy()
    return torch.from_numpy(axis(axis(g, out_hw[0], 0), out_hw[1], 1))


def test_resize_positional_embedding_to_336_is_bilinear_as_the_official():
    from ram_ot.backbones.open_clip import resize_positional_embedding
    from ram_ot.model import RAM

    torch.manual_seed(0)
    clip_model, tok, _ = load_clip(TINY_MODEL_NAME, pretrained=None)
    visual = clip_model.visual
    old = visual.positional_embedding.detach().clone()  # (1 + 4*4, W): 32 px, patch 8
    h, w = visual.grid_size
    resize_positional_embedding(visual, 336)
    new = visual.positional_embedding.detach()
    assert visual.image_size == (336, 336) and visual.grid_size == (42, 42)
    assert new.shape == (1 + 42 * 42, old.shape[1]) and not new.requires_grad
    torch.testing.assert_close(new[0], old[0], rtol=0, atol=0)  # class token kept
    want = _bilinear_reference(old[1:].reshape(h, w, -1), (42, 42)).reshape(42 * 42, -1)
    torch.testing.assert_close(new[1:].double(), want, rtol=1e-6, atol=1e-6)
    # the whole model runs at 336: N = 42 * 42 regions
    model = RAM(clip_model, tok)
    out = model(torch.randn(1, 3, 336, 336), ["cat", "dog"])
    assert out.scores.shape == (1, 2) and out.plan.shape[1] == 42 * 42
    with pytest.raises(ValueError, match="multiple of the patch size"):
        resize_positional_embedding(visual, 330)
