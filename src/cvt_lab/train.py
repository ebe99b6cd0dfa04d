"""The training driver: config in, trained and evaluated CvT out. Reads top to bottom."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from .data import ImageDataModule
from .data.decode import ImageDecodeError
from .data.sources import DataSourceError
from .hardware import validate_hardware
from .models import count_macs, count_params
from .models.checkpoint import CONFIG_KEY, CheckpointError
from .module import CvTModule
from .resume import (BATCH_KEY, LENGTH_KEY, check_batch_split, check_resumed_settings,
                     read_resume_state, resolve_ckpt_path, resume_wandb, run_shape, wandb_run_id,
                     warn_length_change)
from .safeguards import AtomicCheckpointIO, NonFiniteError, RunGuard, remove_stale_temps
from .utils import git_commit, print_summary, rank_zero_logs
from .validate import ConfigError, check_checkpoint_fits, check_pretrained_head, validate

# Errors whose message says what to do: run.py prints them without a traceback.
CLEAR_ERRORS = (ConfigError, DataSourceError, ImageDecodeError, NonFiniteError)
SIGTERM_EXIT = 128 + 15  # the shell's status for "terminated by SIGTERM": the run is not done


def plain(node: Any) -> Any:
    """A config node as plain Python (dicts, lists); scalars and None pass through."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a group (callbacks, loggers)."""
    return [hydra.utils.instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def run(cfg: DictConfig) -> dict[str, float]:
    """Train and/or test as the config says; returns the final metrics."""
    with rank_zero_logs("cvt_lab.validate"):  # its notes once, not once per DDP rank
        validate(cfg)
    validate_hardware(cfg)
    ckpt_path = resolve_ckpt_path(cfg)  # ckpt_path, or the newest checkpoint with resume=auto
    ckpt = read_resume_state(ckpt_path)
    if ckpt_path:  # the interrupted run may have been killed while writing a checkpoint
        remove_stale_temps(Path(ckpt_path).parent)
    shape = run_shape(cfg)
    if cfg.train:
        check_batch_split(ckpt, ckpt_path, shape[BATCH_KEY])
        warn_length_change(ckpt, ckpt_path, shape[LENGTH_KEY])
        resume_wandb(cfg.get("logger"), wandb_run_id(ckpt))
    L.seed_everything(cfg.seed, workers=True)
    rank_zero_info(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = ImageDataModule(plain(cfg.data), plain(cfg.augment), seed=cfg.seed)
    try:
        module = CvTModule(model=plain(cfg.model), optimizer=plain(cfg.optimizer),
                           scheduler=plain(cfg.scheduler), num_classes=datamodule.num_classes,
                           label_smoothing=cfg.augment.get("label_smoothing", 0.0),
                           ema_decay=cfg.get("ema_decay"), compile=plain(cfg.get("compile", False)),
                           channels_last=cfg.get("channels_last", False),
                           # its weights replace model.pretrained's: those are not read
                           replaced_by=(ckpt or {}).get(CONFIG_KEY))
    except (OSError, CheckpointError) as err:  # the message says what is wrong with the weights
        if not cfg.model.get("pretrained"):
            raise
        raise ConfigError(f"model.pretrained={cfg.model.pretrained}: {err}") from err
    check_checkpoint_fits(ckpt, ckpt_path, module)
    if cfg.train:
        check_resumed_settings(ckpt, ckpt_path, module)
    tests_pretrained = not cfg.train and ckpt_path is None  # the published weights, as they are
    if tests_pretrained:
        check_pretrained_head(module, datamodule.num_classes)
    del ckpt  # Lightning reads the weights itself
    loggers = instantiate_all(cfg.get("logger"))
    try:  # from here on a W&B run may exist: close it whatever happens
        guard = RunGuard(dirpath=f"{cfg.paths.output_dir}/checkpoints", records=shape)
        callbacks = [*instantiate_all(cfg.get("callbacks")), guard]
        if not loggers:  # logger=none: an lr monitor has nowhere to write
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        plugins = [*(hydra.utils.instantiate(cfg.trainer.get("plugins")) or []),
                   AtomicCheckpointIO()]
        trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False,
                                                     callbacks=callbacks, plugins=plugins)
        n_params = count_params(module.net)
        macs = count_macs(module.net, cfg.data.image_size)
        rank_zero_info(f"Model {cfg.model.name}: {n_params:,} parameters, "
                       f"{macs / 1e9:.3f} GMACs per {cfg.data.image_size} px image")
        for logger in loggers:
            logger.log_hyperparams({"config": plain(cfg), "git_commit": git_commit(),
                                    "params": n_params, "gmacs": macs / 1e9})
        if cfg.train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best_so_far = float(module.val_acc1_best.max_value)  # restored on a resume
        if cfg.train and "val/acc1_best" not in metrics and math.isfinite(best_so_far):
            metrics["val/acc1_best"] = best_so_far  # a finished run resumed: nothing validated
        tested = ckpt_path  # the checkpoint the test runs on (None: the weights in memory)
        if cfg.test:
            if cfg.train:  # after fit: test the best weights, not the last ones (when kept)
                tested = _best_checkpoint(trainer)
            trainer.test(module, datamodule=datamodule, ckpt_path=tested, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    except SIGTERMException:  # RunGuard saved last.ckpt and said where
        _finish_wandb(loggers, exit_code=SIGTERM_EXIT)
        raise SystemExit(SIGTERM_EXIT) from None
    except BaseException:
        _finish_wandb(loggers, exit_code=1)  # a sweep's next job must not log into this run
        raise

    if trainer.is_global_zero:  # (other DDP ranks hold a dummy W&B run, with no dir)
        print_summary(
            {k: v for k, v in metrics.items() if "/acc" in k or k.endswith("loss")},
            {"run dir": cfg.paths.output_dir,
             # without training, the best path is the one restored from ckpt_path's callback state
             "best ckpt": _best_checkpoint(trainer) if cfg.train else None,
             "tested ckpt": tested if cfg.test else None,
             "tested weights": cfg.model.pretrained if tests_pretrained else
                               "the final ones (no best checkpoint)" if cfg.test and not tested
                               else None,
             "last ckpt": guard.last if guard.last.exists() else None,
             # (a disabled W&B run names a folder it never writes)
             "wandb": next((lg.experiment.dir for lg in loggers if isinstance(lg, WandbLogger)
                            and Path(lg.experiment.dir).is_dir()), None),
             "csv": next((lg.log_dir for lg in loggers if type(lg).__name__ == "CSVLogger"), None)})
    _finish_wandb(loggers)
    return metrics


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    """The file of the checkpoint callback that keeps the best by a metric (val/acc1). A
    callback without a monitor (last.ckpt's) also sets best_model_path: to the latest file."""
    return next((c.best_model_path for c in trainer.checkpoint_callbacks
                 if getattr(c, "monitor", None) and c.best_model_path), None)


def _finish_wandb(loggers: list[Any], exit_code: int | None = None) -> None:
    """Close the W&B run so the next job of a sweep starts a fresh one."""
    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if exit_code == SIGTERM_EXIT and wandb.run is not None:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=exit_code)


__all__ = ["run", "ConfigError", "CLEAR_ERRORS"]
