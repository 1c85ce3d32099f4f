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
