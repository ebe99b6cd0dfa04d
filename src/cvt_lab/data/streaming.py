"""Streaming (``data.streaming=true``): shards read as they are needed, no full download.

Each rank reads its own part of the stream (``split_dataset_by_node``: whole shards when
their count divides by the world size), and ``datasets`` spreads a rank's shards over its
DataLoader workers. Training yields exactly ``length // batch_size`` whole batches per rank
and epoch (a rank whose part is short starts it again), so every rank takes the same number
of steps, and that number is ``len(loader)``. A run resumed mid-epoch continues the same
epoch's shuffle after the batches it had trained on, in the uninterrupted order
(:class:`StreamingLoader`).
"""

from __future__ import annotations

import random
from itertools import islice, zip_longest
from typing import Any, Callable, Iterator

import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node

from ..resume import ResumableLoader
from ..validate import ConfigError


def split_stream(stream: IterableDataset, rank: int, world: int, shuffle: bool,
                 buffer: int = 10_000, seed: int = 0) -> IterableDataset:
    """This rank's part of ``stream``, shuffled (shard order + a ``buffer``-row buffer) for training."""
    if shuffle:
        stream = stream.shuffle(seed=seed, buffer_size=buffer)
    return split_dataset_by_node(stream, rank=rank, world_size=world) if world > 1 else stream


class StreamingImages(torch.utils.data.IterableDataset):
    """Decodes rows of a stream in DataLoader workers; ``length`` None: one pass, unsized.

    With a ``length``, the workers share ``length // batch_size`` whole batches: each DataLoader
    worker batches its own samples and drop_last drops each worker's partial batch, so quotas
    that were not multiples of the batch would yield fewer batches than ``len(loader)``. Worker
    ``w`` of ``W`` makes batches ``w, w + W, ...`` of the pass: the DataLoader takes them in turn.
    Each training sample's random crop and flip come from an RNG seeded by (``seed``, epoch,
    worker, place in the worker's part): the same again when the epoch is resumed.
    """

    def __init__(self, stream: IterableDataset, decoder: Any, length: int | None = None,
                 batch_size: int = 1, seed: int | str = 0) -> None:
        self.stream, self.decoder, self.length = stream, decoder, length
        self.batch_size, self.seed = batch_size, seed
        # (epoch, batches of it already trained on) of the pass about to start, set by the
        # loader; in shared memory because persistent workers hold copies of this object
        self.position = torch.zeros(2, dtype=torch.long).share_memory_()

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an evaluation stream has no length")  # Lightning: iterate to the end
        return self.length

    def __iter__(self):
        if self.length is None:
            yield from map(self.decoder, self.stream)
            return
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        epoch, done = self.position.tolist()
        batches = self.length // self.batch_size
        # rows of batches already trained on are read (the stream has no random access), not
        # decoded
        first = len(range(worker, done, workers)) * self.batch_size
        quota = len(range(worker, batches, workers)) * self.batch_size
        for place, row in enumerate(islice(self._rows(), first, quota), start=first):
            yield self.decoder(row, random.Random(f"{self.seed}:{epoch}:{worker}:{place}"))

    def start_pass(self, epoch: int, done: int) -> None:
        """Set the pass the workers read next: ``epoch``'s shuffle, after ``done`` batches.

        Called in the main process before the workers start: every worker must shuffle shards
        and buffer by the same epoch (they split the shuffled shards between them), and the
        stream keeps its epoch in memory it shares with them, where workers setting it each
        raced (``datasets`` updates it with ``+=``, which is not atomic) and could skip one.
        """
        self.position.copy_(torch.tensor([epoch, done]))
        self.stream.set_epoch(epoch)

    def _rows(self) -> Iterator[Any]:
        """This worker's part of the stream, read again from its start while more is wanted
        (a rank whose part is shorter than its quota); nothing if the part is empty."""
        while True:
            empty = True
            for row in self.stream:
                empty = False
                yield row
            if empty:
                return


class StreamingLoader(ResumableLoader):
    """The training stream's loader, checkpointed as :class:`ResumableLoader` is.

    The epoch comes from ``epoch_of`` (the trainer's), else passes are counted (from the
    resumed epoch after :meth:`load_state_dict`). On resume the
    workers pass over the batches already trained on; as the DataLoader restarts its turns at
    worker 0 rather than at the worker that holds the next batch, up to ``num_workers - 1``
    batches wait here so the pass continues in the uninterrupted order.

    ``layout``: the settings, besides the batch, that decide which rows a pass's batches hold
    (``data.num_workers``: each worker reads its own shards; the processes; the shuffle
    buffer), as ``{config key: value}``. It is kept in the state, and resuming mid-epoch with
    other values is refused: the rest of the epoch would not be the rows still to train on.
    """

    def __init__(self, dataset: StreamingImages, *args: Any,
                 epoch_of: Callable[[], int] | None = None,
                 layout: dict[str, int] | None = None, **kwargs: Any) -> None:
        super().__init__(dataset, *args, **kwargs)
        self.epoch_of = epoch_of
        self.layout = {"data.num_workers": self.num_workers, **(layout or {})}
        self._next_epoch = 0  # without epoch_of
        self._resume_at: tuple[int, int] | None = None

    def _resumable(self) -> bool:
        return True

    def _start_pass(self) -> tuple[int, int]:
        epoch = self.epoch_of() if self.epoch_of is not None else self._next_epoch
        self._next_epoch = epoch + 1
        done = self._resume_at[1] if self._resume_at and self._resume_at[0] == epoch else 0
        self._resume_at = None
        self.dataset.start_pass(epoch, done)
        return epoch, done

    def _batches(self, done: int) -> Iterator[Any]:
        batches = super()._batches(done)
        workers = max(self.num_workers, 1)
        if done % workers == 0:  # worker 0 holds the next batch: the order is the usual one
            return batches
        return _in_pass_order(batches, done, len(self), workers)

    def _seek(self, epoch: int, batches: int) -> None:
        self._resume_at, self._next_epoch = (epoch, batches), epoch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "layout": self.layout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state or {}).get("layout") or {}  # (none in checkpoints from before it was kept)
        changed = {k: v for k, v in saved.items() if self.layout.get(k) != v}
        if changed and 0 < state["batches"] < len(self):
            diffs = ", ".join(f"{k}={v} (this run: {self.layout.get(k)})" for k, v in changed.items())
            again = " ".join(f"{k}={v}" for k, v in changed.items())
            raise ConfigError(
                f"the checkpoint stopped at batch {state['batches']} of {len(self)} of epoch "
                f"{state['epoch']} of a stream read with {diffs}: these decide which rows a "
                "stream's batches hold, so the rest of that epoch read with other values would "
                "train some of its images twice and others not at all. To continue it exactly, "
                f"resume with {again}")
        super().load_state_dict(state)


def _in_pass_order(batches: Iterator[Any], done: int, total: int, workers: int) -> Iterator[Any]:
    """Batches ``done, ..., total - 1`` of a pass, which arrive from the workers in turn from
    worker 0 (each worker ``w`` holding those ``= w mod workers``; finished workers skipped)."""
    lanes = [range(done + (w - done) % workers, total, workers) for w in range(workers)]
    arrival = (j for turn in zip_longest(*lanes) for j in turn if j is not None)
    waiting, due = {}, done
    for index, batch in zip(arrival, batches):
        waiting[index] = batch
        while due in waiting:
            yield waiting.pop(due)
            due += 1
