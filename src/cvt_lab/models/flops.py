"""Analytic cost of a CvT: multiply-adds (MACs) and parameter counts.

The count follows the paper's convention, calibrated against its Tables 2 and 7:
one MAC per multiply-add of every convolution (token embedding, depthwise q/k/v
projection) and Linear layer, plus the two attention matmuls (Q K^T and A V).
Biases, norms, activations, softmax and pooling are not counted. With that rule
CvT-13/21/W24 come out within 1.5% of the published 4.53/7.13/60.86 G (224 px)
and 16.3/24.9/193.2 G (384 px); leaving out the attention matmuls gives the
4.06 G sometimes quoted for CvT-13.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from .config import CvTConfig
from .cvt import CvT, token_grid


def _as_config(config_or_model: CvTConfig | nn.Module) -> CvTConfig:
    model = getattr(config_or_model, "_orig_mod", config_or_model)  # torch.compile's wrapper
    return model.config if isinstance(model, CvT) else model


def _hw(img_size: int | tuple[int, int] | None, config: CvTConfig) -> tuple[int, int]:
    if img_size is None:
        return config.img_size, config.img_size
    if isinstance(img_size, int):
        return img_size, img_size
    return int(img_size[0]), int(img_size[1])


def macs_breakdown(config_or_model: CvTConfig | CvT,
                   img_size: int | tuple[int, int] | None = None) -> dict[str, int]:
    """MACs of one image per part: ``stage{i}.{embed,conv_proj,qkv,attn,proj,mlp}`` and ``head``.

    Args:
        config_or_model: a :class:`CvTConfig` or a :class:`CvT` (its config is used).
        img_size: input height and width in pixels (an int for square); default the
            config's ``img_size``.
    """
    cfg = _as_config(config_or_model)
    h, w = _hw(img_size, cfg)
    cfg.check_input_size(h, w)
    chans = cfg.in_chans
    parts: Counter[str] = Counter()
    for i in range(cfg.num_stages):
        dim, depth, name = cfg.embed_dims[i], cfg.depths[i], f"stage{i}"
        k, s, p = cfg.embed_geometry(i)
        h, w = token_grid(h, k, s, p), token_grid(w, k, s, p)
        parts[f"{name}.embed"] += chans * dim * k * k * h * w
        cls = int(cfg.cls_token[i])
        method, kq = cfg.projection[i], cfg.kernel_qkv[i]
        # q is never pooled ('avg' projects q linearly), as in the network itself
        if method == "dw_bn":
            q_hw = [token_grid(n, kq, cfg.stride_q[i], cfg.padding_q[i]) for n in (h, w)]
        else:
            q_hw = [h, w]
        if method == "linear":
            kv_hw = [h, w]
        else:
            ceil = method == "avg"
            kv_hw = [token_grid(n, kq, cfg.stride_kv[i], cfg.padding_kv[i], ceil) for n in (h, w)]
        n_q = q_hw[0] * q_hw[1] + cls
        n_kv = kv_hw[0] * kv_hw[1] + cls
        n_tokens = h * w + cls
        hidden = int(dim * cfg.mlp_ratio[i])
        if method == "dw_bn":
            parts[f"{name}.conv_proj"] += depth * dim * kq * kq * (n_q - cls + 2 * (n_kv - cls))
        parts[f"{name}.qkv"] += depth * dim * dim * (n_q + 2 * n_kv)
        parts[f"{name}.attn"] += depth * 2 * n_q * n_kv * dim  # Q K^T and A V
        parts[f"{name}.proj"] += depth * dim * dim * n_q
        parts[f"{name}.mlp"] += depth * 2 * dim * hidden * n_tokens
        chans = dim
    parts["head"] = chans * cfg.num_classes
    return dict(parts)


def count_macs(config_or_model: CvTConfig | CvT,
               img_size: int | tuple[int, int] | None = None) -> int:
    """Multiply-adds of one forward pass for one image (the paper's "FLOPs")."""
    return sum(macs_breakdown(config_or_model, img_size).values())


def count_params(config_or_model: CvTConfig | nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters; a config is built on the ``meta`` device (no memory, instant)."""
    model = config_or_model
    if isinstance(model, CvTConfig):
        with torch.device("meta"):
            model = CvT(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = ["count_macs", "count_params", "macs_breakdown"]
