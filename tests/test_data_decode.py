"""Decoding: every PIL mode to RGB, EXIF orientation, and bad files named or skipped."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, DatasetDict, Features
from datasets import Dataset as HFDataset
from datasets import Image as HFImage
from omegaconf import OmegaConf
from PIL import Image

from cvt_lab.data import DataSourceError, ImageDataModule, ImageDecodeError, decode_image
from cvt_lab.data.datamodule import ImageDataset, SampleDecoder, collate
from cvt_lab.data.transforms import EvalTransform, TrainTransform
from data_helpers import png_bytes


def encoded(img: Image.Image, fmt: str = "PNG", **kw) -> dict:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return {"bytes": buf.getvalue(), "path": None}


def test_every_mode_becomes_rgb_with_the_right_colours():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p_transparent = p.copy()
    p_transparent.info["transparency"] = 1
    # a transparent colour (PNG tRNS) on L and RGB, as PNG optimisers store a binary alpha
    l_transparent, rgb_transparent = Image.new("L", (4, 4), 0), Image.new("RGB", (4, 4), (0, 0, 0))
    l_transparent.info["transparency"], rgb_transparent.info["transparency"] = 0, (0, 0, 0)
    cases = {
        "L": (Image.new("L", (4, 4), 77), (77, 77, 77)),
        "LA": (Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),  # transparent -> white
        "P": (p, (200, 10, 10)),
        "P+transparency": (p_transparent, (255, 255, 255)),
        "RGBA": (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
        "L+transparency": (l_transparent, (255, 255, 255)),
        "RGB+transparency": (rgb_transparent, (255, 255, 255)),
        "CMYK": (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
        "I;16": (Image.new("I;16", (4, 4), 65535), (255, 255, 255)),
        # big-endian 16-bit (Motorola-order TIFF): 0x1234 -> 0x12, not a crash or swapped bytes
        "I;16B": (Image.fromarray(np.full((4, 4), 0x1234, dtype=">u2")), (0x12, 0x12, 0x12)),
        "F in [0, 1]": (Image.new("F", (4, 4), 0.5), (128, 128, 128)),  # not black
        "F in 0-255": (Image.new("F", (4, 4), 77.0), (77, 77, 77)),
    }
    for name, (img, rgb) in cases.items():
        fmt = "JPEG" if img.mode == "CMYK" else ("TIFF" if img.mode in ("I;16", "I;16B", "F") else "PNG")
        out = decode_image(encoded(img, fmt))
        assert out.mode == "RGB", name
        assert tuple(np.asarray(out)[1, 1]) == pytest.approx(rgb, abs=2), name


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (8, 4), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    assert decode_image(encoded(img, "JPEG", exif=exif.tobytes())).size == (4, 8)


def test_corrupt_truncated_and_empty_files_are_named(tmp_path):
    good = png_bytes(9, size=(64, 64))
    cases = {"garbage.png": b"this is not an image", "truncated.png": good[: len(good) // 2],
             "empty.png": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageDecodeError, match=rf"{name}.*data.skip_corrupt=true") as info:
            decode_image({"bytes": None, "path": str(tmp_path / name)})
        assert info.value.where.endswith(name)
        # the failed decode closed its file (a run skipping many corrupt files must not
        # pile up descriptors until the garbage collector finds the traceback)
        fds = Path("/proc/self/fd")
        if fds.is_dir():
            assert not [f for f in fds.iterdir() if f.resolve().name == name], name
    with pytest.raises(ImageDecodeError, match=r"empty \(0 bytes\)"):
        decode_image({"bytes": None, "path": str(tmp_path / "empty.png")})


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    value = {"bytes": png_bytes(5, size=(40, 40)), "path": None}
    for limit in (1000, 500):  # over the limit (PIL warns) and over twice it (PIL raises)
        with pytest.raises(ImageDecodeError, match=r"decompression bomb.*data.max_image_pixels \(now "):
            decode_image(value, max_pixels=limit)
    assert decode_image(value, max_pixels=1600).size == (40, 40)


def test_images_smaller_than_the_crop_are_upscaled():
    tiny = Image.new("RGB", (3, 2), (1, 2, 3))
    import random
    for transform in (TrainTransform(32, True), TrainTransform(32, False), EvalTransform(32, 0.875),
                      EvalTransform(32, 1.0, warp=True)):
        out = transform(tiny, random.Random(0))
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        assert out[:, 5, 5].tolist() == [1, 2, 3]


def test_a_very_elongated_image_is_not_resized_whole_for_evaluation(monkeypatch):
    # a 20000 x 2 image (40 k pixels) was resized whole to 2,560,000 x 256 to keep 224 x 224 of
    # it: 3 GB and 17 s in a DataLoader worker, past the decompression-bomb guard
    sizes = []
    resize = Image.Image.resize

    def recorded(self, size, *args, **kwargs):
        sizes.append(size)
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recorded)
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 20000).astype(np.uint8), (2, 1))).convert("RGB")
    out = EvalTransform(224, 0.875)(ramp)
    assert out.shape == (3, 224, 224) and max(w * h for w, h in sizes) <= 64 * 224 * 224
    assert out.float().mean().item() == pytest.approx(127.5, abs=1)  # the ramp's centre
    # the crop is what resizing the whole image gives (here still small enough to compare)
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 3000).astype(np.uint8), (30, 1))).convert("RGB")
    transform = EvalTransform(224, 0.875)
    resized, box = transform.plan(*ramp.size)
    whole = torch.from_numpy(np.asarray(resize(ramp, resized, Image.Resampling.BICUBIC).crop(box)))
    assert (transform(ramp).permute(1, 2, 0).int() - whole.int()).abs().max() <= 1


def test_skip_corrupt_drops_bad_images_from_the_batch_and_counts_them(caplog):
    rows = [{"image": {"bytes": png_bytes(i), "path": None}, "label": i} for i in range(3)]
    rows[1]["image"] = {"bytes": b"junk", "path": "/data/train/cat/broken.jpg"}
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        SampleDecoder(EvalTransform(8, 1.0))(rows[1])
    decoder = SampleDecoder(EvalTransform(8, 1.0), skip_corrupt=True)
    images, labels, skipped = collate([decoder(r) for r in rows])
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 2]
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    dm = ImageDataModule({"mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": 3, "name": "t"}, {})
    with caplog.at_level(logging.WARNING):
        x, targets, out_labels = dm.on_after_batch_transfer((images, labels, skipped), 0)
    assert dm.skipped == 1 and "skipped unreadable image (1 so far): cannot decode /data/train/cat/broken.jpg" in caplog.text
    assert x.shape == (2, 3, 8, 8) and torch.equal(out_labels, labels)
    # skip_corrupt is on: neither the log nor the error may tell the user to turn it on
    assert "skip_corrupt" not in caplog.text and skipped[0].endswith("Remove or replace the file")
    with pytest.raises(ImageDecodeError) as info:
        collate([decoder(rows[1]), decoder(rows[1])])
    assert str(info.value).startswith(
        "all 2 images of a batch were unreadable: data.skip_corrupt=true drops unreadable images "
        "from a batch but cannot make one of none; remove or replace them. The first: cannot decode "
        "/data/train/cat/broken.jpg")
    assert "set data.skip_corrupt" not in str(info.value)


@pytest.mark.parametrize("label, error, message", [
    (0, ImageDecodeError, "cannot decode /data/cat/broken.jpg: UnidentifiedImageError: "),
    (5, DataSourceError, "label 5 of /data/cat/broken.jpg is outside [0, 3) (data.num_classes=3)")])
def test_an_error_in_a_loader_worker_keeps_its_message_without_the_worker_traceback(label, error, message):
    # with num_workers > 0 (data=folder's default: 4) run.py printed 'ImageDecodeError: Caught
    # ImageDecodeError in DataLoader worker process 0. Original Traceback ...': 30 lines of the
    # worker's traceback before the message, where the error is meant to be printed without one
    rows = [{"image": {"bytes": b"junk", "path": "/data/cat/broken.jpg"}, "label": label}]
    decoder = SampleDecoder(EvalTransform(8, 1.0), num_classes=3)
    loader = torch.utils.data.DataLoader(ImageDataset(rows, decoder), num_workers=1, collate_fn=collate)
    with pytest.raises(error) as info:
        next(iter(loader))
    assert str(info.value).startswith(message) and "Traceback" not in str(info.value)
    assert str(info.value).endswith(("unreadable images", "(or fix the labels)"))


def test_an_unreadable_image_stored_as_bytes_is_named_by_its_row(make_cfg, tmp_path):
    # parquet copies and hub sets (CIFAR-100) hold images as bytes without a path: the error
    # and the skip log said 'cannot decode an image stored as bytes', naming none of 50,000
    features = Features({"image": HFImage(), "label": ClassLabel(names=["a", "b"])})
    images = [{"bytes": png_bytes(i), "path": None} for i in range(4)]
    images[2]["bytes"] = b"junk"
    split = HFDataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features)
    DatasetDict(train=split, validation=split).save_to_disk(str(tmp_path / "copy"))
    overrides = ("data=imagenet", f"data.path={tmp_path / 'copy'}", "data.num_classes=2",
                 "data.class_names=[a,b]", "data.batch_size=4", "data.image_size=8", "data.num_workers=0")
    dm = ImageDataModule(OmegaConf.to_container(make_cfg(*overrides).data, resolve=True), {})
    dm.setup()
    with pytest.raises(ImageDecodeError, match=r"^cannot decode row 2 of imagenet/val \(an image "
                                               r"stored as bytes\): UnidentifiedImageError"):
        next(iter(dm.val_dataloader()))
    cfg = OmegaConf.to_container(make_cfg(*overrides, "data.skip_corrupt=true").data, resolve=True)
    dm = ImageDataModule(cfg, {})
    dm.setup()
    _, labels, skipped = next(iter(dm.val_dataloader()))
    assert labels.tolist() == [0, 1, 1] and skipped[0].startswith("cannot decode row 2 of imagenet/val (")
