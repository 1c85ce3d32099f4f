"""RAM: frozen open_clip ViT + Ladder Local Adapter + PromptEncoder + KCOT head, RAM §3.

Assembles the full model of Tan et al., "Recover and Match" (CVPR 2025, arXiv 2503.15337):

- label names -> :class:`~ram_ot.prompts.PromptEncoder` (deep text prompts) -> (C, D);
- images -> :class:`~ram_ot.adapters.LadderLocalAdapter` (§3.2 "Recover") -> global (B, D)
  and region (B, N, D) embeddings, conditioned on the label embeddings;
- :class:`~ram_ot.heads.KCOTHead` (§3.3 "Match", §3.4 loss) -> scores, logits, plan, loss.

In training mode with targets the knowledge constraint is on: the frozen teacher's regions
come out of the same ladder pass (shared trunk) and the teacher's label embeddings are the
frozen text tower's features of the plain template "A photo of a {}." (as the reference).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ram_ot._checks import check_floating, check_shape, check_tensor
from ram_ot.adapters import LadderLocalAdapter
from ram_ot.backbones.open_clip import load_clip
from ram_ot.heads import HeadOutput, KCOTHead
from ram_ot.kcot import KnowledgeConstrainedOT, teacher_prior
from ram_ot.prompts import PromptEncoder

__all__ = ["RAM", "build_ram"]

_FN = "RAM"


class RAM(nn.Module):
    """Open-vocabulary multi-label recogniser: frozen CLIP + ladder + prompts + KCOT head.

    The CLIP model is frozen and held by reference (see
    :class:`~ram_ot.adapters.LadderLocalAdapter`): ``parameters()``, ``state_dict()`` and
    ``train()`` cover only what RAM trains — the LocalAdapters (BatchNorm statistics
    included), the visual tokens, the deep text prompts and the head's two temperatures —
    plus the architecture settings (``config``, stored as the state dict's extra state), so a
    checkpoint is a few MB. ``.to()`` / ``.half()`` still move the CLIP.

    Args:
        clip_model: an open_clip ViT CLIP model (frozen in place).
        tokenizer: its tokenizer.
        adapter_layers: ladder layers with a LocalAdapter and visual tokens; default the
            last 3 (reference ``DEPTH_VISION [9, 10, 11]``).
        n_visual_tokens: learnable visual tokens per adapted layer (``VISION_ADAPT`` 8).
        kernel_size: LocalAdapter gate convolution (``KERNEL_SIZE`` 3).
        surgery_layers: layers with the value–value side attention; default all.
        n_ctx: deep text prompt tokens per layer (``TEXT_CTX`` 4); 0 = frozen text features.
        text_deep_layers: text layers with prompts; default the last 3 (``DEPTH_TEXT``).
        template: prompt template of the student's label embeddings.
        templates: several templates for prompt ensembling (overrides `template`).
        teacher_template: template of the frozen teacher's label embeddings.
        kcot: the matching module; default ``KnowledgeConstrainedOT(logit_scale=s)`` with
            ``s`` the CLIP's ``logit_scale.exp()`` (100 for trained CLIPs), as the reference.
        temperature_local: initial τ_loc (``TEMPERATURE`` 2e-3).
        temperature_global: initial τ_g; default ``1 / s`` as the reference.
        loss: head loss, "mmc" (default), "asl", "bce" or a callable.
        use_teacher: apply the knowledge constraint in training (False: plain OT, an
            ablation; also skips the teacher's layers).
        chunk_size: labels per text-tower call.
        device: device of the new parameters (default: the CLIP's).
        dtype: dtype of the new parameters (default float32).
        cache_text: cache the text side (:class:`~ram_ot.prompts.PromptEncoder`'s
            ``cache_text``; exact, off only to compare or to save memory).

    Example:
        >>> from ram_ot.backbones.open_clip import TINY_MODEL_NAME
        >>> model = build_ram(TINY_MODEL_NAME, pretrained=None)
        >>> out = model(torch.randn(2, 3, 32, 32), ["cat", "dog", "car"])
        >>> out.scores.shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[..., Tensor],
        *,
        adapter_layers: Sequence[int] | None = None,
        n_visual_tokens: int = 8,
        kernel_size: int = 3,
        surgery_layers: Sequence[int] | None = None,
        n_ctx: int = 4,
        text_deep_layers: Sequence[int] | None = None,
        template: str = "a photo of a {}.",
        templates: Sequence[str] | None = None,
        teacher_template: str = "A photo of a {}.",
        kcot: KnowledgeConstrainedOT | None = None,
        temperature_local: float = 2e-3,
        temperature_global: float | None = None,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "mmc",
        use_teacher: bool = True,
        chunk_size: int = 256,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cache_text: bool = True,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "clip_model", clip_model)  # by reference, frozen below
        self.ladder = LadderLocalAdapter(
            clip_model.visual,
            adapter_layers=adapter_layers,
            n_visual_tokens=n_visual_tokens,
            kernel_size=kernel_size,
            surgery_layers=surgery_layers,
            device=device,
            dtype=dtype,
        )
        self.prompts = PromptEncoder(
            clip_model,
            tokenizer,
            template=template,
            templates=templates,
            n_ctx=n_ctx,
            deep_layers=text_deep_layers,
            chunk_size=chunk_size,
            device=device,
            dtype=dtype,
            cache_text=cache_text,
        )
        self.teacher_prompts = PromptEncoder(
            clip_model,
            tokenizer,
            template=teacher_template,
            n_ctx=0,
            chunk_size=chunk_size,
            cache_text=cache_text,
        )
        scale = (
            float(clip_model.logit_scale.detach().exp())
            if hasattr(clip_model, "logit_scale")
            else 100.0
        )
        self.logit_scale = scale
        if kcot is None:
            kcot = KnowledgeConstrainedOT(logit_scale=scale)
        self.head = KCOTHead(
            kcot,
            temperature_local=temperature_local,
            temperature_global=1.0 / scale if temperature_global is None else temperature_global,
            loss=loss,
            device=device if device is not None else self.ladder.visual.conv1.weight.device,
            dtype=dtype,
        )
        self.use_teacher = bool(use_teacher)
        self.preprocess: Callable[[Any], Tensor] | None = None
        self.config: dict[str, Any] = {
            "adapter_layers": list(self.ladder.adapter_layers),
            "n_visual_tokens": n_visual_tokens,
            "kernel_size": kernel_size,
            "surgery_layers": list(self.ladder.surgery_layers),
            "n_ctx": n_ctx,
            "text_deep_layers": list(self.prompts.deep_layers),
            "template": template,
            "templates": None if templates is None else list(templates),
            "teacher_template": teacher_template,
            "use_teacher": self.use_teacher,
        }

    # -- the frozen CLIP is not a submodule ---------------------------------------------
    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module signature
        super()._apply(fn, recurse)
        self.clip_model._apply(fn)
        return self

    def train(self, mode: bool = True) -> RAM:
        super().train(mode)
        self.clip_model.eval()
        return self

    def get_extra_state(self) -> dict[str, Any]:
        return {"config": dict(self.config)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = dict(state.get("config", {}))
        mine = self.config
        diff = {k: (saved[k], mine.get(k)) for k in saved if k in mine and saved[k] != mine[k]}
        if diff:
            detail = ", ".join(
                f"{k}: saved {a!r}, model {b!r}" for k, (a, b) in sorted(diff.items())
            )
            raise ValueError(
                f"{_FN}: expected a state dict of the same configuration, got {detail}."
            )

    @property
    def tokenizer(self) -> Callable[..., Tensor]:
        """The CLIP's tokenizer (list of str -> (C, L) int64)."""
        return self.prompts.tokenizer

    # -- training helpers ---------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is trained (adapters, tokens, prompts, temperatures)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(
        self,
        lr: float = 5e-5,
        weight_decay: float = 1e-4,
        *,
        lr_mult: float = 0.1,
        lr_embeds: float = 1e-3,
        weight_decay_embeds: float = 1e-4,
    ) -> list[dict[str, Any]]:
        """Parameter groups of the reference's optimiser split (``solver/make_optimizer.py``).

        - ``"adapters"``: the LocalAdapters (inside the CLIP in the reference), ``lr * lr_mult``;
        - ``"head"``: the head temperatures and anything else trainable, ``lr``;
        - ``"embeds"``: the visual tokens and deep text prompts, ``lr_embeds``. The reference
          trains these with a second optimiser, ``SGD(momentum=0.9)`` at 1e-3.

        The reference's first optimiser is AdamW over "adapters" and "head". Empty groups
        are left out.

        Returns:
            list of dicts with keys ``name``, ``params``, ``lr``, ``weight_decay``.
        """
        adapters = [p for p in self.ladder.adapters.parameters() if p.requires_grad]
        embeds = [p for p in self.ladder.visual_embeds.parameters() if p.requires_grad]
        embeds += [p for p in self.prompts.deep_embeds.parameters() if p.requires_grad]
        taken = {id(p) for p in adapters + embeds}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        groups = [
            {
                "name": "adapters",
                "params": adapters,
                "lr": lr * lr_mult,
                "weight_decay": weight_decay,
            },
            {"name": "head", "params": rest, "lr": lr, "weight_decay": weight_decay},
            {
                "name": "embeds",
                "params": embeds,
                "lr": lr_embeds,
                "weight_decay": weight_decay_embeds,
            },
        ]
        return [g for g in groups if g["params"]]

    # -- forward ------------------------------------------------------------------------
    def encode_labels(self, labels: Sequence[str] | Tensor) -> Tensor:
        """(C, D) label embeddings of label names (through the prompts) or given as a tensor."""
        if isinstance(labels, Tensor):
            check_floating(_FN, "labels", labels)
            check_shape(_FN, "labels", labels, [("C", None), ("D", self.ladder.text_dim)])
            if labels.shape[0] == 0:
                raise ValueError(
                    f"{_FN}: expected `labels` of shape (C, D) with C >= 1, got {tuple(labels.shape)}."
                )
            return labels
        if isinstance(labels, str) or not isinstance(labels, Sequence):
            raise TypeError(
                f"{_FN}: expected `labels` to be a sequence of str or a (C, D) tensor, got {type(labels).__name__}."
            )
        if len(labels) == 0:
            raise ValueError(f"{_FN}: expected `labels` to hold at least one label, got 0.")
        return self.prompts(labels)

    def forward(
        self,
        images: Tensor,
        labels: Sequence[str] | Tensor,
        targets: Tensor | None = None,
        *,
        teacher_labels: Tensor | None = None,
    ) -> HeadOutput:
        """Score every label for every image.

        Args:
            images: (B, 3, H, W) floating, preprocessed (``model.preprocess``); H, W = the
                CLIP's image size.
            labels: C >= 1 label names, or (C, D) label embeddings
                (:meth:`encode_labels`; then the teacher uses them too, unless
                `teacher_labels` are given).
            targets: (B, C) multi-hot, optional: enables the loss and, in training mode,
                the knowledge constraint.
            teacher_labels: (C, D) floating, optional. The frozen teacher's label
                embeddings (``model.teacher_prompts(names)``), used by the knowledge
                constraint instead of computing them from the names. With these and
                `labels` as a tensor, the forward runs no text tower, which is what
                ``torch.compile(model, fullgraph=True)`` of a training step needs (see
                ``docs/model.md``, "Compiling and exporting").

        Returns:
            HeadOutput: ``(scores (B, C), logits_global (B, C), logits_local (B, C),
            plan (B, N, C), loss or None)``.
        """
        check_tensor(_FN, "images", images)
        check_floating(_FN, "images", images)
        ih, iw = self.ladder.image_size
        check_shape(_FN, "images", images, [("B", None), ("3", 3), ("H", ih), ("W", iw)])
        label_emb = self.encode_labels(labels)
        if teacher_labels is not None:
            check_tensor(_FN, "teacher_labels", teacher_labels)
            check_floating(_FN, "teacher_labels", teacher_labels)
            check_shape(
                _FN,
                "teacher_labels",
                teacher_labels,
                [("C", label_emb.shape[0]), ("D", self.ladder.text_dim)],
            )
        use_teacher = self.use_teacher and self.training and targets is not None
        out = self.ladder(images, label_emb, with_teacher=use_teacher)
        prior = None
        if use_teacher:
            with torch.no_grad():
                if teacher_labels is not None:
                    teacher_text = teacher_labels.detach()
                elif isinstance(labels, Tensor):
                    teacher_text = label_emb.detach()
                else:
                    teacher_text = self.teacher_prompts(labels)
                prior = teacher_prior(
                    out.teacher_regions, teacher_text, logit_scale=self.logit_scale
                )
        return self.head(
            out.image_global, out.image_regions, label_emb, targets=targets, prior=prior
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())


def build_ram(
    model_name: str = "ViT-B-16",
    pretrained: str | os.PathLike | None = "openai",
    *,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    cache_dir: str | None = None,
    **kwargs: Any,
) -> RAM:
    """Load a frozen open_clip model and build :class:`RAM` over it.

    Args:
        model_name: open_clip architecture (or
            :data:`~ram_ot.backbones.open_clip.TINY_MODEL_NAME`).
        pretrained: open_clip tag, local checkpoint file, or None (random, no download).
        device: device of the whole model.
        precision: precision of the CLIP (the new parameters stay float32).
        cache_dir: download cache for pretrained tags.
        **kwargs: :class:`RAM` keyword arguments.

    Returns:
        The model; ``model.preprocess`` is the CLIP's evaluation transform (PIL -> (3, H, W))
        and ``model.clip_model`` / ``model.prompts.tokenizer`` the frozen CLIP and tokenizer.
    """
    clip_model, tokenizer, preprocess = load_clip(
        model_name, pretrained, device=device, precision=precision, cache_dir=cache_dir
    )
    model = RAM(clip_model, tokenizer, **kwargs)
    model.preprocess = preprocess
    model.config["model_name"] = model_name
    return model
