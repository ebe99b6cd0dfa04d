"""Sweep plumbing: run one Hydra job and record how it ended; Optuna's study storage.

Every job leaves a machine-readable outcome in its run directory, which is what
`python -m cvt_lab.report` reads: ``metrics.json`` (final metrics) when it finished,
``failed.json`` (the error and traceback) when it raised. A failure is re-raised: Hydra's
launcher then carries on with the remaining sweep points and exits non-zero at the end,
and the Optuna sweeper records the trial as failed (see conf/hparams_search/optuna.yaml).
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
CSV_LOG = "csv/metrics.csv"  # the CSV logger's table (conf/logger): the report's fallback


def run_job(cfg: DictConfig, run: Callable[[DictConfig], dict[str, float]]) -> dict[str, float]:
    """``run(cfg)`` with its outcome written to ``cfg.paths.output_dir``."""
    out = Path(cfg.paths.output_dir)
    clear_outcome(out)
    if is_multirun():
        name_wandb_run(cfg)
    try:
        metrics = run(cfg)
    except Exception as err:  # any error: record it for the report, then let Hydra handle it
        write_failure(out / FAILED_FILE, {"error": f"{type(err).__name__}: {err}",
                                          "traceback": traceback.format_exc()})
        if is_multirun():  # (a single run's error is printed once, by run.py or Hydra)
            log.error("Job failed (%s); traceback in %s", err, out / FAILED_FILE)
        raise  # (train.run has closed the job's W&B run)
    write_json(out / METRICS_FILE, {k: v for k, v in metrics.items() if math.isfinite(v)})
    return metrics


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a sweeper optimises (``optimized_metric``), None when there is none.

    A training job of a sweep that never logged it (validation did not run) says so: the
    sweeper itself only reports that None is not a float. A NaN value (a diverged run's loss)
    is None too, so Optuna records the trial as failed: told a NaN, it raised out of the
    sweeper's own failure handling and ended the whole search.
    """
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    if math.isnan(metrics.get(metric, 0.0)):
        log.warning("optimized_metric=%s is nan in this job (did training diverge?): the sweeper "
                    "records it as failed", metric)
        return None
    if metric not in metrics and cfg.get("train") and is_multirun():
        log.warning("optimized_metric=%s was not logged by this job, so the sweeper gets no value "
                    "for it: did validation run (trainer.limit_val_batches, "
                    "trainer.check_val_every_n_epoch)? Logged: %s", metric, ", ".join(sorted(metrics)))
    return metrics.get(metric)


def name_wandb_run(cfg: DictConfig) -> None:
    """Group a sweep's W&B runs by the sweep directory and name each by its variant (if any)
    and job number: the seeds of one variant are runs of their own."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg:
        return
    hydra_cfg = HydraConfig.get()
    with open_dict(wandb_cfg):
        if wandb_cfg.get("group") is None:
            wandb_cfg.group = wandb_group(cfg.task_name, hydra_cfg.sweep.dir)
        if wandb_cfg.get("name") == cfg.task_name:
            label = "-".join(str(p) for p in (cfg.get("variant"), hydra_cfg.job.num) if p is not None)
            wandb_cfg.name = f"{cfg.task_name}-{label}"


def wandb_group(task_name: str, sweep_dir: str | Path) -> str:
    """The W&B group of a sweep's runs (and of its report): ``<task_name>-<sweep dir name>``."""
    return f"{task_name}-{Path(sweep_dir).resolve().name}"  # (".": the dir it names)


@rank_zero_only
def clear_outcome(out: Path) -> None:
    """Remove an earlier run's outcome from a job dir that is used again (a fixed
    ``hydra.sweep.dir`` or ``hydra.run.dir``), so the report does not read it as this one's."""
    for name in (METRICS_FILE, FAILED_FILE, CSV_LOG):
        (out / name).unlink(missing_ok=True)


@rank_zero_only
def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(data))


def write_failure(path: Path, data: dict[str, Any]) -> None:
    """Write ``failed.json`` from any rank, unless a rank of this run wrote it first: under
    DDP the first rank to fail has the cause (a corrupt image only it read); the others then
    fail in a collective ("Connection closed by peer"), which must not replace it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as f:  # created atomically: one writer wins
            f.write(_dumps(data))
    except FileExistsError:
        pass


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def sqlite_storage(path: str) -> str:
    """Optuna storage URL for an SQLite file, its folder made first (Hydra makes the sweep
    dir only after the sweeper has opened the study)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).resolve()}"


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


__all__ = ["run_job", "objective", "is_multirun", "name_wandb_run", "wandb_group", "sqlite_storage",
           "METRICS_FILE", "FAILED_FILE", "CSV_LOG"]
