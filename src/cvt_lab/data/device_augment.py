"""Batch augmentation and normalisation on the device (after the host->device copy)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..resume import rank_stream
from .mixing import MixupCutmix, RandomErasing
from .randaugment import RandAugment


class DeviceAugment(nn.Module):
    """uint8 (B, 3, H, W) -> normalised float; returns (images, targets, labels).

    Training order (DeiT): RandAugment on [0, 1] images -> normalise -> random erasing ->
    Mixup/CutMix. ``targets`` equal ``labels`` (1-D) unless Mixup/CutMix is on; then they are
    soft (B, num_classes) with ``label_smoothing`` folded in, for every batch. Without
    mixing the targets stay hard labels, and the loss (``CvTModule.training_step``) applies
    ``augment.label_smoothing``.
    Evaluation only normalises.
    """

    def __init__(self, mean: list[float], std: list[float], augment: dict[str, Any] | None = None,
                 num_classes: int = 0) -> None:
        super().__init__()
        aug = augment or {}
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        ra = aug.get("randaugment")
        self.randaugment = RandAugment(**ra, fill=mean) if ra else None
        erase = aug.get("erase_prob", 0.0)
        self.erasing = RandomErasing(erase) if erase > 0 else None
        self.mix = None
        if aug.get("mixup_alpha", 0.0) > 0 or aug.get("cutmix_alpha", 0.0) > 0:
            self.mix = MixupCutmix(num_classes, aug.get("mixup_alpha", 0.0), aug.get("cutmix_alpha", 0.0),
                                   aug.get("mix_prob", 1.0), aug.get("mix_switch_prob", 0.5),
                                   aug.get("label_smoothing", 0.0))

    def forward(self, images: torch.Tensor, labels: torch.Tensor, train: bool, rank: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not (train and (self.randaugment or self.erasing or self.mix)):
            return (*self._augment(images, labels, train), labels)
        # each DDP rank its own RandAugment ops, Mixup lambda and erasing boxes
        with rank_stream(rank, images.device):
            x, targets = self._augment(images, labels, train)
        return x, targets, labels

    def _augment(self, images: torch.Tensor, labels: torch.Tensor, train: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        if train and self.randaugment is not None:
            x = (self.randaugment(images.float() / 255) - mean) / std
        else:
            x = (images.float() - mean * 255) / (std * 255)
        if not train:
            return x, labels
        if self.erasing is not None:
            x = self.erasing(x)
        if self.mix is not None:
            return self.mix(x, labels)
        return x, labels
