"""Image transforms for training and evaluating RAM (paper §4.1 "Implementation details").

Training follows the reference's torchvision part: resize to the model's input size
(bicubic), random horizontal flip (p = 0.5), pad 10 px, random crop back to the input size,
normalise, random erasing (p = 0.5, random-pixel fill). Evaluation resizes to the input size
(both sides, no crop, bilinear: the reference's plain ``T.Resize``) and normalises. The reference's extra ``imgaug``
photometric augmentations (blur, contrast, noise, small affine) are not reproduced: they
would add a dependency.

Normalisation. The reference's configs normalise with mean = std = 0.5 although the CLIP
weights were trained with OpenAI's statistics (:data:`CLIP_MEAN`, :data:`CLIP_STD`). We
default to the statistics the open_clip model itself declares (its ``preprocess_cfg``,
which are OpenAI's for the ``openai`` tags), so that the frozen trunk sees the inputs it
was trained on; pass ``mean=REFERENCE_MEAN, std=REFERENCE_STD`` to reproduce the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ram_ot._checks import check_positive

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "REFERENCE_MEAN",
    "REFERENCE_STD",
    "build_transform",
    "clip_normalization",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
"""OpenAI CLIP's per-channel pixel mean (open_clip's ``OPENAI_DATASET_MEAN``)."""
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP's per-channel pixel std (open_clip's ``OPENAI_DATASET_STD``)."""
REFERENCE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Pixel mean of the reference's COCO / NUS-WIDE configs."""
REFERENCE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
"""Pixel std of the reference's COCO / NUS-WIDE configs."""


def clip_normalization(clip_model: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` an open_clip model declares, falling back to OpenAI's statistics.

    Args:
        clip_model: an open_clip ``CLIP`` model (or anything with ``.visual.preprocess_cfg``).
    """
    cfg = getattr(getattr(clip_model, "visual", None), "preprocess_cfg", None) or {}
    mean = tuple(float(x) for x in cfg.get("mean", CLIP_MEAN))
    std = tuple(float(x) for x in cfg.get("std", CLIP_STD))
    return mean, std


def build_transform(
    image_size: int | Sequence[int] = 224,
    *,
    train: bool,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    flip_prob: float = 0.5,
    padding: int = 10,
    erase_prob: float = 0.5,
) -> Callable[[Any], Any]:
    """Transform a PIL RGB image into a normalised (3, H, W) float32 tensor.

    Args:
        image_size: the model's input size, an int or ``(H, W)``.
        train: training augmentations (flip, pad + random crop, random erasing) or not.
        mean, std: per-channel normalisation (see the module docstring for the default).
        flip_prob: probability of a horizontal flip (train).
        padding: pixels of zero padding before the random crop (train; the reference's 10).
        erase_prob: probability of random erasing (train; 0 disables it).

    Returns:
        A torchvision ``Compose``.
    """
    from torchvision import transforms as T

    size = (
        (int(image_size), int(image_size))
        if isinstance(image_size, int)
        else tuple(int(s) for s in image_size)
    )
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"build_transform: expected `image_size` to be an int or (H, W) > 0, got {image_size!r}."
        )
    for name, v in (("mean", mean), ("std", std)):
        if len(tuple(v)) != 3:
            raise ValueError(
                f"build_transform: expected `{name}` with 3 channels, got {tuple(v)!r}."
            )
    for s in std:
        check_positive("build_transform", "std", s)
    normalize = T.Normalize(mean=list(mean), std=list(std))
    if not train:
        # the reference's test transform is a plain T.Resize: bilinear
        resize = T.Resize(size, interpolation=T.InterpolationMode.BILINEAR)
        return T.Compose([resize, T.ToTensor(), normalize])
    ops: list[Any] = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)]
    if flip_prob > 0:
        ops.append(T.RandomHorizontalFlip(p=flip_prob))
    if padding > 0:
        ops += [T.Pad(padding), T.RandomCrop(size)]
    ops += [T.ToTensor(), normalize]
    if erase_prob > 0:
        ops.append(T.RandomErasing(p=erase_prob, value="random"))
    return T.Compose(ops)
