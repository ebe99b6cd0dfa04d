"""Image decoding for DataLoader workers: encoded bytes (or a path) -> RGB PIL image."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .errors import own_message

SKIP_HINT = "set data.skip_corrupt=true to skip unreadable images"


class ImageDecodeError(ValueError):
    """An image that cannot be used; the message names the file and the fix."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(own_message(type(self), message))
        self.where = where


def decode_image(value: Any, max_pixels: int | None = None, row: str | None = None) -> Image.Image:
    """Decode a ``datasets`` Image value ({"bytes", "path"}) to an upright RGB image.

    Errors name the file, else ``row`` (which row of which split holds the bytes).

    EXIF orientation is applied, so phone photos are upright. Images with more than
    ``max_pixels`` pixels (default: PIL's ``MAX_IMAGE_PIXELS``) are refused before their
    pixels are decoded: a decompression bomb must not take a worker's memory.
    """
    if isinstance(value, Image.Image):
        return to_rgb(ImageOps.exif_transpose(value))
    data, path = value.get("bytes"), value.get("path")
    where = path or (f"{row} (an image stored as bytes)" if row else "an image stored as bytes")
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own (process-wide) bomb guard
    if data == b"" or (data is None and path and os.path.isfile(path) and os.path.getsize(path) == 0):
        raise ImageDecodeError(f"{where} is empty (0 bytes): remove or replace it, or {SKIP_HINT}",
                               where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # `with` closes the file also when decoding fails (no descriptor left to the GC)
            with Image.open(io.BytesIO(data) if data is not None else path) as opened:
                opened.load()
                img = ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageDecodeError(
            f"refusing {where}: {err}. It may be a decompression bomb; remove it, or if it is a "
            f"genuine large image raise data.max_image_pixels (now {Image.MAX_IMAGE_PIXELS})",
            where) from err
    except Exception as err:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error, ...
        raise ImageDecodeError(
            f"cannot decode {where}: {type(err).__name__}: {err}. Remove or replace the file, "
            f"or {SKIP_HINT}", where) from err
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Every PIL mode to RGB: transparency composited on white, 16/32-bit scaled to 8-bit."""
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:  # PNG tRNS, GIF
        img = img.convert("RGBA")
    if img.mode == "RGB":
        return img
    if img.mode == "F":
        return _float_to_rgb(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit range, any byte order
        high = np.clip(np.asarray(img).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(high).convert("RGB")  # 2-D uint8: mode L
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _float_to_rgb(img: Image.Image) -> Image.Image:
    """32-bit float images (TIFF, scientific data) hold [0, 1] by convention, or 0-255.

    PIL's own conversion clips to 0-255 and so turns a [0, 1] image black. NaN and inf
    pixels become 0 and 255 as their sign says.
    """
    pixels = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    finite_max = pixels.max(initial=0.0)
    if finite_max <= 1.0:
        pixels = pixels * 255.0
    gray = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    return gray.convert("RGB")
