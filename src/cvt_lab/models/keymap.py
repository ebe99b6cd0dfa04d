"""Parameter-name translation between our CvT and the transformers CvT.

Our names are the original research code's names (``stage1.blocks.0.attn.proj_q``), so
the Microsoft checkpoints need no renaming; transformers nests differently. Each rule
is a pair of name templates, read in either direction: ``{s}`` is a stage index,
``{j}`` a block index, ``{p}`` the rest of the name (``weight``, ``running_mean``...).
"""

from __future__ import annotations

import re

_STAGE = "cvt.encoder.stages.{s}."
_LAYER = _STAGE + "layers.{j}."
_ATTN = _LAYER + "attention.attention."
_CONV_PROJ = "convolution_projection_{}.convolution_projection."

# (ours, transformers)
HF_RULES: list[tuple[str, str]] = [
    ("stage{s}.patch_embed.proj.{p}", _STAGE + "embedding.convolution_embeddings.projection.{p}"),
    ("stage{s}.patch_embed.norm.{p}", _STAGE + "embedding.convolution_embeddings.normalization.{p}"),
    ("stage{s}.cls_token", _STAGE + "cls_token"),
    ("stage{s}.blocks.{j}.norm1.{p}", _LAYER + "layernorm_before.{p}"),
    ("stage{s}.blocks.{j}.norm2.{p}", _LAYER + "layernorm_after.{p}"),
    *[
        rule
        for short, long in (("q", "query"), ("k", "key"), ("v", "value"))
        for rule in (
            (f"stage{{s}}.blocks.{{j}}.attn.conv_proj_{short}.conv.{{p}}",
             _ATTN + _CONV_PROJ.format(long) + "convolution.{p}"),
            (f"stage{{s}}.blocks.{{j}}.attn.conv_proj_{short}.bn.{{p}}",
             _ATTN + _CONV_PROJ.format(long) + "normalization.{p}"),
            (f"stage{{s}}.blocks.{{j}}.attn.proj_{short}.{{p}}", _ATTN + f"projection_{long}.{{p}}"),
        )
    ],
    ("stage{s}.blocks.{j}.attn.proj.{p}", _LAYER + "attention.output.dense.{p}"),
    ("stage{s}.blocks.{j}.mlp.fc1.{p}", _LAYER + "intermediate.dense.{p}"),
    ("stage{s}.blocks.{j}.mlp.fc2.{p}", _LAYER + "output.dense.{p}"),
    ("norm.{p}", "layernorm.{p}"),
    ("head.{p}", "classifier.{p}"),
]

_FIELDS = {"s": r"(?P<s>\d+)", "j": r"(?P<j>\d+)", "p": r"(?P<p>[^.]+)"}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)  # literal, field, literal, field, ...
    regex = "".join(_FIELDS[x] if k % 2 else re.escape(x) for k, x in enumerate(parts))
    return re.compile(regex + "$")


_TO_HF = [(_pattern(ours), hf) for ours, hf in HF_RULES]
_FROM_HF = [(_pattern(hf), ours) for ours, hf in HF_RULES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return None


def rename_keys(state_dict: dict, to_hf: bool) -> tuple[dict, list[str]]:
    """Renamed state dict and the keys no rule matched (left out, for the caller to report)."""
    rules = _TO_HF if to_hf else _FROM_HF
    out, unknown = {}, []
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    return out, unknown


__all__ = ["HF_RULES", "rename_keys"]
