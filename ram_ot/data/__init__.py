"""Multi-label datasets, zero-shot label splits and transforms (paper §4.1).

See ``docs/data.md``. Readers take the real on-disk formats (COCO ``instances_*.json``, the
RAM / MKT split json, VOC 2007 XML + ImageSets, a CSV for your own data);
:func:`make_demo_coco` writes a small synthetic COCO-format dataset for offline demos.
"""

from ram_ot.data.datasets import (
    VOC2007_CLASSES,
    MultiLabelDataset,
    ZSLDatasets,
    coco_zsl_datasets,
    from_csv,
    from_split_json,
    nus_wide_zsl_datasets,
    read_coco_instances,
    read_split_json,
    split_json_zsl_datasets,
    voc2007,
)
from ram_ot.data.demo import DEMO_CLASSES, DEMO_UNSEEN, DemoDataset, make_demo_coco
from ram_ot.data.official import (
    check_training_labels,
    official_json_zsl_datasets,
    voc_zsl_datasets,
)
from ram_ot.data.splits import ClassSplit, coco_zsl_split, load_class_split
from ram_ot.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    REFERENCE_MEAN,
    REFERENCE_STD,
    build_transform,
    clip_normalization,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEMO_CLASSES",
    "DEMO_UNSEEN",
    "REFERENCE_MEAN",
    "REFERENCE_STD",
    "VOC2007_CLASSES",
    "ClassSplit",
    "DemoDataset",
    "MultiLabelDataset",
    "ZSLDatasets",
    "build_transform",
    "check_training_labels",
    "clip_normalization",
    "coco_zsl_datasets",
    "coco_zsl_split",
    "from_csv",
    "from_split_json",
    "load_class_split",
    "make_demo_coco",
    "nus_wide_zsl_datasets",
    "official_json_zsl_datasets",
    "read_coco_instances",
    "read_split_json",
    "split_json_zsl_datasets",
    "voc2007",
    "voc_zsl_datasets",
]
