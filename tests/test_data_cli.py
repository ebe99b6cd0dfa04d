"""`python run.py data=folder data.root=...` trains end to end with the paper's augmentation."""

from __future__ import annotations

import csv

import pytest

from conftest import run_cli
from data_helpers import make_folder


@pytest.mark.slow
def test_folder_trains_end_to_end_with_deit_augment_and_skips_a_corrupt_file(tmp_path):
    root = make_folder(tmp_path / "pets", {"train": 6, "val": 2}, size=(40, 30))
    (root / "val" / "dog" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    proc = run_cli("data=folder", f"data.root={root}", "model=cvt_tiny", "augment=deit",
                   "data.image_size=32", "data.batch_size=8", "data.num_workers=0",
                   "data.skip_corrupt=true", f"data.cache_dir={tmp_path / 'cache'}",
                   "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                   "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1", "logger=csv", f"paths.output_dir={out}",
                   f"hydra.run.dir={out}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "skipped unreadable image (1 so far): cannot decode" in log and "broken.png" in log
    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    val = [float(r["val/acc1"]) for r in rows if r.get("val/acc1")]
    assert val and 0 <= val[0] <= 1
    assert any(r.get("test/acc1") for r in rows)
