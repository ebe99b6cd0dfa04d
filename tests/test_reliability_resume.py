"""Interrupted runs resume exactly: kill -9 mid-epoch then resume=auto ends with the same
weights as an uninterrupted run; a 1-epoch run resumed to epoch 2 continues its counters."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from conftest import ROOT, compose_config, run_cli
from cvt_lab.train import run

# Tiny and deterministic: 4 batches of 16 per epoch, one val batch, no sanity check.
TINY = ["trainer.deterministic=true", "data.batch_size=16", "+trainer.limit_train_batches=4",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0"]


class KillAt(L.Callback):
    """Test helper: the process sends itself ``signal`` after optimizer step ``step``
    (before that step's checkpoint is written: checkpoint callbacks run last)."""

    def __init__(self, step: int, signal: str = "SIGKILL") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


def run_in_process(overrides: list[str], output_dir: Path) -> dict[str, float]:
    cfg = compose_config(overrides, output_dir)
    with open_dict(cfg):
        del cfg["hydra"]  # Hydra's own node needs a live job to resolve
    return run(cfg)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_kill9_mid_epoch_then_resume_auto_gives_the_same_weights(tmp_path):
    common = ["logger=csv", *TINY, "trainer.max_epochs=2", "test=false", "task_name=kill9",
              f"paths.log_dir={tmp_path}/logs", "callbacks.step_checkpoint.every_n_train_steps=2"]
    # killed after step 7 of 8: the newest checkpoint is step 6, one batch into epoch 2
    killed = run_cli(*common, f"hydra.run.dir={tmp_path}/logs/kill9/runs/1_killed",
                     "+callbacks.kill._target_=test_reliability_resume.KillAt",
                     "+callbacks.kill.step=7",
                     env={"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                                         os.environ.get("PYTHONPATH", "")])})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "logs/kill9/runs/1_killed/checkpoints/last.ckpt"
    state = torch.load(last, weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 6)

    resumed = tmp_path / "logs/kill9/runs/2_resumed"
    run_in_process([*common, "resume=auto"], resumed)
    straight = tmp_path / "straight"
    run_in_process(common, straight)

    a, b = weights(resumed / "checkpoints/last.ckpt"), weights(straight / "checkpoints/last.ckpt")
    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 8
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
