"""Interrupted runs resume exactly: kill -9 mid-epoch then resume=auto ends with the same
weights as an uninterrupted run; a 1-epoch run resumed to epoch 2 continues its counters."""

from __future__ import annotations

import csv
import os
import re
import time
import signal
import socket
from pathlib import Path

import lightning as L
import pytest
import torch

from omegaconf import OmegaConf

from conftest import ROOT, compose_config, dead_pid, run_cli
from data_helpers import imagenet_like
from cvt_lab.data import ImageDataModule
from cvt_lab.module import BEST_KEY, CvTModule
from cvt_lab.resume import (LENGTH_KEY, ResumableLoader, ResumableSampler,
                             find_resume_checkpoint, warn_length_change)
from cvt_lab.train import run
from cvt_lab.validate import ConfigError

# Tiny and deterministic: 3 batches of 8 per epoch, one val batch, no sanity check.
TINY = ["trainer.deterministic=true", "data.batch_size=8", "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0", "callbacks.progress_bar.refresh_rate=0"]


class SignalAt(L.Callback):
    """Test helper: the process sends itself ``signal`` after optimizer step ``step`` (before
    that step's checkpoint is written: Lightning runs checkpoint callbacks last)."""

    def __init__(self, step: int, signal: str = "SIGKILL") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class SignalWhileValidating(SignalAt):
    """Test helper: sends ``signal`` when the validation after optimizer step ``step`` starts,
    i.e. after that step's checkpoints were written."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pass

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            super().on_train_batch_end(trainer, pl_module, None, None, 0)


def run_in_process(overrides: list[str], output_dir: Path) -> dict[str, float]:
    return run(compose_config(overrides, output_dir))


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_last_weights(resumed: Path, straight: Path) -> None:
    """Both runs' last.ckpt hold the same tensors, to 1e-6 (and none only one of them holds)."""
    a, b = weights(resumed / "checkpoints/last.ckpt"), weights(straight / "checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def streamed(tmp_path: Path) -> list[str]:
    """A local copy read as a stream (24 rows, 24 shards) by 2 workers: 3 batches of 8."""
    imagenet_like(n_train=24, n_val=8).save_to_disk(str(tmp_path / "inet"))
    return ["data=imagenet", f"data.path={tmp_path / 'inet'}", "data.streaming=true",
            "data.train_examples=24", "data.image_size=32", "data.num_workers=2"]


@pytest.mark.slow
@pytest.mark.parametrize("data", ["map-style", "streaming"])
def test_kill9_mid_epoch_then_resume_auto_gives_the_same_weights(tmp_path, data):
    # streaming: the resumed epoch must re-shuffle as epoch 2 did, pass over its first batch,
    # and take the rest in order although its first batch came from worker 0 of 2
    common = ["logger=csv", *TINY, "trainer.max_epochs=2", "test=false", "task_name=kill9",
              f"paths.log_dir={tmp_path}/logs", "callbacks.step_checkpoint.every_n_train_steps=2",
              *(streamed(tmp_path) if data == "streaming" else [])]
    # killed after step 5 of 6: the newest checkpoint is step 4, one batch into epoch 2
    killed = run_cli(*common, f"hydra.run.dir={tmp_path}/logs/kill9/runs/1_killed",
                     "+callbacks.kill._target_=test_reliability_resume.SignalAt",
                     "+callbacks.kill.step=5",
                     env={"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                                         os.environ.get("PYTHONPATH", "")])})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "logs/kill9/runs/1_killed/checkpoints/last.ckpt"
    state = torch.load(last, weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 4)

    # had the kill hit a checkpoint write, its partial file would lie beside last.ckpt
    leftover = last.with_name(f".last.ckpt.tmp-{socket.gethostname()}-{dead_pid()}")
    leftover.write_bytes(b"partial")
    resumed = tmp_path / "logs/kill9/runs/2_resumed"
    run_in_process([*common, "resume=auto"], resumed)
    assert not leftover.exists()
    straight = tmp_path / "straight"
    run_in_process(common, straight)

    assert torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    assert_same_last_weights(resumed, straight)


def killed_then_resumed_like_straight(tmp_path: Path, overrides: list[str], kill: str,
                                      step: int) -> tuple[Path, Path]:
    """Runs 2 epochs of 3 batches (drop-path on, so the RNG state matters) killed with SIGKILL by
    the callback ``test_reliability_resume.<kill>`` at ``step``, resumes it with resume=auto,
    runs it uninterrupted, and checks both end with the same weights: (resumed, straight) dirs."""
    common = ["logger=csv", *TINY, "trainer.max_epochs=2", "test=false", "task_name=killed",
              f"paths.log_dir={tmp_path}/logs", "model.drop_path=0.2", *overrides]
    killed = run_cli(*common, f"hydra.run.dir={tmp_path}/logs/killed/runs/1_killed",
                     f"+callbacks.kill._target_=test_reliability_resume.{kill}",
                     f"+callbacks.kill.step={step}",
                     env={"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                                         os.environ.get("PYTHONPATH", "")])})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed, straight = tmp_path / "logs/killed/runs/2_resumed", tmp_path / "straight"
    run_in_process([*common, "resume=auto"], resumed)
    run_in_process(common, straight)
    assert_same_last_weights(resumed, straight)
    return resumed, straight


@pytest.mark.slow
def test_kill9_while_validating_after_a_step_checkpoint_on_the_epochs_last_batch_resumes_exactly(
        tmp_path):
    # step checkpoints every step, 3 steps per epoch: Lightning restores a checkpoint written at
    # an epoch's last batch (before its validation) as a finished epoch, so a run killed during
    # that validation resumed without ever validating the epoch, with the RNG state from before
    # it, and drifted from the uninterrupted run
    resumed, straight = killed_then_resumed_like_straight(
        tmp_path, ["callbacks.step_checkpoint.every_n_train_steps=1"], "SignalWhileValidating", 3)
    assert validated_epochs(straight) == {0, 1}
    assert validated_epochs(resumed) == {0, 1}  # the interrupted validation of epoch 0 ran


@pytest.mark.slow
def test_a_step_checkpoint_due_on_an_epochs_last_batch_is_not_written_inside_the_next_group(
        tmp_path):
    # 3 batches of 4 per epoch, 2 per optimizer step: steps end at batches 2 and 3. Step 2, due
    # for a checkpoint but on the epoch's last batch, was written at the next batch instead, in
    # the middle of an accumulation group: a run killed after it resumed from there, without
    # that batch's gradient, and drifted
    killed_then_resumed_like_straight(
        tmp_path, ["trainer.accumulate_grad_batches=2",
                   "callbacks.step_checkpoint.every_n_train_steps=2"], "SignalAt", 3)


def test_a_run_resumed_from_an_epoch_end_checkpoint_draws_what_the_uninterrupted_run_drew(
        tmp_path):
    # last.ckpt is written at every epoch end: the usual checkpoint resume=auto continues from.
    # Lightning loads the train loader's state (with our RNG states) only mid-epoch, so such a
    # resume drew other drop-path masks than the uninterrupted run and ended elsewhere
    common = ["logger=csv", *TINY, "trainer.max_epochs=2", "test=false", "model.drop_path=0.2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_in_process([*common, "callbacks.model_checkpoint.save_top_k=-1"], straight)
    (first_epoch,) = (straight / "checkpoints").glob("epoch000-*.ckpt")
    run_in_process([*common, f"ckpt_path={first_epoch}"], resumed)
    assert_same_last_weights(resumed, straight)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished 1-epoch run (trained and tested): (run dir, final metrics)."""
    out = tmp_path_factory.mktemp("one_epoch")
    return out, run_in_process(["logger=csv", *TINY, "trainer.max_epochs=1"], out)


def logged_epochs_and_steps(run_dir: Path) -> tuple[set[int], list[int]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss") or r.get("val/acc1")]
    return {int(r["epoch"]) for r in rows}, sorted(int(r["step"]) for r in rows)


def validated_epochs(run_dir: Path) -> set[int]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc1")}


def test_resuming_a_finished_epoch_continues_the_epoch_and_step_counters(one_epoch, tmp_path):
    first, _ = one_epoch
    # training on past the first run's end is allowed, with a word on the lr schedule
    with pytest.warns(UserWarning, match=re.escape("trainer.max_epochs=1 (this run: 2): the lr "
                                                   "schedule is re-computed")):
        run_in_process(["logger=csv", *TINY, "trainer.max_epochs=2", "test=false",
                        f"ckpt_path={first}/checkpoints/last.ckpt"], tmp_path)
    epochs_before, steps_before = logged_epochs_and_steps(first)
    epochs_after, steps_after = logged_epochs_and_steps(tmp_path)
    assert epochs_before == {0} and epochs_after == {1}  # epoch 0 is not repeated
    assert min(steps_after) > max(steps_before)
    state = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 6)


@pytest.mark.parametrize("change, message", [
    ("data.batch_size=16", "data.batch_size=8 (this config: 16)"),
    ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=1 (this config: 2)")])
def test_resuming_with_another_batch_split_is_refused_before_training(one_epoch, tmp_path,
                                                                      change, message):
    """The loader's position is in batches and the lr schedule in optimizer steps: another
    split would skip the wrong samples and move the schedule, silently."""
    first, _ = one_epoch
    last = first / "checkpoints/last.ckpt"
    with pytest.raises(ConfigError, match=re.escape(f"ckpt_path={last} was trained with {message}")):
        run_in_process(["logger=csv", *TINY, "trainer.max_epochs=2", change, f"ckpt_path={last}"],
                       tmp_path)
    assert not (tmp_path / "csv").exists()  # refused before any logger started


@pytest.mark.parametrize("change, message", [
    ("optimizer=sgd", "optimizer.name='adamw' (this config: 'sgd'): its optimizer state"),
    # no decay at all: one parameter group where the checkpoint's optimizer state has two
    ("optimizer.weight_decay=0", "optimizer.weight_decay=0.05 (this config: 0): the parameters "
                                 "fall into 1 optimizer groups of sizes [117]")])
def test_resuming_with_an_optimizer_state_this_config_cannot_take_is_refused(one_epoch, tmp_path,
                                                                          change, message):
    """Lightning failed after the loggers started, with torch's 'loaded state dict has a
    different number of parameter groups' (or, for another optimizer, ran it on Adam's state)."""
    last = one_epoch[0] / "checkpoints/last.ckpt"
    with pytest.raises(ConfigError, match=re.escape(f"ckpt_path={last} was trained with {message}")):
        run_in_process(["logger=csv", *TINY, "trainer.max_epochs=2", change, f"ckpt_path={last}"],
                       tmp_path)
    assert not (tmp_path / "csv").exists()  # refused before any logger started


def test_resuming_with_other_settings_says_which_take_effect(one_epoch, tmp_path):
    """A changed optimizer.lr had no effect and no word: the optimizer's state and the lr
    schedule's base lr come from the checkpoint. The schedule's own keys and the model's
    regularisation do take effect."""
    last = one_epoch[0] / "checkpoints/last.ckpt"
    with pytest.warns(UserWarning) as warned:
        run_in_process(["logger=csv", *TINY, "trainer.max_epochs=2", "test=false",
                        "optimizer.lr=1e-5", "optimizer.betas=[0.8,0.9]", "scheduler.min_lr=1e-4",
                        "model.drop_path=0.2", f"ckpt_path={last}"], tmp_path)
    (message,) = [str(w.message) for w in warned if "settings than this config" in str(w.message)]
    assert message == (
        f"ckpt_path={last} was trained with other settings than this config. No effect on this "
        "resume, as the weights, the optimizer's state and the lr schedule's base lr come from "
        "the checkpoint: optimizer.lr=0.002 (this config: 1e-05), optimizer.betas=[0.9, 0.999] "
        "(this config: [0.8, 0.9]); to train with them, start a new run from its weights with "
        "model.pretrained=<file>. Taking effect from the resumed step on: model.drop_path=None "
        "(this config: 0.2), scheduler.min_lr=1e-05 (this config: 0.0001)")
    resumed = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert resumed["lr_schedulers"][0]["base_lrs"] == [2e-3 * 8 / 64] * 2  # what the warning says
    assert [g["betas"] for g in resumed["optimizer_states"][0]["param_groups"]] == [(0.9, 0.999)] * 2


def test_a_resume_of_the_same_length_says_nothing_about_the_schedule(one_epoch, recwarn):
    first, _ = one_epoch
    ckpt = torch.load(first / "checkpoints/last.ckpt", weights_only=True)
    length = ckpt[LENGTH_KEY]
    assert length == {"trainer.max_epochs": 1, "trainer.max_steps": -1,
                      "trainer.limit_train_batches": 3}
    warn_length_change(ckpt, "last.ckpt", length)
    assert not [w for w in recwarn if "lr schedule" in str(w.message)]
    with pytest.warns(UserWarning, match=re.escape("trainer.max_steps=-1 (this run: 50)")):
        warn_length_change(ckpt, "last.ckpt", {**length, "trainer.max_steps": 50})


def test_eval_mode_reproduces_the_test_accuracy_logged_after_training(one_epoch, tmp_path):
    first, trained = one_epoch
    best = next((first / "checkpoints").glob("epoch*.ckpt"))
    evaluated = run_in_process(["logger=csv", *TINY, "train=false", f"ckpt_path={best}"], tmp_path)
    assert evaluated["test/acc1"] == pytest.approx(trained["test/acc1"], abs=1e-4)
    assert evaluated["test/loss"] == pytest.approx(trained["test/loss"], abs=1e-4)
    assert not (tmp_path / "checkpoints").exists()  # evaluation writes no checkpoints


def test_eval_mode_summary_names_the_evaluated_checkpoint(one_epoch, tmp_path, capsys):
    """Evaluating last.ckpt must not report the training run's best file as this run's."""
    first, _ = one_epoch
    last = first / "checkpoints/last.ckpt"
    run_in_process(["logger=csv", *TINY, "train=false", f"ckpt_path={last}"], tmp_path)
    outputs = capsys.readouterr().out.split("Outputs\n", 1)[1]
    assert re.search(rf"^  tested ckpt\s+{re.escape(str(last))}$", outputs, re.M), outputs
    assert "best ckpt" not in outputs and "epoch000" not in outputs


def fake_checkpoint(path: Path, age_s: float, good: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if good:
        torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    else:
        path.write_bytes(b"truncated")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_resume_auto_takes_the_newest_usable_checkpoint_of_the_same_task(tmp_path):
    logs = tmp_path / "logs"
    fake_checkpoint(logs / "cvt/runs/a/checkpoints/last.ckpt", age_s=300)
    newest = fake_checkpoint(logs / "cvt/runs/b/hpc_ckpt_1.ckpt", age_s=200)  # SLURM requeue
    fake_checkpoint(logs / "cvt/runs/c/checkpoints/last.ckpt", age_s=100, good=False)
    fake_checkpoint(logs / "other/runs/d/checkpoints/last.ckpt", age_s=0)  # another task
    current = fake_checkpoint(logs / "cvt/runs/now/checkpoints/last.ckpt", age_s=0)
    with pytest.warns(UserWarning, match="resume=auto: skipping .*runs/c/checkpoints/last.ckpt"):
        assert find_resume_checkpoint(logs, "cvt", exclude=current.parents[1]) == str(newest)
    assert find_resume_checkpoint(logs, "new_task") is None


def test_resume_auto_with_only_unreadable_checkpoints_refuses_to_start_afresh(tmp_path):
    """It said 'no checkpoint under ... yet: starting a fresh run', throwing the run's
    progress away (a requeued job would train from scratch) and contradicting its warning."""
    logs = tmp_path / "logs"
    bad = fake_checkpoint(logs / "cvt/runs/a/checkpoints/last.ckpt", age_s=100, good=False)
    with pytest.warns(UserWarning, match="resume=auto: skipping"), \
            pytest.raises(ConfigError) as err:
        find_resume_checkpoint(logs, "cvt")
    assert str(err.value) == (
        f"resume=auto: no usable checkpoint under {logs / 'cvt/runs'}: 1 found, none readable "
        f"({bad}; the warnings above say why). Resume from another file with ckpt_path=<file>, "
        "or start a fresh run without resume=auto (or with another task_name)")


def test_train_order_depends_only_on_seed_and_epoch():
    data = list(range(40))
    order = lambda epoch, seed=0: (s := ResumableSampler(data, seed=seed), s.set_epoch(epoch), list(s))[2]
    assert order(3) == order(3) and sorted(order(3)) == data
    assert order(3) != order(4) and order(3) != order(3, seed=1)
    shards = [list(ResumableSampler(data, num_replicas=2, rank=r, seed=0)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == data  # DDP: each rank its half


def test_loader_state_skips_the_batches_already_trained_on():
    data = list(range(20))
    loader = ResumableLoader(data, sampler=ResumableSampler(data, seed=5), batch_size=4,
                             generator=torch.Generator().manual_seed(0))
    loader.sampler.set_epoch(2)
    batches = iter(loader)
    seen = [next(batches), next(batches)]
    state = loader.state_dict()
    rest = list(batches)
    assert (state["epoch"], state["batches"]) == (2, 2)

    fresh = ResumableLoader(data, sampler=ResumableSampler(data, seed=5), batch_size=4,
                            generator=torch.Generator().manual_seed(0))
    fresh.load_state_dict(state)
    torch.manual_seed(123)  # the RNG state of the moment is restored at the first fetch
    resumed = list(fresh)
    assert [b.tolist() for b in resumed] == [b.tolist() for b in rest]
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    assert len(seen) + len(resumed) == len(fresh)
    fresh.sampler.set_epoch(3)  # the skip applies to the interrupted epoch only
    assert len(list(fresh)) == 5


def test_random_crops_are_replayed_exactly_when_an_epoch_is_resumed(tmp_path):
    cfg = compose_config(["augment=basic", "augment.hflip=0.5", "data.batch_size=16"], tmp_path)

    def loader():
        dm = ImageDataModule(OmegaConf.to_container(cfg.data, resolve=True),
                             OmegaConf.to_container(cfg.augment, resolve=True), seed=7)
        dm.setup("fit")
        return dm.train_dataloader()

    first = loader()
    first.sampler.set_epoch(1)
    batches = iter(first)
    next(batches), next(batches)
    state = first.state_dict()
    rest = [images for images, _, _ in batches]

    resumed = loader()  # a new process would build it like this
    resumed.load_state_dict(state)
    replay = [images for images, _, _ in resumed]
    assert len(replay) == len(rest) > 0
    assert all(torch.equal(a, b) for a, b in zip(replay, rest))

    dataset = resumed.dataset  # one image: the same crop for the same (epoch, index) ...
    assert torch.equal(dataset[(1, 0)][0], dataset[(1, 0)][0])
    assert not torch.equal(dataset[(1, 0)][0], dataset[(2, 0)][0])  # ... another next epoch


def test_a_checkpoint_carries_the_best_val_accuracy_into_the_resumed_run(one_epoch):
    """val/acc1_best (the sweep objective) must not restart from the resumed epochs."""
    first, trained = one_epoch
    ckpt = torch.load(first / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    resumed = CvTModule(**ckpt["hyper_parameters"])
    resumed.on_load_checkpoint(ckpt)  # what Lightning calls when fit resumes from ckpt_path
    resumed.val_acc1_best.update(torch.tensor(0.0))  # a worse epoch after the resume
    assert resumed.val_acc1_best.compute().item() == pytest.approx(trained["val/acc1_best"])


def test_resuming_a_finished_run_still_reports_its_best_val_accuracy(one_epoch, tmp_path):
    """A resume with nothing left to train runs no validation, so Lightning logs no
    val/acc1_best: the final metrics (a sweep's objective) must still carry the restored one."""
    first, trained = one_epoch
    metrics = run_in_process(["logger=csv", *TINY, "trainer.max_epochs=1",
                              f"ckpt_path={first}/checkpoints/last.ckpt"], tmp_path)
    assert metrics["val/acc1_best"] == pytest.approx(trained["val/acc1_best"])
    assert "test/acc1" in metrics


def test_the_test_after_a_resume_uses_the_best_checkpoint_of_the_whole_run(one_epoch, tmp_path):
    """The resumed run writes to a new dir: its first epoch must not become the best (and be
    the one tested) unless it beats the epochs before the interruption."""
    first, trained = one_epoch
    (best,) = (first / "checkpoints").glob("epoch*.ckpt")
    ckpt = torch.load(first / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    perfect = torch.tensor(1.0)  # as if epoch 0 had scored 100%: no later epoch can beat it
    (state,) = [s for s in ckpt["callbacks"].values() if s.get("monitor") == "val/acc1"]
    state.update(best_model_score=perfect, kth_value=perfect, best_k_models={str(best): perfect})
    ckpt[BEST_KEY] = perfect
    torch.save(ckpt, tmp_path / "interrupted.ckpt")

    resumed = run_in_process(["logger=csv", *TINY, "trainer.max_epochs=2",
                              f"ckpt_path={tmp_path / 'interrupted.ckpt'}"], tmp_path / "resumed")
    assert not list((tmp_path / "resumed/checkpoints").glob("epoch*.ckpt"))  # no new best
    assert best.is_file()
    assert resumed["test/acc1"] == pytest.approx(trained["test/acc1"], abs=1e-6)  # epoch 0 tested
    assert resumed["test/loss"] == pytest.approx(trained["test/loss"], abs=1e-6)


def refused_evaluation(one_epoch, tmp_path: Path, *overrides: str) -> tuple[Path, str]:
    """Evaluate the one-epoch run's last.ckpt under ``overrides``, which must be refused before
    any logger starts: (that checkpoint, the ConfigError's message)."""
    last = one_epoch[0] / "checkpoints/last.ckpt"
    with pytest.raises(ConfigError) as refused:
        run_in_process(["logger=csv", *TINY, "train=false", f"ckpt_path={last}", *overrides],
                       tmp_path)
    assert not (tmp_path / "csv").exists()  # refused before any logger started
    return last, str(refused.value)


def test_a_checkpoint_of_another_model_is_refused_naming_what_differs(one_epoch, tmp_path):
    last, message = refused_evaluation(one_epoch, tmp_path, "model.depths=[1,1,1]",
                                       "ema_decay=0.999")
    assert message.startswith(f"ckpt_path={last} holds another model than this config builds")
    assert "model.depths=None (this config: [1, 1, 1])" in message
    assert "ema_decay=None (this config: 0.999)" in message


def test_a_checkpoint_of_another_network_with_the_same_weights_is_refused(one_epoch, tmp_path):
    # the activation and the strides leave no trace in the weights: a run fine-tuned from
    # transformers weights (exact GELU, chosen by model.pretrained) evaluated without
    # model.pretrained ran with QuickGELU, silently reporting another network's accuracy
    last, message = refused_evaluation(one_epoch, tmp_path, "model.activation=gelu",
                                       "model.stride_kv=1")
    assert message == (
        f"ckpt_path={last} was trained as another network than this config builds: "
        "model.stride_kv=[2, 2, 2] (this config: [1, 1, 1]); model.activation='quick_gelu' "
        "(this config: 'gelu'). Its weights fit, but the outputs would differ: set these "
        "values, or give the model overrides of its training run (its run dir's "
        ".hydra/overrides.yaml; a run from transformers weights takes model.activation=gelu "
        "from its model.pretrained)")
