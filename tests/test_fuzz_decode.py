"""Fuzz the image-decoding path: any bytes, and valid images of every PIL mode (also
corrupted), give an RGB image or ImageDecodeError, never another exception."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cvt_lab.data.decode import ImageDecodeError, decode_image

# mode -> formats that can store it
MODES = {"L": ["PNG", "JPEG", "BMP", "TIFF"], "LA": ["PNG", "TIFF"], "P": ["PNG", "GIF", "BMP"],
         "RGBA": ["PNG", "TIFF", "WEBP"], "CMYK": ["JPEG", "TIFF"], "I;16": ["PNG", "TIFF"],
         "1": ["PNG", "BMP", "TIFF"], "F": ["TIFF"], "RGB": ["PNG", "JPEG", "WEBP"]}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def encoded_images(draw):
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if mode == "F":
        img = Image.fromarray(rng.normal(0, 100, (h, w)).astype(np.float32), mode="F")
    elif mode == "I;16":
        img = Image.frombytes("I;16", (w, h), rng.integers(0, 65535, (h, w), dtype="<u2").tobytes())
    else:
        channels = len(Image.new(mode, (1, 1)).getbands())
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        img = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels,
                              mode="L" if channels == 1 else mode).convert(mode)
    if mode == "P" and draw(st.booleans()):
        img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue(), (w, h)


def check(value) -> Image.Image | None:
    try:
        out = decode_image(value)
    except ImageDecodeError as err:
        # every refusal names the image and what to do about it
        assert err.where and err.where in str(err) and ("remove" in str(err).lower())
        return None
    assert out.mode == "RGB"
    return out


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_decode_or_raise_image_decode_error(data):
    check({"bytes": data, "path": None})


@FUZZ
@given(encoded_images())
def test_valid_images_of_every_mode_decode_to_rgb_of_the_same_size(case):
    data, size = case
    out = check({"bytes": data, "path": None})
    assert out is not None and out.size == size


@FUZZ
@given(encoded_images(), st.data())
def test_corrupted_images_decode_or_raise_image_decode_error(case, data):
    raw = bytearray(case[0])
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(raw) - 1)), st.integers(0, 255)),
                               max_size=8))
    for pos, byte in flips:
        if pos < len(raw):
            raw[pos] = byte
    check({"bytes": bytes(raw[:cut] if data.draw(st.booleans()) else raw), "path": None})


def test_a_missing_file_is_an_image_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot decode .*nope.png"):
        decode_image({"bytes": None, "path": str(tmp_path / "nope.png")})
