"""Readers for the image lists the official RAM repository ships (paper §4.1, "Datasets").

The official repository (``datasets/json/``) holds two kinds of list, both in the RAM / MKT
split-json format ``{"classes": [...], "images": [[path, [labels]], ...]}`` with absolute
paths of the authors' machine:

* **Zero-shot lists** — ``train_48`` / ``test_17`` / ``test_65_filtered.json`` (COCO) and
  ``test_81`` / ``test_1006_filtered.json`` (NUS-WIDE; its loader trains on
  ``train_925_filtered.json``, which the repository does not ship). Seen labels are the
  training file's classes, unseen labels the ZSL file's: read them with
  :func:`ram_ot.data.split_json_zsl_datasets`. :func:`check_training_labels` refuses a
  training file that lists an unseen label (e.g. NUS-WIDE's ``train_81_filtered.json``,
  which would train on the 81 test labels).
* **Remote-sensing and pedestrian-attribute lists** — ``MultiScene``, ``MLRSNet``,
  ``PA100K``, ``RAP`` ``/{train,test}.json``. Their train and test files list the same
  classes (36, 60, 26 and 51): the open-vocabulary seen / unseen division of the paper is
  not in any public file, and the official loader (which dispatches on "coco" / "nus" in the
  root path) cannot read them. :func:`official_json_zsl_datasets` reads them with a split
  that the user gives (``{"seen": [...], "unseen": [...]}``, :func:`load_class_split`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from ram_ot.data.datasets import (
    MultiLabelDataset,
    ZSLDatasets,
    from_split_json,
    read_split_json,
    voc2007,
)
from ram_ot.data.splits import ClassSplit

__all__ = ["check_training_labels", "official_json_zsl_datasets", "voc_zsl_datasets"]

PathLike = str | os.PathLike


def check_training_labels(path: PathLike, unseen: Iterable[str]) -> None:
    """Raise ValueError if the training list `path` declares or uses an unseen label.

    Args:
        path: a split-json training list.
        unseen: the labels held out for testing.

    Raises:
        ValueError: naming the file and (up to five of) the unseen labels found in its
            ``classes`` or its images' labels.
    """
    held_out = set(unseen)
    samples, classes = read_split_json(path, on_error="skip")
    found = {c for c in classes if c in held_out}
    found |= {n for _, names in samples for n in names if n in held_out}
    if found:
        raise ValueError(
            f"check_training_labels: expected the training list {os.fspath(path)} to hold no "
            f"unseen label, got {len(found)}: {sorted(found)[:5]} (training on them leaks the "
            "test labels; NUS-WIDE trains on train_925_filtered.json, not train_81_filtered.json)."
        )


def official_json_zsl_datasets(
    root: PathLike | None,
    *,
    train: PathLike,
    test: PathLike,
    split: ClassSplit,
    rewrite_prefix: tuple[str, str] | None = None,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    check_files: bool = True,
    on_error: str = "raise",
) -> ZSLDatasets:
    """Zero-shot datasets from an official ``{train,test}.json`` pair and a given label split.

    For the MultiScene, MLRSNet, PA100K and RAP lists of the official repository, whose
    train and test files list every class. The sets follow
    :func:`ram_ot.data.coco_zsl_datasets`'s rule:

    * train: train images with at least one seen label, targets over ``split.seen`` (their
      unseen labels are dropped);
    * ZSL test: test images with at least one unseen label, targets over ``split.unseen``;
    * GZSL test: test images with a label of the split, targets over ``split.gzsl``.

    Args:
        root: directory relative image paths are resolved against (None: each json's own).
        train, test: the two json files.
        split: the seen / unseen labels; every label must be a class of both files.
        rewrite_prefix: ``(old, new)`` leading part of the listed paths to replace.
        train_transform, test_transform: transforms of the train and test sets.
        check_files, on_error: see :class:`ram_ot.data.MultiLabelDataset`.

    Returns:
        :class:`ram_ot.data.ZSLDatasets`.
    """
    if not isinstance(split, ClassSplit):
        raise TypeError(
            f"official_json_zsl_datasets: expected `split` to be a ClassSplit, got "
            f"{type(split).__name__} (the open-vocabulary split of these lists is not public: "
            "pass one, e.g. load_class_split('split.json'))."
        )
    common = dict(
        rewrite_prefix=rewrite_prefix, keep_empty=False, check_files=check_files, on_error=on_error
    )
    tr = from_split_json(train, root, labels=split.seen, transform=train_transform, **common)
    zsl = from_split_json(test, root, labels=split.unseen, transform=test_transform, **common)
    gzsl = from_split_json(test, root, labels=split.gzsl, transform=test_transform, **common)
    return ZSLDatasets(tr, zsl, gzsl, split)


def voc_zsl_datasets(
    root: PathLike,
    *,
    split: ClassSplit,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    check_files: bool = True,
) -> ZSLDatasets:
    """PASCAL VOC 2007 zero-shot datasets: ``trainval`` for training, ``test`` for testing.

    The official repository has no VOC run and no VOC split: `split` is required. The sets
    follow :func:`official_json_zsl_datasets`'s rule (train: trainval images with a seen
    label; ZSL: test images with an unseen label; GZSL: test images with a label of the split).

    Args:
        root: ``VOCdevkit/VOC2007``, ``VOCdevkit`` or its parent (see :func:`ram_ot.data.voc2007`).
        split: the seen / unseen labels (VOC class names).
        train_transform, test_transform, check_files: as :func:`official_json_zsl_datasets`.
    """
    if not isinstance(split, ClassSplit):
        raise TypeError(
            f"voc_zsl_datasets: expected `split` to be a ClassSplit, got {type(split).__name__}."
        )
    sets = {}
    for part in ("trainval", "test"):
        full = voc2007(root, part, check_files=check_files)
        sets[part] = [(p, full.label_names(i)) for i, p in enumerate(full.paths)]

    def make(part: str, labels: tuple[str, ...], transform: Any) -> MultiLabelDataset:
        return MultiLabelDataset(
            sets[part], labels, transform=transform, keep_empty=False, check_files=check_files
        )

    return ZSLDatasets(
        make("trainval", split.seen, train_transform),
        make("test", split.unseen, test_transform),
        make("test", split.gzsl, test_transform),
        split,
    )
