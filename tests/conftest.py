"""Shared fixtures: compose the real Hydra config the way run.py does, in tmp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from cvt_lab.compose import compose_config  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Tests never reach the network or a W&B account.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: on a machine without it they are skipped, saying why."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """A test that calls a benchmark's main() sets torch's thread count for this process; the
    tests after it must not inherit it (a resume test compares an in-process run with one in a
    subprocess, and a different thread count changes float rounding)."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> a composed config writing into tmp_path (CSV logger only)."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        return compose_config(["logger=csv", *overrides], output_dir or tmp_path)

    yield make
    GlobalHydra.instance().clear()


def dead_pid() -> int:
    """The pid of a process that has exited (what a killed writer leaves in file names)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run `python run.py ARGS` in a subprocess (for DDP, sweeps and real CLI behaviour)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
