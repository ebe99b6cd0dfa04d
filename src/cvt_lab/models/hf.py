"""The transformers CvT format: config.json <-> CvTConfig, export, Hub download.

Works on plain dicts and files, so this package never imports transformers.
transformers' CvT uses exact GELU, LayerNorm eps 1e-5 (its ``layer_norm_eps`` field is
unused), depthwise-conv projections only, and no position embeddings; configs outside
that cannot be exported.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .config import CvTConfig
from .keymap import rename_keys

CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
IMAGE_SIZE = "image_size"  # our img_size in config.json (transformers' ViT name for it)

# transformers field -> our field, for the per-stage lists that differ only in name
_FIELD_NAMES = {
    "embed_dim": "embed_dims", "depth": "depths", "num_heads": "num_heads",
    "mlp_ratio": "mlp_ratio", "patch_sizes": "patch_size", "patch_stride": "patch_stride",
    "patch_padding": "patch_padding", "qkv_projection_method": "projection",
    "kernel_qkv": "kernel_qkv", "padding_q": "padding_q", "padding_kv": "padding_kv",
    "stride_q": "stride_q", "stride_kv": "stride_kv", "qkv_bias": "qkv_bias",
    "cls_token": "cls_token", "drop_rate": "drop_rate", "attention_drop_rate": "attn_drop",
    "drop_path_rate": "drop_path",
}
_FLOAT_FIELDS = {"mlp_ratio", "drop_rate", "attention_drop_rate", "drop_path_rate"}
# fields that change the network's function, besides the token-embedding geometry
# (compare CvTConfig.embed_geometry: 'patch' and an equivalent 'conv' are the same network)
ARCH_FIELDS = ("in_chans", "embed_dims", "depths", "num_heads", "mlp_ratio", "projection",
               "kernel_qkv", "padding_q", "padding_kv", "stride_q", "stride_kv", "qkv_bias",
               "cls_token", "pos_embed")


def num_labels(hf_config: dict[str, Any]) -> int:
    if "id2label" in hf_config:
        return len(hf_config["id2label"])
    return int(hf_config.get("num_labels", 2))  # transformers' default


def config_from_hf(hf_config: dict[str, Any], **overrides: Any) -> CvTConfig:
    """Our config for a transformers ``config.json`` (exact GELU, as transformers computes)."""
    if hf_config.get("model_type", "cvt") != "cvt":
        raise ValueError(f"not a CvT config: model_type is '{hf_config['model_type']}'")
    fields: dict[str, Any] = {ours: hf_config[hf] for hf, ours in _FIELD_NAMES.items()
                              if hf in hf_config}
    # transformers' CvT has a conv token embedding, no position embeddings, exact GELU
    fields.update(num_classes=num_labels(hf_config), in_chans=hf_config.get("num_channels", 3),
                  activation="gelu", token_embed="conv", pos_embed=False)
    if IMAGE_SIZE in hf_config:  # written by export_hf; transformers' CvtConfig has no such field
        fields["img_size"] = hf_config[IMAGE_SIZE]
    return CvTConfig.build(**{**fields, **overrides})


def config_to_hf(config: CvTConfig, id2label: dict[int, str] | None = None) -> dict[str, Any]:
    """A transformers ``config.json`` dict for ``config``; ValueError if it cannot express it."""
    problems = []
    if any(config.pos_embed):
        problems.append("position embeddings (pos_embed) do not exist in transformers' CvT")
    if any(m != "dw_bn" for m in config.projection):
        problems.append(f"projection {config.projection}: transformers' CvT only runs 'dw_bn'")
    if config.layer_norm_eps != 1e-5:
        problems.append(f"layer_norm_eps {config.layer_norm_eps}: transformers' CvT uses 1e-5")
    for i, has_cls in enumerate(config.cls_token[:-1]):
        if has_cls and config.embed_dims[i] != config.embed_dims[-1]:
            problems.append(f"a cls token in stage {i}: transformers sizes every cls token "
                            "with the last stage's width")
    # limits of transformers' implementation (5.23), not of the format: it would not load
    if not config.cls_token[-1]:
        problems.append("no cls token in the last stage: transformers' CvT then fails in forward")
    if any(d <= i for i, d in enumerate(config.depths)):
        problems.append(f"depths {config.depths}: transformers' CvT fails to build unless stage "
                        "i has more than i blocks")
    if problems:
        raise ValueError("cannot export this CvT to the transformers format: " + "; ".join(problems))
    if config.activation != "gelu":
        warnings.warn(f"exporting a '{config.activation}' model: transformers' CvT computes exact "
                      "GELU, so its logits will differ slightly from ours (as with Microsoft's "
                      "published conversions)", stacklevel=3)
    out: dict[str, Any] = {
        "model_type": "cvt",
        "architectures": ["CvtForImageClassification"],
        "num_channels": config.in_chans,
        "initializer_range": 0.02,
        "layer_norm_eps": config.layer_norm_eps,
        IMAGE_SIZE: config.img_size,  # an extra field, which transformers keeps: the resolution
    }
    for hf, ours in _FIELD_NAMES.items():
        values = list(getattr(config, ours))
        out[hf] = [float(v) for v in values] if hf in _FLOAT_FIELDS else values
    # the non-overlapping 'patch' embedding is a conv with kernel = stride and no padding
    geometry = [config.embed_geometry(i) for i in range(config.num_stages)]
    out["patch_sizes"] = [k for k, _, _ in geometry]
    out["patch_padding"] = [p for _, _, p in geometry]
    labels = id2label or {i: f"LABEL_{i}" for i in range(config.num_classes)}
    if isinstance(labels, Mapping) and len(labels) != config.num_classes:
        raise ValueError(f"id2label has {len(labels)} labels but the model {config.num_classes} classes")
    keys = sorted(str(k) for k in labels) if isinstance(labels, Mapping) else None
    if keys != sorted(str(i) for i in range(config.num_classes)):  # transformers indexes by them
        got = f"keys {keys[:8]}{' ...' if len(keys) > 8 else ''}" if keys else f"a {type(labels).__name__}"
        raise ValueError(f"id2label must map each class index 0..{config.num_classes - 1} to its "
                         f"name, e.g. id2label=dict(enumerate(class_names)); got {got}")
    out["id2label"] = {str(i): str(name) for i, name in labels.items()}
    out["label2id"] = {str(name): int(i) for i, name in labels.items()}
    return out


def export_hf(model: nn.Module, out_dir: str | Path, id2label: dict[int, str] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``CvtForImageClassification.from_pretrained`` loads."""
    from safetensors.torch import save_file

    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper prefixes every key
    if getattr(model, "bn_fused", False):
        raise ValueError("export the model before fuse_bn(): transformers' CvT keeps its BatchNorms")
    hf_config = config_to_hf(model.config, id2label)
    state, unknown = rename_keys(model.state_dict(), to_hf=True)
    if unknown:
        raise ValueError(f"no transformers name for {unknown}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_NAME).write_text(json.dumps(hf_config, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
              str(out / WEIGHT_NAMES[0]), metadata={"format": "pt"})
    return out


def download(repo_id: str) -> Path:
    """Fetch a Hub repository's config and weights (only those files) into the HF cache."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, *WEIGHT_NAMES])
    except Exception as err:  # offline, unknown repo, gated...: all end the same way for a user
        raise OSError(
            f"could not fetch '{repo_id}' from the Hugging Face Hub ({type(err).__name__}: {err}). "
            f"If this machine is offline, download the repository elsewhere and pass its local "
            f"directory (holding {CONFIG_NAME} and {' or '.join(WEIGHT_NAMES)}) instead of the id."
        ) from err
    return Path(path)


__all__ = ["ARCH_FIELDS", "config_from_hf", "config_to_hf", "download", "export_hf", "num_labels"]
