"""Image decoding for DataLoader workers: encoded bytes (or a path) -> RGB PIL image."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageOps


class ImageDecodeError(ValueError):
    """An image that cannot be used; the message names the file and the fix."""


def decode_image(value: Any) -> Image.Image:
    """Decode a ``datasets`` Image value ({"bytes", "path"}) to an RGB image.

    EXIF orientation is applied, so phone photos are upright.
    """
    if isinstance(value, Image.Image):
        img = value
        where = "in-memory image"
    else:
        data, path = value.get("bytes"), value.get("path")
        where = path or "an image stored as bytes"
        try:
            img = Image.open(io.BytesIO(data) if data is not None else path)
            img.load()
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ImageDecodeError(
                f"cannot decode {where}: {err}. Remove or replace the file, "
                "or set data.skip_corrupt=true to skip unreadable images") from err
    img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Every PIL mode to RGB: transparency composited on white, 16-bit scaled to 8-bit."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return img.point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
