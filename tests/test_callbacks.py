"""TrainThroughput: what train/img_per_sec measures, on the host clock and with CUDA events."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cvt_lab import callbacks
from cvt_lab.callbacks import TrainThroughput


class Module:
    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, sync_dist: bool = False) -> None:
        assert sync_dist  # under DDP: the mean over the ranks
        self.logged[name] = value


def run_epoch(meter: TrainThroughput, module: Module, batches: int = 4, batch_size: int = 8) -> None:
    trainer = SimpleNamespace(world_size=2)
    batch = (torch.zeros(batch_size, 3, 2, 2), torch.zeros(batch_size))
    meter.on_train_epoch_start(trainer, module)
    for i in range(batches):
        meter.on_train_batch_start(trainer, module, batch, i)
        meter.on_train_batch_end(trainer, module, None, batch, i)
    meter.on_train_epoch_end(trainer, module)


def test_host_clock_times_each_batch_and_skips_warmup(monkeypatch):
    # calls: start 0, then (start, end) of each timed batch; the warm-up batch is not read
    ticks = iter([0.0, 5.0, 5.5, 10.0, 10.5, 20.0, 20.5])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(ticks))
    module = Module("cpu")
    run_epoch(TrainThroughput(skip=1), module)
    # 3 timed batches x 8 images x 2 ranks in 3 x 0.5 s
    assert module.logged["train/img_per_sec"] == pytest.approx(48 / 1.5)


def test_gpu_batches_are_timed_with_cuda_events_read_once_per_epoch(monkeypatch):
    """A host clock on a GPU measures how fast kernels are queued; events time the GPU."""
    clock = iter(float(t) for t in range(100))
    syncs = []

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.t = None

        def record(self) -> None:
            self.t = next(clock)

        def elapsed_time(self, end: "Event") -> float:  # milliseconds, as CUDA's
            assert syncs, "events read before the GPU finished"
            return (end.t - self.t) * 250.0

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: syncs.append(1))
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: pytest.fail("host clock used on GPU"))
    module = Module("cuda")
    run_epoch(TrainThroughput(skip=1), module)
    assert syncs == [1]  # once, at the end of the epoch: no per-step synchronize
    # each timed batch spans one event tick = 0.25 s; 3 batches x 16 images
    assert module.logged["train/img_per_sec"] == pytest.approx(48 / 0.75)
