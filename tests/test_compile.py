"""torch.compile / torch.export of RAM: inference over a fixed label set, the training step.

Backends "eager" / "aot_eager" (no code generation) keep these fast; fullgraph=True and
``torch._dynamo.explain`` check that nothing breaks the graph. Sinkhorn runs few, fixed
iterations here (``max_iter``) to keep the traces short; the rule is the same at 100.
"""

import copy
import warnings

import pytest
import torch

from ram_ot.backbones.open_clip import TINY_MODEL_NAME
from ram_ot.inference import InferenceModule, export_inference, load_exported
from ram_ot.kcot import KnowledgeConstrainedOT
from ram_ot.model import RAM

LABELS = ["cat", "dog", "car", "tree"]
ITERS = 8


def _ram(clip, max_iter=ITERS, tol=0.0, **kw):
    clip_model, tokenizer, _ = clip
    kcot = KnowledgeConstrainedOT(max_iter=max_iter, tol=tol, logit_scale=100.0)
    return RAM(clip_model, tokenizer, kcot=kcot, **kw)


def _breaks(fn, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args)


@pytest.mark.filterwarnings("ignore::ram_ot.ConvergenceWarning")  # 8 iterations, tol 1e-5
def test_inference_module_is_ram_eval_forward(tiny_clip):
    model = _ram(tiny_clip, tol=1e-5).eval()
    x = torch.randn(3, 3, 32, 32)
    module = InferenceModule(model, LABELS)
    with torch.no_grad():
        ref = model(x, LABELS)
        out = module(x)
    torch.testing.assert_close(out["scores"], ref.scores)
    torch.testing.assert_close(out["logits_local"], ref.logits_local)
    assert set(out) == {"scores", "logits_global", "logits_local"}
    assert module.max_iter == ITERS and module.tol == 1e-5
    assert module.label_embeddings.shape == (4, 32)
    # shared weights, not copies
    assert module.head.temperature_local is model.head.temperature_local
    assert module.head.kcot is model.head.kcot
    fixed = InferenceModule(model, LABELS, max_iter=3, tol=0.0)
    assert (fixed.head.kcot.max_iter, fixed.head.kcot.tol) == (3, 0.0)
    assert model.head.kcot.max_iter == ITERS  # the model's own module is untouched


@pytest.mark.filterwarnings("ignore::ram_ot.ConvergenceWarning")
def test_inference_compiles_without_graph_breaks(tiny_clip):
    model = _ram(tiny_clip, tol=1e-5)
    weights = torch.tensor([3.0, 2.0, -1.0])
    module = InferenceModule(model, LABELS, presence_weights=weights)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        explained = _breaks(module, x)
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
        assert explained.graph_count == 1
        ref = module(x)
        torch._dynamo.reset()
        out = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    assert set(out) == {"scores", "logits_global", "logits_local", "presence"}
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)


def test_inference_compiles_on_the_proxy_clip():
    # the shipped proxy CLIP with RAM's defaults (Sinkhorn max_iter 100, tol 1e-5): the
    # compiled graph runs all 100 iterations, each plan frozen at its own stop -> eager scores
    from ram_ot.model import build_ram

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_ram("RAM-Proxy-ViT", "emoji").eval()
    labels = ["cat", "dog", "pizza"]
    module = InferenceModule(model, labels)
    assert (module.max_iter, module.tol) == (100, 1e-5)
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(module, fullgraph=True, backend="eager")(x)["scores"]
        eager_ram = model(x, labels).scores
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, eager_ram, rtol=1e-5, atol=1e-6)


def test_inference_module_bad_input(tiny_clip):
    model = _ram(tiny_clip)
    with pytest.raises(TypeError, match="InferenceModule: expected `model` to be a ram_ot.RAM"):
        InferenceModule(model.head, LABELS)
    with pytest.raises(ValueError, match="expected `max_iter` to be an int >= 1, got 0"):
        InferenceModule(model, LABELS, max_iter=0)
    with pytest.raises(ValueError, match="KnowledgeConstrainedOT: expected `tol` >= 0"):
        InferenceModule(model, LABELS, tol=-1.0)
    with pytest.raises(ValueError, match=r"`presence_weights` of shape \(3\)"):
        InferenceModule(model, LABELS, presence_weights=torch.ones(2))
    module = InferenceModule(model, LABELS)
    with pytest.raises(ValueError, match="`images` of shape"):
        module(torch.randn(2, 3, 16, 16))
    model.train()  # the shared ladder back in training mode
    with pytest.raises(RuntimeError, match="training mode"):
        module(torch.randn(2, 3, 32, 32))
    module.eval()
    assert module(torch.randn(2, 3, 32, 32))["scores"].shape == (2, 4)


def test_export_round_trip_and_dynamic_batch(tiny_clip, tmp_path):
    model = _ram(tiny_clip, max_iter=4)
    module = InferenceModule(model, LABELS)
    path = tmp_path / "ram.pt2"
    export_inference(module, path, metadata={"note": "test"})
    loaded, meta = load_exported(path)
    assert meta["format"] == "ram-ot-export" and meta["labels"] == LABELS
    assert meta["max_iter"] == 4 and meta["tol"] == 0.0 and meta["note"] == "test"
    assert meta["image_size"] == [32, 32]
    assert meta["outputs"] == ["logits_global", "logits_local", "scores"]
    for b in (3, 1):  # traced at 2; any batch size runs
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            ref = module(x)
        out = loaded(x)
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)
    # plain torch.export.load reads it too
    program = torch.export.load(path)
    torch.testing.assert_close(program.module()(x)["scores"], ref["scores"])
    with pytest.raises(FileNotFoundError, match="load_exported: no such file"):
        load_exported(tmp_path / "missing.pt2")
    foreign = tmp_path / "foreign.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.randn(2, 2),)), foreign)
    with pytest.raises(ValueError, match="without ram-ot metadata"):
        load_exported(foreign)


def test_tagger_export_via_cli(tiny_clip, tmp_path, capsys):
    from ram_ot.cli.main import main
    from ram_ot.tagger import Calibration, Tagger, save_tagger

    model = _ram(tiny_clip, max_iter=4)
    calib = Calibration(
        torch.tensor([4.0, 3.0, -1.0], dtype=torch.float64),
        ("cat", "dog"),
        torch.tensor([0.4, float("nan")], dtype=torch.float64),
        0.3,
    )
    ckpt = save_tagger(
        model, tmp_path / "t.pt", labels=LABELS, pretrained=None, model_name=TINY_MODEL_NAME,
        calibration=calib,
    )  # fmt: skip
    out = tmp_path / "t.pt2"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--labels", "dog,cat,tree"]
    assert main(argv + ["--static-batch"]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    loaded, meta = load_exported(out)
    assert meta["labels"] == ["dog", "cat", "tree"]
    assert meta["thresholds"] == [0.3, 0.4, 0.3]  # per seen label, else the default
    assert meta["preprocess"]["size"] == [32, 32]
    tagger = Tagger.load(ckpt, "cpu")
    x = torch.randn(2, 3, 32, 32)
    eager = tagger.forward(x, ["dog", "cat", "tree"])  # the tagger's own eager forward
    got = loaded(x)
    torch.testing.assert_close(got["scores"], eager.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["presence"], eager.presence, rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError, match=r"images.size\(\)\[0\] == 2"):
        loaded(torch.randn(3, 3, 32, 32))  # --static-batch: the traced batch of 2 only
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)]) == 1
    assert "ram-ot export:" in capsys.readouterr().err


def _train_step(model, fn, x, labels, targets, teacher):
    emb = model.encode_labels(labels)
    loss = fn(x, emb, targets, teacher_labels=teacher).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_training_step_compiles_with_matching_loss_and_grads(tiny_clip):
    model = _ram(tiny_clip).train()
    x = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    with torch.no_grad():
        teacher = model.teacher_prompts(LABELS)
        emb = model.encode_labels(LABELS)
    explained = _breaks(lambda *a: model(*a, teacher_labels=teacher).loss, x, emb, targets)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1
    state = copy.deepcopy(model.state_dict())  # BatchNorm statistics move at every step
    loss0, g0 = _train_step(model, model, x, LABELS, targets, teacher)
    model.load_state_dict(state)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss1, g1 = _train_step(model, compiled, x, LABELS, targets, teacher)
    torch.testing.assert_close(loss1, loss0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 10  # adapters, tokens, prompts, temperatures
    assert any(k.startswith("prompts.") for k in g1)  # through the eager text tower
    for k in g0:  # float rounding, relative to each gradient's scale
        scale = g0[k].abs().max()
        assert (g1[k] - g0[k]).abs().max() <= 1e-4 * scale + 2e-6, k  # float32 rounding
        assert scale > 0, k
    # the teacher's names path and the tensor path are the same knowledge constraint
    model.load_state_dict(state)
    with torch.no_grad():
        by_names = model(x, LABELS, targets).loss
        model.load_state_dict(state)
        by_tensor = model(x, model.encode_labels(LABELS), targets, teacher_labels=teacher).loss
    torch.testing.assert_close(by_tensor, by_names)


def test_teacher_labels_shape_is_checked(tiny_clip):
    model = _ram(tiny_clip).train()
    with torch.no_grad():
        emb = model.encode_labels(LABELS)
    with pytest.raises(
        ValueError, match=r"RAM: expected `teacher_labels` of shape \(C, D\) = \(4, 32\)"
    ):
        model(torch.randn(1, 3, 32, 32), emb, torch.ones(1, 4), teacher_labels=emb[:3])


def test_compiled_kcot_reports_no_convergence_warning_eager_does(tiny_clip):
    # the eager module still warns (value check on the host); under compile it is skipped
    kcot = KnowledgeConstrainedOT(max_iter=1, tol=1e-9)
    sim = torch.rand(2, 5, 3) * 2 - 1
    with pytest.warns(UserWarning, match="Sinkhorn reached max_iter=1"):
        kcot(sim)
    kcot2 = KnowledgeConstrainedOT(max_iter=1, tol=1e-9)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = torch.compile(kcot2, fullgraph=True, backend="eager")(sim)
    assert out.plan.shape == (2, 5, 3) and not kcot2._warned
    torch.testing.assert_close(out.plan.sum(dim=1), torch.full((2, 3), 1 / 3))
