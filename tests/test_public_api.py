"""The public API: a snapshot of ``ram_ot.__all__``, importability and the version."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import ram_ot

PUBLIC = [
    "APResult", "AsymmetricLoss", "ConvergenceWarning", "EvalResult", "HeadOutput", "KCOTHead",
    "KCOTOutput", "KnowledgeConstrainedOT", "LadderLocalAdapter", "LadderOutput", "LocalAdapter",
    "MMCLoss", "MultiLabelMetrics", "PRF1", "PromptEncoder", "RAM", "SinkhornResult",
    "SplitResult", "Tag", "Tagger", "__version__", "available_backends", "average_precision",
    "bce", "build_ram", "calibrate_thresholds", "evaluate", "mean_average_precision", "mmc_loss",
    "precision_recall_f1_at_k", "save_tagger", "sinkhorn", "teacher_prior",
]  # fmt: skip


def test_all_snapshot():
    # A change here is a change of the public API: record it in CHANGELOG.md.
    assert sorted(ram_ot.__all__) == PUBLIC
    assert len(set(ram_ot.__all__)) == len(ram_ot.__all__)


def test_every_public_name_is_importable_and_documented():
    for name in ram_ot.__all__:
        obj = getattr(ram_ot, name)
        if name != "__version__":
            assert (obj.__doc__ or "").strip(), f"ram_ot.{name} has no docstring"


def test_version_single_source():
    text = (Path(ram_ot.__file__).parent / "_version.py").read_text()
    assert re.search(r'__version__ = "([^"]+)"', text).group(1) == ram_ot.__version__
    assert importlib.metadata.version("ram-ot") == ram_ot.__version__
    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    assert f"## [{ram_ot.__version__}]" in changelog


def test_import_has_no_heavy_side_effects():
    # Triton (the GPU kernel) and open_clip (the backbones) load only when first used.
    heavy = ["triton", "ram_ot.ot._triton", "open_clip"]
    code = f"import sys, ram_ot; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
