"""Sweeps through the real CLI: Hydra multirun, a failing job, the Optuna sweeper, the report."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from conftest import compose_config, run_cli
from cvt_lab import report
from cvt_lab import sweep as sweep_module

TINY = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0"]
HAS_MACS = importlib.util.find_spec("cvt_lab.models.flops") is not None


def sweep(tmp_path, *args: str):
    out = tmp_path / "sweep"
    proc = run_cli(*args, *TINY, f"hydra.sweep.dir={out}")
    return proc, out


def test_a_sweep_with_the_default_dirs_runs_into_logs_multiruns(tmp_path):
    """As the README types it (no hydra.sweep.dir): the sweep dir must resolve before any job."""
    proc = run_cli("-m", "seed=1", "debug=fast_dev_run", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = list((tmp_path / "logs" / "train" / "multiruns").glob("*/0/metrics.json"))
    assert len(jobs) == 1 and json.loads(jobs[0].read_text())["test/acc1"] >= 0


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    proc, out = sweep(tmp_path_factory.mktemp("lr"), "-m", "optimizer.lr=1e-3,3e-3", "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_multirun_gives_each_job_its_dir_and_the_report_one_row_each(lr_sweep, tmp_path):
    jobs = sorted(p.name for p in lr_sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, lr in (("0", 1e-3), ("1", 3e-3)):
        cfg = yaml.safe_load((lr_sweep / job / ".hydra" / "config.yaml").read_text())
        assert cfg["optimizer"]["lr"] == lr
    result = report.report(lr_sweep, out_dir=tmp_path, wandb_mode="disabled")
    headers, rows = result["headers"], result["rows"]
    assert len(rows) == 2
    col = {h: i for i, h in enumerate(headers)}
    assert [r[col["overrides"]] for r in rows] == ["optimizer.lr=0.001", "optimizer.lr=0.003"]
    assert [r[col["status"]] for r in rows] == ["ok", "ok"]
    for job, row in zip(("0", "1"), rows):
        metrics = json.loads((lr_sweep / job / "metrics.json").read_text())
        assert row[col["best val top-1 %"]] == pytest.approx(100 * metrics["val/acc1_best"])
        assert row[col["test top-1 %"]] == pytest.approx(100 * metrics["test/acc1"])
        assert row[col["last epoch train loss"]] == pytest.approx(metrics["train/loss_epoch"])
        assert row[col["train img/s"]] > 0
        assert row[col["params"]] == 566_218  # cvt_tiny, 10 classes
        assert (row[col["MACs (M)"]] > 0) if HAS_MACS else row[col["MACs (M)"]] is None
    # the CSV carries the same numbers; the markdown one line per job; the PNG is an image
    with (tmp_path / "report.csv").open() as f:
        table = list(csv.DictReader(f))
    best = col["best val top-1 %"]
    assert [float(r["best val top-1 %"]) for r in table] == [r[best] for r in rows]
    md = (tmp_path / "report.md").read_text()
    assert md.count("| optimizer.lr=") == 2 and "Common overrides:" in md
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_falls_back_to_the_csv_log_of_a_job_killed_before_its_summary(lr_sweep, tmp_path):
    import shutil

    copy = tmp_path / "killed"
    shutil.copytree(lr_sweep, copy, ignore=shutil.ignore_patterns("checkpoints"))
    summary = json.loads((copy / "1" / "metrics.json").read_text())
    (copy / "1" / "metrics.json").unlink()  # as if killed after the last epoch was logged
    jobs = report.collect(copy)
    assert [j.status for j in jobs] == ["ok", "incomplete"]
    assert jobs[1].metrics["val/acc1_best"] == pytest.approx(summary["val/acc1_best"])


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep_and_wandb_runs_stay_apart(tmp_path):
    # job 0 fails inside fit, after its W&B run started (an lr of 1e30 without warmup makes the
    # second step's loss NaN: the guard stops the job); job 1 must still train, in its own run
    proc, out = sweep(tmp_path, "-m", "optimizer.lr=1e30,1e-3", "scheduler=constant",
                      "logger=default", "task_name=failing")
    assert proc.returncode != 0  # Hydra reports the failure at the end ...
    failed = json.loads((out / "0" / "failed.json").read_text())
    nan_stop = "NonFiniteError: the training loss is nan at step 1 (epoch 0, batch 1)"
    assert failed["error"].startswith(nan_stop)
    assert "Traceback" in failed["traceback"]
    assert not (out / "0" / "metrics.json").exists()
    # ... after job 1 finished
    assert json.loads((out / "1" / "metrics.json").read_text())["val/acc1_best"] >= 0
    run0 = list((out / "0" / "wandb").glob("offline-run-*"))
    run1 = list((out / "1" / "wandb").glob("offline-run-*"))
    assert len(run0) == 1 and len(run1) == 1 and run0[0].name[-8:] != run1[0].name[-8:]
    wandb_bytes = next(run1[0].glob("*.wandb")).read_bytes()
    assert b"failing-sweep" in wandb_bytes  # W&B group = <task_name>-<sweep dir name>

    # the report lists the failure beside the finished job and logs the table to W&B (offline)
    result = report.report(out, wandb_mode="offline")
    assert [j.status for j in result["jobs"]] == ["failed", "ok"]
    assert f"- 0 (failed): {nan_stop}" in result["markdown"]
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/report_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"] == result["headers"] and len(logged["data"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="needs the [sweep] extra (hydra-optuna-sweeper)")
def test_optuna_search_in_memory_writes_the_best_trial(tmp_path):
    proc, out = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                      "hydra.sweeper.storage=null", "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = [json.loads((out / j / "metrics.json").read_text())["val/acc1_best"] for j in "01"]
    best = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(values))
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "model.drop_path"}
    assert 1e-4 <= best["best_params"]["optimizer.lr"] <= 1e-2
    assert not (out / "optuna.db").exists()


def stored_study(tmp_path: Path, direction: str, value: float) -> tuple[Path, str]:
    """An Optuna study 'cvt_lab' in tmp_path/old/optuna.db with one finished trial of ``value``."""
    import optuna

    db = tmp_path / "old" / "optuna.db"
    db.parent.mkdir()
    url = f"sqlite:///{db}"
    study = optuna.create_study(study_name="cvt_lab", storage=url, direction=direction)
    study.tell(study.ask(), value)
    return db, url


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="needs the [sweep] extra (hydra-optuna-sweeper)")
def test_optuna_search_resumes_a_study_from_its_sqlite_file(tmp_path):
    import optuna

    db, url = stored_study(tmp_path, "maximize", 2.0)  # a trial no real run can beat (acc <= 1)
    proc, out = sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=1",
                      f"hydra.sweeper.storage.path={db}", "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(study_name="cvt_lab", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert yaml.safe_load((out / "optimization_results.yaml").read_text())["best_value"] == 2.0


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="needs the [sweep] extra (hydra-optuna-sweeper)")
def test_a_resumed_study_samples_new_params_not_its_first_trials_again(tmp_path):
    # every search starts its sampler from hydra.sweeper.sampler.seed (= seed): a search that
    # extended a stored study drew the stored first trials' params again, trial for trial
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    compose_config(["hparams_search=optuna"], tmp_path)
    sampler_cfg = HydraConfig.get().sweeper.sampler  # what the Optuna sweeper instantiates

    def search(db: str, trials: int) -> list[float]:  # a new sampler each time, as in run.py
        study = optuna.create_study(study_name="cvt_lab", storage=f"sqlite:///{tmp_path / db}",
                                    direction="maximize",
                                    sampler=instantiate(sampler_cfg), load_if_exists=True)
        drawn = []
        for _ in range(trials):
            trial = study.ask()
            drawn.append(trial.suggest_float("optimizer.lr", 1e-4, 1e-2, log=True))
            study.tell(trial, 0.5)
        return drawn

    first, extended = search("a.db", 2), search("a.db", 2)
    assert len(set(first + extended)) == 4
    assert search("b.db", 2) == first  # a new study still draws reproducibly from the seed


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="needs the [sweep] extra (hydra-optuna-sweeper)")
@pytest.mark.parametrize("choice, sampler", [
    ([], "ResumingTPESampler"), (["hydra/sweeper/sampler=random"], "RandomSampler"),
    (["hydra/sweeper/sampler=cmaes"], "CmaEsSampler")])
def test_the_search_takes_another_optuna_sampler(tmp_path, choice, sampler):
    # hydra/sweeper/sampler=random failed to compose: optuna.yaml set TPE-only keys
    # (n_startup_trials) on whichever sampler was chosen
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    compose_config(["hparams_search=optuna", "seed=3", *choice], tmp_path)
    built = instantiate(HydraConfig.get().sweeper.sampler)
    assert type(built).__name__ == sampler
    if sampler == "ResumingTPESampler":  # the default: seeded by the run's seed
        assert (built.seed, built.tpe["n_startup_trials"]) == (3, 5)


def test_a_sweep_job_without_its_objective_says_why(make_cfg, monkeypatch, caplog):
    """Validation that never ran leaves Optuna nothing but "None is not float-castable"."""
    cfg = make_cfg("+trainer.limit_val_batches=0")
    monkeypatch.setattr(sweep_module, "is_multirun", lambda: True)
    assert sweep_module.objective(cfg, {"val/acc1_best": 0.5}) == 0.5
    assert not caplog.records
    assert sweep_module.objective(cfg, {"train/loss": 1.0, "test/acc1": 0.4}) is None
    assert "optimized_metric=val/acc1_best was not logged by this job" in caplog.text
    assert "Logged: test/acc1, train/loss" in caplog.text
    caplog.clear()
    monkeypatch.setattr(sweep_module, "is_multirun", lambda: False)  # a single run has no sweeper
    assert sweep_module.objective(cfg, {}) is None and not caplog.records


@pytest.mark.parametrize("metric, direction", [("val/acc1_best", "maximize"),
                                               ("val/loss", "minimize"),
                                               ("train/loss_epoch", "minimize")])
def test_the_optuna_direction_follows_the_optimized_metric(metric, direction, tmp_path):
    # optimized_metric=val/loss was maximised: direction was fixed to maximize in optuna.yaml
    from hydra.core.hydra_config import HydraConfig

    compose_config(["hparams_search=optuna", f"optimized_metric={metric}"], tmp_path)
    assert HydraConfig.get().sweeper.direction == direction
    compose_config(["hparams_search=optuna", f"optimized_metric={metric}",
                    "hydra.sweeper.direction=maximize"], tmp_path)  # an explicit choice wins
    assert HydraConfig.get().sweeper.direction == "maximize"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                    reason="needs the [sweep] extra (hydra-optuna-sweeper)")
def test_a_trial_whose_objective_is_nan_fails_and_the_search_goes_on(tmp_path):
    # lr 1e30 on one batch: the only update overflows the weights, so validation's loss is
    # NaN. The job used to finish with it: Optuna refused the NaN and the sweeper's own FAIL
    # record then raised, so the search died after that trial ('Values were told ...'), the
    # trial left RUNNING. Now the run fails at that validation (RunGuard), failed.json says
    # why, and a NaN that still reaches the objective is no value (the test below)
    import optuna

    db, url = stored_study(tmp_path, "minimize", 5.0)
    one_batch = [o for o in TINY if "limit_train_batches" not in o]
    proc = run_cli("hparams_search=optuna", "hydra.sweeper.n_trials=2", *one_batch,
                   f"hydra.sweeper.storage.path={db}", "logger=csv", "optimized_metric=val/loss",
                   "optimizer.lr=1e30", "scheduler=constant", "+trainer.limit_train_batches=1",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = optuna.load_study(study_name="cvt_lab", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL"]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == 5.0
    assert "the validation loss is nan after step 1" in proc.stdout + proc.stderr


def test_a_nan_objective_is_no_value(make_cfg, monkeypatch, caplog):
    cfg = make_cfg("optimized_metric=val/loss")
    monkeypatch.setattr(sweep_module, "is_multirun", lambda: True)
    assert sweep_module.objective(cfg, {"val/loss": float("nan")}) is None
    assert "optimized_metric=val/loss is nan in this job" in caplog.text
    assert sweep_module.objective(cfg, {"val/loss": float("inf")}) == float("inf")  # just bad


def test_the_seeds_of_one_variant_get_distinct_wandb_run_names(monkeypatch):
    # `variant=none,all seed=1,2,3`: the three seeds of a variant were all named
    # '<task>-<variant>' in W&B, so its run list could not tell them apart
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    def named(variant, job):
        cfg = OmegaConf.create({"task_name": "ablation_kv_stride", "variant": variant,
                                "logger": {"wandb": {"name": "ablation_kv_stride", "group": None}}})
        hydra = SimpleNamespace(job=SimpleNamespace(num=job), sweep=SimpleNamespace(dir="/x/t0"))
        monkeypatch.setattr(sweep_module.HydraConfig, "get", staticmethod(lambda: hydra))
        sweep_module.name_wandb_run(cfg)
        return cfg.logger.wandb.name, cfg.logger.wandb.group

    assert named("stride1", 0) == ("ablation_kv_stride-stride1-0", "ablation_kv_stride-t0")
    assert named("stride1", 3) == ("ablation_kv_stride-stride1-3", "ablation_kv_stride-t0")
    assert named(None, 2) == ("ablation_kv_stride-2", "ablation_kv_stride-t0")
