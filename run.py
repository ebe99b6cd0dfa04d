"""The one entry point: `python run.py [group=option ...] [key=value ...]` (add -m to sweep)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from cvt_lab.sweep import run_job  # imported here so `--help` and `--cfg` stay fast
    from cvt_lab.train import run

    metrics = run_job(cfg, run)  # writes metrics.json / failed.json into the run dir
    metric = cfg.get("optimized_metric")
    return metrics.get(metric) if metric else None


if __name__ == "__main__":
    main()
