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
