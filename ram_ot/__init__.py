"""ram-ot: open-vocabulary multi-label recognition with RAM (Recover and Match, CVPR 2025).

Small composable PyTorch parts (Tan et al., *Recover and Match: Open-Vocabulary Multi-Label
Recognition through Knowledge-Constrained Optimal Transport*, CVPR 2025, arXiv 2503.15337):

- :func:`~ram_ot.ot.sinkhorn`: batched, log-stabilised entropic (and unbalanced) optimal transport;
- :class:`~ram_ot.kcot.KnowledgeConstrainedOT`, :func:`~ram_ot.kcot.teacher_prior`: region-to-label matching (§3.3);
- :class:`~ram_ot.heads.KCOTHead`: the bolt-on matching head for features from any backbone;
- :class:`~ram_ot.adapters.LadderLocalAdapter`, :class:`~ram_ot.adapters.LocalAdapter`: recovering CLIP's local semantics (§3.2);
- :class:`~ram_ot.prompts.PromptEncoder`: label names to text embeddings;
- :class:`~ram_ot.model.RAM`, :func:`~ram_ot.model.build_ram`: the assembled model over an open_clip ViT;
- :class:`~ram_ot.tagger.Tagger`, :func:`~ram_ot.tagger.save_tagger`: a trained model as one file, tagging with thresholds;
- losses and the OVMLR metrics by their function names.

The public API is what ``__all__`` lists; modules and names starting with ``_`` are private.
``ram_ot.data`` and ``ram_ot.training`` are public submodules with their own ``__all__``.
"""

from ram_ot._checks import ConvergenceWarning
from ram_ot._version import __version__
from ram_ot.adapters import LadderLocalAdapter, LadderOutput, LocalAdapter
from ram_ot.heads import HeadOutput, KCOTHead
from ram_ot.kcot import KCOTOutput, KnowledgeConstrainedOT, teacher_prior
from ram_ot.losses import AsymmetricLoss, MMCLoss, bce, mmc_loss
from ram_ot.metrics import (
    PRF1,
    APResult,
    EvalResult,
    MultiLabelMetrics,
    SplitResult,
    average_precision,
    calibrate_thresholds,
    evaluate,
    mean_average_precision,
    precision_recall_f1_at_k,
)
from ram_ot.model import RAM, build_ram
from ram_ot.ot import SinkhornResult, available_backends, sinkhorn
from ram_ot.prompts import PromptEncoder
from ram_ot.tagger import Tag, Tagger, save_tagger

__all__ = [
    "__version__",
    # optimal transport
    "sinkhorn",
    "SinkhornResult",
    "available_backends",
    "ConvergenceWarning",
    # matching
    "teacher_prior",
    "KnowledgeConstrainedOT",
    "KCOTOutput",
    "KCOTHead",
    "HeadOutput",
    # recover
    "LocalAdapter",
    "LadderLocalAdapter",
    "LadderOutput",
    "PromptEncoder",
    "RAM",
    "build_ram",
    # a trained tagger
    "Tagger",
    "Tag",
    "save_tagger",
    # losses
    "mmc_loss",
    "MMCLoss",
    "AsymmetricLoss",
    "bce",
    # metrics
    "average_precision",
    "mean_average_precision",
    "precision_recall_f1_at_k",
    "calibrate_thresholds",
    "evaluate",
    "MultiLabelMetrics",
    "PRF1",
    "APResult",
    "SplitResult",
    "EvalResult",
]
