"""The embedded default dataset: scikit-learn's handwritten digits, offline.

1,797 8x8 grey images (10 classes) upsampled to ``image_size`` and stored as PNG bytes
in a ``datasets.Dataset`` with an ``Image`` feature, so they take exactly the path that
hub and folder datasets take (encoded bytes in Arrow, decoded in DataLoader workers).
"""

from __future__ import annotations

import io

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

DIGIT_NAMES = [str(i) for i in range(10)]


def _png_bytes(pixels: np.ndarray, size: int) -> bytes:
    grey = PILImage.fromarray(np.uint8(np.round(pixels * (255.0 / 16.0))), mode="L")
    buf = io.BytesIO()
    grey.resize((size, size), PILImage.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def load_digits_dataset(image_size: int = 32, val_size: float | int = 0.1,
                        test_size: float | int | None = 0.2, seed: int = 0) -> DatasetDict:
    """Stratified train/val/test splits of the digits, fixed by ``seed``. The sizes are
    fractions of all 1,797 images or counts; without ``test_size`` there is no test split
    (the test then runs on val, as for any dataset without one)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    rest, test = index, None
    if test_size:
        rest, test = train_test_split(index, test_size=test_size, random_state=seed,
                                      stratify=digits.target)
    val_of_rest = val_size if val_size >= 1 else val_size * len(index) / len(rest)
    train, val = train_test_split(rest, test_size=val_of_rest, random_state=seed,
                                  stratify=digits.target[rest])
    features = Features({"image": Image(decode=False), "label": ClassLabel(names=DIGIT_NAMES)})

    def split(rows: np.ndarray) -> Dataset:
        return Dataset.from_dict(
            {"image": [{"bytes": _png_bytes(digits.images[i], image_size), "path": None} for i in rows],
             "label": [int(digits.target[i]) for i in rows]},
            features=features,
        )

    splits = DatasetDict(train=split(train), val=split(val))
    if test is not None:
        splits["test"] = split(test)
    return splits
