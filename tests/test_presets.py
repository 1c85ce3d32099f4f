"""ram_ot.training.presets + the training script's --preset: the official set-up of every dataset.

Values are pinned from the official repository's configs (configs/coco.yml, configs/nus.yml,
config/defaults.py); each preset's command runs as a smoke test on generated data written in
that dataset's real layout (tiny random CLIP).
"""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from ram_ot.cli.train import main, parse_args
from ram_ot.data import (
    VOC2007_CLASSES,
    ClassSplit,
    check_training_labels,
    coco_zsl_datasets,
    load_class_split,
    make_demo_coco,
    official_json_zsl_datasets,
)
from ram_ot.training.presets import PRESETS, get_preset

# the tiny random CLIP (4 layers, 32 px): the presets' ViT-B/16 layers and 224 px are replaced
FAST = ["--model", "RAM-Tiny-ViT", "--pretrained", "none", "--text-deep-layers", "1", "2", "3",
        "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--threads",
        "1", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_table_holds_the_official_config_values():
    assert sorted(PRESETS) == ["coco", "mlrsnet", "multiscene", "nus", "pa100k", "rap", "voc"]
    coco, nus = get_preset("coco"), get_preset("nus")
    # configs/coco.yml, configs/nus.yml: DEPTH_TEXT, TEMPERATURE; the rest shared
    assert coco.text_deep_layers == (9, 10, 11) and coco.temperature_local == 2e-3
    assert nus.text_deep_layers == (6, 7, 8, 9, 10, 11) and nus.temperature_local == 2e-4
    for p in PRESETS.values():
        assert p.adapter_layers == (9, 10, 11)  # DEPTH_VISION
        assert (p.lr, p.weight_decay, p.lr_embeds) == (5e-5, 1e-4, 1e-3)  # BASE_LR(_SGD), WD
        assert (p.batch_size, p.epochs, p.eval_every) == (32, 6, 3)  # IMS_PER_BATCH, MAX_EPOCHS
        assert p.ema and p.ema_decay == 0.9997 and p.ema_mode == "official"  # USE_EMA
        assert (p.schedule, p.warmup_epochs, p.scheduler_epochs) == ("official", 3, 60)
        assert p.normalization == "reference" and p.image_size == 224  # PIXEL_MEAN/STD 0.5
        assert p.val_fraction == 0.0  # the official code trains on every training image
        assert p.split_required == (p.name not in ("coco", "nus"))
    assert nus.files[0] == "annotations/train_925_filtered.json"  # what the official loader reads
    assert coco.files == tuple(
        f"annotations/{n}_filtered.json" for n in ("train_48", "test_17", "test_65")
    )
    with pytest.raises(ValueError, match="coco"):
        get_preset("cifar")


def test_preset_fills_flags_and_explicit_flags_win(tmp_path):
    a = parse_args(["--preset", "nus", "--coco-root", "x", "--output-dir", str(tmp_path)])
    assert a.text_deep_layers == [6, 7, 8, 9, 10, 11] and a.temperature_local == 2e-4
    assert (a.schedule, a.ema_mode, a.normalization, a.ema) == (
        "official",
        "official",
        "reference",
        True,
    )
    assert a.val_fraction == 0.0 and a.warmup_epochs == 3 and a.scheduler_epochs == 60
    assert a.split_json == list(get_preset("nus").files)
    b = parse_args(["--preset", "nus", "--data-root", "x", "--output-dir", str(tmp_path),
                    "--lr", "1e-4", "--val-fraction", "0.1", "--temperature-local", "2e-3",
                    "--schedule", "cosine-steps"])  # fmt: skip
    assert b.coco_root == "x" and b.lr == 1e-4 and b.val_fraction == 0.1
    assert b.temperature_local == 2e-3 and b.schedule == "cosine-steps"
    # no preset: our defaults (per-iteration cosine, one EMA, the model's normalisation)
    c = parse_args(["--coco-root", "x", "--output-dir", str(tmp_path)])
    assert (c.schedule, c.ema_mode, c.normalization, c.val_fraction) == (
        "cosine-steps", "continuous", "clip", 0.1,
    )  # fmt: skip
    with pytest.raises(SystemExit):  # the split of MultiScene is in no public file
        parse_args(["--preset", "multiscene", "--coco-root", "x", "--output-dir", str(tmp_path)])


def _official_lr(epoch, group_lr, base_lr):
    w, m = 0.01 * base_lr, 0.002 * base_lr
    if epoch < 3:
        return w + epoch * (group_lr - w) / 3
    return m + 0.5 * (group_lr - m) * (1 + math.cos(math.pi * epoch / 60))


# ------------------------------------------------------------------ generated layouts


def _demo(tmp_path):
    demo = make_demo_coco(tmp_path / "src", n_train=24, n_val=16, seed=3)
    data = coco_zsl_datasets(demo.root, split=load_class_split(demo.split_file))
    return demo, data


def _images(ds, old, new):
    return [[p.replace(old, new), list(ds.label_names(i))] for i, p in enumerate(ds.paths)]


def _write(path, images, classes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "classes": list(classes)}))


def _split_json_layout(tmp_path, files):
    """COCO / NUS-WIDE: the three zero-shot lists under annotations/, authors' absolute paths."""
    demo, data = _demo(tmp_path)
    for name, ds in zip(files, (data.train, data.test_zsl, data.test_gzsl), strict=True):
        _write(Path(demo.root) / name, _images(ds, demo.root, "/mnt/nas/DATA"), reversed(ds.labels))
    return demo.root, ["--rewrite-prefix", "/mnt/nas/DATA", demo.root]


def _official_json_layout(tmp_path, files):
    """Remote sensing / pedestrian attributes: train.json, test.json of every class + a split."""
    demo, data = _demo(tmp_path)
    allc = sorted(data.split.gzsl)
    # train lists every class, unseen labels included (as the official train.json files)
    train = coco_zsl_datasets(demo.root, split=ClassSplit.make(allc[:-1], allc[-1:])).train
    _write(Path(demo.root) / files[0], _images(train, demo.root, "/mnt/nas/RS"), allc)
    _write(Path(demo.root) / files[1], _images(data.test_gzsl, demo.root, "/mnt/nas/RS"), allc)
    return demo.root, ["--split", demo.split_file, "--rewrite-prefix", "/mnt/nas/RS", demo.root]


def _voc_layout(tmp_path):
    """VOC 2007: Annotations/*.xml, ImageSets/Main/{trainval,test}.txt, JPEGImages/."""
    demo, data = _demo(tmp_path)
    names = dict(zip(sorted(data.split.gzsl), VOC2007_CLASSES, strict=False))
    base = tmp_path / "VOCdevkit" / "VOC2007"
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / d).mkdir(parents=True)
    for part, ds in (("trainval", data.train), ("test", data.test_gzsl)):
        ids = []
        for i, p in enumerate(ds.paths):
            image_id = f"{part}_{i:04d}"
            shutil.copy(p, base / "JPEGImages" / f"{image_id}.jpg")
            objs = "".join(f"<object><name>{names[n]}</name><difficult>0</difficult></object>"
                           for n in ds.label_names(i))  # fmt: skip
            xml = f"<annotation><filename>{image_id}.jpg</filename>{objs}</annotation>"
            (base / "Annotations" / f"{image_id}.xml").write_text(xml)
            ids.append(image_id)
        (base / "ImageSets" / "Main" / f"{part}.txt").write_text("\n".join(ids) + "\n")
    split = tmp_path / "voc_split.json"
    seen, unseen = [names[n] for n in data.split.seen], [names[n] for n in data.split.unseen]
    split.write_text(json.dumps({"seen": seen, "unseen": unseen}))
    return str(tmp_path / "VOCdevkit"), ["--split", str(split)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_command_runs_on_its_layout(tmp_path, name):
    preset = get_preset(name)
    if preset.layout == "split-json":
        root, extra = _split_json_layout(tmp_path, preset.files)
    elif preset.layout == "official-json":
        root, extra = _official_json_layout(tmp_path, preset.files)
    else:
        root, extra = _voc_layout(tmp_path)
    out = tmp_path / "run"
    argv = ["--preset", name, "--data-root", root, *extra, *FAST, "--output-dir", str(out)]
    if name == "coco":
        argv += ["--image-size", "40"]  # interpolated positional embedding (tiny: 32 px, patch 8)
    assert main(argv) == 0
    (record,) = json.loads((out / "metrics.json").read_text())
    assert "val" not in record  # --val-fraction 0: every training image is trained on
    assert record["gzsl"]["n_images"] > 0 and record["zsl"]["n_images"] > 0
    assert 0.0 <= record["ema"]["zsl"]["mAP"] <= 1.0
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    # the official schedule: after epoch 1 the optimisers hold epoch 2's lr, for every group
    adam = ck["optimizers"][0]["param_groups"]
    assert [g["lr"] for g in adam] == pytest.approx(
        [_official_lr(2, g["initial_lr"], 5e-5) for g in adam], rel=1e-9
    )
    sgd = ck["optimizers"][1]["param_groups"][0]
    assert sgd["lr"] == pytest.approx(_official_lr(2, 1e-3, 5e-5), rel=1e-9)
    # the official EMA copies the global temperature (and averages the rest)
    shadow, live = ck["ema"]["shadow"], ck["model"]
    assert torch.equal(shadow["head.temperature_global"], live["head.temperature_global"])
    assert not torch.equal(shadow["head.temperature_local"], live["head.temperature_local"])
    log = (out / "train.log").read_text()
    assert "val 0," in log
    # PIXEL_MEAN = PIXEL_STD = 0.5 of the official configs
    assert "normalisation reference (mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5))" in log


def test_nus_preset_refuses_a_training_list_with_unseen_labels(tmp_path):
    files = get_preset("nus").files
    root, extra = _split_json_layout(tmp_path, files)
    train = Path(root) / files[0]
    zsl_classes = json.loads((Path(root) / files[1]).read_text())["classes"]
    check_training_labels(train, zsl_classes)  # the 925-label list: fine
    # train_81_filtered.json: the test labels themselves
    leak = json.loads((Path(root) / files[1]).read_text())
    train.write_text(json.dumps(leak))
    with pytest.raises(ValueError, match="unseen label"):
        check_training_labels(train, zsl_classes)
    argv = [
        "--preset",
        "nus",
        "--data-root",
        root,
        *extra,
        *FAST,
        "--output-dir",
        str(tmp_path / "r"),
    ]
    with pytest.raises(ValueError, match="train_925_filtered"):
        main(argv)


def test_official_json_reader_needs_a_split_and_follows_the_coco_rule(tmp_path):
    root, _ = _official_json_layout(tmp_path, ("train.json", "test.json"))
    split = load_class_split(os.path.join(root, "annotations", "demo_split.json"))
    data = official_json_zsl_datasets(
        root, train=os.path.join(root, "train.json"), test=os.path.join(root, "test.json"),
        split=split, rewrite_prefix=("/mnt/nas/RS", root),
    )  # fmt: skip
    assert data.train.labels == split.seen and data.test_gzsl.labels == split.gzsl
    assert bool(data.test_zsl.targets.any(1).all())  # ZSL: images with an unseen label only
    assert bool(data.train.targets.any(1).all())
    with pytest.raises(TypeError, match="not public"):
        official_json_zsl_datasets(root, train="a", test="b", split=None)


def test_frozen_transfer_trains_only_the_temperatures(tmp_path):
    out = tmp_path / "run"
    argv = ["--demo", "--demo-world", "shapes", "--demo-images", "16", "8", "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--ema", "--transfer", "frozen", "--output-dir",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    (adam,) = ck["optimizers"]  # no SGD: the token embeddings are frozen
    assert [len(g["params"]) for g in adam["param_groups"]] == [2]  # the two temperatures
    assert sorted(ck["ema"]["shadow"]) == ["head.temperature_global", "head.temperature_local"]


def test_label_smoothing_targets_are_the_officials(tmp_path):
    from ram_ot.cli.train import SmoothedTargets

    base = [(torch.zeros(3, 2, 2), torch.tensor([1.0, 0.0, 1.0]))]
    image, target = SmoothedTargets(base)[0]
    assert target.tolist() == pytest.approx([0.9, 0.1, 0.9]) and len(SmoothedTargets(base)) == 1
    out = tmp_path / "run"
    argv = ["--demo", "--demo-world", "shapes", "--demo-images", "16", "8", "--epochs", "1",
            "--batch-size", "8", "--no-progress", "--label-smoothing", "--output-dir",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    (record,) = json.loads((out / "metrics.json").read_text())
    plain = tmp_path / "plain"
    argv_plain = [a for a in argv if a != "--label-smoothing"]
    assert main([*argv_plain[:-1], str(plain)]) == 0
    (record_plain,) = json.loads((plain / "metrics.json").read_text())
    # same seed, data and weights: only the targets differ, so does the training loss
    assert (
        math.isfinite(record["train_loss"]) and record["train_loss"] != record_plain["train_loss"]
    )


def test_official_schedule_and_ema_resume_exactly(tmp_path):
    def run(out, *extra):
        argv = ["--demo", "--demo-world", "shapes", "--demo-images", "24", "8", "--batch-size", "8",
                "--no-progress", "--epochs", "3", "--eval-every", "3", "--ema", "--schedule",
                "official", "--ema-mode", "official", "--normalization", "reference",
                "--val-fraction", "0", "--output-dir", str(out), *extra]  # fmt: skip
        assert main(argv) == 0
        return torch.load(out / "last.pt", map_location="cpu", weights_only=False)

    full = run(tmp_path / "full")
    run(tmp_path / "split", "--stop-after", "1")
    resumed = run(tmp_path / "split", "--resume")
    assert full["step"] == resumed["step"] == 3 * (24 // 8)
    for k, v in full["model"].items():
        if isinstance(v, torch.Tensor):
            torch.testing.assert_close(resumed["model"][k], v, rtol=0, atol=0)
    for k, v in full["ema"]["shadow"].items():
        torch.testing.assert_close(resumed["ema"]["shadow"][k], v, rtol=0, atol=0)
    # the demo's lr 2e-3: after epoch 3 the optimisers hold epoch 4's official lr
    head = full["optimizers"][0]["param_groups"][-1]
    assert head["lr"] == pytest.approx(_official_lr(4, 2e-3, 2e-3), rel=1e-9)
    # the EMA restarted at epoch 3: 3 updates since, not 9
    assert full["ema"]["num_updates"] == 24 // 8
