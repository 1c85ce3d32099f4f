"""RAM assembly: wiring against open_clip and the parts, teacher use, state dict, groups."""

import copy

import pytest
import torch
import torch.nn.functional as F

from ram_ot.adapters import LadderLocalAdapter
from ram_ot.backbones.open_clip import TINY_MODEL_NAME
from ram_ot.kcot import teacher_prior
from ram_ot.model import RAM, build_ram

NAMES = ["cat", "dog", "car", "tree", "person"]
TARGETS = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]])


def _images(b=3):
    return torch.randn(b, 3, 32, 32)


def test_plain_model_global_logits_are_clip_zero_shot(tiny_clip):
    model, tok, _ = tiny_clip
    ram = RAM(model, tok, adapter_layers=(), n_visual_tokens=0, n_ctx=0).eval()
    images = _images()
    out = ram(images, NAMES)
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tok([f"a photo of a {n}." for n in NAMES])), dim=-1)
    ref = model.logit_scale.exp() * img @ txt.T  # open_clip's zero-shot logits
    torch.testing.assert_close(out.logits_global, ref, rtol=1e-5, atol=1e-4)
    assert out.scores.shape == (3, 5) and out.plan.shape == (3, 16, 5) and out.loss is None
    torch.testing.assert_close(out.scores.sum(-1), torch.ones(3))


def test_training_step_uses_shared_trunk_teacher(tiny_clip):
    model, tok, _ = tiny_clip
    ram = RAM(model, tok).train()
    images = _images()
    out = ram(images, NAMES, TARGETS)
    # the same step assembled from the parts, with a separate frozen teacher
    label_emb = ram.prompts(NAMES)
    lad = ram.ladder(images, label_emb)
    teacher = LadderLocalAdapter(copy.deepcopy(model.visual), adapter_layers=(), n_visual_tokens=0)
    with torch.no_grad():
        teacher_text = model.encode_text(tok([f"A photo of a {n}." for n in NAMES]))
        prior = teacher_prior(
            teacher(images).image_regions, teacher_text, logit_scale=ram.logit_scale
        )
    ref = ram.head(lad.image_global, lad.image_regions, label_emb, targets=TARGETS, prior=prior)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(out.scores, ref.scores)
    no_prior = ram.head(lad.image_global, lad.image_regions, label_emb, targets=TARGETS)
    assert not torch.allclose(no_prior.logits_local, out.logits_local)  # the prior acts

    out.loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in ram.trainable_parameters())
    assert not model.training and ram.ladder.training


def test_teacher_only_in_training_with_targets(tiny_clip, monkeypatch):
    model, tok, _ = tiny_clip
    ram = RAM(model, tok)
    calls = []
    forward = ram.ladder.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("with_teacher"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(ram.ladder, "forward", spy)
    images = _images()
    ram.train()(images, NAMES)
    ram.train()(images, NAMES, TARGETS)
    ram.eval()(images, NAMES, TARGETS)
    ram.use_teacher = False
    ram.train()(images, NAMES, TARGETS)
    assert calls == [False, True, False, False]


def test_label_embeddings_as_tensor(tiny_clip):
    model, tok, _ = tiny_clip
    ram = RAM(model, tok).eval()
    emb = ram.prompts(NAMES).detach()
    images = _images()
    torch.testing.assert_close(ram(images, emb).scores, ram(images, NAMES).scores)
    ram.train()(images, emb, TARGETS).loss.backward()  # the teacher uses the given embeddings


def test_state_dict_round_trip_on_fresh_model(tiny_clip):
    model, tok, _ = tiny_clip
    torch.manual_seed(1)
    ram = RAM(model, tok, n_visual_tokens=3)
    ram.train()(_images(), NAMES, TARGETS)  # update BN statistics
    ram.eval()
    sd = ram.state_dict()
    n_saved = sum(v.numel() for v in sd.values() if torch.is_tensor(v))
    assert n_saved < 0.1 * sum(p.numel() for p in model.parameters())
    assert not any(k.startswith(("clip", "ladder.visual.", "prompts.clip")) for k in sd)
    assert "ladder.adapters.1.stream1.1.running_mean" in sd
    torch.manual_seed(2)
    fresh = RAM(model, tok, n_visual_tokens=3).eval()
    images = _images()
    assert not torch.allclose(fresh(images, NAMES).scores, ram(images, NAMES).scores)
    fresh.load_state_dict(sd)
    torch.testing.assert_close(
        fresh(images, NAMES).scores, ram(images, NAMES).scores, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="n_visual_tokens: saved 3, model 8"):
        RAM(model, tok).load_state_dict(sd)


def test_param_groups_match_reference_split(tiny_clip):
    model, tok, _ = tiny_clip
    ram = RAM(model, tok)
    groups = ram.param_groups(lr=5e-5, weight_decay=1e-4)
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["adapters", "head", "embeds"]
    assert by_name["adapters"]["lr"] == pytest.approx(5e-6) and by_name["head"]["lr"] == 5e-5
    assert by_name["embeds"]["lr"] == 1e-3
    assert len(by_name["embeds"]["params"]) == 6  # 3 visual-token + 3 text-prompt tensors
    assert {id(p) for p in by_name["head"]["params"]} == {
        id(ram.head.temperature_local),
        id(ram.head.temperature_global),
    }
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in ram.trainable_parameters()}
    torch.optim.AdamW([g for g in groups if g["name"] != "embeds"])  # usable as given
    torch.optim.SGD([by_name["embeds"]], momentum=0.9)


def test_head_defaults_follow_clip_scale(tiny_clip):
    model, tok, _ = tiny_clip
    ram = RAM(model, tok)
    s = float(model.logit_scale.exp())
    assert ram.logit_scale == pytest.approx(s) and ram.head.kcot.logit_scale == pytest.approx(s)
    assert ram.head.temperature_global.item() == pytest.approx(1 / s)
    assert ram.head.temperature_local.item() == pytest.approx(2e-3)


def test_build_ram_and_device_moves(tiny_clip):
    ram = build_ram(TINY_MODEL_NAME, pretrained=None, n_ctx=2)
    assert callable(ram.preprocess) and ram.config["model_name"] == TINY_MODEL_NAME
    ram.double()
    assert ram.clip_model.visual.conv1.weight.dtype == torch.float64
    out = ram.eval()(_images(2).double(), ["a", "b"])
    assert out.scores.shape == (2, 2)


def test_bad_inputs(tiny_clip):
    model, tok, _ = tiny_clip
    ram = RAM(model, tok)
    with pytest.raises(
        ValueError, match=r"RAM: expected `images` of shape \(B, 3, H, W\) = \(\*, 3, 32, 32\)"
    ):
        ram(torch.randn(2, 3, 64, 64), NAMES)
    with pytest.raises(ValueError, match="RAM: expected `labels` to hold at least one label"):
        ram(_images(), [])
    with pytest.raises(
        ValueError, match=r"RAM: expected `labels` of shape \(C, D\) = \(\*, 32\), got \(5, 16\)"
    ):
        ram(_images(), torch.randn(5, 16))
    with pytest.raises(TypeError, match="sequence of str"):
        ram(_images(), "cat")
    with pytest.raises(ValueError, match="targets"):
        ram.train()(_images(), NAMES, TARGETS[:, :3])
