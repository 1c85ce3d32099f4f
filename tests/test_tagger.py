"""Tagger files, presence calibration, thresholds and prediction (ram_ot.tagger, ram_ot.metrics)."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from ram_ot.backbones.open_clip import TINY_MODEL_NAME
from ram_ot.metrics import calibrate_thresholds
from ram_ot.model import build_ram
from ram_ot.tagger import (
    FORMAT,
    PRIOR_POSITIVES,
    Calibration,
    Tag,
    Tagger,
    clip_fingerprint,
    fit_calibration,
    presence_features,
    presence_probability,
    save_tagger,
    write_trained_tagger,
)


# ----------------------------------------------------------------------- thresholds
def _oracle(scores, targets):
    """Brute force: every distinct value as threshold, largest F1, ties -> largest threshold."""
    out = []
    for c in range(scores.shape[1]):
        s, y = scores[:, c].tolist(), [bool(v) for v in targets[:, c].tolist()]
        if not any(y):
            out.append(float("nan"))
            continue
        best = None
        for t in sorted(set(s), reverse=True):
            tp = sum(1 for v, p in zip(s, y, strict=True) if v >= t and p)
            fp = sum(1 for v, p in zip(s, y, strict=True) if v >= t and not p)
            fn = sum(1 for v, p in zip(s, y, strict=True) if v < t and p)
            f1 = 2 * tp / (2 * tp + fp + fn)
            if best is None or f1 > best[0]:
                best = (f1, t)
        out.append(best[1])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("n,c,levels", [(1, 1, 0), (7, 3, 0), (40, 6, 5), (100, 4, 3)])
def test_calibrate_thresholds_matches_brute_force(n, c, levels):
    g = torch.Generator().manual_seed(n * 10 + c)
    scores = torch.rand(n, c, generator=g)
    if levels:  # many ties
        scores = (scores * levels).floor() / levels
    targets = torch.rand(n, c, generator=g) < 0.4
    targets[0, 0] = True
    got = calibrate_thresholds(scores, targets)
    torch.testing.assert_close(got, _oracle(scores, targets), equal_nan=True)


def test_calibrate_thresholds_no_positive_is_nan_and_bad_shape_raises():
    got = calibrate_thresholds(torch.rand(5, 2), torch.tensor([[1, 0]] * 5))
    assert not got[0].isnan() and got[1].isnan()
    with pytest.raises(ValueError, match="targets"):
        calibrate_thresholds(torch.rand(5, 2), torch.zeros(4, 2))


def test_fit_calibration_recovers_a_separable_rule():
    # presence is driven by feature 0 only: the fitted weights must use it, and the
    # thresholds must separate the two groups
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 3, 2, generator=g)
    y = f[..., 0] > 0.5
    cal = fit_calibration(f, y, ["a", "b", "c"])
    assert cal.weights[0] > 5 * abs(cal.weights[1])
    p = presence_probability(f, cal.weights)
    pred = p >= cal.threshold_for(["a", "b", "c"]).float()
    assert (pred == y).float().mean() > 0.97
    assert cal.threshold_for(["zebra"]).item() == cal.default_threshold


def test_fit_calibration_shrinks_a_label_with_one_weak_positive_to_the_pooled_threshold():
    # Regression (issue 16): "rare" has a single validation positive, scored below most of its
    # negatives. Its own F1-optimal cut is that positive's score, so it would fire on most
    # images; shrunk toward the pooled threshold by its one positive, it must not.
    g = torch.Generator().manual_seed(0)
    n = 200
    f = torch.randn(n, 3, 2, generator=g)
    y = f[..., 0] > 0.5  # "a" and "b": ~60 positives each, separable
    y[:, 2] = False
    f[0, 2, 0] = -1.5  # the one positive of "rare": weaker than ~93% of its negatives
    y[0, 2] = True
    labels = ["a", "b", "rare"]
    cal = fit_calibration(f, y, labels)
    p = presence_probability(f, cal.weights)
    own, pool, k = p[0, 2].double(), cal.default_threshold, PRIOR_POSITIVES
    assert k >= 5
    torch.testing.assert_close(cal.thresholds[2], (own + k * pool) / (1 + k))
    fired = p[:, 2] >= cal.threshold_for(labels)[2].float()
    assert fired.float().mean() < 0.45  # about the pooled cut's rate, not most images
    # many positives: the own threshold dominates (60 positives against k)
    unshrunk = fit_calibration(f, y, labels, prior_positives=0)
    n_a = float(y[:, 0].sum())
    torch.testing.assert_close(
        cal.thresholds[0], (n_a * unshrunk.thresholds[0] + k * pool) / (n_a + k)
    )
    # without shrinkage the rare label's own cut floods it with false positives
    assert unshrunk.thresholds[2] == own
    assert (p[:, 2] >= unshrunk.thresholds[2].float()).float().mean() > 0.85
    # a label without a validation positive has no threshold of its own
    y[0, 2] = False
    assert fit_calibration(f, y, labels).thresholds[2].isnan()
    for bad in (-1, float("inf"), True, "10"):
        with pytest.raises(ValueError, match="prior_positives"):
            fit_calibration(f, y, labels, prior_positives=bad)


def test_presence_features_are_label_count_independent_in_scale():
    # the global feature is exactly the cosine; the local one is C * matched
    lg = torch.tensor([[10.0, -5.0, 2.0]])
    ll = torch.tensor([[3.0, 1.0, 0.5]])
    f = presence_features(lg, ll, 0.01, 2e-3)
    torch.testing.assert_close(f[..., 0], lg * 0.01)
    torch.testing.assert_close(f[..., 1], ll * 2e-3 * 3)


# ----------------------------------------------------------------------- the tagger
LABELS = ["red circle", "blue square", "green cross", "yellow triangle"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_ram(TINY_MODEL_NAME, pretrained=None)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    return [Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()) for _ in range(5)]


@pytest.fixture(scope="module")
def calibrated(model, images):
    t = Tagger(model, LABELS)
    targets = torch.zeros(len(images), len(LABELS))
    targets[torch.arange(len(images)), torch.arange(len(images)) % len(LABELS)] = 1
    t.calibrate(list(zip(images, targets, strict=True)), LABELS)
    return t


def test_presence_is_independent_of_the_other_labels_global_and_bounded_local(calibrated, images):
    # Adding 60 distractor labels: RAM's fused softmax of the first labels shrinks (it is a
    # distribution over the label set); the presence features keep their scale: the global
    # cosine is unchanged and the local one stays a weighted mean of the label's own region
    # cosines, i.e. inside [min_n cos, max_n cos].
    model = calibrated.model
    x = torch.stack([calibrated.transform(im) for im in images])
    many = LABELS + [f"thing {i}" for i in range(60)]
    small, big = calibrated.forward(x, LABELS), calibrated.forward(x, many)
    torch.testing.assert_close(big.features[:, :4, 0], small.features[..., 0], atol=1e-5, rtol=1e-5)
    assert big.scores[:, :4].sum() < 0.5 * small.scores.sum()
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_labels(many), dim=-1)
        regions = model.ladder(x, model.encode_labels(many)).image_regions
        cos = torch.nn.functional.normalize(regions, dim=-1) @ emb.T  # (B, N, C)
    u = big.features[..., 1]
    assert bool((u <= cos.amax(1) + 1e-4).all() and (u >= cos.amin(1) - 1e-4).all())


def test_save_load_round_trip_weights_only(calibrated, images, tmp_path):
    path = calibrated.save(tmp_path / "tagger.pt")
    state = torch.load(path, weights_only=True)
    assert state["format"] == FORMAT and state["labels"] == LABELS
    assert state["clip"]["weights"] is not None  # random CLIP: stored, it cannot be rebuilt
    assert set(state["versions"]) == {"ram_ot", "torch", "open_clip"}
    loaded = Tagger.load(path, device="cpu")
    assert loaded.labels == LABELS
    a, b = calibrated.score(images), loaded.score(images)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert loaded.predict(images) == calibrated.predict(images)


def test_file_with_a_local_clip_stores_only_the_identity_and_refuses_other_weights(model, tmp_path):
    clip_file = tmp_path / "clip.pt"
    torch.save(model.clip_model.state_dict(), clip_file)
    path = save_tagger(model, tmp_path / "t.pt", labels=LABELS, pretrained=clip_file,
                       train_args={"lr": 1e-3, "epochs": 2, "path": tmp_path})  # fmt: skip
    state = torch.load(path, weights_only=True)
    assert state["clip"]["weights"] is None
    assert state["clip"]["sha256"] == clip_fingerprint(model.clip_model)
    assert state["train_args"]["path"] == str(tmp_path)
    Tagger.load(path, device="cpu")  # the same CLIP file: accepted
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.clip_model.state_dict().items()}
    torch.save(other, clip_file)
    with pytest.raises(ValueError, match="do not match the CLIP this tagger was trained with"):
        Tagger.load(path, device="cpu")


def test_load_rejects_files_that_are_not_taggers(model, tmp_path):
    with pytest.raises(FileNotFoundError):
        Tagger.load(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="not a ram-ot tagger file"):
        Tagger.load(junk)
    ckpt = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "epoch": 3}, ckpt)
    with pytest.raises(ValueError, match="not a ram-ot tagger file"):
        Tagger.load(ckpt)


def test_predict_rules(calibrated, images):
    top = calibrated.predict(images, top_k=2)
    assert all(len(t) == 2 and isinstance(t[0], Tag) for t in top)
    assert all(t[0].score >= t[1].score for t in top)
    assert all(t[0].label in LABELS for t in top)
    everything = calibrated.predict(images, threshold=0.0, score="presence")
    assert all(len(t) == len(LABELS) for t in everything)
    _, presence, _ = calibrated.score(images)
    mid = float(presence.median())
    half = calibrated.predict(images, threshold=mid, score="presence")
    for i, tags in enumerate(half):
        assert {t.label for t in tags} == {c for j, c in enumerate(LABELS) if presence[i, j] >= mid}
        assert all(t.score >= mid for t in tags)
    # the default rule = the calibrated per-label thresholds on the presence probability
    thr = calibrated.calibration.threshold_for(LABELS)
    default = calibrated.predict(images)
    for i, tags in enumerate(default):
        assert {t.label for t in tags} == {c for j, c in enumerate(LABELS) if presence[i, j] >= thr[j]}
    free = calibrated.predict(images, ["a cat", "a dog"], top_k=1)
    assert all(len(t) == 1 and t[0].label in ("a cat", "a dog") for t in free)


def test_predict_uncalibrated_defaults_to_top3_and_refuses_threshold(model, images):
    t = Tagger(model, LABELS)
    assert all(len(tags) == 3 for tags in t.predict(images))
    with pytest.raises(ValueError, match="not calibrated"):
        t.predict(images, threshold=0.5)


def test_predict_batches_agree_and_bad_files_are_skipped(calibrated, images, tmp_path):
    files = []
    for i, im in enumerate(images):
        im.save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    files.insert(2, tmp_path / "bad.jpg")
    with pytest.warns(UserWarning, match="skipped .*bad.jpg"):
        one = calibrated.predict(files, top_k=3, batch_size=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many = calibrated.predict(files, top_k=3, batch_size=4, progress=True)
    assert one[2] is None and many[2] is None
    for a, b in zip(one, many, strict=True):
        if a is not None:
            assert [t.label for t in a] == [t.label for t in b]
            torch.testing.assert_close(torch.tensor([t.score for t in a]), torch.tensor([t.score for t in b]))


def test_calibration_dict_round_trip():
    cal = Calibration(torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64), ("a", "b"),
                      torch.tensor([0.2, float("nan")], dtype=torch.float64), 0.4)  # fmt: skip
    back = Calibration.from_dict(cal.to_dict())
    assert back.labels == cal.labels and back.default_threshold == 0.4
    torch.testing.assert_close(back.thresholds, cal.thresholds, equal_nan=True)
    assert list(itertools.chain(back.threshold_for(["b", "a", "z"]).tolist())) == [0.4, 0.2, 0.4]


class _Val:
    """A minimal validation split: (image, target) pairs with ``.labels``."""

    def __init__(self, images, targets, labels):
        self.items, self.labels = list(zip(images, targets, strict=True)), labels

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_write_trained_tagger_calibrates_on_val_and_records_the_clip(model, images, tmp_path):
    targets = torch.zeros(len(images), len(LABELS))
    targets[torch.arange(len(images)), torch.arange(len(images)) % len(LABELS)] = 1
    val = _Val(images, targets, LABELS[:3] + ["purple star"])  # the val split's own labels
    path = write_trained_tagger(
        model, tmp_path / "tagger.pt", labels=LABELS, val_dataset=val, pretrained=None,
        train_args={"epochs": 1}, batch_size=2,
    )  # fmt: skip
    state = torch.load(path, weights_only=True)
    assert state["labels"] == LABELS and state["train_args"] == {"epochs": 1}
    assert state["clip"]["model_name"] == TINY_MODEL_NAME and state["clip"]["pretrained"] is None
    assert state["calibration"]["labels"] == val.labels
    # the same calibration as Tagger.calibrate on the same split (batching does not change it)
    expected = Tagger(model, LABELS).calibrate(val, batch_size=5)
    torch.testing.assert_close(state["calibration"]["weights"], expected.weights, rtol=1e-4, atol=1e-6)
    loaded = Tagger.load(path, device="cpu")
    assert loaded.calibration is not None and loaded.predict(images[:2]) == Tagger(
        model, LABELS, calibration=loaded.calibration
    ).predict(images[:2])


def test_write_trained_tagger_without_val_is_uncalibrated_and_checks_val(model, images, tmp_path):
    path = write_trained_tagger(model, tmp_path / "t.pt", labels=LABELS, pretrained=None)
    assert torch.load(path, weights_only=True)["calibration"] is None
    with pytest.raises(ValueError, match="val_dataset"):
        write_trained_tagger(model, tmp_path / "u.pt", labels=LABELS, pretrained=None,
                             val_dataset=[(images[0], torch.ones(4))])  # fmt: skip


def test_label_embeddings_are_cached_until_the_prompts_change(model, images, monkeypatch):
    t = Tagger(model, LABELS)
    x = torch.stack([t.transform(im) for im in images])
    calls = []
    encode = model.prompts._encode  # the text tower's work (PromptEncoder's feature cache)
    monkeypatch.setattr(model.prompts, "_encode", lambda *a, **k: calls.append(1) or encode(*a, **k))

    def uncached_embeddings():  # computed afresh, not taken from a cache
        model.prompts.clear_cache()
        with torch.no_grad():
            return model.encode_labels(LABELS)

    model.prompts.clear_cache()
    a, b = t.forward(x, LABELS), t.forward(x, LABELS)
    assert len(calls) == 1  # the second call used the cache
    uncached = t.forward(x, uncached_embeddings())  # embeddings given, computed uncached
    for out in (a, b):
        torch.testing.assert_close(out.scores, uncached.scores, rtol=0, atol=0)
        torch.testing.assert_close(out.plan, uncached.plan, rtol=0, atol=0)
    maps1 = t.explain(images[0], top_k=2)
    maps2 = Tagger(model, LABELS).explain(images[0], top_k=2)  # a fresh tagger: no cache
    assert maps1.keys() == maps2.keys()
    for k in maps1:
        np.testing.assert_array_equal(maps1[k], maps2[k])
    # an in-place change of a trained prompt parameter invalidates the cache
    p = next(model.prompts.parameters())
    saved = p.detach().clone()
    try:
        with torch.no_grad():
            p.add_(0.5)
        n = len(calls)
        changed = t.forward(x, LABELS)
        assert len(calls) == n + 1
        fresh = t.forward(x, uncached_embeddings())
        torch.testing.assert_close(changed.scores, fresh.scores, rtol=0, atol=0)
        assert not torch.equal(changed.scores, a.scores)
    finally:
        with torch.no_grad():
            p.copy_(saved)


def test_bench_cross_validation_of_prior_positives_and_rules():
    from ram_ot.bench.tagger import CV_PRIORS, compare_rules, select_prior_positives

    g = torch.Generator().manual_seed(1)
    f = torch.randn(80, 4, 2, generator=g)
    y = (f[..., 0] + 0.5 * torch.randn(80, 4, generator=g)) > 0.8
    cv = select_prior_positives(f, y, ["a", "b", "c", "d"], repeats=2)
    assert cv["n_splits"] == 4 and [r["k"] for r in cv["rows"]] == list(CV_PRIORS)
    pooled = cv["rows"][-1]
    assert pooled["dOF1"] == 0 and pooled["dCF1"] == 0
    assert all(0 <= r["OF1"] <= 1 and 0 <= r["CF1"] <= 1 for r in cv["rows"])
    cal = fit_calibration(f, y, ["a", "b", "c", "d"])
    p = presence_probability(f, cal.weights)
    thr = cal.threshold_for(["a", "b", "c", "d"])
    rules = compare_rules(p, p, y, thr, cal.default_threshold, unshrunk=thr)
    assert rules["calibrated"] == rules["unshrunk"]
    assert {"top-1", "top-3", "calibrated", "default thr", "test-oracle"} <= rules.keys()
