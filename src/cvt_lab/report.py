"""A sweep's results as one table: ``python -m cvt_lab.report <multirun dir>``.

Reads every job under the directory (``<job>/.hydra/{overrides,config}.yaml`` and its outcome:
``metrics.json`` when it finished, ``failed.json`` when it raised, else the CSV logger's
``csv/metrics.csv`` for a job that was killed or is still running), adds the model's
parameter count and MACs computed from the job's model config, and writes
``report.md``, ``report.csv`` and ``report.png`` (metric per variant, parameters and MACs
beside it) into the directory, and names the best finished job. When a setting ran with
several seeds (``seed=1,2,3``), the report adds its mean, standard deviation and range over the
seeds (``report_seeds.csv``) and names the best setting by mean. Ablation sweeps
(``experiment=ablation/...``) also get the paper's numbers per variant. With W&B online the
table is logged there as well.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .sweep import CSV_LOG, FAILED_FILE, METRICS_FILE, wandb_group

# metric columns shown when present: (metric key, header); accuracies are shown in percent
METRIC_COLUMNS = [("val/acc1_best", "best val top-1 %"), ("val/acc1", "final val top-1 %"),
                  ("test/acc1", "test top-1 %"), ("train/loss_epoch", "last epoch train loss"),
                  ("train/img_per_sec", "train img/s")]

PAPER_HEADERS = {"top1": "paper top-1 %", "gmacs": "paper GMACs"}  # ablation.paper_<key>


class ReportError(Exception):
    """Nothing to report (no runs, or no run with metrics); the message says what was found."""


@dataclass
class Job:
    """One sweep point: what it ran, how it ended, what it measured and what its model costs."""

    name: str
    overrides: list[str]
    status: str  # ok | failed | incomplete
    metrics: dict[str, float]
    variant: str | None = None
    seed: int | None = None  # from the job's config: an override, an experiment file or the default
    params: int | None = None
    macs: int | None = None
    error: str | None = None
    paper: dict[str, float] = field(default_factory=dict)  # e.g. {"top1": 81.6}
    table: str | None = None  # the paper's table an ablation job belongs to (ablation.table)


# --------------------------------------------------------------------------- reading

def find_job_dirs(root: Path) -> list[Path]:
    """Every Hydra job dir under root (a sweep dir, a folder of sweeps, or one run dir)."""
    dirs = {p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"}
    # job numbers in numeric order, before named dirs (a run copied beside a sweep's jobs)
    return sorted(dirs, key=lambda d: [(0, int(s), "") if s.isdigit() else (1, 0, s)
                                       for s in d.relative_to(root).parts])


def read_metrics(job_dir: Path) -> dict[str, float]:
    """Final metrics: ``metrics.json`` if the job finished, else the last logged CSV values."""
    summary = job_dir / METRICS_FILE
    if summary.is_file():
        return {k: float(v) for k, v in json.loads(summary.read_text()).items()}
    table = job_dir / CSV_LOG
    if not table.is_file():
        return {}
    last: dict[str, float] = {}
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            last.update({k: float(v) for k, v in row.items() if k and v not in ("", None)})
    last.pop("epoch", None)
    last.pop("step", None)
    return last


@functools.lru_cache(maxsize=None)
def _model_cost(model_json: str, num_classes: int, img_size: int) -> tuple[int, int]:
    from .models import count_macs, count_params
    from .module import build_network

    net = build_network({**json.loads(model_json), "pretrained": None}, num_classes)
    return count_params(net), int(count_macs(net, img_size))


def checkpoint_classes(job_dir: Path, cfg: DictConfig) -> int | None:
    """The class count a job trained with, from its checkpoint (or, for an eval-only job, the
    checkpoint it evaluated): data=folder leaves data.num_classes null in the config (one class
    per folder, counted when the data is read)."""
    from .validate import read_checkpoint

    evaluated = [Path(cfg.ckpt_path)] if cfg.get("ckpt_path") else []
    for path in [*sorted((job_dir / "checkpoints").glob("*.ckpt")), *evaluated]:
        if path.is_file():
            return read_checkpoint(path).get("hyper_parameters", {}).get("num_classes")
    return None


def model_cost(cfg: DictConfig, job_dir: Path) -> tuple[int | None, int | None]:
    """(parameters, MACs per image) of the job's model, built from its config (once per
    distinct config). MACs follow the paper's convention (``cvt_lab.models.flops``)."""
    try:
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        classes = cfg.data.num_classes or checkpoint_classes(job_dir, cfg)
        if classes is None:
            raise ValueError("data.num_classes is null (one class per folder) and no checkpoint "
                             "of the job records the count")
        return _model_cost(json.dumps(model_cfg, sort_keys=True), int(classes),
                           int(cfg.data.image_size))
    except Exception as err:  # a config that cannot build (often why the job failed)
        print(f"warning: cannot build the model of this job ({err}); params left empty",
              file=sys.stderr)
        return None, None


def read_job(job_dir: Path, root: Path) -> Job:
    hydra_dir = job_dir / ".hydra"
    overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")]
    cfg = OmegaConf.load(hydra_dir / "config.yaml")
    metrics = read_metrics(job_dir)
    failed = job_dir / FAILED_FILE
    error = json.loads(failed.read_text()).get("error") if failed.is_file() else None
    status = "failed" if error else "ok" if (job_dir / METRICS_FILE).is_file() else "incomplete"
    variant = cfg.get("variant")
    params, macs = model_cost(cfg, job_dir)
    paper = {}
    ablation = cfg.get("ablation") or {}
    for key, table in ablation.items():
        if key.startswith("paper_") and variant in table:
            paper[key.removeprefix("paper_")] = float(table[variant])
    return Job(name=str(job_dir.relative_to(root)) if job_dir != root else job_dir.name,
               overrides=overrides, status=status, metrics=metrics,
               variant=None if variant is None else str(variant), seed=cfg.get("seed"),
               params=params, macs=macs, error=error, paper=paper, table=ablation.get("table"))


def collect(root: Path) -> list[Job]:
    """All jobs under root; raises ReportError when there is nothing to report."""
    if not root.is_dir():
        raise ReportError(f"{root}: no such directory (give a multirun dir, e.g. "
                          "logs/<task_name>/multiruns/<time>)")
    dirs = find_job_dirs(root)
    if not dirs:
        raise ReportError(f"{root}: no runs found (no <job>/.hydra/overrides.yaml below it); "
                          "give the sweep dir that `python run.py -m ...` printed")
    jobs = [read_job(d, root) for d in dirs]
    if not any(j.metrics for j in jobs):
        found = "; ".join(f"{j.name}: {j.error or 'no metrics.json or csv/metrics.csv'}"
                          for j in jobs)
        raise ReportError(f"{root}: {len(jobs)} run(s) but none logged metrics ({found}). "
                          "Check the jobs' logs; the CSV logger (logger=default or csv) "
                          "records metrics")
    return jobs


# --------------------------------------------------------------------------- the table

def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _scale(metric: str) -> int:
    """Accuracies are shown in percent."""
    return 100 if "/acc" in metric else 1


def varying_overrides(jobs: list[Job]) -> dict[str, list[str]]:
    """Per job, the overrides not shared by every job (what tells the sweep points apart)."""
    common = set.intersection(*(set(j.overrides) for j in jobs))
    out = {}
    for j in jobs:
        out[j.name] = [o for o in j.overrides if o not in common
                       and not (j.variant is not None and _override_key(o) == "variant")]
    return out


def setting_label(job: Job, overrides: list[str]) -> str:
    """The job's variant (ablations) and the overrides that tell it apart, as one label."""
    return " ".join([*([job.variant] if job.variant else []), *overrides])


def build_table(jobs: list[Job], metric: str) -> tuple[list[str], list[list[Any]]]:
    """Column headers and raw rows (numbers stay numbers; None = not available)."""
    varying = varying_overrides(jobs)
    metric_cols = [(k, h) for k, h in METRIC_COLUMNS if any(k in j.metrics for j in jobs)]
    if metric not in dict(metric_cols):
        metric_cols.insert(0, (metric, metric))
    paper_keys = sorted({k for j in jobs for k in j.paper})
    headers = ["job"]
    headers += ["variant"] if any(j.variant is not None for j in jobs) else []
    headers += ["overrides"] if any(varying.values()) else []
    headers += ["status", *(h for _, h in metric_cols), "params", "MACs (M)"]
    headers += [PAPER_HEADERS.get(k, f"paper {k}") for k in paper_keys]
    rows = []
    for j in jobs:
        row: list[Any] = [j.name]
        row += [j.variant] if "variant" in headers else []
        row += [" ".join(varying[j.name])] if "overrides" in headers else []
        row.append(j.status)
        for key, _ in metric_cols:
            value = j.metrics.get(key)
            row.append(None if value is None else value * _scale(key))
        row += [j.params, None if j.macs is None else j.macs / 1e6]
        row += [j.paper.get(k) for k in paper_keys]
        rows.append(row)
    return headers, rows


@dataclass
class SeedGroup:
    """The jobs of one setting that differ only in their seed, and the metric over them."""

    setting: str
    seeds: list[str]
    jobs: list[Job]
    values: list[float]  # the metric of the finished jobs, scaled as shown

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:  # sample standard deviation: None below two seeds
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def seed_groups(jobs: list[Job], metric: str) -> list[SeedGroup]:
    """Jobs grouped by everything but ``seed=``; empty unless some setting has several jobs.
    Overrides in any order are one setting (sweeps of a folder typed them differently); it is
    labelled as its first job typed it."""
    varying = varying_overrides(jobs)
    groups: dict[tuple, tuple[str, list[Job]]] = {}
    for j in jobs:
        rest = [o for o in varying[j.name] if _override_key(o) != "seed"]
        groups.setdefault((j.variant, *sorted(rest)), (setting_label(j, rest), []))[1].append(j)
    if all(len(g) == 1 for _, g in groups.values()):
        return []
    unnamed = "(every job)" if len(groups) == 1 else "(no varying override)"
    return [SeedGroup(
        setting=setting or unnamed,
        seeds=[str(j.seed) for j in g],
        jobs=g,
        values=[j.metrics[metric] * _scale(metric) for j in g
                if j.status == "ok" and metric in j.metrics])
        for setting, g in groups.values()]


def seed_table(groups: list[SeedGroup]) -> tuple[list[str], list[list[Any]]]:
    paper_keys = sorted({k for g in groups for j in g.jobs for k in j.paper})
    headers = ["setting", "seeds", "finished", "mean", "std", "min", "max"]
    headers += [PAPER_HEADERS.get(k, f"paper {k}") for k in paper_keys]
    rows = [[g.setting, " ".join(g.seeds), f"{len(g.values)}/{len(g.jobs)}", g.mean, g.std,
             min(g.values, default=None), max(g.values, default=None),
             *[g.jobs[0].paper.get(k) for k in paper_keys]] for g in groups]
    return headers, rows


def best(items: list[Any], value: Any, metric: str) -> Any | None:
    """The item whose value is best for ``metric`` (lowest loss, else highest), or None."""
    from .validate import metric_direction

    scored = [i for i in items if value(i) is not None and not math.isnan(value(i))]
    if not scored:
        return None
    pick = min if metric_direction(metric) == "minimize" else max
    return pick(scored, key=value)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 0.01 else f"{value:.4g}"
    return str(value)


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows)]


def to_markdown(headers: list[str], rows: list[list[Any]], jobs: list[Job], root: Path,
                metric: str, title: str | None, groups: list[SeedGroup]) -> str:
    common = sorted(set.intersection(*(set(j.overrides) for j in jobs)))
    lines = [f"# {title or 'Sweep report'}", "",
             f"Sweep: `{root}` ({len(jobs)} jobs, {sum(j.status == 'ok' for j in jobs)} finished)",
             f"Metric: `{metric}`; accuracies in percent; MACs per image (multiply-adds)."]
    if common:
        lines.append(f"Common overrides: `{' '.join(common)}`")
    lines += ["", *_md_table(headers, rows)]
    top = best([j for j in jobs if j.status == "ok"], lambda j: j.metrics.get(metric), metric)
    if top is not None:
        lines += ["", f"Best finished job: {top.name} ({metric} "
                      f"{_fmt(top.metrics[metric] * _scale(metric))})."]
    if groups:
        lines += ["", "## Across seeds", "",
                  f"`{metric}` over each setting's finished seeds: mean, sample standard "
                  "deviation (two seeds or more), range.", "", *_md_table(*seed_table(groups))]
        top_group = best(groups, lambda g: g.mean, metric)
        if top_group is not None:
            lines += ["", f"Best setting by mean: {top_group.setting} ({_fmt(top_group.mean)} over "
                          f"{len(top_group.values)} finished job(s))."]
    failed = [j for j in jobs if j.status != "ok"]
    if failed:
        lines += ["", "Not finished:"]
        lines += [f"- {j.name} ({j.status}): {j.error or 'no metrics.json (killed or running)'}"
                  for j in failed]
    return "\n".join(lines) + "\n"


def to_csv(headers: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def to_png(jobs: list[Job], metric: str, title: str | None) -> bytes:
    """Bars per job/variant: the metric (with the paper's number), parameters and MACs."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    varying = varying_overrides(jobs)
    # the variant and what else tells the job apart (e.g. seed=2 for a repeated variant)
    labels = [setting_label(j, varying[j.name]) or j.name for j in jobs]
    scale = _scale(metric)
    panels = [(metric + (" (%)" if scale == 100 else ""),
               [j.metrics.get(metric, math.nan) * scale for j in jobs]),
              ("parameters (M)", [math.nan if j.params is None else j.params / 1e6 for j in jobs])]
    if any(j.macs for j in jobs):
        panels.append(("MACs per image (M)",
                       [math.nan if j.macs is None else j.macs / 1e6 for j in jobs]))
    fig = Figure(figsize=(4 + 3.5 * len(panels), 1.3 + 0.45 * len(jobs)))
    axes = fig.subplots(1, len(panels), sharey=True,
                        gridspec_kw={"width_ratios": [2] + [1] * (len(panels) - 1)})
    for ax, (xlabel, values) in zip(axes, panels):
        ax.barh(range(len(jobs)), [0 if math.isnan(v) else v for v in values],
                color="tab:blue" if ax is axes[0] else "tab:gray")
        for i, (job, v) in enumerate(zip(jobs, values)):
            note = job.status if math.isnan(v) else f"{v:.2f}"
            if ax is axes[0] and job.status != "ok" and not math.isnan(v):
                note += f" ({job.status})"  # a partial value, from its CSV log
            if ax is axes[0] and "top1" in job.paper and "acc1" in metric:  # a top-1 metric
                note += f"  (paper {job.paper['top1']:.1f})"
            ax.text(0, i, " " + note, va="center", ha="left", fontsize="small",
                    color="white" if v > 0 and ax is axes[0] else "black")
        ax.set_xlabel(xlabel)
    axes[0].set_yticks(range(len(jobs)), labels)
    axes[0].invert_yaxis()
    fig.suptitle(title or "Sweep report")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# --------------------------------------------------------------------------- outputs

def write_outputs(out_dir: Path, contents: dict[str, str | bytes]) -> list[Path]:
    """Write every file under a temporary name, then rename all: no half-written reports."""
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = {out_dir / f".{name}.tmp": out_dir / name for name in contents}
    try:
        for (tmp, _), data in zip(temps.items(), contents.values()):
            tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        for tmp, final in temps.items():
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return list(temps.values())


def log_wandb(headers: list[str], rows: list[list[Any]], root: Path, jobs_cfg: DictConfig,
              mode: str) -> str | None:
    """Log the table to W&B as a ``wandb.Table`` in the sweep's group; returns the run dir.

    ``auto`` logs only when W&B is online (configured and not WANDB_MODE=offline/disabled).
    """
    from .loggers import wandb_configured

    if mode == "auto":
        env = os.environ.get("WANDB_MODE", "")
        if env in ("offline", "disabled", "dryrun") or not wandb_configured():
            return None
        mode = "online"
    if mode == "disabled":
        return None
    import wandb

    wandb_cfg = (jobs_cfg.get("logger") or {}).get("wandb") or {}
    task = jobs_cfg.get("task_name", "sweep")
    run = wandb.init(project=wandb_cfg.get("project", "cvt-lab"), mode=mode, dir=str(root),
                     group=wandb_group(task, root), job_type="report", name=f"{task}-report")
    run.log({"report": wandb.Table(columns=headers, data=[list(r) for r in rows])})
    run_dir = run.dir
    run.finish()
    return run_dir


def report(root: Path, out_dir: Path | None = None, metric: str | None = None,
           wandb_mode: str = "auto") -> dict[str, Any]:
    """Collect, tabulate, plot and write; returns the written paths and the table."""
    jobs = collect(root)
    if metric and not any(metric in j.metrics for j in jobs):  # a typo gave an empty column
        logged = ", ".join(sorted({k for j in jobs for k in j.metrics}))
        raise ReportError(f"{root}: no job logged --metric {metric}; choose one they logged: "
                          f"{logged}")
    first_cfg = OmegaConf.load(find_job_dirs(root)[0] / ".hydra" / "config.yaml")
    metric = metric or first_cfg.get("optimized_metric") or "val/acc1_best"
    tables = {j.table for j in jobs}  # a folder of several ablations has no one title
    title = tables.pop() if len(tables) == 1 else None
    headers, rows = build_table(jobs, metric)
    groups = seed_groups(jobs, metric)
    markdown = to_markdown(headers, rows, jobs, root, metric, title, groups)
    contents = {"report.md": markdown, "report.csv": to_csv(headers, rows),
                "report.png": to_png(jobs, metric, title)}
    if groups:
        contents["report_seeds.csv"] = to_csv(*seed_table(groups))
    out_dir = out_dir or root
    paths = write_outputs(out_dir, contents)
    if not groups:  # an earlier report's (e.g. another sweep's, in the same --out)
        (out_dir / "report_seeds.csv").unlink(missing_ok=True)
    wandb_dir = log_wandb(headers, rows, root, first_cfg, wandb_mode)
    return {"paths": paths, "headers": headers, "rows": rows, "markdown": markdown,
            "jobs": jobs, "seed_groups": groups, "wandb_dir": wandb_dir}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvt_lab.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path,
                        help="a multirun dir (logs/<task>/multiruns/<time>)")
    parser.add_argument("--out", type=Path, help="where to write report.* (default: sweep_dir)")
    parser.add_argument("--metric", help="metric to plot (default: the runs' optimized_metric)")
    parser.add_argument("--wandb", default="auto",
                        choices=["auto", "online", "offline", "disabled"],
                        help="log the table to W&B (auto: only when W&B is online)")
    args = parser.parse_args(argv)
    try:
        result = report(args.sweep_dir, args.out, args.metric, args.wandb)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["markdown"])
    print("Wrote " + ", ".join(str(p) for p in result["paths"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
