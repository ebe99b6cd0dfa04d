"""Data: HF datasets -> decode/crop in workers -> uint8 batches -> device augmentation."""

from .datamodule import ImageDataModule
from .decode import ImageDecodeError, decode_image
from .errors import DataSourceError
from .sources import load_splits

__all__ = ["ImageDataModule", "ImageDecodeError", "decode_image", "DataSourceError", "load_splits"]
