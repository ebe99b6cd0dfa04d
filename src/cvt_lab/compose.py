"""The config ``run.py`` would see, composed from Python (notebooks, tests) with Hydra's
compose API: same defaults, same overrides, same output layout, no command line."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from .validate import CONF_DIR

REPO_ROOT = CONF_DIR.parent  # a checkout (or editable install): run.py, conf/, notebooks/


def compose_config(overrides: list[str], output_dir: str | Path | None = None,
                   config_dir: str | Path | None = None) -> DictConfig:
    """Compose ``conf/config.yaml`` with ``overrides`` (the strings you would pass run.py).

    Outputs go to ``output_dir``, or where ``python run.py`` would put them
    (``logs/<task_name>/runs/<time>``). ``cvt_lab.train.run(cfg)`` then trains as run.py does.
    """
    conf = Path(config_dir) if config_dir else CONF_DIR
    if not (conf / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no Hydra config at {conf}/config.yaml: cvt_lab finds conf/ next to its sources, "
            "so install it from a checkout (pip install -e .) or pass config_dir=<repo>/conf")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} (cwd, run dir)
    out = str(output_dir) if output_dir is not None else os.path.abspath(cfg.hydra.run.dir)  # as Hydra
    with read_write(cfg.hydra), open_dict(cfg):  # set_config made hydra read-only
        if output_dir is not None:
            cfg.paths.root_dir = str(output_dir)
        cfg.paths.output_dir = out
        cfg.hydra.runtime.output_dir = out
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task function never sees Hydra's own node
    return cfg


__all__ = ["CONF_DIR", "REPO_ROOT", "compose_config"]
