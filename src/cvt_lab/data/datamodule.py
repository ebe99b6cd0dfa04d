"""One LightningDataModule for every dataset: HF ``datasets`` in, uint8 batches out."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from datasets import Dataset, IterableDatasetDict
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from ..resume import ResumableLoader, ResumableSampler
from ..utils import rank_zero_logs
from .decode import SKIP_HINT, ImageDecodeError, decode_image
from .device_augment import DeviceAugment
from .errors import DataSourceError
from .folder import folder_classes
from .sources import class_names, load_splits
from .streaming import StreamingImages, StreamingLoader, split_stream
from .transforms import EvalTransform, TrainTransform

log = logging.getLogger(__name__)

UNLABELLED_FIX = ("-1 marks an unlabelled row (as in many hub test splits), not a "
                  "class; map a labelled split there (data.splits.<split>=<name>, or null to carve "
                  "it from train), or fix the labels")
MISSING_FIX = ("every image needs its class index; drop the unlabelled rows, or map a labelled "
               "split there (data.splits.<split>=<name>, or null to carve it from train)")
INDEX_FIX = ("labels must be class indices 0 .. num_classes - 1; fix the label column "
             "(data.label_column)")


class SampleDecoder:
    """One row -> (uint8 image, label), or (None, why) for an unreadable image when skipping.

    ``num_classes``: refuse a label outside [0, num_classes) here, naming the fix (streams are
    not scanned at setup; the loss would fail with an index error or a CUDA assert).
    """

    def __init__(self, transform: Any, skip_corrupt: bool = False, max_pixels: int | None = None,
                 num_classes: int | None = None) -> None:
        self.transform, self.skip_corrupt, self.max_pixels = transform, skip_corrupt, max_pixels
        self.num_classes = num_classes
        self._rng: random.Random | None = None
        self._rng_seed: int | None = None

    def rng(self) -> random.Random:
        # torch seeds each worker (and each epoch's workers) differently; follow it so crops
        # are reproducible under a fixed seed and differ between workers
        seed = torch.initial_seed()
        if self._rng_seed != seed:
            self._rng, self._rng_seed = random.Random(seed), seed
        return self._rng

    def __call__(self, row: dict[str, Any], rng: random.Random | None = None,
                 index: str | None = None) -> tuple[torch.Tensor | None, Any]:
        """``index``: which row of which split this is, for errors (none in a stream)."""
        label = row["label"]
        where = (row["image"] or {}).get("path") or index or "a row"
        if self.num_classes is not None and (label is None or label != label):  # None, NaN
            raise DataSourceError(f"label of {where} is missing: {MISSING_FIX}")
        if self.num_classes is not None and label != int(label):
            raise DataSourceError(f"label {label} of {where} is not a class index: {INDEX_FIX}")
        label = int(label)
        if self.num_classes is not None and not 0 <= label < self.num_classes:
            if label < 0:
                raise DataSourceError(f"label {label} of {where} is negative: {UNLABELLED_FIX}")
            raise DataSourceError(
                f"label {label} of {where} is outside [0, {self.num_classes}) (data.num_classes="
                f"{self.num_classes}); set data.num_classes to the dataset's class count "
                "(or fix the labels)")
        try:
            image = decode_image(row["image"], self.max_pixels, index)
            return self.transform(image, rng or self.rng()), label
        except ImageDecodeError as err:
            if not self.skip_corrupt:
                raise
            return None, str(err).removesuffix(f", or {SKIP_HINT}")  # skipping is on already


class ImageDataset(torch.utils.data.Dataset):
    """Map-style: decodes one row in the worker and applies the per-sample transform.

    Given an ``(epoch, index)`` key (the training sampler's), the sample's random crop and
    flip come from an RNG seeded by (seed, epoch, index): the same in any worker, and the
    same again when an interrupted epoch is resumed. ``name`` (``<dataset>/<split>``) names
    the row of an unreadable image.
    """

    def __init__(self, rows: Dataset, decoder: SampleDecoder, seed: int = 0, name: str = "the split"
                 ) -> None:
        self.rows, self.decoder, self.seed, self.name = rows, decoder, seed, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, Any]:
        if isinstance(key, tuple):
            epoch, index = key
            # a str seed is hashed with SHA-512: stable across processes and Python runs
            return self.decoder(self.rows[index], random.Random(f"{self.seed}:{epoch}:{index}"),
                                f"row {index} of {self.name}")
        return self.decoder(self.rows[key], index=f"row {key} of {self.name}")


def collate(samples: list[tuple[torch.Tensor | None, Any]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack into (uint8 images, labels, reasons for the images skipped as unreadable)."""
    good = [s for s in samples if s[0] is not None]
    skipped = [s[1] for s in samples if s[0] is None]
    if not good:
        raise ImageDecodeError(
            f"all {len(samples)} images of a batch were unreadable: data.skip_corrupt=true drops "
            "unreadable images from a batch but cannot make one of none; remove or replace them. "
            f"The first: {skipped[0]}")
    return (torch.stack([s[0] for s in good]), torch.tensor([s[1] for s in good], dtype=torch.long),
            skipped)


class ImageDataModule(L.LightningDataModule):
    """Loads splits, decodes and crops in workers, normalises/augments on the device.

    ``data.batch_size`` is the global batch per optimizer step; each device gets
    ``batch_size / (world_size * accumulate_grad_batches)``. Under DDP, training data is
    sharded by our ResumableSampler (map-style) or by node (streaming); evaluation uses an
    unpadded sampler, so metrics count every sample exactly once.
    """

    def __init__(self, data: dict[str, Any], augment: dict[str, Any], seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.aug, self.seed = data, augment, seed
        self.splits = None
        self.class_names: list[str] | None = None
        self.skipped = 0  # unreadable images skipped so far (data.skip_corrupt=true)
        self.device_augment = DeviceAugment(data["mean"], data["std"], augment, self.num_classes)

    @property
    def num_classes(self) -> int:
        """data.num_classes; for ``folder`` with null, the number of class folders."""
        if self.cfg.get("num_classes"):
            return self.cfg["num_classes"]
        if self.cfg.get("source") == "folder" and not self.cfg.get("path"):
            self.cfg["num_classes"] = len(folder_classes(self.cfg.get("root")))
            return self.cfg["num_classes"]
        raise DataSourceError(f"data.num_classes is not set for {self.cfg['name']}: set "
                              "data.num_classes=<number of classes>")

    @property
    def streaming(self) -> bool:
        """Whether the splits are streams. data.streaming streams hub data and data.path copies;
        a folder and the embedded set are local files read as needed (map-style) either way."""
        if self.splits is not None:
            return isinstance(self.splits, IterableDatasetDict)
        return bool(self.cfg.get("streaming"))

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        with rank_zero_logs("cvt_lab.data"):  # notes on the data: once, not once per DDP rank
            self.splits = load_splits(self.cfg, self.seed)
            if self.cfg.get("streaming") and not self.streaming:
                log.info("data.streaming=true: %s is read from local files as needed, not "
                         "streamed", self.cfg["name"])
        self.class_names = class_names(self.splits, self.cfg)
        if len(self.class_names) != self.num_classes:
            raise DataSourceError(
                f"{self.cfg['name']} has {len(self.class_names)} classes but data.num_classes="
                f"{self.num_classes}; set data.num_classes={len(self.class_names)}")
        if not self.streaming:  # a stream's labels are checked as they arrive (SampleDecoder)
            for name, ds in self.splits.items():
                check_labels(ds, self.num_classes, f"{self.cfg['name']}/{name}")

    def micro_batch_size(self) -> int:
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        return max(1, self.cfg["batch_size"] // (world * accumulate))

    def transform(self, train: bool) -> Any:
        size = self.cfg["image_size"]
        if train:
            return TrainTransform(size, self.aug.get("random_crop", False),
                                  tuple(self.aug.get("scale", (0.08, 1.0))),
                                  tuple(self.aug.get("ratio", (3 / 4, 4 / 3))),
                                  self.aug.get("hflip", 0.0))
        return EvalTransform(size, self.cfg.get("crop_pct", 1.0), self.cfg.get("eval_warp", False))

    def _loader(self, split: str, train: bool) -> DataLoader:
        decoder = SampleDecoder(self.transform(train), self.cfg.get("skip_corrupt", False),
                                self.cfg.get("max_image_pixels"), self.num_classes)
        batch = self.micro_batch_size()
        workers = self.cfg.get("num_workers", 0)
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        common = dict(batch_size=batch, collate_fn=collate, pin_memory=torch.cuda.is_available())
        if self.streaming:
            buffer = self.cfg.get("shuffle_buffer", 10_000)
            stream = split_stream(self.splits[split], rank, world, train, buffer, self.seed)
            workers = min(workers, stream.n_shards)  # a worker without a shard would idle
            length = self._stream_length(split, world) if train else None
            # per-rank crop seeds, as the ranks' augmentation streams are (DeviceAugment)
            dataset = StreamingImages(stream, decoder, length, batch, seed=f"{self.seed}:{rank}")
            options = dict(drop_last=train, num_workers=workers, persistent_workers=workers > 0,
                           **common)
            if not train:
                return DataLoader(dataset, **options)
            epoch_of = (lambda: self.trainer.current_epoch) if self.trainer else None
            layout = {"trainer.devices x trainer.num_nodes": world,
                      "data.shuffle_buffer": buffer}
            return StreamingLoader(dataset, epoch_of=epoch_of, layout=layout, **options)
        dataset = ImageDataset(self.splits[split], decoder, self.seed, f"{self.cfg['name']}/{split}")
        options = dict(num_workers=workers, persistent_workers=workers > 0, **common)
        if train:
            # order fixed by (seed, epoch), position saved in checkpoints: exact mid-epoch resume
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=self.seed,
                                       keyed=True)
            # drop a partial last batch only when this rank's share holds a full one (the
            # split's size would leave every rank without a batch when it holds less)
            return ResumableLoader(dataset, sampler=sampler, drop_last=len(sampler) >= batch,
                                   generator=torch.Generator().manual_seed(self.seed), **options)
        sampler = None
        if world > 1:  # Lightning's DistributedSampler would pad with repeats
            if len(dataset) < world:  # it asserts that every rank gets at least one sample
                raise DataSourceError(
                    f"the {self.cfg['name']} {split} split has {len(dataset)} images but the run "
                    f"has {world} processes (devices x nodes), and each evaluates its own part: "
                    "use fewer devices (trainer.devices, trainer.num_nodes) or a larger split")
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, shuffle=False, sampler=sampler, **options)

    def _stream_length(self, split: str, world: int) -> int:
        """Samples per rank per epoch; the same on every rank so DDP steps stay in lockstep."""
        total = self.cfg.get("train_examples")
        if not total:
            info = self.splits[split].info
            sizes = info.splits or {}
            theirs = (self.cfg.get("splits") or {}).get(split, split)
            total = sizes[theirs].num_examples if theirs in sizes else None
        if not total:
            raise DataSourceError(f"{self.cfg['name']}: the stream does not say how many training "
                                  "examples it has; set data.train_examples=<count>")
        return total // world

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels, skipped = batch
        for reason in skipped:
            self.skipped += 1
            log.warning("skipped unreadable image (%d so far): %s", self.skipped, reason)
        training = self.trainer is not None and self.trainer.training
        rank = self.trainer.global_rank if self.trainer is not None else 0
        batch = self.device_augment(images, labels, training, rank)
        if self.trainer is None:
            return batch
        # *-true precisions: Lightning casts the batch before this hook, while it is still uint8
        return self.trainer.precision_plugin.convert_input(batch)


def check_labels(ds: Dataset, num_classes: int, where: str) -> None:
    """Labels must lie in [0, num_classes): say which and how to fix it, before training."""
    labels = ds.select_columns(["label"]).with_format("numpy")[:]["label"]
    if len(labels) == 0:
        raise DataSourceError(f"dataset split {where} is empty")
    values = labels.astype(np.float64)  # None (a missing label) -> NaN
    missing = np.flatnonzero(np.isnan(values))
    if missing.size:
        raise DataSourceError(f"labels of {where} are missing in {missing.size} row(s) (the first: "
                              f"row {missing[0]}): {MISSING_FIX}")
    fractional = np.flatnonzero(values != np.floor(values))
    if fractional.size:
        raise DataSourceError(f"labels of {where} include {labels[fractional[0]]} (row "
                              f"{fractional[0]}), not a class index: {INDEX_FIX}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise DataSourceError(f"labels of {where} include {low}: {UNLABELLED_FIX}")
    if high >= num_classes:
        raise DataSourceError(
            f"labels of {where} range over [{low}, {high}] but data.num_classes={num_classes}; "
            f"set data.num_classes={high + 1} (or fix the labels)")


