"""Streaming: a local parquet copy read as a stream, split per rank, equal steps per rank."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset, Value
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from cvt_lab.data import ImageDataModule, load_splits
from cvt_lab.data.datamodule import SampleDecoder
from cvt_lab.data.errors import DataSourceError
from cvt_lab.data.streaming import StreamingImages, StreamingLoader, split_stream
from cvt_lab.data.transforms import EvalTransform
from cvt_lab.validate import ConfigError
from conftest import run_cli
from data_helpers import imagenet_like, make_folder, save_parquet


def test_stream_is_split_by_rank_and_train_steps_match(make_cfg, tmp_path):
    save_parquet(imagenet_like(n_train=9, n_val=5), tmp_path / "inet")
    cfg = OmegaConf.to_container(make_cfg("data=imagenet", f"data.path={tmp_path / 'inet'}",
                                          "data.streaming=true", "data.train_examples=9",
                                          "data.batch_size=2", "data.image_size=8",
                                          "data.num_workers=0").data, resolve=True)
    splits = load_splits(cfg)
    decoder = SampleDecoder(EvalTransform(8, 1.0))
    # evaluation: the two ranks' parts partition the validation split exactly
    seen = [[label for _, label in StreamingImages(split_stream(splits["val"], r, 2, False), decoder)]
            for r in range(2)]
    assert sorted(seen[0] + seen[1]) == [700, 707, 714, 721, 728]
    # training: every rank yields exactly train_examples // world samples (a short part repeats)
    for rank in range(2):
        part = StreamingImages(split_stream(splits["train"], rank, 2, True, buffer=4), decoder, 4)
        assert len(part) == 4 and len(list(part)) == 4
    dm = ImageDataModule(cfg, {})
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 4  # 9 samples // batch 2, last partial batch dropped
    assert batches[0][0].shape == (2, 3, 8, 8)


def test_a_streamed_label_out_of_range_names_the_fix(make_cfg, tmp_path):
    # int labels (no ClassLabel): nothing at setup can tell that 700 > num_classes
    splits = imagenet_like(n_train=4, n_val=2).cast_column("label", Value("int64"))
    save_parquet(splits, tmp_path / "inet")
    cfg = OmegaConf.to_container(make_cfg("data=imagenet", f"data.path={tmp_path / 'inet'}",
                                          "data.streaming=true", "data.train_examples=4",
                                          "data.num_classes=10", "data.batch_size=2",
                                          "data.image_size=8", "data.num_workers=0").data, resolve=True)
    dm = ImageDataModule(cfg, {})
    dm.setup()
    with pytest.raises(DataSourceError, match=r"label 700 .* outside \[0, 10\) \(data.num_classes=10\)"):
        list(dm.val_dataloader())


def test_streaming_a_local_folder_reads_it_map_style(make_cfg, tmp_path):
    # data=folder data.streaming=true crashed in the loader (Dataset.shuffle() got buffer_size)
    root = make_folder(tmp_path / "pets", {"train": 2, "val": 1}, size=(9, 9))
    cfg = OmegaConf.to_container(make_cfg("data=folder", f"data.root={root}", "data.streaming=true",
                                          f"data.cache_dir={tmp_path / 'cache'}", "data.batch_size=2",
                                          "data.image_size=8", "data.num_workers=0").data, resolve=True)
    dm = ImageDataModule(cfg, {})
    dm.setup()
    assert not dm.streaming
    images, labels, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 8, 8)
    assert sorted(int(v) for _, ys, _ in dm.val_dataloader() for v in ys) == [0, 1, 2]


def test_stream_workers_yield_len_loader_whole_batches(make_cfg, tmp_path):
    # each DataLoader worker batches its own samples: quotas of 5 and 5 with batch 2 gave
    # 2 + 2 batches (drop_last per worker), not the 5 that len(loader) and the LR schedule count on
    imagenet_like(n_train=10, n_val=2).save_to_disk(str(tmp_path / "inet"))  # streamed: 10 shards
    cfg = OmegaConf.to_container(make_cfg("data=imagenet", f"data.path={tmp_path / 'inet'}",
                                          "data.streaming=true", "data.train_examples=10",
                                          "data.batch_size=2", "data.image_size=8",
                                          "data.num_workers=2").data, resolve=True)
    dm = ImageDataModule(cfg, {})
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.num_workers == 2
    batches = list(loader)
    assert len(loader) == len(batches) == 5


def test_stream_workers_read_every_row_in_every_epoch():
    # a worker whose shards were short of its quota read them a second time and so counted
    # one epoch more than the others; from then on the workers shuffled the shards with
    # different epochs and split them inconsistently: epoch 2 read rows 0-4 twice, 10-14 never
    stream = split_stream(Dataset.from_dict({"x": list(range(20))}).to_iterable_dataset(num_shards=4),
                          0, 1, True, buffer=1)
    rows = StreamingImages(stream, lambda row, rng: row["x"], length=22, batch_size=2)  # quotas 12 and 10
    loader = DataLoader(rows, batch_size=2, num_workers=2, persistent_workers=True, drop_last=True)
    for _ in range(3):
        seen = [int(x) for batch in loader for x in batch]
        assert len(seen) == 22 and set(seen) == set(range(20))


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_stream_resumed_mid_epoch_continues_in_the_uninterrupted_order(workers):
    # the stream restarted from its first epoch's shuffle, re-trained the batches already
    # done and counted epochs from 1 again; the random crops followed the workers' seeds, not
    # the samples; with workers the DataLoader also restarts its turns at worker 0 while the
    # next batch may be another worker's. A sample here: its row + its crop RNG's first draw
    def loader() -> StreamingLoader:
        rows = Dataset.from_dict({"x": list(range(30))}).to_iterable_dataset(num_shards=6)
        stream = StreamingImages(split_stream(rows, 0, 1, True, buffer=4),
                                 lambda row, rng: row["x"] + rng.random(), length=28, batch_size=2)
        return StreamingLoader(stream, batch_size=2, num_workers=workers, drop_last=True,
                               persistent_workers=workers > 0)

    straight, again = loader(), loader()
    epochs = [[b.tolist() for b in straight] for _ in range(3)]
    assert all(len(e) == len(straight) == 14 for e in epochs) and epochs[1] != epochs[2]
    # the workers each set the stream's shared epoch, racing (+= is not atomic): sometimes
    # one more, which shuffled some epochs differently in two runs of the same settings
    assert [[b.tolist() for b in again] for _ in range(3)] == epochs
    interrupted = loader()
    list(interrupted)  # epoch 0
    batches = iter(interrupted)
    assert [next(batches).tolist() for _ in range(5)] == epochs[1][:5]
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 5)

    resumed = loader()
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == epochs[1][5:]
    assert [b.tolist() for b in resumed] == epochs[2]  # and on into the next epoch's shuffle


@pytest.mark.slow
def test_a_ddp_stream_trains_every_rank_in_lockstep_over_epochs(tmp_path):
    # 2 processes x 2 workers: each rank's StreamingLoader takes the epoch from its trainer
    imagenet_like(n_train=24, n_val=4).save_to_disk(str(tmp_path / "inet"))
    run_dir = tmp_path / "run"
    proc = run_cli("trainer=ddp_cpu", "data=imagenet", f"data.path={tmp_path / 'inet'}",
                   "data.streaming=true", "data.train_examples=24", "data.image_size=32",
                   "data.batch_size=8", "data.num_workers=2", "trainer.max_epochs=2", "test=false",
                   "logger=csv", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, 6)  # 24 / 2 ranks / 4 per rank: 3 a epoch
    loader = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader["epoch"], loader["batches"]) == (1, 3)


def test_a_stream_resumed_mid_epoch_with_other_workers_is_refused_naming_the_value(make_cfg, tmp_path):
    # which rows make up a stream's batches depends on the workers per process (each reads its
    # own shards): resumed with data.num_workers=0 after 2, the rest of the epoch was read in
    # the one-worker order, retraining some images of the epoch and never training others
    imagenet_like(n_train=24, n_val=2).save_to_disk(str(tmp_path / "inet"))  # streamed: 24 shards

    def datamodule(workers: int) -> ImageDataModule:
        cfg = OmegaConf.to_container(make_cfg("data=imagenet", f"data.path={tmp_path / 'inet'}",
                                              "data.streaming=true", "data.train_examples=24",
                                              "data.batch_size=2", "data.image_size=8",
                                              f"data.num_workers={workers}").data, resolve=True)
        dm = ImageDataModule(cfg, {})
        dm.setup()
        return dm

    interrupted = datamodule(2).train_dataloader()
    batches = iter(interrupted)
    for _ in range(3):
        next(batches)
    state = interrupted.state_dict()
    with pytest.raises(ConfigError, match=r"stopped at batch 3 of 12 of epoch 0 .* "
                                          r"data.num_workers=2 \(this run: 0\).* resume with "
                                          r"data.num_workers=2"):
        datamodule(0).train_dataloader().load_state_dict(state)
    datamodule(2).train_dataloader().load_state_dict(state)  # the same settings resume
    # at an epoch's end nothing of it is left to read: the next epoch may use other workers
    datamodule(0).train_dataloader().load_state_dict({**state, "batches": 12})
