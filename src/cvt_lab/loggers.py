"""Experiment loggers: Weights & Biases (offline unless the user set W&B up) and CSV."""

from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn


def wandb_configured() -> bool:
    """True when the user has given W&B credentials or chosen a mode; never prompts.

    Credentials are found where wandb looks: WANDB_API_KEY, or the netrc file ($NETRC, else
    ~/.netrc) entry of the server in use (WANDB_BASE_URL, else the ``base_url`` that
    ``wandb login --host`` saved in W&B's settings file, else api.wandb.ai).
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    try:
        host = urlsplit(os.environ.get("WANDB_BASE_URL") or _saved_base_url()).netloc
        path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
        return netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, configparser.Error, OSError):
        return False


def _saved_base_url() -> str:
    """The W&B server ``wandb login --host`` saved as the default, else W&B's cloud."""
    settings = configparser.ConfigParser()
    folder = os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb"
    settings.read(Path(folder).expanduser() / "settings")
    return settings.get("default", "base_url", fallback="https://api.wandb.ai")


def wandb_logger(save_dir: str, project: str, mode: str = "auto", **kwargs: Any) -> WandbLogger:
    """A WandbLogger whose run lives in the Hydra run dir (``save_dir/wandb``).

    ``mode: auto`` is online only when W&B is configured on this machine, else offline:
    a fresh machine with no account or network never blocks or prompts. When it is
    configured but its server cannot be reached (a compute node without network), the run
    goes on offline, with a warning, once wandb.init has given up.
    """
    chosen = mode == "auto" and not os.environ.get("WANDB_MODE")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_configured() else "offline")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=save_dir, project=project, mode=mode, **kwargs)
    if not (chosen and mode == "online"):
        return logger
    import wandb

    try:  # start the run now: a set-up machine without network must not end the run later
        logger.experiment
    except wandb.errors.CommError as err:
        rank_zero_warn(
            f"W&B could not start an online run ({type(err).__name__}: {err}): logging offline "
            f"to {save_dir}/wandb/offline-run-* instead; upload it later with `wandb sync <that "
            "folder>`. Set WANDB_MODE=offline (or logger.wandb.mode=offline) to skip the attempt")
        logger = WandbLogger(save_dir=save_dir, project=project, mode="offline", **kwargs)
    return logger
