"""Batch augmentation and normalisation on the device (after the host->device copy)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DeviceAugment(nn.Module):
    """uint8 (B, 3, H, W) -> normalised float; returns (images, targets, labels).

    ``targets`` equal ``labels`` unless a batch augmentation (mixup/cutmix) made soft ones.
    """

    def __init__(self, mean: list[float], std: list[float], augment: dict[str, Any] | None = None,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)
        self.augment = augment or {}
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor, labels: torch.Tensor, train: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (images.float() - self.mean.to(images.device)) / self.std.to(images.device)
        return x, labels, labels
