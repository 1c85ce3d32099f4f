"""A trained RAM model as one self-contained file: load it, tag images, with thresholds.

A *tagger file* (``torch.save`` of plain dicts, lists, strings, numbers and tensors, so it
loads with ``torch.load(weights_only=True)``) holds:

- ``clip``: the frozen CLIP's identity — open_clip architecture name, pretrained tag or
  local checkpoint path, precision — and the sha256 of its weights
  (:func:`clip_fingerprint`). The CLIP is rebuilt from that identity at load time and its
  hash is checked; a mismatch is refused. Its weights are stored in the file only when they
  cannot be rebuilt (``pretrained=None``: random initialisation) or when asked
  (``include_clip=True``); for a pretrained tag or a file the identity is enough, and the
  file holds only what RAM trains (a few MB for ViT-B/16).
- ``ram_config`` / ``kcot_config``: the :class:`~ram_ot.model.RAM` and
  :class:`~ram_ot.kcot.KnowledgeConstrainedOT` constructor settings; ``state_dict``: the
  trained parameters (``RAM.state_dict()``: adapters, tokens, prompts, temperatures);
- ``labels``: the training vocabulary (the default label set of :meth:`Tagger.predict`);
- ``preprocess``: input size, mean, std, interpolation (resize of both sides, no crop, as
  the evaluation transform of training, :func:`ram_ot.data.build_transform`);
- ``calibration``: the presence model and thresholds (below), or None;
- ``train_args``, ``versions`` (ram_ot, torch, open_clip), ``metadata``.

**Scores.** RAM's score (``HeadOutput.scores``, the fused softmax over the label set) ranks
labels, but its scale depends on the label set: with C labels each scores about 1/C. A
tagger adds a **presence probability** that does not:

.. math::
    p_c = \\sigma(w_g \\cdot \\cos(g, t_c) + w_l \\cdot u_c + w_0),\\qquad
    u_c = C \\sum_n T_{nc} \\cos(r_n, t_c)

``cos(g, t_c)`` is the global branch's cosine (``logits_global · τ_g``), independent of the
other labels; ``u_c`` is the local branch's matched similarity scaled by C: the columns of the
transport plan sum to 1/C, so ``C·T[:, c]`` is a distribution over regions and ``u_c`` the
plan-weighted mean of label c's own region cosines — on the scale of a cosine for any C (the
raw ``matched`` shrinks as 1/C). What the other labels still change is only which regions
the plan gives to c, the competition KCOT is built for. ``(w_g, w_l, w_0)`` are fitted by
logistic regression on a validation split (:func:`fit_calibration`).

**Thresholds.** For any free-text label (not in the calibration set): one threshold, the
F1-optimal threshold of all validation (image, label) pairs pooled. Per seen label (a label
of the calibration set with a positive in the validation split): its F1-optimal threshold
on ``p_c`` (:func:`ram_ot.metrics.calibrate_thresholds`) shrunk toward the pooled one by its
number of validation positives (:func:`fit_calibration`, ``prior_positives``), so that a
label with few positives does not get a near-zero threshold. Neither depends on the number
of labels asked for.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ram_ot._checks import check_choice, check_shape, check_tensor
from ram_ot.metrics import calibrate_thresholds

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PRIOR_POSITIVES",
    "Calibration",
    "Tag",
    "Tagger",
    "TaggerOutput",
    "clip_fingerprint",
    "fit_calibration",
    "presence_features",
    "presence_probability",
    "save_tagger",
    "write_trained_tagger",
]

FORMAT = "ram-ot-tagger"
"""Value of the ``"format"`` key of a tagger file."""
FORMAT_VERSION = 1
"""Version of the tagger file layout this module writes and reads."""

_RAM_KEYS = (
    "adapter_layers", "n_visual_tokens", "kernel_size", "surgery_layers", "n_ctx",
    "text_deep_layers", "template", "templates", "teacher_template", "use_teacher",
)  # fmt: skip
_KCOT_KEYS = ("reg", "reg_prior", "region_temperature", "max_iter", "tol")
_AUTO_PROGRESS = 256  # images; longer lists show a progress bar when progress=None


class Tag(NamedTuple):
    """One predicted label of one image: the label and its score (see :meth:`Tagger.predict`)."""

    label: str
    score: float


class TaggerOutput(NamedTuple):
    """Raw outputs of :meth:`Tagger.forward` for one batch.

    Attributes:
        scores: (B, C) float32. RAM's fused softmax scores (rows sum to 1).
        presence: (B, C) float32 presence probabilities, or None for an uncalibrated tagger.
        features: (B, C, 2) float32. ``[cos(g, t_c), u_c]``, see :func:`presence_features`.
        plan: (B, N, C) float32. The transport plan (for explanations).
        prior: (B, N, C) float32 teacher prior, or None unless asked for.
    """

    scores: Tensor
    presence: Tensor | None
    features: Tensor
    plan: Tensor
    prior: Tensor | None


class Calibration(NamedTuple):
    """A fitted presence model and its thresholds (see the module docstring).

    Attributes:
        weights: (3,) float64. ``(w_g, w_l, w_0)`` of ``σ(w_g·cos + w_l·u + w_0)``.
        labels: the labels with their own threshold (the validation vocabulary).
        thresholds: (len(labels),) float64. Per-label presence thresholds; NaN for a label
            without a validation positive (the default threshold is used for it). Each is
            the label's F1-optimal validation threshold shrunk toward the default one
            (:func:`fit_calibration`).
        default_threshold: the threshold for every other label (pooled F1-optimal).
    """

    weights: Tensor
    labels: tuple[str, ...]
    thresholds: Tensor
    default_threshold: float

    def threshold_for(self, labels: Sequence[str]) -> Tensor:
        """(C,) float64 presence thresholds of `labels` (per label where known)."""
        own = {name: float(t) for name, t in zip(self.labels, self.thresholds.tolist(), strict=True)}
        return torch.tensor(
            [
                own[c] if c in own and not math.isnan(own[c]) else self.default_threshold
                for c in labels
            ],
            dtype=torch.float64,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.double().cpu(),
            "labels": list(self.labels),
            "thresholds": self.thresholds.double().cpu(),
            "default_threshold": float(self.default_threshold),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            d["weights"].double(), tuple(d["labels"]), d["thresholds"].double(),
            float(d["default_threshold"]),
        )  # fmt: skip


# --------------------------------------------------------------------------- pure functions


def clip_fingerprint(clip_model: torch.nn.Module) -> str:
    """sha256 of a CLIP model's weights (names, shapes and float32 values of its state dict).

    Floating tensors are hashed as float32 (exact for fp16/bf16 weights), so the hash does not
    depend on the device.

    Args:
        clip_model: any module (an open_clip CLIP).

    Returns:
        64 hex digits.
    """
    h = hashlib.sha256()
    for name, t in sorted(clip_model.state_dict().items()):
        if not isinstance(t, Tensor):
            continue
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        h.update(f"{name}:{str(t.dtype)}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def presence_features(
    logits_global: Tensor, logits_local: Tensor, temperature_global: Tensor | float,
    temperature_local: Tensor | float,
) -> Tensor:  # fmt: skip
    """The two label-set-independent features of the presence model.

    Args:
        logits_global: (B, C) ``cos(g, t) / τ_g``. logits_local: (B, C) ``matched / τ_loc``.
        temperature_global: τ_g. temperature_local: τ_loc.

    Returns:
        Tensor: (B, C, 2) float32, ``[cos(g, t_c), C · matched_c]`` (see the module docstring).
    """
    C = logits_global.shape[-1]
    # tensor temperatures stay tensors: no host read, so this traces under torch.compile
    tg, tl = (
        t.detach().float() if isinstance(t, Tensor) else float(t)
        for t in (temperature_global, temperature_local)
    )
    cos_g = logits_global.float() * tg
    u = logits_local.float() * (tl * C)
    return torch.stack([cos_g, u], dim=-1)


def presence_probability(features: Tensor, weights: Tensor) -> Tensor:
    """``σ(w_g·f[..., 0] + w_l·f[..., 1] + w_0)``: (..., 2) features -> (...) float32."""
    w = weights.to(device=features.device, dtype=torch.float64)
    z = features.double() @ w[:2] + w[2]
    return torch.sigmoid(z).float()


def _fit_logistic(x: Tensor, y: Tensor, l2: float = 1e-4) -> Tensor:
    """Logistic regression ``σ(x @ w[:2] + w[2])`` by L-BFGS; x (M, 2), y (M,) -> w (3,)."""
    x, y = x.double().cpu(), y.double().cpu()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-12)
    xs = (x - mu) / sd  # standardised: well conditioned for L-BFGS
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        z = xs @ w[:2] + w[2]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
        loss = loss + l2 * (w[:2] ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = w.detach()
    scale = w[:2] / sd  # back to raw features: z = x @ scale + (w0 - mu @ scale)
    return torch.cat([scale, (w[2] - mu @ scale).reshape(1)])


PRIOR_POSITIVES = 10.0
"""Default of :func:`fit_calibration`'s `prior_positives`: how many validation positives the
pooled threshold counts as when a label's own threshold is shrunk toward it. Chosen by
cross-validation on the validation split of the proxy world, never on a test set
(``python -m ram_ot.bench tagger``; docs/tagger.md, "Scores and thresholds")."""


def fit_calibration(
    features: Tensor, targets: Tensor, labels: Sequence[str], *,
    prior_positives: float = PRIOR_POSITIVES,
) -> Calibration:  # fmt: skip
    """Fit the presence model and the thresholds on a validation split.

    The presence weights are fitted on all (image, label) pairs. The *pooled* threshold
    ``t_pool`` is the F1-optimal threshold of all pairs together (micro F1); it is the
    default threshold. A label c with ``n_c >= 1`` validation positives gets its own
    F1-optimal threshold ``t_c`` shrunk toward the pooled one by its number of positives:

    ``t'_c = (n_c · t_c + k · t_pool) / (n_c + k)``, with ``k = prior_positives``.

    Unshrunk (``k = 0``), the best cut of a label with few positives is set by one or two of
    them and is often the lowest positive's score: a near-zero threshold that fires on most
    images. A label without a validation positive has no threshold of its own (NaN: the
    pooled one).

    Args:
        features: (N, C, 2) floating. :func:`presence_features` of N validation images over
            the C `labels`.
        targets: (N, C) multi-hot (entries > 0 are positives).
        labels: the C label names.
        prior_positives: k above, a number >= 0 (:data:`PRIOR_POSITIVES`); 0 keeps the
            per-label F1-optimal thresholds as they are, a large k gives every label about
            the pooled threshold.

    Returns:
        :class:`Calibration`.
    """
    fn = "fit_calibration"
    check_tensor(fn, "features", features)
    check_shape(fn, "features", features, [("N", None), ("C", len(labels)), ("2", 2)])
    check_tensor(fn, "targets", targets)
    check_shape(fn, "targets", targets, [("N", features.shape[0]), ("C", len(labels))])
    k = prior_positives
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k < 0:
        raise ValueError(
            f"{fn}: expected `prior_positives` to be a finite number >= 0, got {prior_positives!r}."
        )
    y = (targets > 0).cpu()
    if not bool(y.any()) or bool(y.all()):
        raise ValueError(f"{fn}: expected `targets` with both positives and negatives.")
    w = _fit_logistic(features.reshape(-1, 2).cpu(), y.reshape(-1))
    p = presence_probability(features.cpu(), w)  # (N, C)
    pooled = float(calibrate_thresholds(p.reshape(-1, 1), y.reshape(-1, 1))[0])
    own = calibrate_thresholds(p, y)  # NaN without a positive
    n = y.sum(0).double()
    per_label = (n * own + float(k) * pooled) / (n + float(k))
    return Calibration(w, tuple(labels), per_label.cpu(), pooled)


# --------------------------------------------------------------------------- file helpers


def _plain(x: Any) -> Any:
    """Make a value safe for ``weights_only`` loading (and json): str/number/bool/None/list/dict."""
    if x is None or type(x) in (bool, int, float, str):
        return x
    if isinstance(x, str):  # str subclasses (torch's TorchVersion) are not weights_only-safe
        return str(x)
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, (int, float)):
        return int(x) if isinstance(x, int) else float(x)
    if isinstance(x, Tensor) or type(x).__module__ == "numpy":  # scalars of numpy / torch
        return _plain(x.tolist())
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if hasattr(x, "__dict__") and not callable(x):  # argparse.Namespace
        return _plain(vars(x))
    return str(x)


def _versions() -> dict[str, str]:
    from importlib import metadata

    from ram_ot._version import __version__

    try:
        oc = metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        oc = "unknown"
    return {"ram_ot": str(__version__), "torch": str(torch.__version__), "open_clip": str(oc)}


def _preprocess_cfg(model: Any) -> dict[str, Any]:
    from ram_ot.data.transforms import clip_normalization

    mean, std = clip_normalization(model.clip_model)
    return {
        "size": list(model.ladder.image_size),
        "mean": list(mean),
        "std": list(std),
        "interpolation": "bicubic",
        "resize": "both sides to size, no crop",
    }


def save_tagger(
    model: Any,
    path: str | os.PathLike,
    *,
    labels: Sequence[str],
    pretrained: str | os.PathLike | None,
    model_name: str | None = None,
    precision: str = "fp32",
    calibration: Calibration | None = None,
    train_args: Any = None,
    include_clip: bool | str = "auto",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a trained :class:`~ram_ot.model.RAM` as a tagger file (see the module docstring).

    Args:
        model: the trained RAM.
        path: the output file (conventionally ``tagger.pt``); written atomically.
        labels: the training vocabulary (the default labels of :meth:`Tagger.predict`).
        pretrained: where the CLIP weights came from, as given to
            :func:`~ram_ot.model.build_ram`: open_clip tag, local file, or None (random).
        model_name: open_clip architecture; default ``model.config["model_name"]``.
        precision: the CLIP's open_clip precision.
        calibration: thresholds from :meth:`Tagger.calibrate` / :func:`fit_calibration`.
        train_args: the training arguments (dict or ``argparse.Namespace``), stored as plain
            values.
        include_clip: store the CLIP weights too: ``"auto"`` (only when ``pretrained`` is
            None, since random weights cannot be rebuilt), True or False.
        metadata: any extra plain values (str/number/list/dict).

    Returns:
        The path written.
    """
    fn = "save_tagger"
    from ram_ot.model import RAM

    if not isinstance(model, RAM):
        raise TypeError(f"{fn}: expected `model` to be a ram_ot.RAM, got {type(model).__name__}.")
    if isinstance(labels, str) or not all(isinstance(c, str) for c in labels) or not labels:
        raise ValueError(f"{fn}: expected `labels` to be a non-empty sequence of str.")
    check_choice(fn, "include_clip", include_clip, ("auto", True, False))
    model_name = model_name or model.config.get("model_name")
    if not model_name:
        raise ValueError(
            f"{fn}: expected `model_name` (the model was not built by build_ram, so it does not "
            "record its open_clip architecture)."
        )
    if pretrained is not None:
        pretrained = os.fspath(pretrained)
        from ram_ot.backbones.open_clip import _looks_like_path

        if _looks_like_path(pretrained):
            pretrained = os.path.abspath(pretrained)
    store = pretrained is None if include_clip == "auto" else bool(include_clip)
    kcot = model.head.kcot
    clip_sd = None
    if store:
        clip_sd = {k: v.detach().cpu().clone() for k, v in model.clip_model.state_dict().items()}
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "clip": {
            "model_name": model_name,
            "pretrained": pretrained,
            "precision": precision,
            "sha256": clip_fingerprint(model.clip_model),
            "weights": clip_sd,
        },
        "ram_config": _plain({k: model.config[k] for k in _RAM_KEYS}),
        "kcot_config": {k: _plain(getattr(kcot, k)) for k in _KCOT_KEYS},
        "state_dict": {k: v.detach().cpu() if isinstance(v, Tensor) else _plain(v)
                       for k, v in model.state_dict().items()},
        "labels": list(labels),
        "preprocess": _preprocess_cfg(model),
        "calibration": None if calibration is None else calibration.to_dict(),
        "train_args": _plain(train_args),
        "versions": _versions(),
        "metadata": _plain(metadata or {}),
    }  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def write_trained_tagger(
    model: Any,
    path: str | os.PathLike,
    *,
    labels: Sequence[str],
    val_dataset: Any = None,
    pretrained: str | os.PathLike | None,
    train_args: Any = None,
    batch_size: int = 64,
) -> Path:
    """Write the tagger file of a training run: the model, calibrated on its validation split.

    Builds ``Tagger(model, labels)`` with the CLIP identity (``model.config["model_name"]``,
    `pretrained`, fp32), fits the presence model and thresholds on `val_dataset` when given
    (:meth:`Tagger.calibrate` over the dataset's own labels, the seen labels of a ZSL run),
    and saves it (:func:`save_tagger`). The model is put in eval mode.

    Args:
        model: the trained :class:`~ram_ot.model.RAM`.
        path: the output file (conventionally ``tagger.pt``).
        labels: the training vocabulary (the default labels of :meth:`Tagger.predict`).
        val_dataset: yields ``(image, target (C,))`` with a ``.labels`` attribute (e.g. the
            held-out training images); None writes an uncalibrated tagger.
        pretrained: where the CLIP weights came from, as given to
            :func:`~ram_ot.model.build_ram` (open_clip tag, local file, or None: random).
        train_args: the training arguments (dict or ``argparse.Namespace``).
        batch_size: images per forward pass of the calibration.

    Returns:
        The path written.
    """
    fn = "write_trained_tagger"
    if val_dataset is not None and getattr(val_dataset, "labels", None) is None:
        raise ValueError(
            f"{fn}: expected `val_dataset` with a `.labels` attribute (the labels of its "
            f"targets), got {type(val_dataset).__name__}."
        )
    clip = {"model_name": model.config.get("model_name") if hasattr(model, "config") else None,
            "pretrained": None if pretrained is None else os.fspath(pretrained),
            "precision": "fp32"}  # fmt: skip
    tagger = Tagger(model, labels, clip=clip, train_args=train_args)
    if val_dataset is not None:
        tagger.calibrate(val_dataset, batch_size=batch_size, progress=False)
    return tagger.save(path)


def _read(path: str | os.PathLike) -> dict[str, Any]:
    fn = "Tagger.load"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{fn}: tagger file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a tagger file"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{fn}: {path} is not a ram-ot tagger file (it does not load with "
            f"torch.load(weights_only=True): {first[:200]})."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{fn}: {path} is not a ram-ot tagger file (no format={FORMAT!r} entry); "
            "training checkpoints (last.pt, best.pt) are not tagger files: write one with "
            "ram_ot.save_tagger."
        )
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{fn}: {path} has tagger format version {version!r}; this ram_ot reads up to "
            f"{FORMAT_VERSION}: upgrade ram-ot."
        )
    missing = [k for k in ("clip", "ram_config", "state_dict", "labels", "preprocess")
               if k not in state]  # fmt: skip
    if missing:
        raise ValueError(f"{fn}: {path} is an incomplete tagger file (missing {missing}).")
    return state


# --------------------------------------------------------------------------- the tagger


def _open_image(item: Any) -> Any:
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with Image.open(os.fspath(item)) as im:
        return im.convert("RGB")


def _name(item: Any) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<{type(item).__name__}>"


class Tagger:
    """A trained RAM with its vocabulary, preprocessing and calibrated thresholds.

    Build one from a model (``Tagger(model, labels)``) or from a file (:meth:`load`).

    Args:
        model: a :class:`~ram_ot.model.RAM` (put in eval mode).
        labels: the default label set (the training vocabulary).
        preprocess: ``{"size", "mean", "std", "interpolation"}``; default: the model's CLIP.
        calibration: a :class:`Calibration`, or None (then :meth:`predict` defaults to
            top-3 and takes no `threshold`).
        clip: the CLIP identity dict (``model_name``, ``pretrained``, ``precision``), used by
            :meth:`save`.
        train_args: stored by :meth:`save`.

    Example:
        >>> from ram_ot.backbones.open_clip import TINY_MODEL_NAME
        >>> from ram_ot.model import build_ram
        >>> tagger = Tagger(build_ram(TINY_MODEL_NAME, pretrained=None), ["cat", "dog"])
        >>> from PIL import Image
        >>> tags = tagger.predict([Image.new("RGB", (40, 40))], top_k=1)
        >>> len(tags[0]), tags[0][0].label in ("cat", "dog")
        (1, True)
    """

    def __init__(
        self,
        model: Any,
        labels: Sequence[str],
        *,
        preprocess: dict[str, Any] | None = None,
        calibration: Calibration | None = None,
        clip: dict[str, Any] | None = None,
        train_args: Any = None,
    ) -> None:
        from ram_ot.model import RAM

        if not isinstance(model, RAM):
            raise TypeError(
                f"Tagger: expected `model` to be a ram_ot.RAM, got {type(model).__name__}."
            )
        self.model = model.eval()
        self.labels = self._check_labels("Tagger", labels)
        self.preprocess = dict(preprocess) if preprocess is not None else _preprocess_cfg(model)
        self.calibration = calibration
        self.clip = dict(clip) if clip is not None else {
            "model_name": model.config.get("model_name"), "pretrained": None, "precision": "fp32",
        }  # fmt: skip
        self.train_args = train_args
        self._transform = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        *,
        pretrained: str | os.PathLike | None = None,
        cache_dir: str | None = None,
        verify: bool = True,
    ) -> Tagger:
        """Rebuild a tagger from its file, checking that the CLIP is the one it was trained on.

        Args:
            path: a file written by :func:`save_tagger` / :meth:`save`.
            device: where to run (default: CUDA when available, else CPU).
            pretrained: where to read the CLIP weights from instead of the recorded source
                (e.g. a local copy of a hub tag's weights); their hash is still checked.
            cache_dir: open_clip download cache for a pretrained tag.
            verify: check the CLIP hash (default True).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a tagger file, a newer format, or CLIP weights that do not match
                the recorded hash.
        """
        from ram_ot.backbones._hub import ensure_reachable
        from ram_ot.backbones.open_clip import load_clip
        from ram_ot.kcot import KnowledgeConstrainedOT
        from ram_ot.model import RAM

        fn = "Tagger.load"
        state = _read(path)
        ident = state["clip"]
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        weights = ident.get("weights")
        source = os.fspath(pretrained) if pretrained is not None else ident.get("pretrained")
        if pretrained is None and weights is not None:
            source = None  # the file carries the CLIP: no download, no file
        if source is not None:
            ensure_reachable(fn, ident["model_name"], source, cache_dir=cache_dir)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*No pretrained weights.*")
            clip_model, tokenizer, _ = load_clip(
                ident["model_name"], source, precision=ident.get("precision", "fp32"),
                cache_dir=cache_dir,
            )  # fmt: skip
        if source is None and weights is not None:
            clip_model.load_state_dict(weights)
        if verify:
            got = clip_fingerprint(clip_model)
            if got != ident["sha256"]:
                where = source if source is not None else "the weights stored in the file"
                raise ValueError(
                    f"{fn}: the CLIP weights from {where!r} ({ident['model_name']}) do not match "
                    f"the CLIP this tagger was trained with (sha256 {got[:12]}…, expected "
                    f"{ident['sha256'][:12]}…); pass pretrained= the checkpoint it was trained "
                    "on."
                )
        kcot_cfg = state.get("kcot_config") or {}
        scale = float(clip_model.logit_scale.detach().exp())
        kcot = KnowledgeConstrainedOT(logit_scale=scale, **kcot_cfg)
        cfg = dict(state["ram_config"])
        model = RAM(clip_model, tokenizer, kcot=kcot, **cfg)
        model.config["model_name"] = ident["model_name"]
        try:
            model.load_state_dict(state["state_dict"])
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{fn}: {os.fspath(path)}: the trained weights do not fit: {exc}") from None
        model.to(device).eval()
        calib = state.get("calibration")
        tagger = cls(
            model,
            state["labels"],
            preprocess=state["preprocess"],
            calibration=None if calib is None else Calibration.from_dict(calib),
            clip={k: ident.get(k) for k in ("model_name", "pretrained", "precision")},
            train_args=state.get("train_args"),
        )
        tagger.versions = state.get("versions", {})
        tagger.metadata = state.get("metadata", {})
        return tagger

    def save(self, path: str | os.PathLike, *, include_clip: bool | str = "auto") -> Path:
        """Write this tagger (with its calibration) to `path`; see :func:`save_tagger`."""
        return save_tagger(
            self.model, path, labels=self.labels, pretrained=self.clip.get("pretrained"),
            model_name=self.clip.get("model_name"), precision=self.clip.get("precision", "fp32"),
            calibration=self.calibration, train_args=self.train_args, include_clip=include_clip,
        )  # fmt: skip

    def inference_module(
        self, labels: Sequence[str] | None = None, *, max_iter: int | None = None
    ) -> Any:
        """This tagger as an :class:`~ram_ot.inference.InferenceModule` over a fixed label set.

        Args:
            labels: the label set (default: the training vocabulary).
            max_iter: Sinkhorn iterations, all run (default: the model's, 100).

        Returns:
            :class:`~ram_ot.inference.InferenceModule` (with the presence weights of a
            calibrated tagger), ready for ``torch.compile(..., fullgraph=True)``.
        """
        from ram_ot.inference import InferenceModule

        fn = "Tagger.inference_module"
        labels = self.labels if labels is None else self._check_labels(fn, labels)
        weights = None if self.calibration is None else self.calibration.weights
        return InferenceModule(self.model, labels, max_iter=max_iter, presence_weights=weights)

    def export(
        self,
        path: str | os.PathLike,
        labels: Sequence[str] | None = None,
        *,
        max_iter: int | None = None,
        dynamic_batch: bool = True,
    ) -> Path:
        """Write the tagger over a fixed label set as a :func:`torch.export.export` program.

        The ``.pt2`` file runs without ram-ot's model code, open_clip or a tokenizer
        (``torch.export.load(path).module()(images)``, or
        :func:`~ram_ot.inference.load_exported` for the metadata too). It takes preprocessed
        images (B, 3, H, W) (:attr:`transform`; the size, mean and std are in the metadata)
        and returns the dict of :meth:`ram_ot.inference.InferenceModule.forward`. Stored
        metadata: ``labels``, ``preprocess``, ``max_iter`` and, for a calibrated tagger,
        ``thresholds`` (per label, for ``presence``).

        Args:
            path: the file to write (``.pt2`` by convention).
            labels: the fixed label set (default: the training vocabulary).
            max_iter: Sinkhorn iterations, all run (default: the model's, 100).
            dynamic_batch: accept any batch size (else only the traced batch of 2).

        Returns:
            The path written.
        """
        from ram_ot.inference import export_inference

        labels = self.labels if labels is None else self._check_labels("Tagger.export", labels)
        module = self.inference_module(labels, max_iter=max_iter)
        meta: dict[str, Any] = {"preprocess": _plain(self.preprocess), "clip": _plain(self.clip)}
        if self.calibration is not None:
            meta["thresholds"] = self.calibration.threshold_for(labels).tolist()
        export_inference(module, path, dynamic_batch=dynamic_batch, metadata=meta)
        return Path(path)

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _check_labels(fn: str, labels: Any) -> list[str]:
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise TypeError(f"{fn}: expected `labels` to be a sequence of str, got {type(labels).__name__}.")
        labels = list(labels)
        if not labels or not all(isinstance(c, str) and c for c in labels):
            raise ValueError(f"{fn}: expected `labels` to be non-empty strings, got {labels[:5]!r}.")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{fn}: expected distinct `labels`, got duplicates.")
        return labels

    @property
    def device(self) -> torch.device:
        return self.model.ladder.visual.conv1.weight.device

    @property
    def transform(self) -> Any:
        """PIL RGB -> (3, H, W) float32, the evaluation transform the tagger was trained with."""
        if self._transform is None:
            from ram_ot.data.transforms import build_transform

            p = self.preprocess
            self._transform = build_transform(
                tuple(p["size"]), train=False, mean=p["mean"], std=p["std"]
            )
        return self._transform

    def _load_batch(self, fn: str, items: Sequence[Any]) -> tuple[list[int], Tensor | None]:
        """Open and transform `items`; bad files are warned about and left out."""
        ok, tensors = [], []
        for i, item in enumerate(items):
            if isinstance(item, Tensor):
                x = item
            else:
                try:
                    x = self.transform(_open_image(item))
                except (OSError, ValueError) as exc:
                    warnings.warn(f"{fn}: skipped {_name(item)}: {exc}", stacklevel=3)
                    continue
            ok.append(i)
            tensors.append(x)
        if not tensors:
            return ok, None
        return ok, torch.stack(tensors).to(self.device)

    @torch.no_grad()
    def forward(
        self, images: Tensor, labels: Sequence[str] | Tensor, *, with_prior: bool = False,
        teacher_labels: Tensor | None = None,
    ) -> TaggerOutput:  # fmt: skip
        """Score one preprocessed batch.

        Args:
            images: (B, 3, H, W) floating, preprocessed with :attr:`transform`.
            labels: C label names or their (C, D) embeddings (``model.encode_labels``).
            with_prior: also compute the frozen teacher's prior (for explanations).
            teacher_labels: (C, D) teacher label embeddings for the prior (default: from
                `labels`, which must then be names).

        Returns:
            :class:`TaggerOutput`.
        """
        from ram_ot.kcot import teacher_prior

        model = self.model
        emb = model.encode_labels(labels)
        out = model.ladder(images, emb, with_teacher=with_prior)
        head = model.head(out.image_global, out.image_regions, emb)
        feats = presence_features(
            head.logits_global, head.logits_local, model.head.temperature_global,
            model.head.temperature_local,
        )  # fmt: skip
        presence = None
        if self.calibration is not None:
            presence = presence_probability(feats, self.calibration.weights)
        prior = None
        if with_prior:
            t = teacher_labels
            if t is None:
                t = emb if isinstance(labels, Tensor) else model.teacher_prompts(list(labels))
            prior = teacher_prior(out.teacher_regions, t, logit_scale=model.logit_scale)
        return TaggerOutput(head.scores.float(), presence, feats, head.plan.float(), prior)

    def _iter_batches(self, fn: str, items: Sequence[Any], batch_size: int, progress: bool | None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{fn}: expected `batch_size` to be an int >= 1, got {batch_size!r}.")
        starts = range(0, len(items), batch_size)
        show = len(items) > _AUTO_PROGRESS if progress is None else bool(progress)
        if show:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=fn, unit="batch", file=sys.stderr, dynamic_ncols=True)
        for s in starts:
            yield s, items[s : s + batch_size]

    @staticmethod
    def _items(fn: str, images_or_paths: Any) -> list[Any]:
        if isinstance(images_or_paths, Tensor):
            if images_or_paths.dim() != 4:
                raise ValueError(
                    f"{fn}: expected `images_or_paths` of shape (B, 3, H, W) as a tensor, got "
                    f"{tuple(images_or_paths.shape)}."
                )
            return list(images_or_paths)
        if isinstance(images_or_paths, (str, os.PathLike)) or not isinstance(
            images_or_paths, Sequence
        ):
            images_or_paths = [images_or_paths]
        return list(images_or_paths)

    # -- public inference ---------------------------------------------------------------
    def score(
        self,
        images_or_paths: Any,
        labels: Sequence[str] | None = None,
        *,
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> tuple[Tensor, Tensor | None, list[bool]]:
        """Scores and presence probabilities of every image over `labels`.

        Args:
            images_or_paths: image files, PIL images, (3, H, W) preprocessed tensors, or one
                (B, 3, H, W) tensor.
            labels: label names (default: the training vocabulary).
            batch_size: images per forward pass. progress: tqdm bar (None: on for long lists).

        Returns:
            ``(scores (B, C), presence (B, C) or None, ok (B,) list of bool)``: rows of
            images that could not be read are NaN and ``ok`` is False for them.
        """
        fn = "Tagger.score"
        items = self._items(fn, images_or_paths)
        labels = self.labels if labels is None else self._check_labels(fn, labels)
        n, c = len(items), len(labels)
        scores = torch.full((n, c), math.nan)
        presence = torch.full((n, c), math.nan) if self.calibration is not None else None
        ok = [False] * n
        with torch.no_grad():
            emb = self.model.encode_labels(labels) if items else None
            for start, chunk in self._iter_batches(fn, items, batch_size, progress):
                idx, x = self._load_batch(fn, chunk)
                if x is None:
                    continue
                out = self.forward(x, emb)
                rows = torch.tensor([start + i for i in idx])
                scores[rows] = out.scores.cpu()
                if presence is not None:
                    presence[rows] = out.presence.cpu()
                for i in idx:
                    ok[start + i] = True
        return scores, presence, ok

    def predict(
        self,
        images_or_paths: Any,
        labels: Sequence[str] | None = None,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        score: str = "softmax",
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> list[list[Tag] | None]:
        """Tag images: per image the labels that pass the rule, best first.

        The rule: with `threshold`, labels whose presence probability is >= `threshold`;
        with `top_k`, the `top_k` best (of those passing `threshold` when both are given);
        with neither, the calibrated per-label thresholds (seen labels) and the default
        threshold (free-text labels), or top-3 for an uncalibrated tagger.

        Args:
            images_or_paths: image files, PIL images, preprocessed (3, H, W) tensors or one
                (B, 3, H, W) tensor.
            labels: any label names (default: the training vocabulary).
            top_k: keep at most this many labels per image.
            threshold: presence probability in [0, 1] (needs a calibrated tagger).
            score: the score reported and ranked by: ``"softmax"`` (RAM's fused score,
                default) or ``"presence"`` (the calibrated probability).
            batch_size: images per forward pass; progress: tqdm bar (None: on for long
                lists).

        Returns:
            list: one entry per input: a list of :class:`Tag` ``(label, score)`` in
            descending score, or None for an image file that could not be read (a warning
            names it).
        """
        fn = "Tagger.predict"
        check_choice(fn, "score", score, ("softmax", "presence"))
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"{fn}: expected `top_k` to be an int >= 1, got {top_k!r}.")
        if threshold is not None:
            t = float(threshold)
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"{fn}: expected `threshold` in [0, 1], got {threshold!r}.")
        if self.calibration is None and (threshold is not None or score == "presence"):
            raise ValueError(
                f"{fn}: this tagger is not calibrated, so it has no presence probability for "
                "`threshold` / score='presence'; use `top_k`, or calibrate it first "
                "(Tagger.calibrate on a validation split)."
            )
        labels = self.labels if labels is None else self._check_labels(fn, labels)
        scores, presence, ok = self.score(
            images_or_paths, labels, batch_size=batch_size, progress=progress
        )
        if top_k is None and threshold is None and self.calibration is None:
            top_k = 3
        if presence is not None:
            if threshold is not None:
                thr = torch.full((len(labels),), float(threshold), dtype=torch.float64)
            elif top_k is None:
                thr = self.calibration.threshold_for(labels)
            else:
                thr = None
            keep = presence.double() >= thr if thr is not None else torch.ones_like(scores, dtype=torch.bool)
        else:
            keep = torch.ones_like(scores, dtype=torch.bool)
        rank = scores if score == "softmax" else presence
        result: list[list[Tag] | None] = []
        for i in range(len(ok)):
            if not ok[i]:
                result.append(None)
                continue
            order = torch.sort(rank[i], descending=True, stable=True).indices.tolist()
            tags = [Tag(labels[j], float(rank[i, j])) for j in order if keep[i, j]]
            result.append(tags[:top_k] if top_k is not None else tags)
        return result

    def calibrate(
        self,
        dataset: Any,
        labels: Sequence[str] | None = None,
        *,
        batch_size: int = 32,
        progress: bool | None = None,
        prior_positives: float = PRIOR_POSITIVES,
    ) -> Calibration:
        """Fit the presence model and thresholds on a validation split and keep them.

        Args:
            dataset: yields ``(image, target (C,))``, e.g. a
                :class:`~ram_ot.data.MultiLabelDataset` (images as PIL, or tensors already
                transformed with :attr:`transform`).
            labels: the C labels of the targets (default ``dataset.labels``).
            batch_size, progress: as in :meth:`predict`.
            prior_positives: the shrinkage of the per-label thresholds toward the pooled
                one (:func:`fit_calibration`).

        Returns:
            The new :class:`Calibration` (also stored in ``self.calibration``).
        """
        fn = "Tagger.calibrate"
        if labels is None:
            labels = getattr(dataset, "labels", None)
            if labels is None:
                raise ValueError(f"{fn}: expected `labels` (the dataset has no `.labels`).")
        labels = self._check_labels(fn, labels)
        feats, targets = [], []
        idx = list(range(len(dataset)))
        with torch.no_grad():
            emb = self.model.encode_labels(labels)
            for _, chunk in self._iter_batches(fn, idx, batch_size, progress):
                pairs = [dataset[i] for i in chunk]
                ims = [p[0] if isinstance(p[0], Tensor) else self.transform(p[0]) for p in pairs]
                x = torch.stack(ims).to(self.device)
                feats.append(self.forward(x, emb).features.cpu())
                targets.append(torch.stack([torch.as_tensor(p[1]) for p in pairs]))
        self.calibration = fit_calibration(
            torch.cat(feats), torch.cat(targets), labels, prior_positives=prior_positives
        )
        return self.calibration

    def explain(
        self,
        image: Any,
        labels: Sequence[str] | None = None,
        *,
        show: Sequence[str] | None = None,
        out_dir: str | os.PathLike | None = None,
        top_k: int = 3,
        prefix: str = "",
    ) -> dict[str, Any]:
        """Heatmaps of where each label took its transport mass from (see :mod:`ram_ot.viz`).

        Args:
            image: one image file or PIL image.
            labels: the label set the image is scored over (default: the training
                vocabulary); the plan depends on it.
            show: the labels to draw (a subset of `labels`); default the `top_k` best.
            out_dir: if given, PNGs are written there (:func:`ram_ot.viz.save_explanations`):
                the plan's heatmap, and the teacher prior's to its right.
            top_k: how many labels to draw when `show` is not given.
            prefix: file-name prefix of the PNGs.

        Returns:
            ``{label: (height, width) float32 heatmap in [0, 1]}`` at the image's size; with
            `out_dir`, the written paths under the key ``"_files"``.
        """
        from ram_ot import viz

        fn = "Tagger.explain"
        labels = self.labels if labels is None else self._check_labels(fn, labels)
        pil = _open_image(image)
        x = self.transform(pil).unsqueeze(0).to(self.device)
        out = self.forward(x, labels, with_prior=True)
        if show is None:
            order = torch.sort(out.scores[0], descending=True, stable=True).indices.tolist()
            chosen = order[:top_k]
        else:
            unknown = [c for c in show if c not in labels]
            if unknown:
                raise ValueError(f"{fn}: expected `show` to be among `labels`, got {unknown[:3]}.")
            chosen = [labels.index(c) for c in show]
        names = [labels[j] for j in chosen]
        grid = tuple(self.model.ladder.grid_size)
        plan = out.plan[0][:, chosen].cpu()  # (N, C) -> (N, C')
        prior = out.prior[0][:, chosen].cpu()
        maps = viz.plan_heatmaps(plan, grid)
        result: dict[str, Any] = {n: viz.upsample(m, pil.size) for n, m in zip(names, maps, strict=True)}
        if out_dir is not None and names:
            result["_files"] = viz.save_explanations(
                pil, plan, names, out_dir, grid=grid, prior=prior, prefix=prefix
            )
        return result
