"""Small helpers for the training driver: run facts and the end-of-run summary."""

from __future__ import annotations

import logging
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lightning.pytorch.utilities import rank_zero_only


def git_commit(path: str | Path = Path(__file__).parent) -> str:
    """The commit of the checkout at ``path`` (default: this code's own, wherever the run
    was started), with '-dirty' when its tree has changes; 'unknown' outside git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def rank_zero_logs(name: str) -> Iterator[None]:
    """Inside the block, logger ``name`` and its children log on global rank 0 only (errors
    on every rank): for notes on the config, the data or the weights, which every DDP rank
    would otherwise print alike."""
    logger = logging.getLogger(name)
    level = logger.level
    if rank_zero_only.rank != 0:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@rank_zero_only
def print_summary(metrics: dict[str, float], places: dict[str, Any]) -> None:
    """Final metrics and where the run's outputs went."""
    width = max(len(k) for k in [*metrics, *places]) if metrics or places else 0
    lines = ["", "=" * 60, "Final metrics"]
    lines += [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    lines.append("Outputs")
    lines += [f"  {k:<{width}}  {v}" for k, v in places.items() if v]
    lines.append("=" * 60)
    print("\n".join(lines), flush=True)
