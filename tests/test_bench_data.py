"""The data benchmark credits exactly the images it decodes while its clock runs."""

from __future__ import annotations

import importlib.util
import multiprocessing
import time

import torch

from conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_data", ROOT / "benchmarks" / "bench_data.py")
bench_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_data)


class SlowCountingData(torch.utils.data.Dataset):
    """Each sample takes 20 ms and is counted in a counter the (forked) workers share."""

    def __init__(self, n: int) -> None:
        self.n, self.fetched = n, multiprocessing.Value("i", 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        time.sleep(0.02)
        with self.fetched.get_lock():
            self.fetched.value += 1
        return torch.zeros(3, 2, 2, dtype=torch.uint8), 0


def test_loader_rate_times_only_the_images_it_counts(monkeypatch):
    """Warm-up batches a worker prefetched must not be decoded inside the timed window
    (they were, and were thrown away: worker rates came out too low)."""
    data = SlowCountingData(16)
    monkeypatch.setattr(bench_data, "ImageDataset", lambda rows, decoder: data)
    window = {}
    real_timed = bench_data.timed

    def timed(fn, *args):
        before = data.fetched.value
        wall, cpu = real_timed(fn, *args)
        window.update(fetched=data.fetched.value - before, wall=wall)
        return wall, cpu

    monkeypatch.setattr(bench_data, "timed", timed)
    rate = bench_data.loader_rate(None, 32, workers=1, batch=4, epochs=1)
    assert round(rate["img_per_s"] * window["wall"]) == window["fetched"] == 16
