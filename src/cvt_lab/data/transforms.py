"""Per-sample transforms in DataLoader workers: PIL image -> uint8 (3, H, W) tensor.

Geometry only (crop, resize, flip): cheap on uint8, and keeps host->device copies 4x
smaller than float. Normalisation and batch augmentation run on the device.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

BICUBIC = Image.Resampling.BICUBIC


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class RandomResizedCrop:
    """Crop a random area (scale) and aspect ratio (ratio), resize to ``size`` (bicubic)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size = size
        self.scale = tuple(scale)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    def box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                return left, top, left + w, top + h
        # fallback: the largest centred crop within the ratio range
        lo, hi = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        aspect = width / height
        if aspect < lo:
            w, h = width, round(width / lo)
        elif aspect > hi:
            w, h = round(height * hi), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        return img.resize((self.size, self.size), BICUBIC, box=self.box(*img.size, rng))


class TrainTransform:
    """RandomResizedCrop (or a plain resize) + horizontal flip, to uint8."""

    def __init__(self, size: int, random_crop: bool = True, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), hflip: float = 0.5) -> None:
        self.crop = RandomResizedCrop(size, scale, ratio) if random_crop else None
        self.size = size
        self.hflip = hflip

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        if self.crop is not None:
            img = self.crop(img, rng)
        elif img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), BICUBIC)
        if self.hflip and rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_uint8_tensor(img)


class EvalTransform:
    """Resize the short side to size / crop_pct, centre-crop ``size`` (or warp to size x size)."""

    WHOLE_RESIZE_LIMIT = 64  # resize whole images up to this many crops' pixels (aspect ~50:1)

    def __init__(self, size: int, crop_pct: float = 0.875, warp: bool = False) -> None:
        self.size, self.crop_pct, self.warp = size, crop_pct, warp

    def plan(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """The two steps for a width x height image: the (w, h) it is resized to, then the
        (left, top, right, bottom) box cropped from that (shown by ``viz.plot_eval_preprocessing``).

        The sizes are torchvision's ``Resize(short)`` + ``CenterCrop(size)``, which timm and the
        original CvT code use: the long side is truncated, the crop offset rounded.
        """
        if self.warp:
            return (self.size, self.size), (0, 0, self.size, self.size)
        short = math.floor(self.size / self.crop_pct)
        if width <= height:
            nw, nh = short, int(short * height / width)
        else:
            nw, nh = int(short * width / height), short
        nw, nh = max(self.size, nw), max(self.size, nh)
        left, top = round((nw - self.size) / 2), round((nh - self.size) / 2)
        return (nw, nh), (left, top, left + self.size, top + self.size)

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        resized, box = self.plan(*img.size)
        if resized[0] * resized[1] > self.WHOLE_RESIZE_LIMIT * self.size ** 2:
            # a very elongated image (20000 x 2 px -> 2,560,000 x 256: gigabytes): resize only
            # the part of it the crop keeps (the same sampling grid; PIL rounds a little differently)
            sx, sy = img.width / resized[0], img.height / resized[1]
            left, top, right, bottom = box
            return to_uint8_tensor(img.resize((self.size, self.size), BICUBIC,
                                              box=(left * sx, top * sy, right * sx, bottom * sy)))
        if resized != img.size:
            img = img.resize(resized, BICUBIC)
        return to_uint8_tensor(img.crop(box))
