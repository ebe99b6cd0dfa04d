"""Nothing is lost: atomic checkpoint writes, a clear stop on NaN that keeps the last good
checkpoint, untrusted or broken checkpoints refused before anything is written."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

import pytest
import torch

from conftest import ROOT, dead_pid
from cvt_lab.module import CvTModule
from cvt_lab.safeguards import AtomicCheckpointIO, NonFiniteError, remove_stale_temps
from cvt_lab.validate import ConfigError, check_checkpoint
from test_reliability_resume import TINY, run_in_process

NAN_RUN = ["logger=csv", *TINY, "trainer.max_epochs=1", "test=false",
           "callbacks.step_checkpoint.every_n_train_steps=1"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    before = target.read_bytes()

    def write_half_then_fail(obj, f, *args, **kwargs):  # a full disk / crash mid-write
        f.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
    monkeypatch.undo()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, target)  # and a good write lands
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.zeros(3))


def test_partial_checkpoints_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    """kill -9 during a write leaves a hidden partial file (gigabytes for big models): the
    next write into that folder, or a resume from it, removes it."""
    host = socket.gethostname()
    leftover = tmp_path / f".last.ckpt.tmp-{host}-{dead_pid()}"
    live = tmp_path / f".last.ckpt.tmp-{host}-{os.getpid()}"  # a writer at work
    other_host = tmp_path / f".last.ckpt.tmp-elsewhere-{dead_pid()}"  # its pid means nothing here
    for path in (leftover, live, other_host):
        path.write_bytes(b"partial")
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1)}, tmp_path / "epoch1.ckpt")
    assert not leftover.exists() and live.exists() and other_host.exists()
    assert (tmp_path / "epoch1.ckpt").exists()
    leftover.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == [leftover]  # what a resume from this folder runs


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    saves, atomic_save = [], AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        saves.append(path)
        atomic_save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    train_step = CvTModule.training_step

    def nan_at_step_2(self, batch, batch_idx):
        loss = train_step(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step == 2 else loss

    monkeypatch.setattr(CvTModule, "training_step", nan_at_step_2)
    with pytest.raises(NonFiniteError) as err:
        run_in_process(NAN_RUN, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(err.value).startswith(
        f"the training loss is nan at step 2 (epoch 0, batch 2): training stopped before this "
        f"update; the last good checkpoint {last} is kept. Usual fixes: lower optimizer.lr")
    assert "trainer.precision=32-true" in str(err.value)
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert saves and all(Path(p).parent == last.parent for p in saves)  # the atomic writer wrote them


def test_nan_right_after_a_resume_names_the_checkpoint_it_resumed_from(tmp_path, monkeypatch):
    run_in_process(NAN_RUN, tmp_path / "first")
    resumed_from = tmp_path / "first" / "checkpoints" / "last.ckpt"
    train_step = CvTModule.training_step
    monkeypatch.setattr(CvTModule, "training_step",
                        lambda self, batch, i: train_step(self, batch, i) * float("nan"))
    with pytest.raises(NonFiniteError) as err:  # a new run dir: no last.ckpt of its own yet
        run_in_process([*NAN_RUN, "trainer.max_epochs=2", f"ckpt_path={resumed_from}"],
                       tmp_path / "second")
    assert f"the checkpoint this run resumed from, {resumed_from}, is unchanged" in str(err.value)


def test_a_nan_with_float16_weights_names_that_as_the_likely_cause(tmp_path, monkeypatch):
    # trainer.precision=16-true + AdamW (cvt_tiny, embedded digits) went NaN at step 65 with
    # the generic advice, whose precision fix spoke only of 16-mixed
    train_step = CvTModule.training_step
    monkeypatch.setattr(CvTModule, "training_step",
                        lambda self, batch, i: train_step(self, batch, i) * float("nan"))
    with pytest.raises(NonFiniteError) as err:
        run_in_process([*NAN_RUN, "trainer.precision=16-true", "trainer.limit_train_batches=2"],
                       tmp_path)
    message = str(err.value)
    assert "no checkpoint had been written yet. trainer.precision=16-true holds the weights" in message
    assert "Use trainer.precision=bf16-mixed (or 16-mixed on a GPU)" in message
    assert message.endswith("check the data for broken values.")


def test_a_diverging_lr_never_leaves_non_finite_weights_on_disk(tmp_path):
    with pytest.raises(NonFiniteError, match=r"at step \d+"):
        run_in_process([*NAN_RUN, "optimizer.lr=1e30"], tmp_path)
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def test_weights_that_diverge_on_the_last_update_fail_the_run_at_validation(tmp_path):
    """lr 1e30 and one batch: the one update leaves finite but huge weights, so no training
    loss is ever NaN, yet validation's is. Such a run must fail (a sweep must not count it),
    and those weights must not become a 'best' checkpoint."""
    with pytest.raises(NonFiniteError) as err:
        run_in_process([*NAN_RUN, "optimizer.lr=1e30", "scheduler=constant",
                        "trainer.limit_train_batches=1"], tmp_path)
    assert str(err.value).startswith(
        "the validation loss is nan after step 1 (epoch 0): the weights give non-finite "
        "outputs; no checkpoint of them is written; no checkpoint had been written yet. "
        "Usual fixes: lower optimizer.lr")
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))  # neither a 'best' nor a last


class RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_code_in_it_is_refused_without_running_it(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    with pytest.raises(ConfigError) as err:
        check_checkpoint(str(path))
    assert str(err.value).startswith(
        f"ckpt_path={path}: refused: the file holds Python objects or code, not just tensors")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "not_torch", "plain_state_dict", "code"])
def test_a_bad_ckpt_path_fails_before_anything_is_written(kind, tmp_path):
    old_run = tmp_path / "logs/train/runs/old"
    (old_run / "checkpoints").mkdir(parents=True)
    (old_run / ".hydra").mkdir()
    (old_run / ".hydra/config.yaml").write_text("seed: 1\n")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, old_run / "checkpoints/last.ckpt")
    bad = old_run / "checkpoints" / f"{kind}.ckpt"
    if kind == "truncated":
        bad.write_bytes((old_run / "checkpoints/last.ckpt").read_bytes()[:300])
    elif kind == "not_torch":
        bad.write_text("epoch: 3\n")
    elif kind == "plain_state_dict":
        torch.save({"w": torch.ones(2)}, bad)
    elif kind == "code":
        torch.save({"state_dict": {}, "payload": RunsCode(tmp_path / "pwned")}, bad)
    before = snapshot(old_run)
    new_run = tmp_path / "new"
    with pytest.raises(ConfigError) as err:
        run_in_process(["logger=csv", f"ckpt_path={bad}"], new_run)
    message = str(err.value)
    assert message.startswith(f"ckpt_path={bad}: ") and "\n" not in message
    assert snapshot(old_run) == before
    assert not (new_run / "checkpoints").exists()


def test_no_trust_remote_code_and_no_unsafe_torch_load_in_the_source():
    offenders = []
    for path in [ROOT / "run.py", *(ROOT / "src").rglob("*.py"), *(ROOT / "conf").rglob("*.yaml")]:
        text = path.read_text()
        if re.search(r"trust_remote_code\s*[=:]\s*(True|true)", text) or \
                re.search(r"^(?!.*save_checkpoint).*weights_only\s*=\s*False", text, re.M):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
