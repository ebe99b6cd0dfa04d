"""Lightning callbacks of this project."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class TrainThroughput(L.Callback):
    """Logs ``train/img_per_sec``: images through forward + backward + optimizer step per
    second (all devices), timed per batch so data loading and validation do not count.

    The first ``skip`` batches of each epoch are left out (warm-up: allocator, compile).
    """

    def __init__(self, skip: int = 1) -> None:
        self.skip = skip
        self._images, self._seconds = 0, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images, self._seconds = 0, 0.0  # (a run resumed mid-epoch starts without this)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if batch_idx >= self.skip:
            self._seconds += time.perf_counter() - self._start
            self._images += batch[0].shape[0] * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._seconds > 0:
            pl_module.log("train/img_per_sec", self._images / self._seconds)


class BestCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that keeps the best score of the run it resumes.

    A resumed run writes to a new run dir, and Lightning's ModelCheckpoint then forgets the
    best score: the first epoch after the resume became the best whatever it scored, and the
    final test ran on it. The earlier best file stays in its own run dir (Lightning removes
    only files in this dirpath).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})
