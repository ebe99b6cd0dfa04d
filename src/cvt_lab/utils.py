"""Small helpers for the training driver: run facts and the end-of-run summary."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only


def git_commit(path: str | Path = ".") -> str:
    """Current commit (with '-dirty' when the tree has changes), or 'unknown' outside git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
