"""The sequence-first block layout of older open_clip releases (``batch_first=False``).

open_clip 3.x builds its transformers batch-first; releases before 2.23 ran their blocks on
(T, B, width) tensors, and ``Transformer.batch_first`` still selects that layout. The
adapters and the prompt encoder call the blocks directly, so they must transpose around
them then. Here the same weights are run in both layouts: every output must agree.
"""

import copy

import torch

from ram_ot.adapters import LadderLocalAdapter
from ram_ot.prompts import PromptEncoder


def _sequence_first(model):
    """A copy of `model` whose two transformers run their blocks sequence-first."""
    model = copy.deepcopy(model)
    for tr in (model.visual.transformer, model.transformer):
        tr.batch_first = False
        for blk in tr.resblocks:
            blk.attn.batch_first = False
    return model


def test_ladder_and_teacher_agree_in_both_layouts(tiny_clip):
    model = tiny_clip[0]
    seq = _sequence_first(model)
    images = torch.randn(2, 3, *model.visual.image_size)
    labels = torch.randn(5, model.visual.output_dim)
    with torch.no_grad():
        # open_clip itself gives the same image embedding in both layouts
        torch.testing.assert_close(seq.encode_image(images), model.encode_image(images))
    torch.manual_seed(0)
    a = LadderLocalAdapter(model.visual, n_visual_tokens=3).train()
    torch.manual_seed(0)
    b = LadderLocalAdapter(seq.visual, n_visual_tokens=3).train()
    b.load_state_dict(a.state_dict())
    out_a = a(images, labels, with_teacher=True)
    out_b = b(images, labels, with_teacher=True)
    for x, y in zip(out_a, out_b, strict=True):
        if x is None:
            assert y is None
        else:
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5)


def test_prompt_encoder_agrees_in_both_layouts(tiny_clip):
    model, tok, _ = tiny_clip
    seq = _sequence_first(model)
    names = ["cat", "traffic light", "dog"]
    with torch.no_grad():
        frozen = PromptEncoder(model, tok, n_ctx=0)(names)
        torch.testing.assert_close(PromptEncoder(seq, tok, n_ctx=0)(names), frozen)
    torch.manual_seed(0)
    a = PromptEncoder(model, tok, n_ctx=2)
    b = PromptEncoder(seq, tok, n_ctx=2)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(names), a(names), rtol=1e-5, atol=1e-5)
