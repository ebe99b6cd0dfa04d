"""Lightning callbacks of this project."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class TrainThroughput(L.Callback):
    """Logs ``train/img_per_sec``: images through forward + backward + optimizer step per
    second (all devices), timed per batch so data loading and validation do not count.

    On a GPU the host only queues the kernels, so a host clock would measure how fast it
    queues them: there each batch is timed with CUDA events instead, read at the end of the
    epoch (no per-step synchronize, which would cost the host/GPU overlap). The first
    ``skip`` batches of each epoch are left out (warm-up: allocator, compile).
    """

    def __init__(self, skip: int = 1) -> None:
        self.skip = skip
        self._images, self._seconds = 0, 0.0
        self._cuda_spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # (a run resumed mid-epoch starts without this)
        self._images, self._seconds, self._cuda_spans = 0, 0.0, []

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float | torch.cuda.Event:
        if pl_module.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = self._now(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if batch_idx < self.skip:
            return
        end = self._now(pl_module)
        if isinstance(end, float):
            self._seconds += end - self._start
        else:
            self._cuda_spans.append((self._start, end))
        self._images += batch[0].shape[0] * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cuda_spans:
            torch.cuda.synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._cuda_spans) / 1000.0
            self._cuda_spans = []
        if self._seconds > 0:  # (the same on every rank: DDP ranks take the same batches)
            # each rank's estimate is world x its own rate; their mean is the ranks' total rate
            pl_module.log("train/img_per_sec", self._images / self._seconds, sync_dist=True)


class BestCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that keeps the best score of the run it resumes.

    A resumed run writes to a new run dir, and Lightning's ModelCheckpoint then forgets the
    best score: the first epoch after the resume became the best whatever it scored, and the
    final test ran on it. The earlier best file stays in its own run dir (Lightning removes
    only files in this dirpath).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


class StepCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint for ``every_n_train_steps`` that skips a step on an epoch's last batch.

    Lightning restores a checkpoint written there (before the epoch's validation) as a
    finished epoch: a run killed during that validation resumed without ever validating the
    epoch (its score missed the best checkpoint and ``val/acc1_best``), with the RNG state
    from before the validation, so it drifted from the uninterrupted run. The epoch-end
    checkpoint (``last_checkpoint``), written after the validation, takes that step's place.
    Nor does it write at a batch that only accumulates gradients: a step skipped at an epoch's
    end would be written at the next epoch's first batch, and a resume from there would lose
    that batch's gradient.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if resumable_step_end(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def resumable_step_end(trainer: L.Trainer) -> bool:
    """Whether a checkpoint taken after this batch resumes exactly: an optimizer step has just
    ended (not a batch that only accumulates) and it is not the epoch's last batch, whose
    checkpoint Lightning restores as a finished epoch, skipping the epoch's validation."""
    epoch_loop = trainer.fit_loop.epoch_loop
    return not (epoch_loop._should_accumulate() or epoch_loop._num_ready_batches_reached())
