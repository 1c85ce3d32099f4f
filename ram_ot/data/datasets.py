"""Multi-label image datasets in their real on-disk formats (paper §4.1 "Datasets").

* COCO 2014 from the official ``annotations/instances_{train,val}2014.json`` plus a zero-shot
  label split (default: the 48 / 17 split shipped with the package);
* the RAM / MKT split json ``{"classes": [...], "images": [[path, [labels]], ...]}`` (COCO's
  ``train_48_filtered.json`` / ``test_17_filtered.json`` / ``test_65_filtered.json``,
  NUS-WIDE's ``train_925_filtered.json`` / ``test_81_filtered.json`` /
  ``test_1006_filtered.json``), relative image paths resolved against a root;
* PASCAL VOC 2007 from ``VOCdevkit/VOC2007`` (``Annotations/*.xml`` + ``ImageSets/Main``);
* a CSV file ``path,label1;label2;...`` for users' own data (the split json works too).

Every reader checks what it reads: a missing file, a label that the file's own vocabulary
does not know, or (with ``verify_images=True``) an image that cannot be decoded raises an
error naming the file; with ``on_error="skip"`` the sample is dropped instead and counted in
``dataset.skipped``. An image that turns out to be unreadable while training raises an
``OSError`` naming it.
"""

from __future__ import annotations

import csv
import json
import os
import random
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ram_ot._checks import check_choice
from ram_ot.data.splits import ClassSplit, coco_zsl_split

__all__ = [
    "VOC2007_CLASSES",
    "MultiLabelDataset",
    "ZSLDatasets",
    "coco_zsl_datasets",
    "from_csv",
    "from_split_json",
    "nus_wide_zsl_datasets",
    "read_coco_instances",
    "read_split_json",
    "split_json_zsl_datasets",
    "voc2007",
]

PathLike = Union[str, "os.PathLike[str]"]

VOC2007_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 PASCAL VOC classes, in the devkit's order."""

_ON_ERROR = ("raise", "skip")


def _open_rgb(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _require_file(fn: str, path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{fn}: {what} not found: {path}")


def _load_json(fn: str, path: str) -> Any:
    _require_file(fn, path, "annotation file")
    with open(path, encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is dropped
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{fn}: {path} is not valid json ({e}).") from None


class MultiLabelDataset(Dataset):
    """Images with label sets, returned as ``(image, target)``.

    Args:
        samples: ``(image path, label names)`` pairs. Label names outside `labels` are
            dropped on purpose (e.g. unseen labels of a training image).
        labels: the label vocabulary; its order is the column order of the targets.
        transform: applied to the RGB ``PIL.Image`` (e.g. :func:`ram_ot.data.build_transform`);
            None returns the PIL image.
        keep_empty: keep images with no label in `labels` (all-zero target). Default True.
        check_files: check at construction that every image file exists (one ``stat`` each).
        verify_images: also decode each image's header at construction (slower).
        on_error: ``"raise"`` (default) or ``"skip"`` missing / unreadable images, counted in
            ``skipped``.
        source: where the samples came from, used in messages.

    Items:
        image: whatever `transform` returns, typically (3, H, W) float32.
        target: (C,) float32, 1 for the labels present.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, Sequence[str]]],
        labels: Sequence[str],
        *,
        transform: Callable[[Any], Any] | None = None,
        keep_empty: bool = True,
        check_files: bool = True,
        verify_images: bool = False,
        on_error: str = "raise",
        source: str = "",
        skipped: Counter | None = None,
    ) -> None:
        fn = type(self).__name__
        check_choice(fn, "on_error", on_error, _ON_ERROR)
        labels = tuple(labels)
        if len(set(labels)) != len(labels):
            raise ValueError(
                f"{fn}: expected `labels` without duplicates, got {len(labels) - len(set(labels))} duplicate(s)."
            )
        self.labels = labels
        self.transform = transform
        self.source = source
        self.on_error = on_error
        self.skipped: Counter = Counter(skipped or {})
        index = {name: i for i, name in enumerate(labels)}
        kept: list[tuple[str, tuple[int, ...]]] = []
        for path, names in samples:
            path = os.fspath(path)
            idx = tuple(sorted({index[n] for n in names if n in index}))
            if not idx and not keep_empty:
                continue
            if check_files and not os.path.isfile(path):
                if on_error == "raise":
                    where = f" (listed in {source})" if source else ""
                    raise FileNotFoundError(f"{fn}: image not found: {path}{where}")
                self.skipped["missing_image"] += 1
                continue
            if verify_images:
                try:
                    from PIL import Image

                    with Image.open(path) as im:
                        im.verify()
                except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
                    if on_error == "raise":
                        raise OSError(f"{fn}: cannot read image {path}: {e}") from e
                    self.skipped["unreadable_image"] += 1
                    continue
            kept.append((path, idx))
        self._samples = kept
        if self.skipped:
            warnings.warn(
                f"{fn}: skipped {dict(self.skipped)} while reading {source or 'the samples'}.",
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self._samples)

    @property
    def num_classes(self) -> int:
        """C, the number of labels."""
        return len(self.labels)

    @property
    def paths(self) -> list[str]:
        """Image paths, in item order."""
        return [p for p, _ in self._samples]

    def label_names(self, i: int) -> tuple[str, ...]:
        """The label names of item `i`."""
        return tuple(self.labels[j] for j in self._samples[i][1])

    def target(self, i: int) -> Tensor:
        """(C,) float32 target of item `i` (does not read the image)."""
        t = torch.zeros(len(self.labels), dtype=torch.float32)
        t[list(self._samples[i][1])] = 1.0
        return t

    @property
    def targets(self) -> Tensor:
        """(N, C) bool, the targets of all items."""
        t = torch.zeros(len(self._samples), len(self.labels), dtype=torch.bool)
        for i, (_, idx) in enumerate(self._samples):
            t[i, list(idx)] = True
        return t

    def __getitem__(self, i: int) -> tuple[Any, Tensor]:
        path, _ = self._samples[i]
        try:
            image = _open_rgb(path)
        except Exception as e:  # noqa: BLE001
            raise OSError(
                f"{type(self).__name__}: cannot read image {path}: {e} "
                "(construct the dataset with verify_images=True, on_error='skip' to drop such files up front)"
            ) from e
        if self.transform is not None:
            image = self.transform(image)
        return image, self.target(i)

    def subset(self, indices: Sequence[int], *, transform: Any = "same") -> MultiLabelDataset:
        """A new dataset of the items `indices` (same labels; `transform` defaults to this one's)."""
        new = MultiLabelDataset.__new__(MultiLabelDataset)
        new.labels = self.labels
        new.transform = (
            self.transform if isinstance(transform, str) and transform == "same" else transform
        )
        new.source = self.source
        new.on_error = self.on_error
        new.skipped = Counter(self.skipped)
        new._samples = [self._samples[int(i)] for i in indices]
        return new

    def split(
        self, fraction: float, *, seed: int = 0, transform: Any = "same"
    ) -> tuple[MultiLabelDataset, MultiLabelDataset]:
        """Hold out a random `fraction` of the items (e.g. a validation set carved from train).

        Args:
            fraction: in (0, 1), the share of items in the second dataset (at least one item).
            seed: seed of the random permutation (independent of the global RNG).
            transform: transform of the held-out part (default: this dataset's).

        Returns:
            ``(rest, held_out)``.
        """
        if not 0.0 < float(fraction) < 1.0:
            raise ValueError(
                f"MultiLabelDataset.split: expected `fraction` in (0, 1), got {fraction!r}."
            )
        if len(self) < 2:
            raise ValueError(
                f"MultiLabelDataset.split: expected at least 2 items, got {len(self)}."
            )
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        n_out = min(len(self) - 1, max(1, round(fraction * len(self))))
        held, rest = sorted(order[:n_out]), sorted(order[n_out:])
        return self.subset(rest), self.subset(held, transform=transform)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, num_classes={self.num_classes}, source={self.source!r})"


# --------------------------------------------------------------------------- readers


def _short(x: Any, n: int = 80) -> str:
    """``repr(x)`` cut to `n` characters, for messages."""
    r = repr(x)
    return r if len(r) <= n else r[: n - 3] + "..."


def read_split_json(
    path: PathLike,
    *,
    on_error: str = "raise",
    skipped: Counter | None = None,
) -> tuple[list[tuple[str, tuple[str, ...]]], tuple[str, ...]]:
    """Read a RAM / MKT split json ``{"classes": [...], "images": [[path, [labels]], ...]}``.

    Labels may repeat within an image (one entry per object in the reference's files); they
    are de-duplicated. A label missing from ``"classes"`` raises (or, with
    ``on_error="skip"``, is dropped and counted as ``unknown_label``). ``"classes"`` may be
    absent, as in the official repo's files that hold only ``"images"``: the classes are then
    the labels the images use, sorted. UTF-8 with or without a byte-order mark.

    Args:
        path: the json file.
        on_error: ``"raise"`` or ``"skip"``.
        skipped: a Counter to add skip counts to.

    Returns:
        ``(samples, classes)``: samples are ``(image path as written, label names)``;
        classes in the file's order.
    """
    fn = "read_split_json"
    check_choice(fn, "on_error", on_error, _ON_ERROR)
    path = os.fspath(path)
    d = _load_json(fn, path)
    if not isinstance(d, dict) or "images" not in d:
        raise ValueError(
            f'{fn}: expected {path} to hold {{"classes": [...], "images": [[path, [labels]], ...]}}'
            ' ("classes" optional).'
        )
    cls = d["classes"] if "classes" in d else None
    if cls is not None and not (isinstance(cls, list) and all(isinstance(c, str) for c in cls)):
        raise ValueError(
            f'{fn}: expected "classes" in {path} to be a list of label names (strings), got '
            f"{_short(cls)}."
        )
    if cls is not None and len(set(cls)) != len(cls):
        dup = next(c for c in cls if cls.count(c) > 1)
        raise ValueError(f'{fn}: "classes" in {path} names {dup!r} more than once.')
    if not isinstance(d["images"], list):
        raise ValueError(
            f'{fn}: expected "images" in {path} to be a list of [path, [labels]], got '
            f"{_short(d['images'])}."
        )
    for item in d["images"]:
        if not (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], list)
            and all(isinstance(n, str) for n in item[1])
        ):
            raise ValueError(
                f"{fn}: expected each entry of `images` in {path} to be [path, [labels]] "
                f"(strings), got {_short(item)}."
            )
    if cls is None:  # the labels the images use
        cls = sorted({n for _, names in d["images"] for n in names})
    classes = tuple(cls)
    known = set(classes)
    out = []
    for rel, names in d["images"]:
        bad = [n for n in names if n not in known]
        if bad:
            if on_error == "raise":
                raise ValueError(
                    f"{fn}: unknown label {bad[0]!r} for image {rel} in {path} (not in its `classes`)."
                )
            if skipped is not None:
                skipped["unknown_label"] += len(bad)
        out.append((str(rel), tuple(dict.fromkeys(n for n in names if n in known))))
    return out, classes


def read_coco_instances(
    path: PathLike,
    *,
    on_error: str = "raise",
    skipped: Counter | None = None,
) -> tuple[list[tuple[str, tuple[str, ...]]], tuple[str, ...]]:
    """Read the image-level labels of a COCO ``instances_*.json`` file.

    Args:
        path: the annotation file.
        on_error: ``"raise"`` or ``"skip"`` annotations whose ``category_id`` / ``image_id``
            is not declared in the file (counted as ``unknown_label``).
        skipped: a Counter to add skip counts to.

    Returns:
        ``(samples, categories)``: samples ``(file_name, category names)`` in the order of
        the file's ``images``; category names in the file's ``categories`` order.
    """
    fn = "read_coco_instances"
    check_choice(fn, "on_error", on_error, _ON_ERROR)
    path = os.fspath(path)
    d = _load_json(fn, path)
    for key in ("images", "annotations", "categories"):
        if key not in d:
            raise ValueError(
                f"{fn}: expected {path} to have a `{key}` list (a COCO instances file)."
            )
    _check_coco_keys(fn, path, d, "categories", ("id", "name"))
    _check_coco_keys(fn, path, d, "images", ("id", "file_name"))
    _check_coco_keys(fn, path, d, "annotations", ("image_id", "category_id"))
    cats = {c["id"]: c["name"] for c in d["categories"]}
    labels: dict[Any, dict[str, None]] = {im["id"]: {} for im in d["images"]}
    for ann in d["annotations"]:
        name = cats.get(ann["category_id"])
        if name is None or ann["image_id"] not in labels:
            what = (
                f"category_id {ann['category_id']!r}"
                if name is None
                else f"image_id {ann['image_id']!r}"
            )
            if on_error == "raise":
                raise ValueError(
                    f"{fn}: annotation {ann.get('id', '?')} in {path} has an unknown {what}."
                )
            if skipped is not None:
                skipped["unknown_label"] += 1
            continue
        labels[ann["image_id"]][name] = None
    samples = [(im["file_name"], tuple(labels[im["id"]])) for im in d["images"]]
    return samples, tuple(cats[k] for k in cats)


def _check_coco_keys(fn: str, path: str, d: dict, key: str, fields: tuple[str, ...]) -> None:
    """Raise unless `d[key]` is a list of dicts that all have `fields`, naming the file."""
    items = d[key]
    if not isinstance(items, list):
        raise ValueError(f"{fn}: expected `{key}` in {path} to be a list, got {_short(items)}.")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(
                f"{fn}: expected each entry of `{key}` in {path} to be an object, got "
                f"{_short(item)} at index {i}."
            )
        missing = [f for f in fields if f not in item]
        if missing:
            near = [k for k in item if k.replace("_", "") == missing[0].replace("_", "")]
            hint = f" (it has {near[0]!r}: rename it to {missing[0]!r})" if near else ""
            raise ValueError(
                f"{fn}: entry {i} of `{key}` in {path} has no {missing[0]!r} field{hint}; "
                f"COCO instances files give every entry of `{key}` the fields {list(fields)}."
            )


def _resolve(root: str | None, p: str, rewrite_prefix: tuple[str, str] | None) -> str:
    if rewrite_prefix is not None and p.startswith(rewrite_prefix[0]):
        p = rewrite_prefix[1] + p[len(rewrite_prefix[0]) :]
    if root is not None and not os.path.isabs(p):
        p = os.path.join(root, p)
    return p


def from_split_json(
    path: PathLike,
    root: PathLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    rewrite_prefix: tuple[str, str] | None = None,
    transform: Callable[[Any], Any] | None = None,
    keep_empty: bool = True,
    check_files: bool = True,
    verify_images: bool = False,
    on_error: str = "raise",
) -> MultiLabelDataset:
    """A dataset from a RAM / MKT split json (also the generic format for your own data).

    Args:
        path: the json file ``{"classes": [...], "images": [[path, [labels]], ...]}``.
        root: directory that relative image paths are resolved against (default: the json's
            directory). Absolute paths are used as they are.
        labels: target columns (a subset / reordering of the file's classes). Default: the
            file's classes sorted, as the reference does.
        rewrite_prefix: ``(old, new)``: replace a leading `old` of each image path by `new`
            (the reference's files hold absolute paths of the authors' machine).
        transform, keep_empty, check_files, verify_images, on_error: see :class:`MultiLabelDataset`.
    """
    path = os.fspath(path)
    skipped: Counter = Counter()
    samples, classes = read_split_json(path, on_error=on_error, skipped=skipped)
    if labels is None:
        labels = sorted(classes)
    missing = [x for x in labels if x not in set(classes)]
    if missing:
        raise ValueError(
            f"from_split_json: labels {missing[:5]} are not in the `classes` of {path}."
        )
    base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(path))
    resolved = [(_resolve(base, p, rewrite_prefix), names) for p, names in samples]
    return MultiLabelDataset(
        resolved, labels, transform=transform, keep_empty=keep_empty, check_files=check_files,
        verify_images=verify_images, on_error=on_error, source=path, skipped=skipped,
    )  # fmt: skip


def from_csv(
    path: PathLike,
    root: PathLike | None = None,
    *,
    labels: Sequence[str] | None = None,
    delimiter: str = ",",
    label_delimiter: str = ";",
    transform: Callable[[Any], Any] | None = None,
    keep_empty: bool = True,
    check_files: bool = True,
    verify_images: bool = False,
    on_error: str = "raise",
) -> MultiLabelDataset:
    """A dataset from a CSV file of ``path,label1;label2;...`` rows (optional header ``path,labels``).

    UTF-8, with or without a byte-order mark (as Excel writes "CSV UTF-8").

    Args:
        path: the CSV file.
        root: directory for relative image paths (default: the CSV's directory).
        labels: the vocabulary and column order. Default: the sorted union of the labels in
            the file. With `labels` given, a label outside it raises (or is skipped and
            counted with ``on_error="skip"``).
        delimiter: column separator. label_delimiter: separator between labels.
        transform, keep_empty, check_files, verify_images, on_error: see :class:`MultiLabelDataset`.
    """
    fn = "from_csv"
    check_choice(fn, "on_error", on_error, _ON_ERROR)
    path = os.fspath(path)
    _require_file(fn, path, "CSV file")
    rows: list[tuple[str, tuple[str, ...]]] = []
    # -sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would join the first cell
    with open(path, encoding="utf-8-sig", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            if not row or (
                lineno == 1 and [c.strip().lower() for c in row[:2]] == ["path", "labels"]
            ):
                continue
            if len(row) > 2:
                raise ValueError(
                    f"{fn}: expected 2 columns in line {lineno} of {path}, got {len(row)}."
                )
            names = tuple(
                x.strip()
                for x in (row[1] if len(row) > 1 else "").split(label_delimiter)
                if x.strip()
            )
            rows.append((row[0].strip(), names))
    skipped: Counter = Counter()
    if labels is None:
        labels = sorted({n for _, names in rows for n in names})
    else:
        known = set(labels)
        for p, names in rows:
            bad = [n for n in names if n not in known]
            if bad and on_error == "raise":
                raise ValueError(f"{fn}: unknown label {bad[0]!r} for image {p} in {path}.")
            skipped["unknown_label"] += len(bad)
    base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(path))
    resolved = [(_resolve(base, p, None), names) for p, names in rows]
    return MultiLabelDataset(
        resolved, labels, transform=transform, keep_empty=keep_empty, check_files=check_files,
        verify_images=verify_images, on_error=on_error, source=path, skipped=skipped,
    )  # fmt: skip


def _voc_dir(root: str) -> str:
    for cand in (root, os.path.join(root, "VOC2007"), os.path.join(root, "VOCdevkit", "VOC2007")):
        if os.path.isdir(os.path.join(cand, "Annotations")) and os.path.isdir(
            os.path.join(cand, "ImageSets")
        ):
            return cand
    raise FileNotFoundError(
        f"voc2007: no VOC2007 directory (with Annotations/ and ImageSets/) at {root}, "
        f"{os.path.join(root, 'VOC2007')} or {os.path.join(root, 'VOCdevkit', 'VOC2007')}"
    )


def voc2007(
    root: PathLike,
    image_set: str = "test",
    *,
    include_difficult: bool = True,
    transform: Callable[[Any], Any] | None = None,
    check_files: bool = True,
    verify_images: bool = False,
    on_error: str = "raise",
) -> MultiLabelDataset:
    """PASCAL VOC 2007 as a 20-label multi-label dataset.

    Reads ``ImageSets/Main/<image_set>.txt`` and each image's ``Annotations/<id>.xml``.

    Args:
        root: ``VOCdevkit/VOC2007``, ``VOCdevkit`` or its parent.
        image_set: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``.
        include_difficult: count objects marked ``difficult`` as present (default). False
            ignores them (an image whose only instances of a class are difficult is then
            negative for it).
        transform, check_files, verify_images, on_error: see :class:`MultiLabelDataset`;
            ``on_error="skip"`` also skips a missing XML and unknown object names.

    Returns:
        A :class:`MultiLabelDataset` over ``VOC2007_CLASSES``.
    """
    fn = "voc2007"
    check_choice(fn, "on_error", on_error, _ON_ERROR)
    check_choice(fn, "image_set", image_set, ("train", "val", "trainval", "test"))
    base = _voc_dir(os.fspath(root))
    list_file = os.path.join(base, "ImageSets", "Main", f"{image_set}.txt")
    _require_file(fn, list_file, "image set file")
    with open(list_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f if line.strip()]
    known = set(VOC2007_CLASSES)
    skipped: Counter = Counter()
    samples = []
    for image_id in ids:
        xml_path = os.path.join(base, "Annotations", f"{image_id}.xml")
        if not os.path.isfile(xml_path):
            if on_error == "raise":
                raise FileNotFoundError(
                    f"{fn}: annotation not found: {xml_path} (listed in {list_file})"
                )
            skipped["missing_annotation"] += 1
            continue
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as e:
            if on_error == "raise":
                raise ValueError(f"{fn}: cannot parse {xml_path}: {e}") from None
            skipped["bad_annotation"] += 1
            continue
        names: dict[str, None] = {}
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in known:
                if on_error == "raise":
                    raise ValueError(f"{fn}: unknown label {name!r} in {xml_path}.")
                skipped["unknown_label"] += 1
                continue
            if not include_difficult and (obj.findtext("difficult") or "0").strip() == "1":
                continue
            names[name] = None
        file_name = tree.getroot().findtext("filename") or f"{image_id}.jpg"
        samples.append((os.path.join(base, "JPEGImages", file_name.strip()), tuple(names)))
    return MultiLabelDataset(
        samples, VOC2007_CLASSES, transform=transform, keep_empty=True, check_files=check_files,
        verify_images=verify_images, on_error=on_error, source=list_file, skipped=skipped,
    )  # fmt: skip


# ----------------------------------------------------------------- zero-shot bundles


class ZSLDatasets(NamedTuple):
    """Train / ZSL test / GZSL test sets of a zero-shot benchmark.

    Attributes:
        train: targets over ``split.seen``.
        test_zsl: images with an unseen label; targets over ``split.unseen``.
        test_gzsl: targets over ``split.gzsl`` = ``sorted(seen) + sorted(unseen)``.
        split: the label split.
    """

    train: MultiLabelDataset
    test_zsl: MultiLabelDataset
    test_gzsl: MultiLabelDataset
    split: ClassSplit


def coco_zsl_datasets(
    root: PathLike,
    *,
    split: ClassSplit | None = None,
    year: int = 2014,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    check_files: bool = True,
    verify_images: bool = False,
    on_error: str = "raise",
) -> ZSLDatasets:
    """COCO zero-shot datasets built from the official instances files.

    Layout: ``<root>/annotations/instances_{train,val}<year>.json``,
    ``<root>/{train,val}<year>/<file_name>``.

    * train: train images with at least one seen label, targets over the seen labels (their
      unseen labels are not used);
    * ZSL test: val images with at least one unseen label, targets over the unseen labels;
    * GZSL test: val images with at least one of the split's labels, targets over
      ``sorted(seen) + sorted(unseen)``.

    The reference evaluates on *filtered* lists (``test_17_filtered.json``: 2,729 images,
    ``test_65_filtered.json``: 6,392 images); to reproduce its numbers exactly, load those
    files with :func:`split_json_zsl_datasets`. The rule above keeps every val image that
    has a label of the split.

    Args:
        root: the COCO directory.
        split: label split (default :func:`ram_ot.data.coco_zsl_split`, 48 / 17). Every
            label must be a category of the instances files.
        year: 2014 (default) or 2017.
        train_transform, test_transform: transforms of the train and test sets.
        check_files, verify_images, on_error: see :class:`MultiLabelDataset`.
    """
    fn = "coco_zsl_datasets"
    root = os.fspath(root)
    split = coco_zsl_split() if split is None else split
    out = {}
    for part in ("train", "val"):
        skipped: Counter = Counter()
        ann = os.path.join(root, "annotations", f"instances_{part}{year}.json")
        samples, cats = read_coco_instances(ann, on_error=on_error, skipped=skipped)
        missing = [x for x in split.gzsl if x not in set(cats)]
        if missing:
            raise ValueError(
                f"{fn}: labels {missing[:5]} of the split are not categories of {ann}."
            )
        image_dir = os.path.join(root, f"{part}{year}")
        out[part] = ([(os.path.join(image_dir, p), n) for p, n in samples], ann, skipped)
    common = dict(
        check_files=check_files, verify_images=verify_images, on_error=on_error, keep_empty=False
    )
    tr, ann_tr, sk_tr = out["train"]
    va, ann_va, sk_va = out["val"]
    train = MultiLabelDataset(
        tr, split.seen, transform=train_transform, source=ann_tr, skipped=sk_tr, **common
    )
    zsl = MultiLabelDataset(
        va, split.unseen, transform=test_transform, source=ann_va, skipped=sk_va, **common
    )
    gzsl = MultiLabelDataset(
        va, split.gzsl, transform=test_transform, source=ann_va, skipped=sk_va, **common
    )
    for ds, ann, which, names in (
        (train, ann_tr, "seen", split.seen),
        (zsl, ann_va, "unseen", split.unseen),
    ):
        if len(ds) == 0:
            raise ValueError(
                f"{fn}: no image of {ann} is annotated with one of the split's {len(names)} "
                f"{which} labels ({', '.join(list(names)[:5])}, ...): the dataset would be "
                "empty. Check that the file holds the annotations and that `split` names its "
                "categories."
            )
    return ZSLDatasets(train, zsl, gzsl, split)


def split_json_zsl_datasets(
    root: PathLike,
    *,
    train: PathLike,
    test_zsl: PathLike,
    test_gzsl: PathLike,
    rewrite_prefix: tuple[str, str] | None = None,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    check_files: bool = True,
    verify_images: bool = False,
    on_error: str = "raise",
) -> ZSLDatasets:
    """Zero-shot datasets from three RAM / MKT split json files (as the reference reads them).

    Seen labels are the train file's classes, unseen labels the ZSL file's classes (both
    sorted); the GZSL file is read over ``sorted(seen) + sorted(unseen)``. Images without a
    label are kept as all-negative rows, like the reference.

    Args:
        root: directory relative image paths are resolved against.
        train, test_zsl, test_gzsl: the three json files.
        rewrite_prefix: see :func:`from_split_json`.
        train_transform, test_transform, check_files, verify_images, on_error: as above.
    """
    common = dict(
        rewrite_prefix=rewrite_prefix,
        check_files=check_files,
        verify_images=verify_images,
        on_error=on_error,
    )
    tr = from_split_json(train, root, transform=train_transform, **common)
    zsl = from_split_json(test_zsl, root, transform=test_transform, **common)
    split = ClassSplit.make(tr.labels, zsl.labels)
    gzsl = from_split_json(test_gzsl, root, labels=split.gzsl, transform=test_transform, **common)
    return ZSLDatasets(tr, zsl, gzsl, split)


def nus_wide_zsl_datasets(root: PathLike, **kwargs: Any) -> ZSLDatasets:
    """NUS-WIDE 925 seen / 81 unseen through the reference's split files.

    Layout (the reference's): ``<root>/annotations/{train_925_filtered,test_81_filtered,
    test_1006_filtered}.json``, image paths relative to `root` (or absolute; see
    `rewrite_prefix`). Keyword arguments go to :func:`split_json_zsl_datasets`.
    """
    root = os.fspath(root)
    ann = os.path.join(root, "annotations")
    return split_json_zsl_datasets(
        root,
        train=os.path.join(ann, "train_925_filtered.json"),
        test_zsl=os.path.join(ann, "test_81_filtered.json"),
        test_gzsl=os.path.join(ann, "test_1006_filtered.json"),
        **kwargs,
    )
