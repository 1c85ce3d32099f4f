"""Smoke-run examples/zero_shot_tagging.py on generated PNGs with the tiny model (in-process)."""

import re
import runpy
from pathlib import Path

import pytest
import torch
from PIL import Image

from ram_ot.backbones.open_clip import TINY_MODEL_NAME

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "zero_shot_tagging.py"
LABELS = ["cat", "dog", "red square", "tree"]


@pytest.fixture(scope="module")
def example_main():
    return runpy.run_path(str(EXAMPLE), run_name="zero_shot_tagging")["main"]


def _pngs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 128, 255), (30, 200, 30)]):
        Image.new("RGB", (40 + 8 * i, 36), color).save(folder / f"img{i}.png")
    return folder


def _check_output(out, n_images):
    assert f"{n_images} images, 4 labels" in out
    for kind in ("RAM \\(v-v regions \\+ KCOT\\)", "CLIP global"):
        rows = re.findall(kind + r":\s+(.*)", out)
        assert len(rows) == n_images, out
        for row in rows:
            pairs = re.findall(r"([a-z ]+?) (\d\.\d{3})", row)
            assert len(pairs) == 2 and all(name.strip() in LABELS for name, _ in pairs), row
            probs = [float(p) for _, p in pairs]
            assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def test_runs_without_weights_and_warns(tmp_path, capsys, example_main):
    folder = _pngs(tmp_path)
    argv = [
        str(folder),
        "--labels",
        ",".join(LABELS),
        "--model",
        TINY_MODEL_NAME,
        "--pretrained",
        "none",
        "--top-k",
        "2",
    ]
    with pytest.warns(UserWarning, match="randomly initialised"):
        assert example_main(argv) == 0
    _check_output(capsys.readouterr().out, 3)


def test_runs_with_local_checkpoint(tmp_path, capsys, example_main, tiny_clip):
    folder = _pngs(tmp_path)
    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny_clip[0].state_dict(), ckpt)
    argv = [
        str(folder / "img0.png"),
        str(folder / "img2.png"),
        "--labels",
        ",".join(LABELS),
        "--model",
        TINY_MODEL_NAME,
        "--pretrained",
        str(ckpt),
        "--top-k",
        "2",
        "--batch-size",
        "1",
    ]
    assert example_main(argv) == 0
    _check_output(capsys.readouterr().out, 2)
