"""One LightningDataModule for every dataset: HF ``datasets`` in, uint8 batches out."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from ..resume import ResumableLoader, ResumableSampler
from ..validate import check_num_classes
from .decode import decode_image
from .device_augment import DeviceAugment
from .sources import DataSourceError, load_splits
from .transforms import EvalTransform, TrainTransform


class ImageDataset(torch.utils.data.Dataset):
    """Decodes one row in the worker and applies the per-sample transform."""

    def __init__(self, rows: Dataset, transform: Any) -> None:
        self.rows = rows
        self.transform = transform
        self._rng: random.Random | None = None
        self._rng_seed: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def rng(self) -> random.Random:
        # torch seeds each worker (and each epoch's workers) differently; follow it so crops
        # are reproducible under a fixed seed and differ between workers
        seed = torch.initial_seed()
        if self._rng_seed != seed:
            self._rng, self._rng_seed = random.Random(seed), seed
        return self._rng

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.rows[index]
        return self.transform(decode_image(row["image"]), self.rng()), int(row["label"])


class ImageDataModule(L.LightningDataModule):
    """Loads splits, decodes and crops in workers, normalises/augments on the device.

    ``data.batch_size`` is the global batch per optimizer step; each device gets
    ``batch_size / (world_size * accumulate_grad_batches)``.
    """

    def __init__(self, data: dict[str, Any], augment: dict[str, Any], seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.aug, self.seed = data, augment, seed
        self.splits = None
        self.device_augment = DeviceAugment(data["mean"], data["std"], augment, data["num_classes"])

    @property
    def num_classes(self) -> int:
        return self.cfg["num_classes"]

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.splits = load_splits(self.cfg, self.seed)
            for name, ds in self.splits.items():
                check_num_classes(ds.features, self.num_classes, f"{self.cfg['name']}/{name}")
                check_labels(ds, self.num_classes, f"{self.cfg['name']}/{name}")

    def micro_batch_size(self) -> int:
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        return max(1, self.cfg["batch_size"] // (world * accumulate))

    def _loader(self, split: str, train: bool) -> DataLoader:
        size = self.cfg["image_size"]
        if train:
            transform = TrainTransform(size, self.aug.get("random_crop", False),
                                       tuple(self.aug.get("scale", (0.08, 1.0))),
                                       tuple(self.aug.get("ratio", (3 / 4, 4 / 3))),
                                       self.aug.get("hflip", 0.0))
        else:
            transform = EvalTransform(size, self.cfg.get("crop_pct", 1.0), self.cfg.get("eval_warp", False))
        dataset = ImageDataset(self.splits[split], transform)
        batch = self.micro_batch_size()
        workers = self.cfg.get("num_workers", 0)
        options = dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
                       pin_memory=torch.cuda.is_available())
        if not train:
            return DataLoader(dataset, shuffle=False, **options)
        # order fixed by (seed, epoch), position saved in checkpoints: exact mid-epoch resume
        trainer = self.trainer
        sampler = ResumableSampler(dataset, num_replicas=trainer.world_size if trainer else 1,
                                   rank=trainer.global_rank if trainer else 0, seed=self.seed)
        return ResumableLoader(dataset, sampler=sampler, drop_last=len(dataset) >= batch,
                               generator=torch.Generator().manual_seed(self.seed), **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.device_augment(images, labels, training)


def check_labels(ds: Dataset, num_classes: int, where: str) -> None:
    """Labels must lie in [0, num_classes): say which and how to fix it, before training."""
    labels = ds.select_columns(["label"]).with_format("numpy")[:]["label"]
    if len(labels) == 0:
        raise DataSourceError(f"dataset split {where} is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataSourceError(
            f"labels of {where} range over [{low}, {high}] but data.num_classes={num_classes}; "
            f"set data.num_classes={high + 1} (or fix the labels)")
