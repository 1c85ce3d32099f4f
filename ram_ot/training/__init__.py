"""Reusable training pieces for RAM and similar models (paper §4.1 "Implementation details").

What the example scripts share, so that they stay thin, one module per idea:

* :func:`seed_everything`, :func:`capture_rng_state` / :func:`restore_rng_state`
  (``seeding``);
* :class:`ModelEMA` — exponential moving average of the trained weights, created once for
  the whole run (the reference re-creates it at every epoch, which restarts the average
  from the current weights; we keep one) (``ema``);
* :func:`build_optimizers` — the reference's split (``solver/make_optimizer.py``): AdamW
  over the adapters (``lr × 0.1``) and the head temperatures (``lr``), and a second
  optimiser, SGD with momentum 0.9 at 1e-3, for the learnable token embeddings (``optim``);
* :func:`build_schedulers` — linear warm-up then cosine decay (the reference's timm-style
  ``CosineLRScheduler`` with ``warmup_lr_init = 0.01·lr``, ``lr_min = 0.002·lr``), stepped
  per iteration instead of per epoch, and :func:`build_epoch_schedulers` /
  :class:`EpochCosine`, the reference's own schedule, set once per epoch (``optim``);
* :func:`save_checkpoint` (atomic: temporary file + ``os.replace``),
  :func:`read_checkpoint` (integrity-checked; :class:`CheckpointError`) and
  :func:`load_checkpoint` — model, optimisers, schedulers, GradScaler, EMA, epoch, step and
  the RNG states (Python, NumPy, torch CPU and CUDA) of every rank (``checkpoint``);
* :func:`train_step`, :func:`train_one_epoch` (``loop``), :func:`evaluate_zsl` (``evaluate``) —
  the loop bodies; :func:`autocast` and :func:`make_grad_scaler` (``amp``);
* :class:`ResumeSampler` (mid-epoch resume), :class:`LRPlan` (an extendable schedule),
  :class:`GracefulStop` (SIGTERM / SIGINT → checkpoint and exit) (``resume``);
  :class:`NonFiniteError` (NaN / inf loss or scores);
* a small ``torch.distributed`` helper: :func:`init_distributed` (from ``torchrun``'s
  environment; NCCL on GPUs, Gloo on CPU), :class:`ShardSampler`, :func:`all_gather_objects`
  (``distributed``).

``PRESETS`` / :func:`get_preset` — the official run settings of every data set of the
paper, one :class:`Preset` each (``presets``).

Every name is re-exported here: import from ``ram_ot.training``.
"""

from ram_ot.training.amp import autocast, make_grad_scaler
from ram_ot.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from ram_ot.training.distributed import (
    DistInfo,
    ShardSampler,
    all_gather_objects,
    barrier,
    cleanup_distributed,
    init_distributed,
    unwrap,
)
from ram_ot.training.ema import ModelEMA
from ram_ot.training.evaluate import evaluate_split, evaluate_zsl
from ram_ot.training.loop import (
    EpochProgress,
    EpochStats,
    NonFiniteError,
    train_one_epoch,
    train_step,
)
from ram_ot.training.optim import (
    CosineWarmup,
    EpochCosine,
    build_epoch_schedulers,
    build_optimizers,
    build_schedulers,
)
from ram_ot.training.presets import PRESETS, Preset, get_preset
from ram_ot.training.resume import GracefulStop, LRPlan, ResumeSampler
from ram_ot.training.seeding import capture_rng_state, restore_rng_state, seed_everything

__all__ = [
    "PRESETS",
    "Checkpoint",
    "CheckpointError",
    "CosineWarmup",
    "DistInfo",
    "EpochCosine",
    "EpochProgress",
    "EpochStats",
    "GracefulStop",
    "LRPlan",
    "ModelEMA",
    "NonFiniteError",
    "Preset",
    "ResumeSampler",
    "ShardSampler",
    "all_gather_objects",
    "autocast",
    "barrier",
    "build_epoch_schedulers",
    "build_optimizers",
    "build_schedulers",
    "capture_rng_state",
    "cleanup_distributed",
    "evaluate_split",
    "evaluate_zsl",
    "get_preset",
    "init_distributed",
    "load_checkpoint",
    "make_grad_scaler",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "train_one_epoch",
    "train_step",
    "unwrap",
]
