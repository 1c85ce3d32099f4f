"""The shipped proxy CLIP (ram_ot/backbones/proxy.py): offline loading, packing, zero-shot, RAM on it.

The thresholds come from measurements written down in docs/proxy_world.md ("How the test
margins were set"); none is a tuned-to-pass number.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ram_ot.backbones import PROXY_MODEL_NAME, PROXY_PRETRAINED, load_clip
from ram_ot.backbones.proxy import (
    PROXY_WEIGHTS,
    load_proxy_weights,
    pack_proxy_weights,
    zero_shot_top1,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def proxy():
    return load_clip(PROXY_MODEL_NAME, pretrained=PROXY_PRETRAINED)


def test_package_data_fits_the_size_cap():
    atlas = ROOT / "ram_ot" / "data" / "emoji" / "atlas.png"
    total = atlas.stat().st_size + PROXY_WEIGHTS.stat().st_size
    assert total <= 10.5e6, total


def test_proxy_loads_offline_frozen_with_zero_unused_token_rows(proxy):
    model, tokenizer, preprocess = proxy
    assert all(not p.requires_grad for p in model.parameters())
    assert model.visual.image_size == (64, 64)
    table = model.token_embedding.weight
    used = tokenizer(["cat", "a photo of a bus."]).unique()
    assert bool((table[used].abs().sum(1) > 0).all())
    assert int((table.abs().sum(1) == 0).sum()) > 40_000  # only the world's vocabulary is stored
    # a packed round trip gives the same weights
    fresh = load_clip(PROXY_MODEL_NAME, pretrained=None)[0]
    load_proxy_weights(fresh)
    for (k, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_pack_refuses_a_model_not_trained_by_the_recipe(tmp_path):
    model, tokenizer, _ = load_clip(PROXY_MODEL_NAME, pretrained=None)  # random rows everywhere
    with pytest.raises(ValueError, match="outside the world's vocabulary"):
        pack_proxy_weights(model, tokenizer)


def test_packed_file_path_is_accepted_as_pretrained(tmp_path, proxy):
    model, tokenizer, _ = proxy
    path = tmp_path / "proxy.pt"
    torch.save(pack_proxy_weights(model, tokenizer), path)
    again = load_clip(PROXY_MODEL_NAME, pretrained=str(path))[0]
    w = "visual.transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(again.state_dict()[w], model.state_dict()[w])


def test_proxy_zero_shot_beats_chance(proxy):
    from ram_ot.data.emoji_world import coco_sprite_map

    model, tokenizer, _ = proxy
    m = coco_sprite_map()
    names = list(m)
    acc = zero_shot_top1(model, tokenizer, names, [m[n] for n in names], n_per_label=4, seed=99)
    # chance is 1/65 = 1.5%; see docs/proxy_world.md for the measured value
    assert acc >= MIN_ZERO_SHOT_TOP1, acc


def test_build_ram_takes_the_proxy():
    from ram_ot.model import build_ram

    model = build_ram(PROXY_MODEL_NAME, PROXY_PRETRAINED)
    out = model(torch.randn(2, 3, 64, 64), ["cat", "bus", "cake"])
    assert out.scores.shape == (2, 3) and out.plan.shape == (2, 64, 3)
    torch.testing.assert_close(out.scores.sum(1), torch.ones(2))


@pytest.mark.slow
def test_wheel_ships_atlas_licence_and_weights(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("ram_ot-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in (
        "ram_ot/data/emoji/atlas.png",
        "ram_ot/data/emoji/atlas.json",
        "ram_ot/data/emoji/coco_map.json",
        "ram_ot/data/emoji/LICENSE-Apache-2.0.txt",
        "ram_ot/data/emoji/NOTICE.md",
        "ram_ot/backbones/RAM-Proxy-ViT.json",
        f"ram_ot/backbones/proxy/{PROXY_WEIGHTS.name}",
    ):
        assert f in names, f
    # the installed copy loads from the unpacked wheel alone (no repository on the path)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import ram_ot, json; from ram_ot.backbones import load_clip; "
        "from ram_ot.data.emoji_world import load_atlas; "
        "m = load_clip('RAM-Proxy-ViT', 'emoji')[0]; a = load_atlas(); "
        "print(json.dumps([ram_ot.__file__, len(a.names), m.visual.image_size[0]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, n, size = json.loads(proc.stdout.strip().splitlines()[-1])
    assert where.startswith(str(site)) and n > 1300 and size == 64


# Measured: 0.946, 0.950, 0.962, 0.965 with seeds 99, 1, 2, 3 (260 scenes each, sampling std
# about 0.013); the bound sits 10 points below, 55 times chance (1/65).
MIN_ZERO_SHOT_TOP1 = 0.85


DEMO_ARGS = [
    "--demo", "--demo-images", "240", "150", "--epochs", "1", "--batch-size", "16",
    "--no-progress", "--threads", "2",
]  # fmt: skip


def test_short_ram_training_on_the_proxy_beats_chance(tmp_path):
    """Full RAM trained briefly on Emoji-COCO: ZSL mAP far above random scores.

    Margin: measured over seeds 0-4 with these settings (docs/proxy_world.md, "How the test
    margins were set"); the bound sits below the worst seed by three seed std-devs.
    """
    from ram_ot.cli.train import main

    assert main([*DEMO_ARGS, "--output-dir", str(tmp_path), "--seed", "0"]) == 0
    (record,) = json.loads((tmp_path / "metrics.json").read_text())
    ref = json.loads((tmp_path / "reference.json").read_text())
    chance, chance_std = ref["chance"]["zsl"]["mAP"]
    assert record["zsl"]["mAP"] >= MIN_DEMO_ZSL_MAP, record["zsl"]
    assert MIN_DEMO_ZSL_MAP > chance + 5 * chance_std  # the bound itself is far from chance
    # the frozen proxy's zero-shot (global) already beats chance on multi-object scenes
    assert ref["zero_shot_clip"]["zsl"]["mAP"] > chance + 5 * chance_std
    assert "ZSL mAP: RAM" in (tmp_path / "train.log").read_text()


# Measured with DEMO_ARGS over seeds 0-4 (data and training both change with the seed): ZSL mAP
# 0.571, 0.529, 0.569, 0.535, 0.526 (mean 0.546, std 0.021); chance 0.118-0.130 (std 0.02).
# Bound: the worst seed minus three seed std-devs, rounded down.
MIN_DEMO_ZSL_MAP = 0.45
