"""ram_ot.data: readers on small files written in the real on-disk formats."""

import json
import os

import pytest
import torch
from PIL import Image

from ram_ot.data import (
    CLIP_MEAN,
    CLIP_STD,
    DEMO_CLASSES,
    DEMO_UNSEEN,
    VOC2007_CLASSES,
    build_transform,
    clip_normalization,
    coco_zsl_datasets,
    coco_zsl_split,
    from_csv,
    from_split_json,
    load_class_split,
    make_demo_coco,
    nus_wide_zsl_datasets,
    read_coco_instances,
    split_json_zsl_datasets,
    voc2007,
)

COCO_UNSEEN = (
    "airplane",
    "bus",
    "cake",
    "cat",
    "couch",
    "cow",
    "cup",
    "dog",
    "elephant",
    "keyboard",
    "knife",
    "scissors",
    "sink",
    "skateboard",
    "snowboard",
    "tie",
    "umbrella",
)  # fmt: skip  (DESIGN.md §4)


def _img(path, color=(10, 200, 30), size=(20, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_coco(
        tmp_path_factory.mktemp("coco"), n_train=24, n_val=20, image_size=32, seed=3
    )


def test_coco_split_shipped_with_package():
    split = coco_zsl_split()
    assert len(split.seen) == 48 and len(split.unseen) == 17
    assert split.unseen == COCO_UNSEEN
    assert split.gzsl == tuple(sorted(split.seen)) + COCO_UNSEEN
    assert "person" in split.seen and not set(split.seen) & set(split.unseen)


def test_demo_instances_follow_coco_format(demo):
    with open(os.path.join(demo.root, "annotations", "instances_val2014.json")) as f:
        d = json.load(f)
    assert {"images", "annotations", "categories"} <= set(d)
    assert [c["name"] for c in d["categories"]] == list(DEMO_CLASSES)
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and 0 < a["area"] <= w * h + 1e-6 and a["iscrowd"] == 0
        assert len(a["segmentation"][0]) % 2 == 0
    for im in d["images"]:
        assert Image.open(os.path.join(demo.root, "val2014", im["file_name"])).size == (32, 32)


def test_coco_zsl_datasets_from_instances(demo):
    split = load_class_split(demo.split_file)
    assert split.unseen == tuple(sorted(DEMO_UNSEEN))
    data = coco_zsl_datasets(demo.root, split=split)
    # image-level labels, counted straight from the annotation files
    by_image: dict = {}
    with open(os.path.join(demo.root, "annotations", "instances_val2014.json")) as f:
        d = json.load(f)
    names = {c["id"]: c["name"] for c in d["categories"]}
    for a in d["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    files = {im["id"]: im["file_name"] for im in d["images"]}
    with_unseen = {files[i] for i, s in by_image.items() if s & set(split.unseen)}
    assert {os.path.basename(p) for p in data.test_zsl.paths} == with_unseen
    assert data.test_zsl.labels == split.unseen and data.test_gzsl.labels == split.gzsl
    assert len(data.test_gzsl) == 20 and len(data.train) == 24
    assert not data.train.targets.all(1).any() and data.train.labels == split.seen
    for i, p in enumerate(data.test_gzsl.paths):
        image_id = next(k for k, v in files.items() if v == os.path.basename(p))
        assert set(data.test_gzsl.label_names(i)) == by_image[image_id]
    assert data.test_zsl.targets.any(1).all()  # every ZSL image has an unseen label
    image, target = data.test_gzsl[0]
    assert (
        isinstance(image, Image.Image) and target.dtype == torch.float32 and target.shape == (16,)
    )


def test_read_coco_instances_unknown_category(tmp_path):
    ann = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 1}, {"id": 8, "image_id": 1, "category_id": 5}]}  # fmt: skip
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps(ann))
    with pytest.raises(
        ValueError, match=r"annotation 8 in .*instances_val2014.json has an unknown category_id 5"
    ):
        read_coco_instances(path)
    from collections import Counter

    skipped = Counter()
    samples, cats = read_coco_instances(path, on_error="skip", skipped=skipped)
    assert samples == [("a.jpg", ("cat",))] and cats == ("cat",) and skipped["unknown_label"] == 1
    with pytest.raises(FileNotFoundError, match="annotation file not found: .*nope.json"):
        read_coco_instances(tmp_path / "nope.json")


def _split_json(tmp_path, name, classes, images):
    p = tmp_path / "annotations" / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps({"images": images, "classes": classes}))  # the reference's key order
    return p


def test_split_json_relative_paths_duplicates_and_prefix(tmp_path):
    _img(str(tmp_path / "imgs" / "a.jpg"))
    _img(str(tmp_path / "imgs" / "b.jpg"))
    p = _split_json(tmp_path, "test.json", ["tie", "bus", "cup"],
                    [["imgs/a.jpg", ["tie", "tie", "bus"]], ["/mnt/nas/COCO/imgs/b.jpg", []]])  # fmt: skip
    ds = from_split_json(p, tmp_path, rewrite_prefix=("/mnt/nas/COCO/", str(tmp_path) + "/"))
    assert ds.labels == ("bus", "cup", "tie")  # sorted, as the reference
    assert ds.paths == [str(tmp_path / "imgs" / "a.jpg"), str(tmp_path / "imgs" / "b.jpg")]
    torch.testing.assert_close(
        ds.targets, torch.tensor([[True, False, True], [False, False, False]])
    )
    x, y = ds[0]
    torch.testing.assert_close(y, torch.tensor([1.0, 0.0, 1.0]))
    ds2 = from_split_json(p, tmp_path, labels=["tie", "bus"], keep_empty=False, check_files=False)
    assert len(ds2) == 1 and ds2.label_names(0) == ("tie", "bus")
    with pytest.raises(
        ValueError, match=r"labels \['dog'\] are not in the `classes` of .*test.json"
    ):
        from_split_json(p, tmp_path, labels=["dog"], check_files=False)


def test_split_json_errors_name_the_file(tmp_path):
    _img(str(tmp_path / "a.jpg"))
    p = _split_json(
        tmp_path, "bad.json", ["tie"], [["a.jpg", ["tie", "zebra"]], ["gone.jpg", ["tie"]]]
    )
    with pytest.raises(ValueError, match=r"unknown label 'zebra' for image a.jpg in .*bad.json"):
        from_split_json(p, tmp_path)
    ok = _split_json(tmp_path, "ok.json", ["tie"], [["gone.jpg", ["tie"]]])
    with pytest.raises(
        FileNotFoundError, match=r"image not found: .*gone.jpg \(listed in .*ok.json\)"
    ):
        from_split_json(ok, tmp_path)
    with pytest.warns(UserWarning, match="skipped"):
        ds = from_split_json(p, tmp_path, on_error="skip")
    assert len(ds) == 1 and ds.skipped == {"unknown_label": 1, "missing_image": 1}


def test_split_json_schema_is_validated(tmp_path):
    # issue 14: "classes": "flower" made labels of its characters
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"classes": "flower", "images": [["a.jpg", ["f"]]]}))
    with pytest.raises(ValueError, match=r'"classes" in .*s.json to be a list of label names'):
        from_split_json(p, tmp_path, check_files=False)
    for bad, match in (
        ({"classes": ["a", "a"], "images": []}, "names 'a' more than once"),
        ({"classes": ["a"], "images": {"x.jpg": ["a"]}}, r'"images" in .*s.json to be a list'),
        ({"classes": ["a"], "images": [["x.jpg", "a"]]}, r"\[path, \[labels\]\].*'a'"),
        ({"classes": ["a"], "images": [["x.jpg", [1]]]}, r"\[path, \[labels\]\]"),
        ({"classes": [1, 2], "images": []}, "list of label names"),
    ):
        p.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            from_split_json(p, tmp_path, check_files=False)


def _coco_files(root, train_ann, val_ann):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for part, ann in (("train", train_ann), ("val", val_ann)):
        (root / "annotations" / f"instances_{part}2014.json").write_text(json.dumps(ann))


def test_coco_bad_fields_and_empty_datasets_name_the_file(tmp_path):
    from ram_ot.data import ClassSplit

    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cow"}]
    good = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
            "categories": cats, "annotations": [{"id": 1, "image_id": 1, "category_id": 2},
                                                {"id": 2, "image_id": 2, "category_id": 1}]}  # fmt: skip
    bad = dict(good, images=[{"id": 1, "filename": "a.jpg"}])
    _coco_files(tmp_path, bad, good)
    split = ClassSplit(seen=("dog",), unseen=("cat",))
    # issue 14: `filename` instead of `file_name` gave a bare KeyError
    with pytest.raises(
        ValueError,
        match=r"entry 0 of `images` in .*instances_train2014.json has no 'file_name'"
        r" field \(it has 'filename'",
    ):
        coco_zsl_datasets(tmp_path, split=split, check_files=False)
    _coco_files(tmp_path, good, good)
    data = coco_zsl_datasets(tmp_path, split=split, check_files=False)
    assert len(data.train) == 1 and len(data.test_zsl) == 1
    # no image annotated with a seen label: the train set would be empty (it used to fail
    # later with "MultiLabelDataset.split: expected at least 2 items")
    with pytest.raises(ValueError, match=r"no image of .*instances_train2014.json is annotated "
                       r"with one of the split's 1 seen labels \(cow"):  # fmt: skip
        coco_zsl_datasets(tmp_path, split=ClassSplit(("cow",), ("cat",)), check_files=False)


def test_unreadable_image(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    _img(str(tmp_path / "good.jpg"))
    p = _split_json(tmp_path, "x.json", ["a"], [["broken.jpg", ["a"]], ["good.jpg", ["a"]]])
    ds = from_split_json(p, tmp_path)  # only a stat: the broken file passes
    with pytest.raises(OSError, match=r"cannot read image .*broken.jpg"):
        ds[0]
    with pytest.raises(OSError, match=r"cannot read image .*broken.jpg"):
        from_split_json(p, tmp_path, verify_images=True)
    with pytest.warns(UserWarning):
        ds = from_split_json(p, tmp_path, verify_images=True, on_error="skip")
    assert ds.paths == [str(tmp_path / "good.jpg")] and ds.skipped["unreadable_image"] == 1


def test_split_json_zsl_and_nus_wide_layout(tmp_path):
    for n in ("0.jpg", "1.jpg", "2.jpg"):
        _img(str(tmp_path / "images" / n))
    _split_json(tmp_path, "train_925_filtered.json", ["sky", "boat"], [["images/0.jpg", ["sky"]]])
    _split_json(tmp_path, "test_81_filtered.json", ["dog", "cat"], [["images/1.jpg", ["cat"]]])
    _split_json(tmp_path, "test_1006_filtered.json", ["cat", "sky", "dog", "boat"],
                [["images/1.jpg", ["cat"]], ["images/2.jpg", ["sky", "dog"]]])  # fmt: skip
    data = nus_wide_zsl_datasets(tmp_path)
    assert data.split.seen == ("boat", "sky") and data.split.unseen == ("cat", "dog")
    assert data.test_gzsl.labels == ("boat", "sky", "cat", "dog")
    torch.testing.assert_close(
        data.test_gzsl.targets, torch.tensor([[0, 0, 1, 0], [0, 1, 0, 1]]).bool()
    )
    same = split_json_zsl_datasets(
        tmp_path, train=tmp_path / "annotations" / "train_925_filtered.json",
        test_zsl=tmp_path / "annotations" / "test_81_filtered.json",
        test_gzsl=tmp_path / "annotations" / "test_1006_filtered.json",
    )  # fmt: skip
    assert same.test_zsl.paths == data.test_zsl.paths


def _voc(tmp_path, objects, image_set="test"):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "Annotations").mkdir(exist_ok=True)
    ids = []
    for i, objs in enumerate(objects):
        image_id = f"{i:06d}"
        ids.append(image_id)
        _img(str(base / "JPEGImages" / f"{image_id}.jpg"))
        obj_xml = "".join(
            f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
            for n, d in objs
        )
        (base / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>20</width><height>16</height><depth>3</depth></size>{obj_xml}</annotation>"
        )
    (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
    return tmp_path


def test_voc2007(tmp_path):
    root = _voc(tmp_path, [[("dog", 0), ("person", 1)], [("car", 0), ("car", 0)]])
    ds = voc2007(root, "test")
    assert ds.labels == VOC2007_CLASSES and len(VOC2007_CLASSES) == 20
    assert ds.label_names(0) == ("dog", "person") and ds.label_names(1) == ("car",)
    assert voc2007(root / "VOCdevkit", "test", include_difficult=False).label_names(0) == ("dog",)
    x, y = voc2007(
        root / "VOCdevkit" / "VOC2007", "test", transform=build_transform(8, train=False)
    )[1]
    assert x.shape == (3, 8, 8) and y.sum() == 1 and y[VOC2007_CLASSES.index("car")] == 1


def test_voc2007_errors(tmp_path):
    root = _voc(tmp_path, [[("dragon", 0)]])
    with pytest.raises(ValueError, match=r"unknown label 'dragon' in .*000000.xml"):
        voc2007(root)
    os.remove(root / "VOCdevkit" / "VOC2007" / "Annotations" / "000000.xml")
    with pytest.raises(
        FileNotFoundError, match=r"annotation not found: .*000000.xml \(listed in .*test.txt\)"
    ):
        voc2007(root)
    with pytest.raises(FileNotFoundError, match="image set file not found: .*trainval.txt"):
        voc2007(root, "trainval")


def test_csv(tmp_path):
    _img(str(tmp_path / "a.png"))
    _img(str(tmp_path / "b.png"))
    (tmp_path / "data.csv").write_text("path,labels\na.png,cat;dog\nb.png,\n")
    ds = from_csv(tmp_path / "data.csv")
    assert (
        ds.labels == ("cat", "dog")
        and ds.label_names(0) == ("cat", "dog")
        and ds.label_names(1) == ()
    )
    with pytest.raises(ValueError, match=r"unknown label 'dog' for image a.png in .*data.csv"):
        from_csv(tmp_path / "data.csv", labels=["cat"])


def test_readers_take_a_byte_order_mark_and_split_json_without_classes(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM (it once joined the header's first cell, so the
    header became a sample); the official repo's split files have "images" but no "classes"."""
    _img(str(tmp_path / "a.png"))
    _img(str(tmp_path / "b.png"))
    bom = b"\xef\xbb\xbf"
    (tmp_path / "data.csv").write_bytes(bom + b"path,labels\na.png,cat;dog\nb.png,dog\n")
    ds = from_csv(tmp_path / "data.csv")
    assert ds.paths == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert ds.labels == ("cat", "dog") and ds.label_names(1) == ("dog",)
    body = {"images": [["a.png", ["zebra", "cat", "zebra"]], ["b.png", []]]}
    (tmp_path / "only_images.json").write_bytes(bom + json.dumps(body).encode())
    ds = from_split_json(tmp_path / "only_images.json")
    assert ds.labels == ("cat", "zebra")  # the labels the images use, sorted
    assert ds.label_names(0) == ("cat", "zebra") and ds.label_names(1) == ()
    (tmp_path / "neither.json").write_text(json.dumps({"classes": ["cat"]}))
    with pytest.raises(ValueError, match=r'neither.json to hold .*"classes" optional'):
        from_split_json(tmp_path / "neither.json")


def test_holdout_split_is_disjoint_and_seeded(demo):
    train = coco_zsl_datasets(demo.root, split=load_class_split(demo.split_file)).train
    a, b = train.split(0.25, seed=1)
    a2, b2 = train.split(0.25, seed=1)
    assert len(b) == 6 and len(a) == 18 and not set(a.paths) & set(b.paths)
    assert b.paths == b2.paths and a.paths == a2.paths
    with pytest.raises(ValueError, match=r"expected `fraction` in \(0, 1\), got 1.5"):
        train.split(1.5)


def test_transforms_normalise_with_clip_statistics():
    tf = build_transform((6, 4), train=False)
    x = tf(Image.new("RGB", (10, 10), (255, 0, 128)))
    expect = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(CLIP_MEAN)) / torch.tensor(
        CLIP_STD
    )
    assert x.shape == (3, 6, 4)
    torch.testing.assert_close(x.mean((1, 2)), expect.float(), atol=1e-5, rtol=0)
    train_tf = build_transform(8, train=True, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert train_tf(Image.new("RGB", (30, 20))).shape == (3, 8, 8)
    from types import SimpleNamespace

    cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
    assert clip_normalization(SimpleNamespace(visual=SimpleNamespace(preprocess_cfg=cfg))) == (
        cfg["mean"],
        cfg["std"],
    )
    assert clip_normalization(SimpleNamespace(visual=SimpleNamespace())) == (CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="expected `mean` with 3 channels"):
        build_transform(8, train=False, mean=(0.5,))


def test_eval_resize_is_bilinear_like_the_reference():
    # issue 15: the reference's test transform is T.Resize(SIZE_TEST) (bilinear); ours was
    # bicubic. Pixels straight from PIL's bilinear resize (written from the official config).
    import numpy as np

    g = np.random.default_rng(0)
    img = Image.fromarray(g.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    x = build_transform((16, 24), train=False, mean=(0.0,) * 3, std=(1.0,) * 3)(img)
    want = np.asarray(img.resize((24, 16), Image.BILINEAR), dtype=np.float32) / 255
    torch.testing.assert_close(x, torch.from_numpy(want).permute(2, 0, 1), atol=1e-6, rtol=0)
    bicubic = np.asarray(img.resize((24, 16), Image.BICUBIC), dtype=np.float32) / 255
    assert not np.allclose(want, bicubic, atol=1e-3)  # the two differ on this image
