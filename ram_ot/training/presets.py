"""Reproduction presets: the official run settings of every dataset of the paper, in one table.

One :class:`Preset` per dataset (``PRESETS[name]``), with the values of the official
repository's configs (``configs/coco.yml``, ``configs/nus.yml`` over ``config/defaults.py``)
and of its training code (``processor.py``, ``solver/make_scheduler.py``,
``utils/model_utils.py``): the lr schedule stepped per epoch (3 warm-up epochs, cosine over
60), the EMA re-created every epoch with the global temperature copied, pixel mean = std =
0.5, and training on every training image (no validation hold-out, as the official code).

The official repository ships configs for COCO and NUS-WIDE only; the other presets take
``coco.yml``'s values (its defaults for a ViT-B/16 run) and say so in ``notes``. Where the
paper's open-vocabulary split of a dataset is in no public file (MultiScene, MLRSNet,
PA100K, RAP, VOC), ``split_required`` is True and the training script asks for ``--split``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PRESETS", "Preset", "get_preset"]


class Preset(NamedTuple):
    """The official settings of one dataset's run.

    Attributes:
        name: the ``--preset`` name.
        dataset: the data set, in words.
        layout: how the data are read: ``"split-json"`` (three zero-shot lists, seen labels
            = the training list's classes), ``"official-json"`` (``train`` / ``test`` lists
            of every class + a user split) or ``"voc"`` (VOC 2007 XML + a user split).
        files: the list files, relative to the data root: ``(train, zsl, gzsl)`` for
            ``split-json``, ``(train, test)`` for ``official-json``, ``()`` for ``voc``.
        split_required: the seen / unseen split is not public: ``--split`` must be given.
        text_deep_layers: ``DEPTH_TEXT``.
        adapter_layers: ``DEPTH_VISION``.
        temperature_local: ``TEMPERATURE`` (initial τ_loc).
        lr: ``BASE_LR``. weight_decay: ``WEIGHT_DECAY``. lr_embeds: ``BASE_LR_SGD``.
        batch_size: ``IMS_PER_BATCH``. epochs: ``MAX_EPOCHS``. eval_every: ``EVAL_PERIOD``.
        ema: ``USE_EMA``. ema_decay: ``EMA_DECAY``. ema_mode: ``"official"`` (re-created
            every epoch, global temperature copied) or ``"continuous"``.
        schedule: ``"official"`` (per epoch) or ``"cosine-steps"``.
        warmup_epochs: ``WARMUP_EPOCHS``. scheduler_epochs: ``SCHEDULER_MAX_EPOCHS``.
        normalization: ``"reference"`` (``PIXEL_MEAN = PIXEL_STD = 0.5``) or ``"clip"``.
        image_size: ``SIZE_TRAIN`` / ``SIZE_TEST`` (square).
        val_fraction: share of train held out for model selection (0: the official's none).
        model: the backbone (open_clip name of ``BACKBONE``). pretrained: its weights.
        paper: where the paper reports the numbers to compare with.
        download: what must be downloaded, and from where.
        notes: deviations and caveats.
    """

    name: str
    dataset: str
    layout: str
    files: tuple[str, ...]
    split_required: bool
    text_deep_layers: tuple[int, ...]
    adapter_layers: tuple[int, ...] = (9, 10, 11)
    temperature_local: float = 2e-3
    lr: float = 5e-5
    weight_decay: float = 1e-4
    lr_embeds: float = 1e-3
    batch_size: int = 32
    epochs: int = 6
    eval_every: int = 3
    ema: bool = True
    ema_decay: float = 0.9997
    ema_mode: str = "official"
    schedule: str = "official"
    warmup_epochs: int = 3
    scheduler_epochs: int = 60
    normalization: str = "reference"
    image_size: int = 224
    val_fraction: float = 0.0
    model: str = "ViT-B-16"
    pretrained: str = "openai"
    paper: str = ""
    download: str = ""
    notes: str = ""


_NOT_PUBLIC = (
    "the paper's seen / unseen split of this data set is in no public file of the official "
    "repository (its train.json and test.json list every class): give it with --split."
)
_NO_CONFIG = "No official config for this data set: the values are configs/coco.yml's. "

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="coco",
            dataset="MS-COCO 2014, 48 seen / 17 unseen",
            layout="split-json",
            files=(
                "annotations/train_48_filtered.json",
                "annotations/test_17_filtered.json",
                "annotations/test_65_filtered.json",
            ),
            split_required=False,
            text_deep_layers=(9, 10, 11),
            paper="main comparison table (ZSL / GZSL, NUS-WIDE and MS-COCO, ViT-B/16)",
            download="COCO 2014 train + val images (cocodataset.org) in one trainval2014/ "
            "folder; the three lists from github.com/EricTan7/RAM datasets/json/",
        ),
        Preset(
            name="nus",
            dataset="NUS-WIDE, 925 seen / 81 unseen",
            layout="split-json",
            files=(
                "annotations/train_925_filtered.json",
                "annotations/test_81_filtered.json",
                "annotations/test_1006_filtered.json",
            ),
            split_required=False,
            text_deep_layers=(6, 7, 8, 9, 10, 11),
            temperature_local=2e-4,
            paper="main comparison table (ZSL / GZSL, NUS-WIDE and MS-COCO, ViT-B/16)",
            download="NUS-WIDE images (lms.comp.nus.edu.sg NUS-WIDE page; Flickr URLs); "
            "test_81 / test_1006 lists from github.com/EricTan7/RAM datasets/json/; "
            "train_925_filtered.json is not in the repository (the MKT / BiAM NUS-WIDE "
            "zero-shot lists)",
            notes="The training list must not hold any of the 81 unseen labels "
            "(train_81_filtered.json does: it is refused).",
        ),
        Preset(
            name="voc",
            dataset="PASCAL VOC 2007 (trainval / test)",
            layout="voc",
            files=(),
            split_required=True,
            text_deep_layers=(9, 10, 11),
            paper="not among the official repository's data sets",
            download="VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar "
            "(host.robots.ox.ac.uk/pascal/VOC/voc2007)",
            notes=_NO_CONFIG + "The official repository has no VOC run; " + _NOT_PUBLIC,
        ),
        Preset(
            name="multiscene",
            dataset="MultiScene-Clean (remote sensing, 36 labels)",
            layout="official-json",
            files=("train.json", "test.json"),
            split_required=True,
            text_deep_layers=(9, 10, 11),
            paper="remote-sensing table (MultiScene-OV, MLRSNet-OV)",
            download="MultiScene-Clean images (the MultiScene data set page); lists from "
            "github.com/EricTan7/RAM datasets/json/MultiScene/",
            notes=_NO_CONFIG + _NOT_PUBLIC,
        ),
        Preset(
            name="mlrsnet",
            dataset="MLRSNet (remote sensing, 60 labels)",
            layout="official-json",
            files=("train.json", "test.json"),
            split_required=True,
            text_deep_layers=(9, 10, 11),
            paper="remote-sensing table (MultiScene-OV, MLRSNet-OV)",
            download="MLRSNet images (github.com/cugbrs/MLRSNet); lists from "
            "github.com/EricTan7/RAM datasets/json/MLRSNet/",
            notes=_NO_CONFIG + _NOT_PUBLIC,
        ),
        Preset(
            name="pa100k",
            dataset="PA100K (pedestrian attributes, 26 labels)",
            layout="official-json",
            files=("train.json", "test.json"),
            split_required=True,
            text_deep_layers=(9, 10, 11),
            paper="pedestrian-attribute table (PA100K, RAP)",
            download="PA100K release_data (github.com/xh-liu/HydraPlus-Net); lists from "
            "github.com/EricTan7/RAM datasets/json/PA100K/",
            notes=_NO_CONFIG + _NOT_PUBLIC,
        ),
        Preset(
            name="rap",
            dataset="RAP (pedestrian attributes, 51 labels)",
            layout="official-json",
            files=("train.json", "test.json"),
            split_required=True,
            text_deep_layers=(9, 10, 11),
            paper="pedestrian-attribute table (PA100K, RAP)",
            download="RAP v2 images (on request from the RAP authors, rap.idealtest.org); "
            "lists from github.com/EricTan7/RAM datasets/json/RAP/",
            notes=_NO_CONFIG + _NOT_PUBLIC,
        ),
    )
}
"""Every preset, by ``--preset`` name."""


def get_preset(name: str) -> Preset:
    """The preset `name` (one of ``PRESETS``); ValueError naming the choices otherwise."""
    if name not in PRESETS:
        raise ValueError(f"get_preset: expected `name` in {sorted(PRESETS)}, got {name!r}.")
    return PRESETS[name]
