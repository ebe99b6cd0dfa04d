"""The main job end to end: in-process smoke run and the real CLI on the embedded data."""

from __future__ import annotations

import re

from conftest import compose_config, run_cli
from cvt_lab.train import run


def test_fast_dev_run_trains_and_tests_one_batch(tmp_path):
    cfg = compose_config(["debug=fast_dev_run"], tmp_path)  # as typed: no logger at all
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc1"] <= 1.0
    assert metrics["train/loss"] > 0


def test_cli_short_run_beats_chance_and_reports_where_outputs_went(tmp_path):
    result = run_cli("trainer.max_epochs=4", "logger=csv", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    accuracy = float(re.search(r"val/acc1_best\s+([0-9.]+)", out).group(1))
    assert accuracy > 0.6, out[-2000:]  # chance is 0.1 on the 10 digit classes
    assert float(re.search(r"test/acc1\s+([0-9.]+)", out).group(1)) > 0.6
    for place in ("run dir", "best ckpt", "last ckpt", "csv"):
        assert re.search(rf"{place}\s+{re.escape(str(tmp_path))}", out), place
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    # Lightning's messages reach the console once, through Hydra's log format
    seeds = [line for line in (out + result.stderr).splitlines() if "Seed set to 42" in line]
    assert len(seeds) == 1 and seeds[0].endswith("[INFO] - Seed set to 42"), seeds
