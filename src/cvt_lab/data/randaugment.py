"""RandAugment on a batch of float images in [0, 1], per sample, on the device.

The paper's recipe is timm's ``rand-m9-mstd0.5-inc1``: ``num_ops`` (2) operations drawn per
image, each applied with probability ``prob`` (0.5) at magnitude ``N(magnitude, magnitude_std)``
clipped to [0, 10] (drawn per image and operation), from the "increasing" set, where a higher
magnitude is always a stronger change and magnitude 0 is the identity for every operation
that has a magnitude (posterize keeps 4 bits at 0, as in timm). kornia's RandAugment draws
the same operations for the whole batch, at a fixed magnitude, from another set, so the
sampling is ours; kornia supplies the PIL-compatible colour kernels.

Magnitude m in [0, 10] maps to (x = m / 10; sign: random per image):
rotate 30x deg, shear 0.3x, translate 0.45x of the side, posterize 4 - floor(4x) bits,
solarize above 1 - x, solarize-add +110x/255 below 0.5, colour / contrast / brightness /
sharpness factor 1 + 0.9x; auto-contrast, equalize and invert have no magnitude.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.enhance as KE
import torch
import torch.nn.functional as F
from torch import nn

OpFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _factor(m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    return 1 + 0.9 * m * sign


def _auto_contrast(x, m, sign):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x)


def _posterize(x, m, sign):
    bits = (4 - torch.floor(4 * m)).clamp(0, 4).to(torch.int64)
    return KE.posterize(x, bits)


def _solarize(x, m, sign):
    threshold = ((256 - torch.floor(256 * m)) / 255).view(-1, 1, 1, 1)
    return torch.where(x >= threshold, 1 - x, x)


def _solarize_add(x, m, sign):
    add = (torch.floor(110 * m) / 255).view(-1, 1, 1, 1)
    return torch.where(x < 128 / 255, (x + add).clamp(max=1), x)


def _brightness(x, m, sign):
    return (x * _factor(m, sign).view(-1, 1, 1, 1)).clamp(0, 1)


def _color(x, m, sign):
    return KE.adjust_saturation_with_gray_subtraction(x, _factor(m, sign))


def _contrast(x, m, sign):
    return KE.adjust_contrast_with_mean_subtraction(x, _factor(m, sign))


def _sharpness(x, m, sign):
    if min(x.shape[-2:]) < 3:
        return x
    return KE.sharpness(x, _factor(m, sign)).clamp(0, 1)


def _affine(x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Warp with per-image 2x3 ``matrix`` mapping output pixel (u, v, 1) to input pixel coords
    (PIL's convention); outside pixels take ``fill``."""
    b, _, h, w = x.shape
    # pixel -> normalised coords (align_corners=False): n = (2p + 1) / size - 1
    to_norm = x.new_tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    from_norm = torch.linalg.inv(to_norm)
    full = torch.cat([matrix, x.new_tensor([0, 0, 1]).expand(b, 1, 3)], dim=1)
    theta = (to_norm @ full @ from_norm)[:, :2]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    fill = fill.view(1, -1, 1, 1)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + fill


def _identity_matrix(x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(x.shape[0], 1, 1)


def _rotate(x, m, sign, fill):
    angle = torch.deg2rad(30 * m * sign)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cu, cv = (x.shape[-1] - 1) / 2, (x.shape[-2] - 1) / 2
    mat = torch.stack([torch.stack([cos, -sin, cu - cos * cu + sin * cv], -1),
                       torch.stack([sin, cos, cv - sin * cu - cos * cv], -1)], 1)
    return _affine(x, mat, fill)


def _shear(axis: int) -> Callable:
    def op(x, m, sign, fill):
        mat = _identity_matrix(x)
        mat[:, axis, 1 - axis] = 0.3 * m * sign
        return _affine(x, mat, fill)
    return op


def _translate(axis: int) -> Callable:
    def op(x, m, sign, fill):
        mat = _identity_matrix(x)
        mat[:, axis, 2] = 0.45 * m * sign * x.shape[-1 - axis]
        return _affine(x, mat, fill)
    return op


COLOUR_OPS: dict[str, OpFn] = {
    "auto_contrast": _auto_contrast, "equalize": lambda x, m, s: KE.equalize(x),
    "invert": lambda x, m, s: 1 - x, "posterize": _posterize, "solarize": _solarize,
    "solarize_add": _solarize_add, "color": _color, "contrast": _contrast,
    "brightness": _brightness, "sharpness": _sharpness,
}
GEOMETRY_OPS = {"rotate": _rotate, "shear_x": _shear(0), "shear_y": _shear(1),
                "translate_x": _translate(0), "translate_y": _translate(1)}
OPS = (*COLOUR_OPS, *GEOMETRY_OPS)


class RandAugment(nn.Module):
    """Per-image RandAugment for a (B, 3, H, W) float batch in [0, 1].

    Args:
        num_ops: operations drawn (with replacement) per image; timm/paper: 2.
        magnitude: mean strength on a 0-10 scale; paper: 9.
        magnitude_std: std of the per-image, per-operation magnitude noise; paper: 0.5. Inf
            (or above 100) draws it uniformly in [0, magnitude], as timm does.
        prob: probability that each drawn operation is applied; timm: 0.5.
        fill: RGB value in [0, 1] for pixels moved in by geometric ops (the data mean).
        ops: names from ``OPS`` to draw from (default: all 15).
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 prob: float = 0.5, fill: Sequence[float] = (0.5, 0.5, 0.5),
                 ops: Sequence[str] | None = None) -> None:
        super().__init__()
        unknown = set(ops or ()) - set(OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; choose from {list(OPS)}")
        if not 0 <= magnitude <= 10:
            raise ValueError(f"RandAugment magnitude={magnitude} must lie in [0, 10] (paper: 9)")
        self.ops = list(ops or OPS)
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.register_buffer("fill", torch.tensor(list(fill), dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, device = x.shape[0], x.device
        x = x.clone()
        for _ in range(self.num_ops):
            choice = torch.randint(len(self.ops), (b,), device=device)
            applied = torch.rand(b, device=device) < self.prob
            m = self.magnitudes(b, device)
            sign = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
            for k, name in enumerate(self.ops):
                idx = torch.nonzero(applied & (choice == k)).squeeze(1)
                if idx.numel():
                    x[idx] = self.apply_op(name, x[idx], m[idx], sign[idx])
        return x

    def magnitudes(self, b: int, device: torch.device) -> torch.Tensor:
        """One strength per image in [0, 1]: ``N(magnitude, magnitude_std)`` clamped to the
        0-10 scale, or, for ``magnitude_std`` inf or above 100 (timm's 'mstd101'), uniform in
        [0, magnitude]."""
        if self.magnitude_std == float("inf") or self.magnitude_std > 100:
            return torch.rand(b, device=device) * (self.magnitude / 10)
        m = torch.full((b,), float(self.magnitude), device=device)
        if self.magnitude_std > 0:
            m = m + self.magnitude_std * torch.randn(b, device=device)
        return m.clamp(0, 10) / 10

    def apply_op(self, name: str, x: torch.Tensor, m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """One operation on every image of ``x``; ``m`` in [0, 1] per image, ``sign`` +-1."""
        if name in GEOMETRY_OPS:
            return GEOMETRY_OPS[name](x, m, sign, self.fill.to(x.device, x.dtype))
        return COLOUR_OPS[name](x, m, sign)


__all__ = ["RandAugment", "OPS"]
