"""The training driver: config in, trained and evaluated CvT out. Reads top to bottom."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from .data import ImageDataModule
from .models import count_macs, count_params
from .module import CvTModule
from .utils import git_commit, print_summary


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the fix."""


def check_checkpoint(path: str | None) -> None:
    """Fail fast (before any work) on a checkpoint path that cannot be resumed from."""
    if path is None:
        return
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file (give the path to a .ckpt file)")
    if not zipfile.is_zipfile(p):
        raise ConfigError(f"ckpt_path={path}: not a PyTorch checkpoint (expected a .ckpt "
                          "written by this project or Lightning)")


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a group (callbacks, loggers)."""
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as the config says; returns the final metrics."""
    check_checkpoint(cfg.get("ckpt_path"))
    if not cfg.train and not cfg.get("ckpt_path"):
        raise ConfigError("train=false evaluates a checkpoint: also give ckpt_path=<file.ckpt>")
    L.seed_everything(cfg.seed, workers=True)
    rank_zero_info(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = ImageDataModule(plain(cfg.data), plain(cfg.augment), seed=cfg.seed)
    module = CvTModule(model=plain(cfg.model), optimizer=plain(cfg.optimizer),
                       scheduler=plain(cfg.scheduler), num_classes=datamodule.num_classes,
                       label_smoothing=cfg.augment.get("label_smoothing", 0.0))
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # logger=none: an lr monitor has nowhere to write
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False,
                                                 callbacks=callbacks)
    n_params = count_params(module.net)
    macs = count_macs(module.net, cfg.data.image_size)
    rank_zero_info(f"Model {cfg.model.name}: {n_params:,} parameters, "
                   f"{macs / 1e9:.3f} GMACs per {cfg.data.image_size} px image")
    for logger in loggers:
        logger.log_hyperparams({"config": plain(cfg), "git_commit": git_commit(),
                                "params": n_params, "gmacs": macs / 1e9})

    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"),
                    weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.test:
        ckpt = cfg.get("ckpt_path")
        best = _best_checkpoint(trainer)
        if cfg.train:
            ckpt = best or None  # after fit: test the best weights, not the last ones
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    checkpoint = trainer.checkpoint_callback
    print_summary(
        {k: v for k, v in metrics.items() if "/acc" in k or k.endswith("loss")},
        {"run dir": cfg.paths.output_dir,
         "best ckpt": _best_checkpoint(trainer),
         "last ckpt": getattr(checkpoint, "last_model_path", None),
         "wandb": next((lg.experiment.dir for lg in loggers if isinstance(lg, WandbLogger)), None),
         "csv": next((lg.log_dir for lg in loggers if type(lg).__name__ == "CSVLogger"), None)})
    _finish_wandb(loggers)
    return metrics


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    return callback.best_model_path or None if isinstance(callback, ModelCheckpoint) else None


def _finish_wandb(loggers: list[Any]) -> None:
    """Close the W&B run so the next job of a sweep starts a fresh one."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        wandb.finish()


__all__ = ["run", "ConfigError"]
