"""CvT models, usable on their own (no Lightning, no Hydra, no transformers):

    from cvt_lab.models import create_model
    model = create_model("cvt13", num_classes=100, drop_path=0.2)
    model = create_model("cvt13", num_classes=100, pretrained="microsoft/cvt-13")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import (CheckpointError, LoadReport, infer_config, load_checkpoint,
                         load_pretrained, read_checkpoint)
from .config import PRESETS, CvTConfig, preset_config
from .cvt import CvT
from .flops import count_macs, count_params, macs_breakdown
from .hf import config_from_hf, config_to_hf, export_hf


def list_models() -> list[str]:
    return sorted(PRESETS)


def create_model(name: str | None = None, num_classes: int | None = None,
                 pretrained: str | Path | None = None, **overrides: Any) -> CvT:
    """Build a preset, with any :class:`CvTConfig` field overridden, optionally with weights.

    Args:
        name: a preset (:func:`list_models`); may be None with ``pretrained``, which then
            decides the architecture (its config.json, or its shapes for original weights).
        num_classes: classifier width; default the preset's, or the checkpoint's. When it
            differs from the checkpoint's, the classifier is new (fine-tuning) and reported.
        pretrained: a transformers directory, a Hub id (``microsoft/cvt-13``) or a weights
            file (original ``.pth``, ``.safetensors``, ``.bin``). Loading is strict.
        overrides: :class:`CvTConfig` fields. Weights from transformers default to
            ``activation="gelu"`` so logits match transformers exactly, a cvt-lab training
            checkpoint to the activation it trained with; original weights keep QuickGELU.

    With ``pretrained``, the model's ``load_report`` (:class:`LoadReport`) says where the
    weights came from and whether the classifier is new.
    """
    if pretrained is None:
        if name is None:
            raise ValueError(f"give a preset name ({list_models()}) or pretrained weights")
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return CvT(preset_config(name, **overrides))
    ckpt = read_checkpoint(pretrained)
    if ckpt.activation is not None:
        overrides.setdefault("activation", ckpt.activation)
    classes = ckpt.num_classes if num_classes is None else num_classes
    overrides["num_classes"] = classes
    config = preset_config(name, **overrides) if name else ckpt.config(**overrides)
    model = CvT(config)
    model.load_report = load_checkpoint(model, ckpt, reset_head=classes != ckpt.num_classes)
    return model


__all__ = [
    "CheckpointError", "CvT", "CvTConfig", "LoadReport", "PRESETS", "config_from_hf",
    "config_to_hf", "count_macs", "count_params", "create_model", "export_hf", "infer_config",
    "list_models", "load_checkpoint", "load_pretrained", "macs_breakdown", "preset_config",
    "read_checkpoint",
]
