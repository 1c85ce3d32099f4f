"""Seen / unseen label splits for open-vocabulary evaluation (paper §4.1 "Datasets").

The COCO-2014 zero-shot split (48 seen, 17 unseen; Bansal et al., 2018) used by BiAM, MKT,
DualCoOp and RAM ships with the package (``coco_65_split.json``). Training uses the seen
labels only; ZSL ranks the unseen labels; GZSL ranks ``sorted(seen) + sorted(unseen)``, the
order the reference builds its 65-label text features in.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from typing import NamedTuple, Union

__all__ = ["ClassSplit", "coco_zsl_split", "load_class_split"]

PathLike = Union[str, "os.PathLike[str]"]


class ClassSplit(NamedTuple):
    """A seen / unseen label split.

    Attributes:
        seen: tuple[str, ...]. Training labels, sorted.
        unseen: tuple[str, ...]. Held-out labels, sorted.
    """

    seen: tuple[str, ...]
    unseen: tuple[str, ...]

    @property
    def gzsl(self) -> tuple[str, ...]:
        """The labels in GZSL order, ``sorted(seen) + sorted(unseen)``."""
        return self.seen + self.unseen

    @classmethod
    def make(
        cls, seen: list[str] | tuple[str, ...], unseen: list[str] | tuple[str, ...]
    ) -> ClassSplit:
        """Build a split from two label lists (sorted here; duplicates and overlaps raise)."""
        seen_t, unseen_t = tuple(sorted(seen)), tuple(sorted(unseen))
        for name, labels in (("seen", seen_t), ("unseen", unseen_t)):
            if len(set(labels)) != len(labels):
                dup = sorted({x for x in labels if labels.count(x) > 1})
                raise ValueError(
                    f"ClassSplit: expected `{name}` labels without duplicates, got {dup}."
                )
            if not all(isinstance(x, str) and x for x in labels):
                raise TypeError(f"ClassSplit: expected `{name}` to hold non-empty strings.")
        both = sorted(set(seen_t) & set(unseen_t))
        if both:
            raise ValueError(
                f"ClassSplit: expected disjoint seen and unseen labels, got {both} in both."
            )
        return cls(seen_t, unseen_t)


def load_class_split(path: PathLike) -> ClassSplit:
    """Read a split file ``{"seen": [...], "unseen": [...]}`` (other keys are ignored).

    Args:
        path: the json file.

    Returns:
        The :class:`ClassSplit`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_class_split: split file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"load_class_split: {path} is not valid json ({e}).") from None
    if not isinstance(d, dict) or "seen" not in d or "unseen" not in d:
        raise ValueError(
            f'load_class_split: expected {path} to hold {{"seen": [...], "unseen": [...]}}.'
        )
    return ClassSplit.make(d["seen"], d["unseen"])


def coco_zsl_split() -> ClassSplit:
    """The COCO-2014 48 seen / 17 unseen split shipped with the package."""
    text = resources.files("ram_ot.data").joinpath("coco_65_split.json").read_text(encoding="utf-8")
    d = json.loads(text)
    return ClassSplit.make(d["seen"], d["unseen"])
