"""Optimizer and learning-rate schedule from config.

The learning rate is given per ``ref_batch`` images and scaled linearly to the global
batch (the paper: 2.5e-4 per 256 for CvT-13); ``ref_batch: null`` makes it absolute.
Norms, biases, cls tokens and position embeddings get no weight decay. ``layer_decay``
(fine-tuning) scales each depth's lr by ``layer_decay ** (distance from the head)``; the
schedule multiplies every group's lr by the same factor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from .validate import OPTIMIZERS, SCHEDULES, one_of


def effective_lr(cfg: dict[str, Any], lr_key: str = "lr") -> float:
    ref = cfg.get("ref_batch")
    return cfg[lr_key] * (cfg["batch_size"] / ref if ref else 1.0)


def layer_id(name: str, depths: tuple[int, ...]) -> int:
    """Depth of a CvT parameter for layer-wise lr decay: 0 = the stem, block b = b + 1
    (blocks counted across stages), norm/head = sum(depths) + 1. A stage's token embedding,
    cls token and position embedding sit at the depth of the block before them."""
    parts = name.split(".")
    if not parts[0].startswith("stage"):
        return sum(depths) + 1
    stage = int(parts[0][len("stage"):])
    before = sum(depths[:stage])
    return before + int(parts[2]) + 1 if parts[1] == "blocks" else before


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None
                 ) -> list[dict[str, Any]]:
    """Decay / no-decay groups; with ``layer_decay`` also one group per depth whose
    ``lr_scale`` is ``layer_decay ** (head depth - depth)`` (BEiT-style fine-tuning)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    if layer_decay is not None and not hasattr(model, "config"):
        raise ValueError("optimizer.layer_decay needs a CvT (it reads the stage depths); "
                         "set optimizer.layer_decay=null")
    depths = tuple(model.config.depths) if layer_decay is not None else ()
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if name in skip else weight_decay
        scale = 1.0 if layer_decay is None else layer_decay ** (sum(depths) + 1 - layer_id(name, depths))
        group = groups.setdefault((decay, scale), {"params": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.get("weight_decay", 0.0), cfg.get("layer_decay"))
    lr = effective_lr(cfg)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    name = cfg["name"]
    # fused: one kernel over all parameters (CPU and CUDA); null keeps PyTorch's default loop
    fused = cfg.get("fused")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))),
                                 eps=cfg.get("eps", 1e-8), fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.get("momentum", 0.9),
                               nesterov=cfg.get("nesterov", False), fused=fused)
    raise ValueError(f"unknown optimizer.name '{name}'; choose {one_of(OPTIMIZERS)}")


def lr_factor(step: int, total: int, warmup: int, start: float, end: float, kind: str,
              milestones: list[int] | None = None, gamma: float = 0.1) -> float:
    """Multiplier of the peak lr at optimizer ``step`` (0-based).

    warmup: linear from ``start`` to 1 over ``warmup`` steps; then ``cosine`` to ``end`` at
    the last step (``total - 1``), ``constant``, or ``step`` (times ``gamma`` at each
    milestone step).
    """
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    if kind == "constant":
        return 1.0
    if kind == "step":
        return gamma ** sum(step >= m for m in (milestones or []))
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict[str, Any], opt_cfg: dict[str, Any],
                    total_steps: int, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR; epochs in the config are converted with ``steps_per_epoch``
    (``warmup_steps``, when set, wins over ``warmup_epochs`` for step-based recipes)."""
    peak = effective_lr(opt_cfg)
    warmup = cfg.get("warmup_steps")
    if warmup is None:
        warmup = round(cfg.get("warmup_epochs", 0) * steps_per_epoch)
    start = cfg.get("warmup_lr", 0.0) / peak
    end = cfg.get("min_lr", 0.0) / peak
    if cfg["name"] == "cosine" and end > 1.0:  # a small batch scales the peak below min_lr
        rank_zero_warn(  # (once, not once per DDP rank; stacklevel: build_scheduler's caller)
            f"scheduler.min_lr={cfg['min_lr']} is above the peak lr {peak:.3g} (optimizer.lr="
            f"{opt_cfg['lr']} scaled to the global batch {opt_cfg['batch_size']} per ref_batch="
            f"{opt_cfg.get('ref_batch')}): the cosine rises instead of decaying. Lower "
            "scheduler.min_lr or raise optimizer.lr", stacklevel=5)
    if warmup >= total_steps > 0:  # a shortened recipe (e.g. 5 warmup epochs of 5)
        given = (f"warmup_steps={warmup}" if cfg.get("warmup_steps") is not None else
                 f"warmup_epochs={cfg.get('warmup_epochs')} = {warmup} steps")
        rank_zero_warn(
            f"scheduler.{given} covers the whole run ({total_steps} optimizer steps): the lr "
            "only rises and never decays. Lower the warmup or train longer", stacklevel=5)
    milestones = [round(e * steps_per_epoch) for e in cfg.get("milestones", [])]
    kind = cfg["name"]
    if kind not in SCHEDULES:
        raise ValueError(f"unknown scheduler.name '{kind}'; choose {one_of(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, start, end, kind, milestones,
                                       cfg.get("gamma", 0.1)))
