"""The Emoji world: atlas, scene generator and Emoji-COCO files (ram_ot/data/emoji_world.py)."""

import json
from importlib import resources

import pytest
import torch

from ram_ot.data import coco_zsl_datasets, coco_zsl_split, read_coco_instances
from ram_ot.data.emoji_world import (
    caption,
    coco_sprite_map,
    distractor_pool,
    load_atlas,
    make_emoji_coco,
    render_scenes,
)


def test_atlas_ships_with_licence_and_unique_names():
    atlas = load_atlas()
    K = len(atlas.names)
    assert 1300 <= K <= 1400
    assert atlas.sprites.shape == (K, 4, 32, 32)
    assert len(set(atlas.names)) == K
    assert atlas.index("cat") == atlas.names.index("cat")
    # every sprite has opaque pixels and transparent corners
    alpha = atlas.sprites[:, 3]
    assert bool((alpha.amax((1, 2)) > 0.9).all())
    assert float(alpha[:, 0, 0].median()) < 0.1
    files = resources.files("ram_ot.data") / "emoji"
    assert "Apache License" in (files / "LICENSE-Apache-2.0.txt").read_text(encoding="utf-8")
    assert "Noto Color Emoji" in (files / "NOTICE.md").read_text(encoding="utf-8")


def test_coco_map_covers_the_65_classes_with_distinct_sprites():
    m = coco_sprite_map()
    split = coco_zsl_split()
    assert set(m) == set(split.gzsl)
    assert len(set(m.values())) == 65
    atlas = load_atlas()
    for sprite in m.values():
        atlas.index(sprite)  # raises if the table names a sprite the atlas lacks
    doc = json.loads((resources.files("ram_ot.data") / "emoji" / "coco_map.json").read_text())
    notes = {r["coco_name"]: r["note"] for r in doc["classes"]}
    assert "closest" in notes["sink"]  # no sink emoji: the table says so


def test_distractors_never_look_like_a_label():
    atlas = load_atlas()
    pool = distractor_pool(atlas, coco_sprite_map())
    names = {atlas.names[i] for i in pool}
    assert len(pool) > 800
    for bad in ("dog face", "hot dog", "cat face", "dog", "cat", "bus", "oncoming bus"):
        assert bad not in names


def test_render_is_seeded_and_boxes_cover_the_sprite():
    atlas = load_atlas()
    cat, bus = atlas.index("cat"), atlas.index("bus")
    objs = [[cat], [cat, bus], [bus, cat, atlas.index("dog"), atlas.index("cow")]]
    a = render_scenes(atlas, objs, image_size=64, generator=torch.Generator().manual_seed(3))
    b = render_scenes(atlas, objs, image_size=64, generator=torch.Generator().manual_seed(3))
    c = render_scenes(atlas, objs, image_size=64, generator=torch.Generator().manual_seed(4))
    assert a.images.dtype == torch.uint8 and a.images.shape == (3, 3, 64, 64)
    assert torch.equal(a.images, b.images) and a.boxes == b.boxes
    assert not torch.equal(a.images, c.images)
    assert [len(x) for x in a.boxes] == [1, 2, 4]
    for boxes in a.boxes:
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
            assert w >= 8 and h >= 8  # every object is at least a patch wide
    # a lone object is drawn large
    assert a.boxes[0][0][2] >= 0.3 * 64


def test_render_validates_its_input():
    atlas = load_atlas()
    with pytest.raises(ValueError, match="1 to 4 labelled objects"):
        render_scenes(atlas, [[0, 1, 2, 3, 4]])
    with pytest.raises(ValueError, match="atlas rows"):
        render_scenes(atlas, [[10**6]])
    with pytest.raises(ValueError, match="image_size"):
        render_scenes(atlas, [[0]], image_size=8)


def test_caption():
    assert caption(["cat"]) == "a photo of a cat."
    assert caption(["cat", "bus", "cake"]) == "a photo of a cat, a bus and a cake."


def test_emoji_coco_files_follow_the_coco_zsl_protocol(tmp_path):
    info = make_emoji_coco(tmp_path, n_train=40, n_val=30, image_size=32, seed=1)
    split = coco_zsl_split()
    assert info.split == split
    train = json.loads((tmp_path / "annotations" / "instances_train2014.json").read_text())
    cats = {c["id"]: c["name"] for c in train["categories"]}
    assert sorted(cats.values()) == sorted(split.gzsl)
    # training images carry only seen labels; every annotation has a box inside the image
    assert {cats[a["category_id"]] for a in train["annotations"]} <= set(split.seen)
    for a in train["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x + w <= 32 and y + h <= 32
    samples, labels = read_coco_instances(tmp_path / "annotations" / "instances_val2014.json")
    assert len(samples) == 30
    data = coco_zsl_datasets(tmp_path)
    assert len(data.train) == 40
    assert list(data.test_gzsl.labels) == list(split.seen) + list(split.unseen)
    assert 0 < len(data.test_zsl) <= 30
    image, target = data.test_gzsl[0]
    assert image.size == (32, 32) and target.sum() >= 1
    # deterministic: the same seed writes the same files
    again = tmp_path / "again"
    make_emoji_coco(again, n_train=40, n_val=30, image_size=32, seed=1)
    for part in ("train", "val"):
        name = f"instances_{part}2014.json"
        assert (again / "annotations" / name).read_bytes() == (
            tmp_path / "annotations" / name
        ).read_bytes()
    first = sorted((tmp_path / "train2014").iterdir())[0]
    assert (again / "train2014" / first.name).read_bytes() == first.read_bytes()


def test_make_emoji_coco_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        make_emoji_coco(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="max_objects"):
        make_emoji_coco(tmp_path, max_objects=5)
