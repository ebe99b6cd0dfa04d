"""Tiny datasets the data tests make: encoded images, hub-like schemas, class folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage


def png_bytes(value: int, size: tuple[int, int] = (12, 10), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    img = PILImage.new(mode, size, value if mode != "RGB" else (value, 255 - value, 7))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def cifar_like(n_train: int = 20, n_test: int = 6) -> DatasetDict:
    """The uoft-cs/cifar100 schema: img / fine_label (100 names) / coarse_label (20 names)."""
    features = Features({"img": Image(), "fine_label": ClassLabel(names=[f"f{i}" for i in range(100)]),
                         "coarse_label": ClassLabel(names=[f"c{i}" for i in range(20)])})

    def split(n: int, offset: int) -> Dataset:
        idx = np.arange(offset, offset + n)
        return Dataset.from_dict({"img": [{"bytes": png_bytes(int(i) % 256), "path": None} for i in idx],
                                  "fine_label": [int(i) % 5 for i in idx],
                                  "coarse_label": [int(i) % 3 + 10 for i in idx]}, features=features)

    return DatasetDict(train=split(n_train, 0), test=split(n_test, 1000))


def imagenet_like(n_train: int = 8, n_val: int = 4) -> DatasetDict:
    """The ILSVRC/imagenet-1k schema: image / label (1000 names), train / validation."""
    features = Features({"image": Image(), "label": ClassLabel(names=[f"n{i:08d}" for i in range(1000)])})

    def split(n: int, offset: int) -> Dataset:
        return Dataset.from_dict({"image": [{"bytes": png_bytes(i, fmt="JPEG"), "path": None} for i in range(n)],
                                  "label": [(offset + i) * 7 % 1000 for i in range(n)]}, features=features)

    return DatasetDict(train=split(n_train, 0), validation=split(n_val, 100))


def save_parquet(splits: DatasetDict, folder: Path) -> Path:
    """The hub's layout: data/<split>-00000-of-00001.parquet."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name, ds in splits.items():
        ds.to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
    return folder


def make_folder(root: Path, splits: dict[str, int] | None, classes=("cat", "dog", "eel"), size=(20, 16)) -> Path:
    """root/<split>/<class>/<i>.png (or root/<class>/<i>.png when splits is None)."""
    for split, n in (splits or {"": 6}).items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                PILImage.new("RGB", size, (40 * c, 10 * i, 100)).save(folder / f"{i}.png")
    return root
