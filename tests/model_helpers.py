"""Helpers shared by the model tests."""

from __future__ import annotations

import torch


def randomise_bn(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm statistics, so eval mode differs from an identity BN."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
