"""The main job end to end: in-process smoke run and the real CLI on the embedded data."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import compose_config, run_cli
from cvt_lab.data import ImageDataModule
from cvt_lab.models import create_model, export_hf
from cvt_lab.module import CvTModule
from cvt_lab.train import plain, run
from cvt_lab.validate import ConfigError
from model_helpers import randomise_bn


def test_fast_dev_run_trains_and_tests_one_batch(tmp_path, recwarn):
    cfg = compose_config(["debug=fast_dev_run"], tmp_path)  # as typed: no logger at all
    metrics = run(cfg)
    assert 0.0 <= metrics["test/acc1"] <= 1.0
    assert metrics["train/loss"] > 0
    # its one step is inside any warmup: a smoke test gets no warning on its lr schedule
    assert not [w for w in recwarn if "covers the whole run" in str(w.message)]


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


# ------------------------------------------------ published weights (model.pretrained=...)

DEPTHS = "model.depths=[1,2,3]"


def published(tmp_path: Path, num_classes: int) -> tuple[Path, torch.nn.Module]:
    """A transformers-format directory of a random cvt_tiny (as on the hub), and its network
    (depths [1, 2, 3]: transformers' CvT needs more blocks in stage i than i)."""
    torch.manual_seed(3)
    net = create_model("cvt_tiny", num_classes=num_classes, activation="gelu", depths=(1, 2, 3)).eval()
    randomise_bn(net)
    return export_hf(net, tmp_path / f"hub{num_classes}"), net


def hand_top1(cfg, net: torch.nn.Module) -> float:
    """The reference: ``net``'s top-1 accuracy by hand over the config's test split."""
    datamodule = ImageDataModule(plain(cfg.data), plain(cfg.augment), seed=cfg.seed)
    datamodule.setup("test")
    right = seen = 0
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            images, _, labels = datamodule.on_after_batch_transfer(batch, 0)
            right += int((net(images).argmax(1) == labels).sum())
            seen += len(labels)
    assert seen > 100
    return right / seen


def test_published_weights_are_evaluated_as_they_are(tmp_path):
    path, net = published(tmp_path, 10)  # the embedded digits have 10 classes
    cfg = compose_config(["logger=csv", "train=false", f"model.pretrained={path}", DEPTHS], tmp_path / "run")
    metrics = run(cfg)
    assert metrics["test/acc1"] == pytest.approx(hand_top1(cfg, net), abs=1e-6)


def test_published_weights_of_another_label_set_are_not_evaluated_with_a_new_head(tmp_path):
    path, _ = published(tmp_path, 7)
    with pytest.raises(ConfigError, match=r"its classifier has 7 classes but the data 10, so the "
                                          r"test would run a new, untrained head"):
        run(compose_config(["logger=csv", "train=false", f"model.pretrained={path}", DEPTHS],
                           tmp_path / "run"))
    assert not (tmp_path / "run" / "csv").exists()  # refused before anything was written


def test_fine_tuning_starts_from_the_published_weights_with_a_new_head(tmp_path):
    # python run.py model.pretrained=<dir> ...: an lr too small to move fp32 weights shows
    # what training started from
    path, net = published(tmp_path, 7)
    run(compose_config(["logger=csv", f"model.pretrained={path}", DEPTHS, "optimizer.lr=1e-30", "scheduler=constant",
                        "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                        "+trainer.limit_val_batches=1", "test=false"], tmp_path / "run"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for name, weight in net.named_parameters():
        if name.startswith("head."):
            assert state[f"net.{name}"].shape[0] == 10  # the data's classes
        else:
            torch.testing.assert_close(state[f"net.{name}"], weight, rtol=0, atol=1e-20, msg=name)
    # the fine-tuned checkpoint stands alone: it loads with the pretrained weights gone (no
    # re-read of them, no 'classifier reset'), into the very architecture it was trained as
    shutil.rmtree(path)
    restored = CvTModule.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt",
                                              weights_only=True)
    assert restored.net.config == create_model("cvt_tiny", num_classes=10, activation="gelu",
                                               depths=(1, 2, 3)).config
    for name, value in restored.net.state_dict().items():
        assert torch.equal(value, state[f"net.{name}"]), name


def test_the_logged_git_commit_is_the_codes_even_when_run_from_elsewhere(tmp_path, monkeypatch):
    """Started from a directory outside the checkout, the run logged git_commit 'unknown' (or
    the commit of whatever repository the shell stood in): git ran in the working directory."""
    import subprocess

    import yaml

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                          capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.chdir(tmp_path)  # not a git repository
    run(compose_config(["logger=csv", "debug=fast_dev_run"], tmp_path))
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["git_commit"].removesuffix("-dirty") == head


# ------------------------------------------------ the test after training, and the summary

SHORT = ["logger=csv", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
         "+trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
         "callbacks.progress_bar.refresh_rate=0"]


@pytest.mark.parametrize("overrides", [["+trainer.limit_val_batches=1"],
                                       ["+trainer.limit_val_batches=1", "~callbacks.model_checkpoint"],
                                       ["+trainer.limit_val_batches=0"]],
                         ids=["best", "no-best-callback", "no-validation"])
def test_the_summary_names_the_weights_the_test_after_training_used(tmp_path, capsys, overrides):
    run(compose_config([*SHORT, *overrides], tmp_path))
    outputs = capsys.readouterr().out.split("Outputs\n", 1)[1]
    best = list((tmp_path / "checkpoints").glob("epoch*.ckpt"))
    if overrides == ["+trainer.limit_val_batches=1"]:
        assert len(best) == 1
        for label in ("best ckpt", "tested ckpt"):
            assert re.search(rf"^  {label}\s+{re.escape(str(best[0]))}$", outputs, re.M), outputs
    else:  # no checkpoint chosen by val/acc1: the test ran on the weights training ended with,
        assert not best  # and last.ckpt is not called the best one
        assert "best ckpt" not in outputs and "tested ckpt" not in outputs, outputs
        assert re.search(r"^  tested weights\s+the final ones \(no best checkpoint\)$",
                         outputs, re.M), outputs


def test_a_fine_tuned_checkpoint_is_evaluated_without_the_pretrained_weights_it_started_from(tmp_path):
    # python run.py <the fine-tuning overrides> train=false ckpt_path=<its ckpt>: the checkpoint's
    # weights replace model.pretrained's, so those are not read (gone here; offline: a Hub id)
    path, _ = published(tmp_path, 7)
    tuned = [f"model.pretrained={path}", DEPTHS]
    run(compose_config([*SHORT, *tuned, "+trainer.limit_val_batches=1", "test=false"], tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    shutil.rmtree(path)
    cfg = compose_config(["logger=csv", *tuned, "train=false", f"ckpt_path={last}"], tmp_path / "eval")
    metrics = run(cfg)
    net = CvTModule.load_from_checkpoint(last, weights_only=True).net.eval()
    assert net.config.activation == "gelu"  # as the transformers weights it started from
    assert metrics["test/acc1"] == pytest.approx(hand_top1(cfg, net), abs=1e-6)


def test_validate_knows_every_metric_a_run_logs(tmp_path):
    # validate.LOGGED_METRICS refuses a mistyped optimized_metric or checkpoint monitor: it must
    # list exactly what a run logs (the lr monitor's lr-* aside)
    from cvt_lab.validate import LOGGED_METRICS

    returned = run(compose_config([*SHORT, "+trainer.limit_val_batches=1"], tmp_path))
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        columns = next(csv.reader(f))
    logged = {c for c in [*columns, *returned] if c not in ("epoch", "step") and not c.startswith("lr-")}
    assert logged == set(LOGGED_METRICS)
