"""Hardware strategies: clear errors before training for settings that cannot run, and real
DDP (2 CPU processes over gloo) through run.py with one run dir, one W&B run and metrics
gathered over both ranks."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from conftest import ROOT, compose_config, run_cli
from data_helpers import make_folder
from cvt_lab.data import ImageDataModule
from cvt_lab.hardware import HardwareError, validate_hardware, world_size
from cvt_lab.models import create_model
from cvt_lab.module import CvTModule
from cvt_lab.train import plain, run


def check(*overrides: str) -> None:
    validate_hardware(compose_config(list(overrides)))


@pytest.mark.parametrize("overrides", [
    [],
    ["trainer=ddp_cpu"],                                              # 64 = 2 x 32
    ["trainer=ddp_cpu", "trainer.accumulate_grad_batches=4"],        # 64 = 2 x 4 x 8
    ["trainer.precision=bf16-mixed", "channels_last=true"],
    ["trainer.precision=bf16-mixed", "ema_decay=0.9999"],
    ["trainer.precision=bf16-true"],
    ["compile=true"],
    ["trainer=ddp_cpu", "hydra.mode=MULTIRUN", "trainer.strategy=ddp_spawn", "~logger.csv"],
    ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "logger=csv", "test=false"],
])
def test_settings_that_run_here_pass(overrides):
    check(*overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer=ddp_cpu", "data.batch_size=63"],
     "data.batch_size=63 (the global batch per optimizer step) does not split evenly over 2 "
     "device(s) x trainer.accumulate_grad_batches=1; use a multiple of 2, e.g. data.batch_size=62"),
    (["trainer.accumulate_grad_batches=4", "data.batch_size=30"],
     "use a multiple of 4, e.g. data.batch_size=28"),
    (["trainer.precision=16-mixed"],
     "trainer.precision=16-mixed (float16 autocast with a gradient scaler) needs a CUDA GPU; "
     "on the CPU use trainer.precision=bf16-mixed or 32-true"),
    # failed only at Trainer(...), after the model (and any pretrained weights) was built
    (["trainer.precision=17"],
     "trainer.precision=17 is not a precision Lightning knows; use one of 32-true, bf16-mixed, "
     "16-mixed (GPU), bf16-true, 16-true, 64-true"),
    (["trainer=ddp_cpu", "trainer.sync_batchnorm=true"],
     "trainer.sync_batchnorm=true needs GPUs"),
    # trained, but the EMA held in bfloat16 dropped most updates: 5x less drift than in fp32
    (["trainer.precision=bf16-true", "ema_decay=0.9999"],
     "ema_decay=0.9999 with trainer.precision=bf16-true: the EMA weights would be held in "
     "bfloat16, whose 8-bit mantissa rounds away most updates of 0.0001 x the change, so they "
     "stay near the first weights; use trainer.precision=bf16-mixed (fp32 weights) or "
     "ema_decay=null"),
    (["trainer=ddp_cpu", "hydra.mode=MULTIRUN"],
     "use trainer.strategy=ddp_spawn with ~logger.csv for local sweeps"),
    # trained, then failed as the test began (ValueError: dict contains fields not in fieldnames)
    (["trainer=ddp_cpu", "trainer.strategy=ddp_spawn"],
     "trainer.strategy=ddp_spawn with the CSV logger fails when the test starts after training"),
    (["trainer=ddp_cpu", "hydra.mode=MULTIRUN", "trainer.strategy=ddp_spawn", "logger=csv"],
     "drop the CSV logger with ~logger.csv"),
])
def test_settings_that_cannot_run_fail_with_the_fix(overrides, message):
    with pytest.raises(HardwareError, match=re.escape(message)):
        check(*overrides)


def test_a_multirun_with_several_devices_and_no_strategy_is_refused_like_ddp():
    # strategy=auto with 2 devices is Lightning's "ddp": each child re-ran the whole sweep
    with pytest.raises(HardwareError, match=re.escape(
            "trainer.strategy=auto (ddp for 2 processes) inside a multirun (-m) re-runs the "
            "command line")):
        check("trainer=cpu", "trainer.devices=2", "hydra.mode=MULTIRUN")
    check("trainer=cpu", "trainer.devices=2", "hydra.mode=MULTIRUN",
          "+trainer.strategy=ddp_spawn", "~logger.csv")


@pytest.mark.parametrize("devices", ["-1", "[0,1]"])
def test_cpu_devices_other_than_a_process_count_fail_before_the_trainer(devices, monkeypatch):
    # Lightning took -1 ("all devices") and device indices only for GPUs: on the CPU they
    # raised TypeError at Trainer(...), after the data and the model were built
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for accelerator in ("cpu", "auto"):
        with pytest.raises(HardwareError, match=re.escape(
                "on the CPU trainer.devices is the number of processes (an integer >= 1, or "
                "auto = 1), not -1 or device indices; use e.g. trainer.devices=2")):
            check(f"trainer.devices={devices}", f"trainer.accelerator={accelerator}")


def test_gpu_trainer_without_cuda_names_the_cpu_trainers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HardwareError, match=r"no CUDA GPU is visible .*use trainer=cpu"):
        check("trainer=gpu")
    with pytest.raises(HardwareError, match="no CUDA GPU is visible"):
        check("trainer=ddp")


def test_bf16_on_a_gpu_without_native_bf16_names_16_mixed(monkeypatch):
    # a V100 (compute capability 7.0) creates bf16 tensors, so torch.cuda.is_bf16_supported()
    # says True ("including emulation"), and bf16-mixed ran there emulated, without a word
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(major=7))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)
    with pytest.raises(HardwareError, match=re.escape(
            "trainer.precision=bf16-mixed: this GPU (Tesla V100-SXM2-32GB) has no bfloat16 "
            "support (it needs compute capability 8.0+, e.g. A100/H100); use "
            "trainer.precision=16-mixed")):
        check("trainer=gpu")
    check("trainer=gpu", "trainer.precision=16-mixed")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(major=8))
    check("trainer=gpu")  # an A100


def test_compile_without_a_cpp_compiler_fails_unless_the_backend_needs_none(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(HardwareError, match="compile=true needs a C\\+\\+ compiler"):
        check("compile=true")
    check("compile={backend:aot_eager}")  # torch.compile kwargs: this backend generates no code


def test_torchrun_or_srun_processes_need_one_shared_run_dir(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    with pytest.raises(HardwareError, match=r"add hydra.run.dir=logs/<name>/runs/<id>"):
        check("trainer=ddp_cpu")
    check("trainer=ddp_cpu", "hydra.run.dir=/tmp/shared_run")
    check("trainer=cpu")  # one process: nothing to share


def test_several_nodes_need_a_launcher_that_starts_the_others(monkeypatch):
    # started by hand, rank 0 waited (30 min, torch's default) for the other nodes' processes
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "LSB_JOBID", "NODE_RANK", "GROUP_RANK",
                 "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(HardwareError, match=re.escape(
            "trainer.num_nodes=2 but no launcher started this run on the nodes (SLURM: srun or "
            "hydra/launcher=slurm; torchrun; LSF; MPI; or NODE_RANK and MASTER_ADDR set by "
            "hand): it would wait for the other nodes' processes until the timeout; start it "
            "on every node, e.g. torchrun --nnodes 2")):
        check("trainer=ddp_cpu", "trainer.num_nodes=2", "data.batch_size=64")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")  # torchrun
    check("trainer=ddp_cpu", "trainer.num_nodes=2", "hydra.run.dir=/tmp/shared_run")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("NODE_RANK", "1")  # by hand: Lightning's own environment variables
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    check("trainer=ddp_cpu", "trainer.num_nodes=2")


def test_slurm_tasks_must_be_the_trainers_processes(monkeypatch):
    # hydra/launcher=slurm starts 8 tasks per node by default: with a one-process trainer each
    # task ran the whole training again (same run dir, same GPU)
    monkeypatch.setenv("SLURM_JOB_NAME", "cvt")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    check("hydra/launcher=slurm", "hydra.mode=MULTIRUN")  # an sbatch script's shell, not srun
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")  # srun's 8 tasks, one process each
    with pytest.raises(HardwareError, match=r"SLURM started 8 tasks .* 1 process.*"
                                            r"hydra.launcher.tasks_per_node=1"):
        check("hydra/launcher=slurm", "hydra.mode=MULTIRUN")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    check("trainer=ddp_cpu", "hydra/launcher=slurm", "hydra.mode=MULTIRUN")  # a task per rank
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # salloc's shell: Lightning ignores SLURM
    check("hydra/launcher=slurm", "hydra.mode=MULTIRUN")


def test_world_size_counts_devices_times_nodes():
    assert world_size({"accelerator": "cpu", "devices": 2, "num_nodes": 3}) == 6
    assert world_size({"accelerator": "cpu", "devices": "auto"}) == 1
    assert world_size({"accelerator": "cpu", "devices": [0, 1, 2]}) == 3
    # as run.py passes it: a list from the command line is an OmegaConf ListConfig
    assert world_size(compose_config(["trainer.devices=[0,1]"]).trainer) == 2


def test_run_rejects_a_bad_batch_split_before_any_work(make_cfg, tmp_path):
    cfg = make_cfg("trainer=ddp_cpu", "data.batch_size=63")
    with pytest.raises(HardwareError, match="data.batch_size=63"):
        run(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_ddp_cpu_run_writes_one_run_and_reports_metrics_over_both_ranks(tmp_path):
    logs = tmp_path / "logs"
    result = run_cli("trainer=ddp_cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
                     f"paths.log_dir={logs}")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "MEMBER: 2/2" in out  # really two processes

    (run_dir,) = (logs / "train" / "runs").iterdir()  # the children wrote into the parent's dir
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert out.count("Final metrics") == 1  # rank zero only
    # rank 1 ended with a traceback after the summary (it asked its dummy W&B run for a dir)
    assert "Traceback" not in out and "Error executing job" not in out, out[-3000:]
    # the lr schedule's warning (5 warmup epochs of 3 steps' run) comes once, not once a rank
    assert out.count("covers the whole run") == 1
    # train/acc1 is gathered over the ranks: no Lightning advice to sync it
    assert "self.log('train/acc1', ..., sync_dist=True)" not in out
    assert "self.log('train/img_per_sec', ..., sync_dist=True)" not in out  # averaged over ranks

    with open(run_dir / "csv" / "metrics.csv") as f:
        logged = [float(r["test/acc1"]) for r in csv.DictReader(f) if r.get("test/acc1")]
    assert len(logged) == 1

    # The logged accuracy is over the whole test split, not rank 0's half of it
    cfg = compose_config([])
    datamodule = ImageDataModule(plain(cfg.data), plain(cfg.augment), seed=cfg.seed)
    module = CvTModule.load_from_checkpoint(best, weights_only=True)
    evaluator = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False)
    (full,) = evaluator.test(module, datamodule=datamodule, verbose=False)
    assert len(datamodule.splits["test"]) % 2 == 0  # no DistributedSampler padding to undo
    assert logged[0] == pytest.approx(full["test/acc1"], abs=1e-6)


@pytest.mark.slow
def test_ddp_notes_on_the_config_data_and_weights_are_printed_once(tmp_path):
    """The preset's image size, the folder's stray file, the missing test split, the local
    'streaming' and the reset classifier were each printed by both ranks."""
    root = make_folder(tmp_path / "pets", {"train": 4, "val": 2})  # no test/: test on val
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    weights = tmp_path / "cvt13_10_classes.pth"  # a 10-class head for the 3 classes: reset
    torch.save(create_model("cvt13", num_classes=10).state_dict(), weights)
    proc = run_cli("trainer=ddp_cpu", "logger=csv", "model=cvt13_384", f"model.pretrained={weights}",
                   "data=folder", f"data.root={root}", "data.test_size=null", "data.streaming=true",
                   "data.skip_corrupt=true", "data.image_size=32", "data.batch_size=4",
                   "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}",
                   "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
                   "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
                   f"hydra.run.dir={tmp_path / 'run'}", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "MEMBER: 2/2" in out  # really two processes
    for note in ("model=cvt13_384 is the 384 px preset",
                 f"skipping 1 item(s) in {root} that are not images in class folders",
                 "folder has no test split: testing on the validation split",
                 "data.streaming=true: folder is read from local files as needed, not streamed",
                 "classifier reset: the checkpoint has 10 classes, the model a new head with 3"):
        assert out.count(note) == 1, (note, out[-3000:])


@pytest.mark.slow
def test_torchrun_processes_train_together_in_the_run_dir_they_are_given(tmp_path):
    # what trainer=multinode does on each node: torchrun starts the processes and Lightning's
    # TorchElasticEnvironment reads their ranks (run.py is not re-launched)
    run_dir = tmp_path / "shared"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node=2", str(ROOT / "run.py"),
         "trainer=ddp_cpu", "logger=csv", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
         "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
        timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    assert out.count("Final metrics") == 1
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("cuda", [False, True])
def test_tests_marked_gpu_are_skipped_only_without_cuda(cuda, monkeypatch):
    # README and the marker say "skipped without CUDA", but nothing skipped them: a test
    # marked gpu ran, and failed, on a CPU-only machine
    from types import SimpleNamespace

    from conftest import pytest_collection_modifyitems

    items = [SimpleNamespace(keywords={"gpu": True}, marks=[]), SimpleNamespace(keywords={}, marks=[])]
    for item in items:
        item.add_marker = item.marks.append
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    pytest_collection_modifyitems(None, items)
    assert [m.name for m in items[0].marks] == ([] if cuda else ["skip"])
    assert items[1].marks == []
