"""Streaming (``data.streaming=true``): shards read as they are needed, no full download.

Each rank reads its own part of the stream (``split_dataset_by_node``: whole shards when
their count divides by the world size), and ``datasets`` spreads a rank's shards over its
DataLoader workers. Training yields exactly ``length // batch_size`` whole batches per rank
and epoch (a rank whose part is short starts it again), so every rank takes the same number
of steps, and that number is ``len(loader)``.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node


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
    that were not multiples of the batch would yield fewer batches than ``len(loader)``.
    """

    def __init__(self, stream: IterableDataset, decoder: Any, length: int | None = None,
                 batch_size: int = 1) -> None:
        self.stream, self.decoder, self.length = stream, decoder, length
        self.batch_size = batch_size
        self.epoch = 0

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an evaluation stream has no length")  # Lightning: iterate to the end
        return self.length

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if self.length is None:
            yield from map(self.decoder, self.stream)
            return
        batches, rest = divmod(self.length // self.batch_size, workers)
        quota = (batches + (worker < rest)) * self.batch_size
        produced = 0
        # a new shuffle of shards and buffer every epoch, the same in every worker: the workers
        # split the shuffled shards between them, so differing epochs would overlap their parts.
        # A worker short of its quota re-reads its own part (as shuffled this epoch).
        self.epoch += 1
        self.stream.set_epoch(self.epoch)
        while produced < quota:
            before = produced
            for row in self.stream:
                if produced == quota:
                    return
                yield self.decoder(row)
                produced += 1
            if produced == before:  # this worker got no rows: stop rather than spin
                return
