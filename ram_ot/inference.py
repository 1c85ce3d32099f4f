"""Compile- and export-friendly inference: RAM over a fixed label set, fixed Sinkhorn iterations.

:class:`InferenceModule` is RAM's evaluation forward with everything that is not a tensor
computation taken out:

- the **label set is fixed**: the label embeddings (C, D) are computed once, when the module
  is built (the text tower, its tokenizer and the prompts stay outside), and kept as a
  buffer;
- the **Sinkhorn iterations are fixed**: in a traced graph (:func:`torch.compile`,
  :func:`torch.export.export`) :func:`ram_ot.ot.sinkhorn` computes all ``max_iter``
  iterations (an early exit would read the device); each image's plan still freezes at its
  own convergence test, so the results are the eager ones. ``tol=0`` drops the tests: every
  plan is the one after exactly ``max_iter`` iterations, in eager mode too;
- the forward takes images only and returns a dict of tensors.

So ``torch.compile(InferenceModule(model, labels), fullgraph=True)`` traces into one graph,
and :func:`export_inference` writes a ``.pt2`` file (:func:`torch.export.save`) that
:func:`load_exported` (or plain :func:`torch.export.load`) reads back without ram-ot's
Python model code, open_clip or the tokenizer. :meth:`ram_ot.tagger.Tagger.export` does this
for a tagger, with its calibration. See ``docs/model.md``, "Compiling and exporting".

With the model's own ``max_iter`` and ``tol`` (the default), the module gives the scores of
``model(images, labels)`` in eval mode, eagerly, compiled and exported alike (to float
rounding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ram_ot._checks import check_floating, check_shape, check_tensor
from ram_ot.heads import KCOTHead
from ram_ot.kcot import KnowledgeConstrainedOT

__all__ = ["InferenceModule", "export_inference", "load_exported", "EXPORT_FORMAT"]

EXPORT_FORMAT = "ram-ot-export"
"""Value of the ``"format"`` key of the metadata stored with an exported program."""
_META = "ram_ot.json"  # name of the metadata entry in the .pt2 archive (extra_files)


def _inference_kcot(fn: str, kcot: nn.Module, max_iter: int | None, tol: float | None) -> nn.Module:
    """`kcot` with `max_iter` and `tol` (default: its own), detached; a copy if they change."""
    if not isinstance(kcot, KnowledgeConstrainedOT):
        if max_iter is not None or tol is not None:
            raise TypeError(
                f"{fn}: `max_iter` and `tol` need the model's head to hold a "
                f"KnowledgeConstrainedOT, got {type(kcot).__name__}."
            )
        return kcot  # a user's own matching module, used as it is
    n = kcot.max_iter if max_iter is None else max_iter
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{fn}: expected `max_iter` to be an int >= 1, got {max_iter!r}.")
    t = kcot.tol if tol is None else tol
    if n == kcot.max_iter and t == kcot.tol and kcot.grad == "detach":
        return kcot  # shared, as the rest of the model
    return KnowledgeConstrainedOT(
        reg=kcot.reg,
        reg_prior=kcot.reg_prior,
        logit_scale=kcot.logit_scale,
        region_temperature=kcot.region_temperature,
        max_iter=n,
        tol=t,  # checked by the constructor
        backend=kcot.backend,
        grad="detach",
    )


class InferenceModule(nn.Module):
    """RAM's evaluation forward over a fixed label set, traceable into one graph.

    Shares the weights of `model` (its frozen trunk, ladder and head temperatures; nothing is
    copied) and puts `model` in eval mode. Unlike :class:`~ram_ot.model.RAM`, the trunk is a
    registered submodule here (``visual``), so that :func:`torch.export.export` sees its
    weights as parameters; the text tower is not part of the module.

    Args:
        model: a :class:`~ram_ot.model.RAM`.
        labels: C >= 1 label names (embedded once with ``model.encode_labels``, without
            gradient) or (C, D) label embeddings.
        max_iter: Sinkhorn iterations (all computed in a traced graph); default the
            model's ``head.kcot.max_iter`` (100).
        tol: Sinkhorn tolerance; default the model's (``1e-5``); 0: every plan is the one
            after exactly `max_iter` iterations.
        presence_weights: (3,) floating, optional. The presence model ``(w_g, w_l, w_0)`` of a
            calibrated tagger (:class:`~ram_ot.tagger.Calibration`); adds ``"presence"`` to
            the outputs.

    The forward takes ``images`` (B, 3, H, W), preprocessed as for the model, and returns a
    dict of float32 tensors: ``"scores"`` (B, C) (RAM's fused scores), ``"logits_global"``
    (B, C), ``"logits_local"`` (B, C) and, with `presence_weights`, ``"presence"`` (B, C)
    (the calibrated presence probability, :func:`~ram_ot.tagger.presence_probability`).

    Example:
        >>> from ram_ot.backbones.open_clip import TINY_MODEL_NAME
        >>> from ram_ot.model import build_ram
        >>> module = InferenceModule(build_ram(TINY_MODEL_NAME, pretrained=None), ["cat", "dog"])
        >>> compiled = torch.compile(module, fullgraph=True, backend="eager")
        >>> compiled(torch.randn(2, 3, 32, 32))["scores"].shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        labels: Sequence[str] | Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        presence_weights: Tensor | None = None,
    ) -> None:
        super().__init__()
        from ram_ot.model import RAM

        fn = "InferenceModule"
        if not isinstance(model, RAM):
            raise TypeError(
                f"{fn}: expected `model` to be a ram_ot.RAM, got {type(model).__name__}."
            )
        model.eval()
        with torch.no_grad():
            emb = model.encode_labels(labels).detach()
        self.labels: list[str] | None = None if isinstance(labels, Tensor) else list(labels)
        self.register_buffer("label_embeddings", emb.clone())
        self.visual = model.ladder.visual  # registered here (held by reference in the ladder)
        self.ladder = model.ladder
        head = model.head
        kcot = _inference_kcot(fn, head.kcot, max_iter, tol)
        self.head = KCOTHead(kcot, loss=head.criterion, device=head.temperature_local.device)
        self.head.temperature_local = head.temperature_local  # shared, not copied
        self.head.temperature_global = head.temperature_global
        self.max_iter = getattr(kcot, "max_iter", None)
        self.tol = getattr(kcot, "tol", None)
        if presence_weights is not None:
            check_tensor(fn, "presence_weights", presence_weights)
            check_floating(fn, "presence_weights", presence_weights)
            check_shape(fn, "presence_weights", presence_weights, [("3", 3)])
            self.register_buffer(
                "presence_weights",
                presence_weights.detach().to(device=emb.device, dtype=torch.float64).clone(),
            )
        else:
            self.presence_weights = None
        self.eval()

    def train(self, mode: bool = True) -> InferenceModule:
        """Inference only: the module (and the shared ladder) stay in eval mode."""
        return super().train(False)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images the forward takes."""
        return self.ladder.image_size

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Score the fixed labels for every image.

        Args:
            images: (B, 3, H, W) floating, preprocessed; H, W = :attr:`image_size`.

        Returns:
            dict with ``"scores"``, ``"logits_global"``, ``"logits_local"`` (B, C) float32
            and ``"presence"`` (B, C) float32 when the module has presence weights.
        """
        from ram_ot.tagger import presence_features, presence_probability

        if self.ladder.training:
            raise RuntimeError(
                "InferenceModule: the shared ladder is in training mode (the model was put "
                "back in training after this module was built); call .eval() on the module."
            )
        emb = self.label_embeddings
        out = self.ladder(images, emb)
        head = self.head(out.image_global, out.image_regions, emb)
        result = {
            "scores": head.scores.float(),
            "logits_global": head.logits_global.float(),
            "logits_local": head.logits_local.float(),
        }
        if self.presence_weights is not None:
            feats = presence_features(
                head.logits_global,
                head.logits_local,
                self.head.temperature_global,
                self.head.temperature_local,
            )
            result["presence"] = presence_probability(feats, self.presence_weights)
        return result


def export_inference(
    module: InferenceModule,
    path: str | os.PathLike | None = None,
    *,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    metadata: dict[str, Any] | None = None,
) -> torch.export.ExportedProgram:
    """Export an :class:`InferenceModule` with :func:`torch.export.export`; optionally save it.

    Args:
        module: the module to export (on the device the program is for).
        path: where to write the program (``.pt2``, :func:`torch.export.save`), with
            `metadata` (JSON) stored next to it in the archive; None: do not save.
        batch_size: batch of the example input used for tracing.
        dynamic_batch: let the program take any batch size >= 1 (else only `batch_size`).
        metadata: JSON-serialisable facts to store (:meth:`ram_ot.tagger.Tagger.export`
            stores the labels, the preprocessing and the thresholds); ``format``, the label
            names, ``max_iter`` and the ram_ot version are added.

    Returns:
        The :class:`torch.export.ExportedProgram`; ``program.module()(images)`` returns the
        dict of :meth:`InferenceModule.forward`.

    Example:
        >>> from ram_ot.backbones.open_clip import TINY_MODEL_NAME
        >>> from ram_ot.model import build_ram
        >>> module = InferenceModule(build_ram(TINY_MODEL_NAME, pretrained=None), ["cat", "dog"])
        >>> program = export_inference(module)
        >>> program.module()(torch.randn(3, 3, 32, 32))["scores"].shape
        torch.Size([3, 2])
    """
    fn = "export_inference"
    if not isinstance(module, InferenceModule):
        raise TypeError(
            f"{fn}: expected `module` to be an InferenceModule, got {type(module).__name__}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        # a batch of 1 would be specialised as a constant by the tracer
        raise ValueError(f"{fn}: expected `batch_size` to be an int >= 2, got {batch_size!r}.")
    h, w = module.image_size
    device = module.label_embeddings.device
    dtype = module.visual.conv1.weight.dtype
    example = torch.randn(batch_size, 3, h, w, device=device, dtype=dtype)
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1)}}
    module.eval()
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    if path is not None:
        from ram_ot._version import __version__

        meta = dict(metadata or {})
        meta.update(
            format=EXPORT_FORMAT,
            ram_ot=__version__,
            labels=module.labels,
            max_iter=module.max_iter,
            tol=module.tol,
            image_size=list(module.image_size),
            outputs=sorted(program.call_spec.out_spec.context) if _is_dict_spec(program) else None,
        )
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, path, extra_files={_META: json.dumps(meta)})
    return program


def _is_dict_spec(program: torch.export.ExportedProgram) -> bool:
    spec = getattr(program.call_spec, "out_spec", None)
    return spec is not None and spec.type is dict


def load_exported(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Read a program written by :func:`export_inference` (or :meth:`ram_ot.tagger.Tagger.export`).

    Args:
        path: the ``.pt2`` file.

    Returns:
        ``(module, metadata)``: ``module(images)`` returns the dict of
        :meth:`InferenceModule.forward` (the program's ``.module()``); `metadata` is the
        dict stored with it (labels, ``max_iter``, and what the exporter added).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a ``.pt2`` file that ram-ot did not write.
    """
    fn = "load_exported"
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{fn}: no such file: {os.fspath(path)!r}.")
    extra = {_META: ""}
    program = torch.export.load(p, extra_files=extra)
    try:
        meta = json.loads(extra[_META]) if extra[_META] else {}
    except json.JSONDecodeError:
        meta = {}
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{fn}: expected a program written by ram_ot.inference.export_inference, got "
            f"{os.fspath(path)!r} without ram-ot metadata."
        )
    module = program.module()
    for p_ in module.parameters():
        p_.requires_grad_(False)  # inference only: no graph is built on the outputs
    return module, meta
