"""CvT models, usable on their own (no Lightning, no Hydra):

    from cvt_lab.models import create_model
    model = create_model("cvt13", num_classes=100, drop_path=0.2)
"""

from __future__ import annotations

from typing import Any

from .config import PRESETS, CvTConfig, preset_config
from .cvt import CvT


def list_models() -> list[str]:
    return sorted(PRESETS)


def create_model(name: str, num_classes: int | None = None, **overrides: Any) -> CvT:
    """Build a preset, with any :class:`CvTConfig` field overridden."""
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    return CvT(preset_config(name, **overrides))


__all__ = ["CvT", "CvTConfig", "PRESETS", "create_model", "list_models", "preset_config"]
