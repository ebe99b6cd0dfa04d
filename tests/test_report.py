"""`python -m cvt_lab.report`: bad input gets a clear message, a non-zero exit and nothing written;
hand-made job dirs get the tables a reader expects (seeds summarised, the best named).

(The report over real sweeps is tested in test_sweeps.py, next to the sweeps it reads.)
"""

from __future__ import annotations

import csv
import json

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from cvt_lab import report


def job_started_but_never_logged(job_dir, *overrides: str) -> None:
    """What Hydra leaves in a job dir before the job logs anything (e.g. killed at start)."""
    cfg = compose_config(["logger=csv", *overrides], job_dir)
    (job_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), job_dir / ".hydra" / "overrides.yaml")


def run_main(capsys, *argv: str) -> tuple[int, str]:
    code = report.main([*argv, "--wandb", "disabled"])
    return code, capsys.readouterr().err


def test_missing_directory(tmp_path, capsys):
    code, err = run_main(capsys, str(tmp_path / "nope"))
    assert code == 2
    assert err == (f"error: {tmp_path / 'nope'}: no such directory (give a multirun dir, "
                   "e.g. logs/<task_name>/multiruns/<time>)\n")


def test_directory_without_runs(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a sweep")
    code, err = run_main(capsys, str(tmp_path))
    assert code == 2
    assert "no runs found (no <job>/.hydra/overrides.yaml below it)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def test_runs_without_metrics_are_named_and_nothing_is_written(tmp_path, capsys):
    job_started_but_never_logged(tmp_path / "0", "optimizer.lr=0.001")
    job_started_but_never_logged(tmp_path / "1", "optimizer.lr=0.003")
    failed = {"error": "RuntimeError: out of memory"}
    (tmp_path / "1" / "failed.json").write_text(json.dumps(failed))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, err = run_main(capsys, str(tmp_path))
    assert code == 2
    assert "2 run(s) but none logged metrics" in err
    assert "0: no metrics.json or csv/metrics.csv" in err
    assert "1: RuntimeError: out of memory" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_report_is_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(AttributeError):  # the second file cannot be written
        report.write_outputs(out, {"report.md": "table", "report.csv": None})
    assert not list(out.iterdir())  # neither the markdown alone nor temporary files


def test_wandb_auto_skips_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report.log_wandb(["job"], [["0"]], tmp_path, OmegaConf.create({}), "auto") is None
    assert not (tmp_path / "wandb").exists()


@pytest.mark.parametrize("evaluated", [False, True])
def test_folder_jobs_get_params_and_macs_from_their_checkpoint(tmp_path, capsys, evaluated):
    # data=folder leaves data.num_classes null in the job's config: params and MACs were empty.
    # An eval-only job (train=false) writes no checkpoint: its count is in the one it
    # evaluated, but the report warned "cannot build the model of this job (int() argument
    # must be a string, ... not 'NoneType')"
    import torch

    from cvt_lab.models import count_macs, count_params, create_model

    job = tmp_path / "0"
    ckpt = (tmp_path / "trained" if evaluated else job / "checkpoints") / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 3}}, ckpt)
    evaluation = ["train=false", f"ckpt_path={ckpt}"] if evaluated else []
    job_started_but_never_logged(job, "data=folder", "data.image_size=32", *evaluation)
    (job / "metrics.json").write_text(json.dumps({"val/acc1_best": 0.5}))
    row = report.report(tmp_path, wandb_mode="disabled")["rows"][0]
    assert "warning" not in capsys.readouterr().err
    model = create_model("cvt_tiny", num_classes=3)
    assert row[-2:] == [count_params(model), count_macs(model, 32) / 1e6]
    ckpt.unlink()  # nothing records the count: the warning says so
    report.report(tmp_path, wandb_mode="disabled")
    assert capsys.readouterr().err == (
        "warning: cannot build the model of this job (data.num_classes is null (one class per "
        "folder) and no checkpoint of the job records the count); params left empty\n")


def test_a_job_rerun_in_its_old_dir_reports_its_own_outcome_only(tmp_path):
    # a fixed hydra.sweep.dir (or hydra.run.dir) runs job 0 again in the same dir: the earlier
    # run's metrics.json, failed.json and CSV log must not pass for this run's outcome
    from cvt_lab.sweep import run_job

    job = tmp_path / "0"
    job_started_but_never_logged(job)
    cfg = compose_config(["logger=csv"], job)
    run_job(cfg, lambda c: {"val/acc1_best": 0.9})
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("epoch,step,val/acc1\n0,2,0.9\n")

    def out_of_memory(c):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        run_job(cfg, out_of_memory)  # failed before its logger started
    again = report.read_job(job, tmp_path)
    assert (again.status, again.error, again.metrics) == ("failed", "RuntimeError: out of memory", {})

    run_job(cfg, lambda c: {"val/acc1_best": 0.5})
    (fixed,) = report.collect(tmp_path)
    assert (fixed.status, fixed.error, fixed.metrics) == ("ok", None, {"val/acc1_best": 0.5})


def test_plot_labels_tell_apart_jobs_of_the_same_variant(monkeypatch):
    # `variant=none,all seed=1,2,3` (docs/ablations.md): every bar of a variant was labelled
    # just "none" or "all", so the plot could not say which seed a bar was
    from matplotlib.axes import Axes

    drawn = []
    set_yticks = Axes.set_yticks
    monkeypatch.setattr(Axes, "set_yticks", lambda ax, ticks, labels=None, **kw: (
        drawn.append(list(labels or [])), set_yticks(ax, ticks, labels, **kw))[1])
    jobs = [report.Job(name=str(i), overrides=["experiment=ablation/kv_stride", f"variant={v}",
                                               f"seed={s}"], status="ok",
                       metrics={"val/acc1_best": 0.5}, variant=v)
            for i, (v, s) in enumerate([("stride1", 1), ("stride1", 2), ("stride2", 1)])]
    report.to_png(jobs, "val/acc1_best", None)
    assert drawn == [["stride1 seed=1", "stride1 seed=2", "stride2 seed=1"]]
    drawn.clear()  # one job per variant: the variant alone, as before
    report.to_png([jobs[0], jobs[2]], "val/acc1_best", None)
    assert drawn == [["stride1", "stride2"]]


def test_a_metric_no_job_logged_is_refused_naming_the_logged_ones(tmp_path, capsys):
    # --metric val/acc1_bst (a typo) wrote a report with an empty column and a blank plot
    for job, acc in (("0", 0.5), ("1", 0.25)):
        job_started_but_never_logged(tmp_path / job, f"seed={job}")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"val/acc1_best": acc,
                                                                 "val/loss": 1.0}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, err = run_main(capsys, str(tmp_path), "--metric", "val/acc1_bst")
    assert code == 2
    assert err == (f"error: {tmp_path}: no job logged --metric val/acc1_bst; choose one they "
                   "logged: val/acc1_best, val/loss\n")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert run_main(capsys, str(tmp_path), "--metric", "val/loss")[0] == 0


def test_a_folder_of_different_ablations_is_not_titled_by_its_first_table(tmp_path):
    # logs/ holding a kv_stride and a pos_embed sweep was titled "CvT Table 7: k/v projection
    # stride" (the first job's table) over both tables' rows
    for job, ablation in (("a/0", "kv_stride"), ("b/0", "pos_embed")):
        job_started_but_never_logged(tmp_path / job, f"experiment=ablation/{ablation}")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"val/acc1_best": 0.5}))
    assert report.report(tmp_path, wandb_mode="disabled")["markdown"].startswith("# Sweep report\n")
    one = report.report(tmp_path / "a", wandb_mode="disabled")["markdown"]
    assert one.startswith("# CvT Table 7: k/v projection stride\n")


def test_a_report_run_from_inside_the_sweep_dir_joins_its_wandb_group(tmp_path, monkeypatch):
    # `cd logs/train/multiruns/<time> && python -m cvt_lab.report .` logged its table to the
    # W&B group 'train-' (the name of '.'), not the sweep's 'train-<time>'
    from cvt_lab.sweep import wandb_group

    sweep_dir = tmp_path / "2026-11-25_03-00-00_000001"
    (sweep_dir / "0").mkdir(parents=True)
    monkeypatch.chdir(sweep_dir)
    assert wandb_group("train", ".") == "train-2026-11-25_03-00-00_000001"
    monkeypatch.chdir(sweep_dir / "0")
    assert wandb_group("train", "..") == "train-2026-11-25_03-00-00_000001"


def test_the_plot_marks_a_failed_or_unfinished_jobs_partial_value(monkeypatch):
    # a job killed (or failed) after some epochs keeps the values its CSV logged: the table
    # says 'incomplete'/'failed' beside them, but the plot drew them as a plain result
    from matplotlib.axes import Axes

    notes = []
    text = Axes.text
    monkeypatch.setattr(Axes, "text", lambda ax, x, y, s, *a, **kw: (
        notes.append(s.strip()), text(ax, x, y, s, *a, **kw))[1])
    jobs = [report.Job(name=str(i), overrides=[f"seed={i}"], status=status,
                       metrics={"val/acc1_best": 0.5}, params=566_218)
            for i, status in enumerate(["ok", "incomplete", "failed"])]
    report.to_png(jobs, "val/acc1_best", None)
    assert notes[:3] == ["50.00", "50.00 (incomplete)", "50.00 (failed)"]
    assert notes[3:] == ["0.57"] * 3  # the parameter panel: the model's cost, no status


def test_job_dirs_sort_numerically_beside_named_ones(tmp_path):
    # a folder holding a sweep's jobs (0, 1, ...) and a run copied beside them ('baseline')
    # crashed: TypeError: '<' not supported between instances of 'str' and 'int'
    for job in ("10", "2", "baseline", "0", "a/1", "a/0"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text("[]\n")
    found = [str(d.relative_to(tmp_path)) for d in report.find_job_dirs(tmp_path)]
    assert found == ["0", "2", "10", "a/0", "a/1", "baseline"]


def test_seeds_of_one_setting_are_summarised_and_the_best_is_named(tmp_path):
    # `variant=stride1,stride2 seed=1,2,3` (docs/ablations.md) listed six rows and left the
    # mean and spread over seeds, the number an ablation is read by, to the user
    runs = [("0", "stride1", 1, 0.5), ("1", "stride1", 2, 0.6), ("2", "stride1", 3, 0.7),
            ("3", "stride2", 1, 0.8), ("4", "stride2", 2, None)]  # job 4 failed
    for job, variant, seed, acc in runs:
        job_started_but_never_logged(tmp_path / job, "experiment=ablation/kv_stride",
                                     f"variant={variant}", f"seed={seed}")
        if acc is None:
            (tmp_path / job / "failed.json").write_text(json.dumps({"error": "RuntimeError: oom"}))
        else:
            (tmp_path / job / "metrics.json").write_text(json.dumps(
                {"val/acc1_best": acc, "val/loss": 2.0 - acc * (1 if job != "2" else 0)}))
    result = report.report(tmp_path, wandb_mode="disabled")
    md = result["markdown"]
    assert "Best finished job: 3 (val/acc1_best 80.00)." in md
    assert "| stride1 | 1 2 3 | 3/3 | 60.00 | 10.00 | 50.00 | 70.00 |" in md
    assert "| stride2 | 1 2 | 1/2 | 80.00 |  | 80.00 | 80.00 |" in md  # one seed: no std
    assert "Best setting by mean: stride2 (80.00 over 1 finished job(s))." in md
    with (tmp_path / "report_seeds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["finished"], float(r["mean"])) for r in rows] == [
        ("stride1", "3/3", pytest.approx(60.0)), ("stride2", "1/2", pytest.approx(80.0))]
    # a loss is best when lowest: stride1's losses are 1.5, 1.4 and 2.0 (mean 1.63)
    md = report.report(tmp_path, metric="val/loss", wandb_mode="disabled")["markdown"]
    assert "Best finished job: 3 (val/loss 1.20)." in md
    assert "Best setting by mean: stride2 (1.20 over 1 finished job(s))." in md


def test_a_sweep_without_repeated_settings_gets_no_seed_summary(tmp_path):
    for job, lr in (("0", "1e-3"), ("1", "3e-4")):
        job_started_but_never_logged(tmp_path / job, f"optimizer.lr={lr}", "seed=7")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"val/acc1_best": float(lr) * 100}))
    result = report.report(tmp_path, wandb_mode="disabled")
    assert result["seed_groups"] == [] and "Across seeds" not in result["markdown"]
    assert not (tmp_path / "report_seeds.csv").exists()
    assert "Best finished job: 0 (val/acc1_best 10.00)." in result["markdown"]


def test_seeds_a_job_took_from_its_config_are_listed_and_runs_are_not_called_seeds(tmp_path):
    # `-m experiment=ablation/kv_stride` (seed 42 from config.yaml, no seed= override) and the
    # same with seed=1, reported as one folder: each variant's row listed seed 1 alone beside
    # its two jobs; and three plain runs (seed 42 each) were 'over 3 seed(s)'
    for sweep, seed in (("a", []), ("b", ["seed=1"])):
        for job, (variant, acc) in enumerate((("stride1", 0.5), ("stride2", 0.7))):
            job_dir = tmp_path / sweep / str(job)
            job_started_but_never_logged(job_dir, "experiment=ablation/kv_stride",
                                         f"variant={variant}", *seed)
            (job_dir / "metrics.json").write_text(json.dumps({"val/acc1_best": acc}))
    md = report.report(tmp_path, wandb_mode="disabled")["markdown"]
    assert "| stride1 | 42 1 | 2/2 | 50.00 | 0 | 50.00 | 50.00 | 6.55 | 82.30 |" in md
    assert "| stride2 | 42 1 | 2/2 | 70.00 | 0 | 70.00 | 70.00 | 4.53 | 81.60 |" in md
    assert "Best setting by mean: stride2 (70.00 over 2 finished job(s))." in md


def test_the_setting_without_varying_overrides_is_not_called_every_job():
    # a folder holding three plain `python run.py` runs and one with optimizer.lr=1e-3: the
    # plain runs' row was labelled '(every job)' beside the lr row
    def job(name, *overrides):
        return report.Job(name=name, overrides=list(overrides), status="ok",
                          metrics={"val/acc1_best": 0.5}, seed=42)

    plain = [job("a"), job("b"), job("c", "optimizer.lr=0.001")]
    assert [g.setting for g in report.seed_groups(plain, "val/acc1_best")] == [
        "(no varying override)", "optimizer.lr=0.001"]
    seeds = [job("0", "seed=1"), job("1", "seed=2")]  # one setting: it is every job
    assert [g.setting for g in report.seed_groups(seeds, "val/acc1_best")] == ["(every job)"]


def test_a_report_without_repeated_settings_removes_an_earlier_seed_table(tmp_path):
    # `--out results/` for a sweep with seeds, then for one without: results/ kept the first
    # sweep's report_seeds.csv beside the second sweep's report
    for job, seed in (("seeds/0", 1), ("seeds/1", 2), ("single/0", 1)):
        job_started_but_never_logged(tmp_path / job, f"seed={seed}")
        (tmp_path / job / "metrics.json").write_text(json.dumps({"val/acc1_best": 0.5}))
    out = tmp_path / "results"
    report.report(tmp_path / "seeds", out_dir=out, wandb_mode="disabled")
    assert (out / "report_seeds.csv").is_file()
    report.report(tmp_path / "single", out_dir=out, wandb_mode="disabled")
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png"]


def test_a_setting_typed_in_another_order_by_another_sweep_is_one_setting():
    # a folder of `-m optimizer.lr=1e-3 model.drop_path=0.1 seed=1` and
    # `-m model.drop_path=0.1 optimizer.lr=1e-3 seed=2` (and another lr) listed the one
    # setting twice, each with one seed, and never summarised the two
    jobs = [report.Job(name=name, overrides=overrides, status="ok",
                       metrics={"val/acc1_best": acc}, seed=seed)
            for name, overrides, seed, acc in (
                ("a/0", ["optimizer.lr=0.001", "model.drop_path=0.1", "seed=1"], 1, 0.5),
                ("b/0", ["model.drop_path=0.1", "optimizer.lr=0.001", "seed=2"], 2, 0.7),
                ("c/0", ["optimizer.lr=0.003", "seed=1"], 1, 0.4))]
    groups = report.seed_groups(jobs, "val/acc1_best")
    assert [(g.setting, g.seeds, g.mean) for g in groups] == [
        ("optimizer.lr=0.001 model.drop_path=0.1", ["1", "2"], pytest.approx(60.0)),
        ("optimizer.lr=0.003", ["1"], pytest.approx(40.0))]


def test_the_plot_puts_the_papers_top1_only_beside_a_top1_metric(monkeypatch):
    # `--metric val/loss` on an ablation drew 'paper 81.6' beside each loss bar, as if the
    # paper had measured that value
    from matplotlib.axes import Axes

    notes = []
    text = Axes.text
    monkeypatch.setattr(Axes, "text", lambda ax, x, y, s, *a, **kw: (
        notes.append(s.strip()), text(ax, x, y, s, *a, **kw))[1])
    jobs = [report.Job(name="0", overrides=["variant=stride2"], status="ok", variant="stride2",
                       metrics={"val/acc1_best": 0.5, "val/loss": 1.25}, paper={"top1": 81.6})]
    report.to_png(jobs, "val/loss", None)
    assert notes[0] == "1.25"
    notes.clear()
    report.to_png(jobs, "val/acc1_best", None)
    assert notes[0] == "50.00  (paper 81.6)"
