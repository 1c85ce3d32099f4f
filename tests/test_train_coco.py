"""examples/train_coco.py end to end: --demo, kill-and-resume, and a 2-process torchrun (gloo) run."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_coco.py"
TINY = [
    "--demo",
    "--demo-world",
    "shapes",
    "--demo-images",
    "24",
    "16",
    "--batch-size",
    "8",
    "--no-progress",
    "--val-fraction",
    "0.25",
]


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: one thread avoids oversubscribing the shared 2-core CI machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _script():
    spec = importlib.util.spec_from_file_location("train_coco_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(out, *extra):
    assert _script().main([*TINY, "--output-dir", str(out), *extra]) == 0
    with open(out / "metrics.json") as f:
        return json.load(f)


def _model_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _check_demo_run(out, records):
    assert [r["epoch"] for r in records] == [1, 2]  # --demo evaluates every epoch
    for r in records:
        for part in ("zsl", "gzsl"):
            for variant in (r, r["ema"]):
                m = variant[part]
                assert {"mAP", "F1@3", "F1@5"} <= set(m)
                assert all(0.0 <= m[k] <= 1.0 for k in ("mAP", "F1@3", "F1@5"))
        assert r["gzsl"]["n_images"] == 16 and 0 < r["zsl"]["n_images"] <= 16
        assert r["val"]["n_images"] == 6 and r["score"] == "scores"  # 25% of 24 train images
    assert sum(bool(r.get("selected")) for r in records) >= 1
    ck = _model_state(out / "last.pt")
    assert ck["epoch"] == 2 and ck["ema"] is not None and ck["step"] == 2 * (18 // 8)
    assert (out / "best.pt").is_file()
    assert re.search(
        r"epoch 2 \[ema\] val mAP \S+ F1@3 \S+ \| ZSL mAP", (out / "train.log").read_text()
    )


def test_demo_end_to_end_and_resume_continues_exactly(tmp_path):
    full = _run(tmp_path / "full", "--epochs", "2", "--ema")
    _check_demo_run(tmp_path / "full", full)
    # "killed" after epoch 1, then resumed from last.pt
    first = _run(tmp_path / "split", "--epochs", "2", "--ema", "--stop-after", "1")
    assert [r["epoch"] for r in first] == [1]
    resumed = _run(tmp_path / "split", "--epochs", "2", "--ema", "--resume")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(full, resumed, strict=False):
        assert a == b  # losses and every metric, bit for bit
    ca, cb = (
        _model_state(tmp_path / "full" / "last.pt"),
        _model_state(tmp_path / "split" / "last.pt"),
    )
    assert ca["step"] == cb["step"]
    for key, value in ca["model"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(cb["model"][key], value, rtol=0, atol=0)
    for key, value in ca["ema"]["shadow"].items():
        torch.testing.assert_close(cb["ema"]["shadow"][key], value, rtol=0, atol=0)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(EXAMPLE), *TINY, "--epochs", "1", "--output-dir", str(tmp_path), "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    (record,) = json.loads((tmp_path / "metrics.json").read_text())
    # each test image is scored by exactly one rank and gathered once
    assert record["gzsl"]["n_images"] == 16 and record["val"]["n_images"] == 6
    ck = _model_state(tmp_path / "last.pt")
    assert ck["epoch"] == 1 and len(ck["rng"]) == 2  # one RNG state per rank
    # 18 training images, global batch 8 -> 4 per rank, DistributedSampler gives 9 each -> 2 steps
    assert ck["step"] == 2


@pytest.mark.slow
def test_torchrun_demo_has_no_ddp_layout_warning(tmp_path):
    """The proxy demo under DDP: before the fix, every run warned "Grad strides do not match
    bucket view strides" (the adapter's 1x1 convolution weights, see test_adapters.py)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(EXAMPLE), "--demo", "--epochs", "1", "--output-dir", str(tmp_path), "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    assert "Grad strides do not match" not in proc.stderr, proc.stderr[-3000:]


def test_reference_split_json_lists(tmp_path):
    """Without --demo: real-data flags on the demo files, read through RAM/MKT split json lists."""
    from ram_ot.data import coco_zsl_datasets, load_class_split, make_demo_coco

    demo = make_demo_coco(tmp_path / "coco", n_train=16, n_val=12, seed=1)
    data = coco_zsl_datasets(demo.root, split=load_class_split(demo.split_file))
    lists = {}
    for name, ds in (("train", data.train), ("zsl", data.test_zsl), ("gzsl", data.test_gzsl)):
        # the reference's files: absolute paths of another machine, classes unsorted
        images = [
            [p.replace(demo.root, "/mnt/nas/COCO"), list(ds.label_names(i))]
            for i, p in enumerate(ds.paths)
        ]
        path = tmp_path / "coco" / "annotations" / f"{name}.json"
        path.write_text(json.dumps({"images": images, "classes": list(reversed(ds.labels))}))
        lists[name] = f"annotations/{name}.json"
    out = tmp_path / "run"
    argv = [
        "--coco-root", demo.root, "--split-json", lists["train"], lists["zsl"], lists["gzsl"],
        "--rewrite-prefix", "/mnt/nas/COCO", demo.root, "--model", "RAM-Tiny-ViT", "--pretrained", "none",
        "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25", "--workers", "0", "--threads", "1",
        "--no-progress", "--output-dir", str(out),
    ]  # fmt: skip
    assert _script().main(argv) == 0
    (record,) = json.loads((out / "metrics.json").read_text())
    assert record["gzsl"]["n_images"] == 12 and record["zsl"]["n_images"] == len(data.test_zsl)
    assert record["val"]["n_images"] == 4


# ------------------------------------------------------------- runs that are never lost


def _train():
    from ram_ot.cli import train

    return train


def _weights_equal(a, b):
    ca, cb = _model_state(a), _model_state(b)
    assert ca["step"] == cb["step"]
    for key, value in ca["model"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(cb["model"][key], value, rtol=0, atol=0)
    if ca["ema"] is not None:
        for key, value in ca["ema"]["shadow"].items():
            torch.testing.assert_close(cb["ema"]["shadow"][key], value, rtol=0, atol=0)


@pytest.mark.parametrize("held", ["metrics.json", "last.pt"])
def test_output_dir_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, capsys, held):
    out = tmp_path / "run"
    out.mkdir()
    (out / held).write_text("[]")
    with pytest.raises(SystemExit) as e:
        _script().main([*TINY, "--epochs", "1", "--output-dir", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / held).read_text() == "[]"  # untouched
    if held == "metrics.json":
        (out / "best.pt").write_text("old")
        (out / ".tmp-last.pt-dead.pt").write_text("old")
        records = _run(out, "--epochs", "1", "--overwrite")
        assert [r["epoch"] for r in records] == [1]
        assert not (out / ".tmp-last.pt-dead.pt").exists()
        assert _model_state(out / "last.pt")["epoch"] == 1


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--eval-every", "0"], "--eval-every"),
        (["--epochs", "-1"], "--epochs"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--val-fraction", "1"], "--val-fraction"),
        (["--workers", "-1"], "--workers"),
        (["--save-every", "-2"], "--save-every"),
        (["--ema-decay", "1.5"], "--ema-decay"),
        (["--demo-images", "0", "4"], "--demo-images"),
        (["--rewrite-prefix", "/a", "/b"], "--rewrite-prefix"),
        (["--resume", "--overwrite"], "--overwrite"),
        (["--force"], "--force"),
        (["--coco-root", "/data/coco"], "one data source"),
    ],
)
def test_bad_flag_values_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        _train().parse_args(["--demo", "--output-dir", "x", *argv])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_default_workers_follow_the_machine(monkeypatch):
    train = _train()
    for cpus, local, want in ((2, 1, 1), (1, 1, 0), (16, 1, 4), (16, 8, 1)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
        assert train.default_workers() == want
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    args = train.parse_args(["--coco-root", "/data/coco", "--output-dir", "x"])
    assert args.workers == 1


def _kill_at(monkeypatch, step, action):
    """Make the `step`-th optimiser step (counted from 1 in this process) do `action`."""
    import ram_ot.training.loop as loop

    real, calls = loop.train_step, [0]

    def patched(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls[0] += 1
        return action(loss) if calls[0] == step else loss

    monkeypatch.setattr(loop, "train_step", patched)


def test_sigterm_mid_epoch_saves_and_resume_is_bit_exact(tmp_path, monkeypatch):
    import signal

    train = _train()
    full = _run(tmp_path / "full", "--epochs", "2", "--ema")
    out = tmp_path / "killed"

    def sigterm(loss):
        os.kill(os.getpid(), signal.SIGTERM)
        return loss

    _kill_at(monkeypatch, 3, sigterm)  # 2 steps per epoch: step 3 is batch 1 of epoch 2
    argv = [*TINY, "--epochs", "2", "--ema", "--output-dir", str(out)]
    assert train.main(argv) == 128 + signal.SIGTERM
    monkeypatch.undo()
    ck = _model_state(out / "last.pt")
    assert ck["epoch"] == 1 and ck["step"] == 3
    assert ck["extra"]["partial"]["epoch"] == 2 and ck["extra"]["partial"]["steps"] == 1
    assert "SIGTERM: saved" in (out / "train.log").read_text()
    assert _run(out, "--epochs", "2", "--ema", "--resume") == full  # every metric, bit for bit
    _weights_equal(tmp_path / "full" / "last.pt", out / "last.pt")

    # changing what is trained is refused; --epochs extends the schedule
    with pytest.raises(SystemExit) as e:
        train.main([*argv, "--resume", "--lr", "1e-2"])
    assert e.value.code == 2
    assert "--lr 0.002 -> 0.01" in (out / "train.log").read_text()
    records = _run(out, "--epochs", "3", "--ema", "--resume")
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[:2] == full
    assert _model_state(out / "last.pt")["extra"]["lr_plan"]["replans"] == [[4, 6]]
    assert "re-planned from step 4 to end at step 6" in (out / "train.log").read_text()


def test_sigterm_from_outside_then_resume_matches_an_uninterrupted_run(tmp_path):
    import signal
    import time

    full = _run(tmp_path / "full", "--epochs", "2")
    out = tmp_path / "killed"
    cmd = [sys.executable, str(EXAMPLE), *TINY, "--epochs", "2", "--save-every", "1",
           "--output-dir", str(out), "--threads", "1"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 600
    while not (out / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert "SIGTERM" in log and "continue with --resume" in log
    assert _run(out, "--epochs", "2", "--resume") == full
    _weights_equal(tmp_path / "full" / "last.pt", out / "last.pt")


def test_nan_loss_stops_with_one_message_naming_the_last_good_checkpoint(tmp_path, monkeypatch):
    _kill_at(monkeypatch, 3, lambda loss: loss * float("nan"))
    out = tmp_path / "nan"
    rc = _train().main([*TINY, "--epochs", "2", "--output-dir", str(out)])
    assert rc == 3
    log = (out / "train.log").read_text()
    assert "the loss became nan at step 3 (epoch 2/2, batch 1)" in log
    assert f"the last good checkpoint is {out / 'last.pt'} (epoch 1, step 2)" in log
    assert "Likely causes" in log and "Traceback" not in log
    assert _model_state(out / "last.pt")["step"] == 2  # nothing spoiled was saved


# ------------------------------------------------------------- own data from the script


def _demo_files(tmp_path, n_train=16, n_val=12):
    from ram_ot.data import coco_zsl_datasets, load_class_split, make_demo_coco

    demo = make_demo_coco(tmp_path / "coco", n_train=n_train, n_val=n_val, seed=1)
    data = coco_zsl_datasets(demo.root, split=load_class_split(demo.split_file))
    return demo, data


def _build(**kw):
    return _train().build_datasets(
        kw.pop("root", None), image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, val_fraction=0, **kw
    )


def test_coco_2017_layout_is_detected(tmp_path):
    demo, data = _demo_files(tmp_path)
    root = Path(demo.root)
    for part in ("train", "val"):
        (root / "annotations" / f"instances_{part}2014.json").rename(
            root / "annotations" / f"instances_{part}2017.json"
        )
        (root / f"{part}2014").rename(root / f"{part}2017")
    got = _build(root=demo.root, split=demo.split_file)
    assert got.train.paths == [p.replace("/train2014/", "/train2017/") for p in data.train.paths]
    assert got.test_gzsl.source.endswith("instances_val2017.json")
    with pytest.raises(FileNotFoundError, match="instances_train2014.json or instances_train2017"):
        _build(root=str(tmp_path))


def _write_lists(tmp_path, data, *, bom=False, fmt="csv"):
    files = {}
    for name, ds in (("train", data.train), ("test", data.test_gzsl)):
        rows = [
            (os.path.relpath(p, tmp_path), list(ds.label_names(i))) for i, p in enumerate(ds.paths)
        ]
        if fmt == "csv":
            path = tmp_path / f"{name}.csv"
            text = "path,labels\n" + "".join(f"{p},{';'.join(n)}\n" for p, n in rows)
            path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
        else:  # the official repo's files: only "images", no "classes"
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps({"images": [[p, n] for p, n in rows]}))
        files[name] = str(path)
    return files


@pytest.mark.parametrize("fmt", ["csv-bom", "json-images-only"])
def test_own_lists_supervised_and_zero_shot(tmp_path, fmt):
    demo, data = _demo_files(tmp_path)
    files = _write_lists(tmp_path, data, bom=fmt == "csv-bom", fmt=fmt.split("-")[0])
    sup = _build(train_list=files["train"], test_list=files["test"])
    used = [ds.label_names(i) for ds in (data.train, data.test_gzsl) for i in range(len(ds))]
    labels = sorted({n for names in used for n in names})  # the vocabulary the lists use
    assert sup.split.seen == tuple(labels) and sup.split.unseen == ()
    assert sup.test_zsl is None and len(sup.test) == len(data.test_gzsl)
    assert sup.train.paths == data.train.paths  # the BOM does not leak into the first path
    assert [set(sup.test.label_names(i)) for i in range(len(sup.test))] == [
        set(data.test_gzsl.label_names(i)) for i in range(len(data.test_gzsl))
    ]
    with pytest.warns(UserWarning, match=r"labels \['red triangle'\] of .* are on no image"):
        zsl = _build(train_list=files["train"], test_list=files["test"], split=demo.split_file)
    assert zsl.split == data.split and zsl.test is None
    assert zsl.test_zsl.paths == data.test_zsl.paths and zsl.test_gzsl.paths == data.test_gzsl.paths
    assert torch.equal(zsl.test_gzsl.targets, data.test_gzsl.targets)


def test_voc2007_supervised(tmp_path):
    from PIL import Image

    from ram_ot.data import VOC2007_CLASSES

    base = tmp_path / "VOCdevkit" / "VOC2007"
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / d).mkdir(parents=True)
    ids = {"trainval": ["000001", "000002", "000003"], "test": ["000004", "000005"]}
    for part, names in ids.items():
        (base / "ImageSets" / "Main" / f"{part}.txt").write_text("\n".join(names) + "\n")
        for k, i in enumerate(names):
            Image.new("RGB", (32, 32), (k * 40, 0, 0)).save(base / "JPEGImages" / f"{i}.jpg")
            objs = "".join(f"<object><name>{c}</name></object>" for c in ("dog", "person")[: k + 1])
            (base / "Annotations" / f"{i}.xml").write_text(
                f"<annotation><filename>{i}.jpg</filename>{objs}</annotation>"
            )
    got = _build(voc_root=str(tmp_path))
    assert got.split.seen == tuple(sorted(VOC2007_CLASSES)) and len(got.train) == 3
    assert got.test.label_names(1) == ("dog", "person")


def test_corrupt_image_mid_epoch_skipped_or_clear_error(tmp_path, capsys):
    demo, data = _demo_files(tmp_path, n_train=24, n_val=12)
    files = _write_lists(tmp_path, data, bom=True)
    bad = data.train.paths[3]
    Path(bad).write_bytes(Path(bad).read_bytes()[:40])  # truncated: passes the existence check
    out = tmp_path / "run"
    argv = [
        "--train-list", files["train"], "--test-list", files["test"], "--model", "RAM-Tiny-ViT",
        "--pretrained", "none", "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25",
        "--workers", "0", "--threads", "1", "--no-progress", "--output-dir", str(out),
    ]  # fmt: skip
    train = _train()
    assert train.main(argv) == train.EXIT_DATA_ERROR
    log = (out / "train.log").read_text()
    assert f"training stopped: MultiLabelDataset: cannot read image {bad}" in log
    assert "--skip-bad-images" in log and "Traceback" not in log
    with pytest.warns(UserWarning, match="replaced by the next readable image"):
        assert train.main([*argv, "--overwrite", "--skip-bad-images"]) == 0
    (record,) = json.loads((out / "metrics.json").read_text())
    assert record["test"]["n_images"] == len(data.test_gzsl) and "zsl" not in record
    assert 0.0 <= record["test"]["mAP"] <= 1.0
    # found up front: the reader drops it, and the run reports the count
    named = re.escape(f"skipped {{'unreadable_image': 1}} while reading {files['train']}")
    with pytest.warns(UserWarning, match=named):  # the user's file, not a temporary copy
        assert train.main([*argv, "--overwrite", "--verify-images", "--skip-bad-images"]) == 0
    log = (out / "train.log").read_text()
    assert "skipped images while reading the data" in log and "'unreadable_image': 1" in log
    # the list changed under a run: resuming it is refused
    lines = Path(files["train"]).read_text(encoding="utf-8-sig").splitlines(keepends=True)
    Path(files["train"]).write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        train.main([*argv, "--resume", "--verify-images", "--skip-bad-images"])
    assert e.value.code == 2
    assert "the training images differ" in (out / "train.log").read_text()


def test_resume_from_a_damaged_checkpoint_is_one_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a cut-off archive
    with pytest.raises(SystemExit) as e:
        _script().main([*TINY, "--epochs", "1", "--resume", "--output-dir", str(out)])
    msg = str(e.value.code)
    assert f"cannot resume from {out / 'last.pt'}" in msg and "--overwrite" in msg
