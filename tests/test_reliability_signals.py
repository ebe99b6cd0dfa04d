"""Pre-emption: SIGTERM writes last.ckpt and exits cleanly (status 143); resume=auto then
continues the same W&B run; under SLURM, SIGUSR1 saves a checkpoint and requeues the job.
Both also under DDP, where the ranks must act on a signal at the same step."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT
from cvt_lab.module import BEST_KEY
from cvt_lab.resume import find_resume_checkpoint
from test_reliability_resume import TINY, assert_same_last_weights, run_in_process


def wandb_ids(run_dir: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")}


def terminate_mid_training(overrides: list[str], run_dir: Path) -> tuple[str, Path]:
    """Starts ``run.py`` and sends it SIGTERM once the first epoch's last.ckpt exists (so
    training is under way); returns the output and that checkpoint's path."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *overrides, "trainer.max_epochs=1000",
         f"hydra.run.dir={run_dir}"], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints/last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a hang is the failure this guards against
        proc.kill()
        pytest.fail("run.py did not exit within 120 s of SIGTERM:\n" + proc.communicate()[0][-3000:])
    assert proc.returncode == 143, out[-3000:]
    assert f"Checkpoint saved to {last}" in out and "resume=auto" in out
    assert "Traceback" not in out
    return out, last


@pytest.mark.slow
def test_sigterm_saves_last_ckpt_exits_143_and_resume_continues_the_wandb_run(tmp_path):
    logs = tmp_path / "logs"
    common = ["logger=default", *TINY, "task_name=preempt", f"paths.log_dir={logs}", "test=false"]
    first = logs / "preempt/runs/1"
    _, last = terminate_mid_training(common, first)
    state = torch.load(last, weights_only=True)
    assert state["global_step"] >= 3 and state["wandb_run_id"]
    assert wandb_ids(first) == {state["wandb_run_id"]}

    second = logs / "preempt/runs/2"
    run_in_process([*common, "resume=auto", f"trainer.max_epochs={state['epoch'] + 2}"], second)
    resumed = torch.load(second / "checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] > state["global_step"]
    assert resumed["epoch"] == state["epoch"] + 1
    assert wandb_ids(second) == {state["wandb_run_id"]}  # the same W&B run continues
    assert resumed["wandb_run_id"] == state["wandb_run_id"]


@pytest.mark.slow
def test_sigterm_under_ddp_stops_both_ranks_with_one_checkpoint_and_resumes(tmp_path):
    """Two gloo ranks: both stop at the same step (the ranks agree on the signal within each
    step), rank 0 writes one last.ckpt, and resume=auto continues it under DDP again.
    With Lightning's own handler this hung when the signal landed in an epoch-end sync."""
    logs = tmp_path / "logs"
    common = ["logger=csv", "trainer=ddp_cpu", *TINY, "task_name=ddp_preempt",
              f"paths.log_dir={logs}", "test=false"]
    out, last = terminate_mid_training(common, logs / "ddp_preempt/runs/1")
    assert "Grad strides do not match bucket view strides" not in out
    state = torch.load(last, weights_only=True)
    assert state["global_step"] >= 3 and state["optimizer_states"]

    second = logs / "ddp_preempt/runs/2"
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *common, "resume=auto",
         f"trainer.max_epochs={state['epoch'] + 2}", f"hydra.run.dir={second}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"resume=auto: continuing from {last}" in result.stdout + result.stderr
    resumed = torch.load(second / "checkpoints/last.ckpt", weights_only=True)
    assert resumed["epoch"] == state["epoch"] + 1
    assert resumed["global_step"] == 3 * (state["epoch"] + 2)  # 3 steps an epoch, none lost


def fake_scontrol(tmp_path: Path) -> str:
    """A PATH with a stand-in ``scontrol`` that records its arguments in scontrol.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    scontrol.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def one_slurm_task(tmp_path: Path, monkeypatch) -> None:
    """The environment of a 1-task SLURM job (4242) with a recording ``scontrol``."""
    monkeypatch.setenv("PATH", fake_scontrol(tmp_path))
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "cvt", "SLURM_JOB_ID": "4242",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)


def test_slurm_sigusr1_saves_a_checkpoint_and_requeues_the_job(tmp_path, monkeypatch):
    one_slurm_task(tmp_path, monkeypatch)
    logs = tmp_path / "logs"
    run_dir = logs / "slurm/runs/1"
    run_in_process(["logger=csv", *TINY, "trainer.max_epochs=1", "test=false", "task_name=slurm",
                    f"paths.log_dir={logs}",
                    "+callbacks.usr1._target_=test_reliability_resume.SignalAt",
                    "+callbacks.usr1.step=2", "+callbacks.usr1.signal=SIGUSR1"], run_dir)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 2
    os.utime(hpc)  # the requeued job (same command + resume=auto) continues from it
    assert find_resume_checkpoint(logs, "slurm") == str(hpc)


@pytest.mark.slow
def test_slurm_requeue_under_ddp_with_the_signal_reaching_ranks_apart(tmp_path):
    """Two srun-style tasks get SIGUSR1 0.3 s apart (SLURM signals each task on its own).
    Lightning's handler checkpoints (a barrier) inside the signal handler: here that hung
    rank 0 in 3 of 3 tries. The ranks now agree within a step and requeue once, together."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_dir = tmp_path / "run"
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "PATH": fake_scontrol(tmp_path) if rank == 0 else os.environ["PATH"],
               "PYTHONUNBUFFERED": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
               "SLURM_JOB_NAME": "cvt", "SLURM_JOB_ID": "4242", "SLURM_PROCID": str(rank),
               "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_NNODES": "1",
               "SLURM_NODELIST": "127.0.0.1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "logger=csv", "trainer=ddp_cpu", *TINY,
             "test=false", "trainer.max_epochs=30", f"hydra.run.dir={run_dir}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints/last.ckpt").exists() and time.monotonic() < deadline \
            and all(p.poll() is None for p in procs):
        time.sleep(0.3)  # training is under way once the first epoch's last.ckpt exists
    for proc in procs:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
    outs = []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=150)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("a rank hung after SIGUSR1:\n" + proc.communicate()[0][-3000:])
        assert proc.returncode == 0, outs[-1][-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # once
    (hpc,) = run_dir.glob("hpc_ckpt_*.ckpt")
    state = torch.load(hpc, weights_only=True)
    assert state["global_step"] >= 3 and state["optimizer_states"]


class SigtermAtBatch(L.Callback):
    """The process sends itself ``signal`` at the end of training batch ``batch`` (0-based)."""

    def __init__(self, batch: int, signal: str = "SIGTERM") -> None:
        self.batch, self.signal = batch, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), getattr(signal, self.signal))


@pytest.mark.slow
def test_sigterm_inside_an_accumulation_group_stops_after_its_step_and_resumes_exactly(tmp_path):
    # 6 batches of 4 with accumulate_grad_batches=2: steps after batches 1, 3, 5. A SIGTERM at
    # batch 2 stopped right after it: the checkpoint counted batch 2 as done but its gradient
    # (accumulated, not yet applied) was lost, and the resumed run stepped on batch 3 alone
    common = ["logger=csv", *TINY, "trainer.limit_train_batches=6",
              "trainer.accumulate_grad_batches=2", "trainer.max_epochs=1", "test=false",
              "task_name=accumulate", f"paths.log_dir={tmp_path}/logs"]
    stopped = tmp_path / "logs/accumulate/runs/1_stopped"
    with pytest.raises(SystemExit) as exit_:
        run_in_process([*common, "+callbacks.stop._target_=test_reliability_signals.SigtermAtBatch",
                        "+callbacks.stop.batch=2"], stopped)
    assert exit_.value.code == 143
    state = torch.load(stopped / "checkpoints/last.ckpt", weights_only=True)
    done = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert (state["global_step"], done) == (2, 4)  # after the group's step, not inside it

    resumed, straight = tmp_path / "logs/accumulate/runs/2_resumed", tmp_path / "straight"
    run_in_process([*common, "resume=auto"], resumed)
    run_in_process(common, straight)
    assert_same_last_weights(resumed, straight)


def test_a_slurm_requeue_inside_an_accumulation_group_checkpoints_after_its_step(tmp_path,
                                                                                 monkeypatch):
    # Lightning's SIGUSR1 handler checkpointed at once, inside the group: the checkpoint
    # counted batch 2 as done but lost its accumulated gradient (as SIGTERM did, above)
    one_slurm_task(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    run_in_process(["logger=csv", *TINY, "trainer.limit_train_batches=6",
                    "trainer.accumulate_grad_batches=2", "trainer.max_epochs=1", "test=false",
                    "+callbacks.usr1._target_=test_reliability_signals.SigtermAtBatch",
                    "+callbacks.usr1.batch=2", "+callbacks.usr1.signal=SIGUSR1"], run_dir)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    state = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=True)
    served = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches"]
    assert (state["global_step"], served) == (2, 4)  # after the group's step, not inside it


def test_a_slurm_requeue_on_an_epochs_last_batch_checkpoints_after_its_validation(tmp_path,
                                                                                  monkeypatch):
    # 3 steps per epoch, SIGUSR1 at step 3: Lightning restores a checkpoint written at an
    # epoch's last batch (before its validation) as a finished epoch, so the requeued job never
    # validated epoch 0 and, its RNG state being from before that validation, drifted
    one_slurm_task(tmp_path, monkeypatch)
    common = ["logger=csv", *TINY, "trainer.max_epochs=2", "test=false", "model.drop_path=0.2"]
    run_dir = tmp_path / "run"
    run_in_process([*common, "+callbacks.usr1._target_=test_reliability_resume.SignalAt",
                    "+callbacks.usr1.step=3", "+callbacks.usr1.signal=SIGUSR1"], run_dir)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert math.isfinite(torch.load(hpc, weights_only=True)[BEST_KEY])  # epoch 0 validated first
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    resumed_metrics = run_in_process([*common, f"ckpt_path={hpc}"], resumed)
    assert resumed_metrics["val/acc1_best"] == run_in_process(common, straight)["val/acc1_best"]
    assert_same_last_weights(resumed, straight)
