"""The ``ram-ot`` command: dispatcher, ``tag`` (formats, rules, bad files, offline), ``eval``, ``info``."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ram_ot.backbones.open_clip import TINY_MODEL_NAME
from ram_ot.cli.main import main
from ram_ot.model import build_ram
from ram_ot.tagger import Tagger

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["red circle", "blue square", "green cross"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(5)
    paths = []
    for i in range(4):
        p = d / f"img{i}.png"
        Image.fromarray((torch.rand(36, 36, 3, generator=g) * 255).byte().numpy()).save(p)
        paths.append(p)
    torch.manual_seed(0)
    tagger = Tagger(build_ram(TINY_MODEL_NAME, pretrained=None), LABELS)
    targets = torch.eye(4, 3)
    tagger.calibrate([(Image.open(p), t) for p, t in zip(paths, targets, strict=True)], LABELS)
    ckpt = tagger.save(d / "tagger.pt")
    split = d / "split.json"
    split.write_text(json.dumps({
        "classes": LABELS, "images": [[p.name, [LABELS[i % 3]]] for i, p in enumerate(paths)],
    }))  # fmt: skip
    bad = d / "broken.jpg"
    bad.write_bytes(b"not an image")
    return {"dir": d, "images": [str(p) for p in paths], "ckpt": str(ckpt), "split": str(split),
            "bad": str(bad)}  # fmt: skip


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_pyproject_declares_the_command():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'ram-ot = "ram_ot.cli.main:main"' in text


def test_dispatcher_usage_and_info(capsys):
    assert run(capsys, "--help")[0] == 0
    rc, _, err = run(capsys, "frobnicate")
    assert rc == 2 and "unknown command" in err
    assert main([]) == 2
    # in a child process: the backend probe of `info` must not share this test process
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "ram_ot.cli.main", "info"], capture_output=True,
                         text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0 and "sinkhorn backends" in res.stdout


def test_tag_text_json_csv(files, capsys):
    imgs = files["images"][:2]
    rc, out, _ = run(capsys, "tag", *imgs, "--checkpoint", files["ckpt"], "--top-k", "2", "--no-progress")
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(imgs[0] + ": ")
    assert sum(lab in lines[0] for lab in LABELS) == 2

    rc, out, _ = run(capsys, "tag", *imgs, "--checkpoint", files["ckpt"], "--top-k", "2", "--format", "json")
    rows = json.loads(out)
    assert rc == 0 and [r["image"] for r in rows] == imgs
    for r in rows:
        assert len(r["tags"]) == 2 and r["tags"][0]["score"] >= r["tags"][1]["score"]
        assert {t["label"] for t in r["tags"]} <= set(LABELS)

    rc, out, _ = run(capsys, "tag", *imgs, "--checkpoint", files["ckpt"], "--top-k", "2", "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    assert rc == 0 and table[0] == ["image", "label", "score"] and len(table) == 1 + 4
    # the same tags in all three formats
    assert [(r[0], r[1]) for r in table[1:]] == [(x["image"], t["label"]) for x in rows for t in x["tags"]]


def test_tag_threshold_free_labels_and_python_agree(files, capsys):
    imgs = files["images"]
    rc, out, _ = run(capsys, "tag", *imgs, "--checkpoint", files["ckpt"], "--labels", "a cat,a dog",
                     "--threshold", "0.0", "--format", "json")  # fmt: skip
    rows = json.loads(out)
    assert rc == 0 and all({t["label"] for t in r["tags"]} == {"a cat", "a dog"} for r in rows)
    # default rule (calibrated thresholds) = Tagger.predict's
    rc, out, _ = run(capsys, "tag", *imgs, "--checkpoint", files["ckpt"], "--format", "json")
    want = Tagger.load(files["ckpt"], "cpu").predict(imgs)
    assert rc == 0
    assert [[t["label"] for t in r["tags"]] for r in json.loads(out)] == [[t.label for t in w] for w in want]


def test_tag_bad_file_reported_and_skipped(files, capsys):
    imgs = [files["images"][0], files["bad"], str(files["dir"] / "missing.png")]
    rc, out, err = run(capsys, "tag", *imgs, "--checkpoint", files["ckpt"], "--format", "json", "--top-k", "1")
    rows = json.loads(out)
    assert rc == 1
    assert len(rows[0]["tags"]) == 1 and rows[1]["tags"] is None and rows[2]["tags"] is None
    assert "broken.jpg" in err and "missing.png" in err


def test_tag_usage_errors_exit_2(files, capsys):
    img = files["images"][0]
    assert run(capsys, "tag", img)[0] == 2  # no model at all
    assert run(capsys, "tag", img, "--checkpoint", files["ckpt"], "--top-k", "2", "--threshold", "0.5")[0] == 2
    assert run(capsys, "tag", img, "--model", TINY_MODEL_NAME, "--pretrained", "none")[0] == 2  # labels
    rc, _, err = run(capsys, "tag", img, "--model", TINY_MODEL_NAME, "--pretrained", "none",
                     "--labels", "a,b", "--threshold", "0.5")  # fmt: skip
    assert rc == 2 and "--top-k" in err


def test_tag_without_checkpoint_and_runtime_error(files, capsys):
    rc, out, _ = run(capsys, "tag", files["images"][0], "--model", TINY_MODEL_NAME, "--pretrained", "none",
                     "--labels", "a,b,c,d", "--format", "json")  # fmt: skip
    assert rc == 0 and len(json.loads(out)[0]["tags"]) == 3  # uncalibrated: top-3
    rc, _, err = run(capsys, "tag", files["images"][0], "--checkpoint", files["bad"])
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "not a ram-ot tagger file" in err


def test_tag_explain_writes_pngs(files, capsys, tmp_path):
    out_dir = tmp_path / "expl"
    rc, _, _ = run(capsys, "tag", files["images"][0], "--checkpoint", files["ckpt"], "--top-k", "2",
                   "--explain", out_dir)  # fmt: skip
    pngs = sorted(out_dir.glob("*.png"))
    assert rc == 0 and len(pngs) == 2 and all(p.name.startswith("img0_") for p in pngs)
    assert Image.open(pngs[0]).size == (36 * 2 + 4, 36)  # plan | teacher prior


@pytest.mark.parametrize(
    "model,pretrained",
    [("hf-hub:nobody-ram-ot/no-such-clip", None), ("ViT-B-16", "laion2b_s34b_b88k")],
)
def test_tag_offline_hub_fails_at_once_in_one_line(files, model, pretrained, tmp_path):
    cmd = [sys.executable, "-m", "ram_ot.cli.main", "tag", files["images"][0], "--model", model,
           "--labels", "a,b", "--cache-dir", str(tmp_path)]  # fmt: skip
    if pretrained:
        cmd += ["--pretrained", pretrained]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    lines = [x for x in res.stderr.strip().splitlines() if x]
    assert res.returncode == 1
    assert len(lines) == 1, res.stderr
    assert "local checkpoint file" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_tag_unknown_pretrained_tag_is_one_line(files, capsys):
    rc, _, err = run(capsys, "tag", files["images"][0], "--model", "ViT-B-16", "--pretrained",
                     "no-such-tag", "--labels", "a")  # fmt: skip
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "unknown pretrained tag" in err


def test_eval_split_json(files, capsys):
    rc, out, _ = run(capsys, "eval", "--checkpoint", files["ckpt"], "--split-json", files["split"],
                     "--format", "json", "--ks", "1", "3")  # fmt: skip
    res = json.loads(out)
    assert rc == 0 and res["n_images"] == 4 and res["n_labels"] == 3
    assert 0 <= res["mAP"] <= 1 and "F1@1" in res and "F1@3" in res
    assert set(res["thresholded"]) == {"OP", "OR", "OF1"}
    rc, out, _ = run(capsys, "eval", "--checkpoint", files["ckpt"], "--split-json", files["split"])
    assert rc == 0 and "mAP" in out and "F1@thr" in out
