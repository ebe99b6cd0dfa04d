"""Shared fixtures: compose the real Hydra config the way run.py does, in tmp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Tests never reach the network or a W&B account.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def compose_config(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    """The config run.py would see for these overrides, with outputs under output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.root_dir = str(output_dir)
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task function never sees Hydra's own node
    return cfg


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> a composed config writing into tmp_path (CSV logger only)."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_config(["logger=csv", *overrides], output_dir or tmp_path)

    yield make
    GlobalHydra.instance().clear()


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run `python run.py ARGS` in a subprocess (for DDP, sweeps and real CLI behaviour)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
