"""Batch-level Mixup / CutMix with label smoothing folded into the soft targets, and
per-image random erasing: the DeiT recipe's last steps, on the device.

Semantics follow the DeiT/timm recipe (batch mode): one lambda per batch, each image mixed
with the batch reversed; CutMix pastes one box and sets lambda to the exact kept area.
kornia's MixUp/CutMix draw lambda per image from a uniform range and pair images at
random, so these few lines are ours.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int -> (B, C) rows of ``smoothing / C`` with ``1 - smoothing + smoothing / C`` at the label."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1).long(), 1 - smoothing + off)


class MixupCutmix(nn.Module):
    """Mixup (alpha 0.8) or CutMix (alpha 1.0), switched with prob 0.5, on every batch.

    Returns soft targets (rows sum to 1) with ``label_smoothing`` already applied, so the
    loss must not smooth again.

    Args:
        num_classes: width of the targets.
        mixup_alpha: Beta(alpha, alpha) for mixup's lambda; 0 disables mixup. Paper: 0.8.
        cutmix_alpha: Beta(alpha, alpha) for CutMix's lambda; 0 disables it. Paper: 1.0.
        prob: probability that a batch is mixed at all (others get smoothed one-hot). Paper: 1.0.
        switch_prob: probability of CutMix rather than mixup when both are on. Paper: 0.5.
        label_smoothing: folded into the targets. Paper: 0.1.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1) -> None:
        super().__init__()
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.label_smoothing = prob, switch_prob, label_smoothing

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if torch.rand(()) >= self.prob or x.shape[0] < 2:
            return x, targets
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or torch.rand(()) < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        partner = x.flip(0)
        if cutmix:
            top, bottom, left, right = cutmix_box(x.shape[-2], x.shape[-1], lam)
            x = x.clone()
            x[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (x.shape[-2] * x.shape[-1])
        else:
            x = x * lam + partner * (1 - lam)
        return x, targets * lam + targets.flip(0) * (1 - lam)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """A box of about (1 - lam) of the area, centred uniformly, clipped to the image."""
    cut = math.sqrt(1 - lam)
    h, w = int(height * cut), int(width * cut)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(cy - h // 2, 0), min(cy + h // 2, height)
    left, right = max(cx - w // 2, 0), min(cx + w // 2, width)
    return top, bottom, left, right


class RandomErasing(nn.Module):
    """Erase one random box per image (with ``prob``) with N(0, 1) noise per pixel.

    Runs on normalised images, so the noise matches the data's scale (timm's 'pixel' mode).
    Box: area in ``scale`` of the image, aspect ratio log-uniform in ``ratio``; 10 tries,
    no erasing when none fits.

    Args:
        prob: per-image probability. Paper: 0.25.
        scale: area fraction range. timm: (0.02, 1/3).
        ratio: aspect-ratio range (height / width). timm: (0.3, 1/0.3).
    """

    def __init__(self, prob: float = 0.25, scale: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 1 / 0.3), attempts: int = 10) -> None:
        super().__init__()
        self.prob, self.scale, self.attempts = prob, tuple(scale), attempts
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        dev = x.device
        area = torch.empty(b, self.attempts, device=dev).uniform_(*self.scale) * height * width
        aspect = torch.exp(torch.empty(b, self.attempts, device=dev).uniform_(*self.log_ratio))
        h = torch.sqrt(area * aspect).round().long()
        w = torch.sqrt(area / aspect).round().long()
        fits = (h < height) & (w < width) & (h > 0) & (w > 0)
        first = torch.argmax(fits.int(), dim=1, keepdim=True)  # the first try that fits
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        erase = fits.any(dim=1) & (torch.rand(b, device=dev) < self.prob)
        top = (torch.rand(b, device=dev) * (height - h + 1)).long()
        left = (torch.rand(b, device=dev) * (width - w + 1)).long()
        rows = torch.arange(height, device=dev).view(1, -1)
        cols = torch.arange(width, device=dev).view(1, -1)
        in_rows = (rows >= top.view(-1, 1)) & (rows < (top + h).view(-1, 1))
        in_cols = (cols >= left.view(-1, 1)) & (cols < (left + w).view(-1, 1))
        mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase.view(-1, 1, 1)).unsqueeze(1)
        return torch.where(mask, torch.randn_like(x), x)
