"""Refuse bad input before any work starts: one clear error per problem, naming the key
and the fix. Also the hint printed under Hydra's own error for an unknown key or option.

Light on imports on purpose: run.py calls :func:`print_override_hint` without torch.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import sys
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def metric_direction(metric: str) -> str:
    """How a sweeper optimises ``metric``: a loss down, anything else (accuracies) up.
    ``${metric_direction:${optimized_metric}}`` in conf/hparams_search/optuna.yaml; the
    resolver is registered when this module is imported (run.py and compose do, first)."""
    return "minimize" if "loss" in str(metric).rsplit("/", 1)[-1] else "maximize"


if not OmegaConf.has_resolver("metric_direction"):
    OmegaConf.register_new_resolver("metric_direction", metric_direction)

# Groups whose keys are checked against the union of the keys their option files define
# (so a key added to any option file is known everywhere; a typo is not).
KEYED_GROUPS = ("model", "data", "augment", "optimizer", "scheduler")


# The names optim.py builds (kept here, torch-free, so configs are checked before torch loads)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant", "step")


def one_of(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and the fix."""


# ---------------------------------------------------------------------------- config


def validate(cfg: DictConfig) -> None:
    """Every check that needs no data: types, unknown keys, run mode, model vs image size.

    (Devices, precision and the batch split over devices: ``cvt_lab.hardware``.)
    """
    _check_group_choices()
    _check_required(cfg)
    _check_types(cfg)
    _check_unknown_keys(cfg, config_dir())
    _check_run_mode(cfg)
    _check_metric_names(cfg)
    _check_model(cfg)
    if cfg.data.num_classes is None and cfg.data.get("source") != "folder":
        raise ConfigError(f"data.num_classes is not set for {cfg.data.name}: set "
                          "data.num_classes=<number of classes>")
    names = cfg.data.get("class_names")
    if names is not None and len(names) != cfg.data.num_classes:
        raise ConfigError(f"data.class_names has {len(names)} names but data.num_classes="
                          f"{cfg.data.num_classes}; make them agree (or set class_names: null)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: (_is_number(v) and (lo < v if lo_open else lo <= v)
                      and (v < hi if hi_open else v <= hi))


def _numbers(n: int | None, ok: Callable[[Any], bool] = _is_number) -> Callable[[Any], bool]:
    """A list of ``n`` (any number when None) values that each pass ``ok``."""
    return lambda v: (OmegaConf.is_list(v) or isinstance(v, (list, tuple))) and (
        n is None or len(v) == n) and all(_is_number(x) and ok(x) for x in v)


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _scalar_or_per_stage(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v) or _numbers(None, ok)(v)


def _devices(v: Any) -> bool:
    """What ``lightning.Trainer(devices=...)`` takes: a count, -1/auto, or device indices."""
    if isinstance(v, str) and "," in v:  # "0,1" (indices)
        parts = [p.strip() for p in v.split(",") if p.strip()]
        return bool(parts) and all(p.isdigit() for p in parts)
    if isinstance(v, str):
        v = v.strip()
        if v == "auto":
            return True
        v = int(v) if v.lstrip("-").isdigit() else v
    if OmegaConf.is_list(v) or isinstance(v, (list, tuple)):
        return len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)
    return _is_int(v) and (v >= 1 or v == -1)


def _split_size(v: Any) -> bool:
    """A split carved from train: a fraction of it, or a count (what _carve/sklearn take)."""
    return (isinstance(v, float) and 0 < v < 1) or (_is_int(v) and v >= 1)


_SEED = (lambda v: _is_int(v) and 0 <= v < 2**32)  # numpy's range
_PROB = (_in(0, 1), "a number in [0, 1]")
_SPLIT = "a fraction in (0, 1) or an image count >= 1, e.g. 0.1 or 5000"
_RATE = (_scalar_or_per_stage(_in(0, 1, hi_open=True)),
         "a number in [0, 1) or one per stage, e.g. [0,0,0.1] (null: the preset's)")

# key -> (test, what it must be). Optional keys are checked only when present.
TYPE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_SEED, f"an integer in [0, {2**32 - 1}]"),
    "train": (_is_bool, "true or false"),
    "test": (_is_bool, "true or false"),
    "data.batch_size": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "data.image_size": (lambda v: _is_int(v) and v > 0, "an integer > 0 (pixels)"),
    "data.num_classes": (lambda v: v is None or (_is_int(v) and v > 1),
                         "an integer >= 2 (or null with data=folder: one class per folder)"),
    "data.num_workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "trainer.max_epochs": (lambda v: v is None or (_is_int(v) and v >= -1), "an integer >= -1"),
    "trainer.deterministic": (lambda v: v is None or _is_bool(v) or v == "warn",
                              "true, false or warn (deterministic kernels, warning where there "
                              "is none)"),
    "trainer.devices": (_devices, "an integer >= 1, -1 or auto (all devices), or a list of "
                                  "device indices, e.g. [0,1]"),
    "trainer.num_nodes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "trainer.accumulate_grad_batches": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "optimizer.weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer.name": (lambda v: v in OPTIMIZERS, one_of(OPTIMIZERS)),
    "scheduler.name": (lambda v: v in SCHEDULES, one_of(SCHEDULES)),
    "trainer.gradient_clip_val": (lambda v: v is None or (_is_number(v) and v >= 0),
                                  "a number >= 0 (0 or null: no clipping)"),
    "augment.label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "compile": (lambda v: _is_bool(v) or OmegaConf.is_dict(v) or isinstance(v, dict),
                "true, false or torch.compile options, e.g. {mode: max-autotune}"),
    "channels_last": (_is_bool, "true or false"),
    "ema_decay": (_optional(_in(0, 1, lo_open=True, hi_open=True)),
                  "a number in (0, 1), e.g. 0.9998, or null (no EMA)"),
    "model.drop_path": _RATE,
    "model.drop_rate": _RATE,
    "model.attn_drop": _RATE,
    "model.grad_checkpointing": (_is_bool, "true or false"),
    "data.mean": (_numbers(3), "3 numbers, one per RGB channel, e.g. [0.485,0.456,0.406]"),
    "data.std": (_numbers(3, lambda x: x > 0),
                 "3 numbers > 0, one per RGB channel, e.g. [0.229,0.224,0.225]"),
    "data.val_size": (_split_size, _SPLIT),
    "data.test_size": (_optional(_split_size), f"{_SPLIT}, or null (no test split: test on val)"),
    "data.split_seed": (_optional(_SEED), f"an integer in [0, {2**32 - 1}], or null (the run's seed)"),
    "data.max_image_pixels": (_optional(lambda v: _is_int(v) and v > 0),
                              "an integer > 0 (pixels), or null (PIL's default, 89478485)"),
    "data.crop_pct": (_in(0, 1, lo_open=True), "a number in (0, 1] (1.0: no crop)"),
    "data.eval_warp": (_is_bool, "true or false"),
    "data.streaming": (_is_bool, "true or false"),
    "data.skip_corrupt": (_is_bool, "true or false"),
    "augment.random_crop": (_is_bool, "true or false"),
    "augment.scale": (_numbers(2, lambda x: 0 < x <= 1), "2 numbers in (0, 1], e.g. [0.08,1.0]"),
    "augment.ratio": (_numbers(2, lambda x: x > 0), "2 numbers > 0, e.g. [0.75,1.3333]"),
    "augment.hflip": _PROB,
    "augment.erase_prob": _PROB,
    "augment.mix_prob": _PROB,
    "augment.mix_switch_prob": _PROB,
    "augment.mixup_alpha": (_in(0, math.inf), "a number >= 0 (0: off)"),
    "augment.cutmix_alpha": (_in(0, math.inf), "a number >= 0 (0: off)"),
    "augment.randaugment": (lambda v: v is None or OmegaConf.is_dict(v) or isinstance(v, dict),
                            "null (off) or RandAugment's options, e.g. {num_ops: 2, magnitude: 9} "
                            "(augment=deit: the paper's)"),
    "augment.randaugment.num_ops": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "augment.randaugment.magnitude": (_in(0, 10), "a number in [0, 10] (timm's scale; paper: 9)"),
    "augment.randaugment.magnitude_std": (_in(0, math.inf), "a number >= 0"),
    "augment.randaugment.prob": _PROB,
    "optimizer.ref_batch": (_optional(lambda v: _is_int(v) and v > 0),
                            "an integer > 0, or null (optimizer.lr is absolute)"),
    "optimizer.eps": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "optimizer.betas": (_numbers(2, lambda x: 0 <= x < 1), "2 numbers in [0, 1), e.g. [0.9,0.999]"),
    "optimizer.momentum": (_in(0, math.inf), "a number >= 0"),
    "optimizer.nesterov": (_is_bool, "true or false"),
    "optimizer.fused": (_optional(_is_bool), "true, false or null"),
    "optimizer.layer_decay": (_optional(_in(0, 1, lo_open=True)), "a number in (0, 1], or null (off)"),
    "scheduler.warmup_epochs": (_in(0, math.inf), "a number >= 0"),
    "scheduler.warmup_steps": (_optional(lambda v: _is_int(v) and v >= 0),
                               "an integer >= 0, or null (use scheduler.warmup_epochs)"),
    "scheduler.warmup_lr": (_in(0, math.inf), "a number >= 0 (an absolute lr)"),
    "scheduler.min_lr": (_in(0, math.inf), "a number >= 0 (an absolute lr)"),
    "scheduler.milestones": (_numbers(None, lambda x: x >= 0), "a list of epochs, e.g. [30,60,90]"),
    "scheduler.gamma": (_in(0, math.inf, lo_open=True), "a number > 0"),
}


# Keys the run reads without a default: `~key` on one of these is refused by name
REQUIRED_KEYS = ("seed", "train", "test", "model", "model.name", "data", "data.name", "data.source",
                 "data.num_classes", "data.image_size", "data.batch_size", "data.mean", "data.std",
                 "augment", "optimizer", "optimizer.name", "optimizer.lr", "optimizer.batch_size",
                 "scheduler", "scheduler.name", "trainer", "trainer._target_")


def _check_required(cfg: DictConfig) -> None:
    for key in REQUIRED_KEYS:
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            raise ConfigError(f"{key} is missing (removed with ~{key}?), but the run needs it: "
                              f"set it with {key}=<value> instead")


def _check_types(cfg: DictConfig) -> None:
    for key, (ok, what) in TYPE_RULES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value == "<absent>":
            continue
        if not ok(value):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"{key}={shown!r} ({type(shown).__name__}) must be {what}")


# Every metric a run logs (module.py, callbacks.TrainThroughput; the lr monitor adds lr-*).
# A test checks this list against what a real run logs.
LOGGED_METRICS = ("train/loss", "train/loss_epoch", "train/acc1", "train/acc5", "train/img_per_sec",
                  "val/loss", "val/acc1", "val/acc5", "val/acc1_best",
                  "test/loss", "test/acc1", "test/acc5")


def _check_metric_names(cfg: DictConfig) -> None:
    """A mistyped metric would waste the run: a checkpoint monitor fails after the first
    epoch, an Optuna search runs every trial to the end for no value."""
    fit = tuple(m for m in LOGGED_METRICS if not m.startswith("test/"))
    keys = [("optimized_metric", cfg.get("optimized_metric"), LOGGED_METRICS, "")]
    keys += [(f"callbacks.{name}.monitor", cb.get("monitor"), fit, " while training")
             for name, cb in (cfg.get("callbacks") or {}).items() if OmegaConf.is_dict(cb)]
    for key, metric, known, when in keys:
        if metric is not None and metric not in known:
            val = str(metric).replace("test/", "val/", 1)  # a test metric: its val/ twin
            close = ([val] if val in known
                     else sorted(difflib.get_close_matches(str(metric), known, n=2)))
            did = f"; did you mean {' or '.join(f'{key}={c}' for c in close)}?" if close else "."
            raise ConfigError(f"{key}={metric} is not a metric cvt-lab logs{when}{did} It "
                              f"logs{when}: {', '.join(known)}")


def _check_run_mode(cfg: DictConfig) -> None:
    resume = cfg.get("resume")
    if resume not in (None, False, "auto"):
        raise ConfigError(f"resume={resume!r}: use resume=auto (continue this task_name's newest "
                          "checkpoint) or give the file with ckpt_path=<file.ckpt>")
    if resume == "auto" and cfg.get("ckpt_path"):
        raise ConfigError("give either resume=auto or ckpt_path=<file.ckpt>, not both")
    from .sweep import is_multirun

    if resume == "auto" and is_multirun():  # its search is over single runs (logs/<task>/runs)
        raise ConfigError(
            "resume=auto does not work in a multirun (-m): every job would continue the newest "
            f"single run of task_name={cfg.task_name} (multirun jobs are not searched), not its "
            "own sweep point. Resume a job as a single run: its overrides (<job "
            "dir>/.hydra/overrides.yaml) plus ckpt_path=<job dir>/checkpoints/last.ckpt")
    if resume == "auto" and not cfg.train:
        raise ConfigError("resume=auto continues training: it needs train=true")
    if not cfg.train and not cfg.get("ckpt_path") and not (cfg.get("model") or {}).get("pretrained"):
        raise ConfigError("train=false evaluates weights: also give ckpt_path=<file.ckpt> (a run's "
                          "checkpoint) or model.pretrained=<dir|hub id|file> (published weights)")
    if not cfg.train and not cfg.get("test", True):
        raise ConfigError("train=false test=false would run nothing: set test=true to evaluate "
                          "the weights, or train=true to train")
    trainer = cfg.get("trainer") or {}
    for length in ("max_epochs", "max_steps"):
        if cfg.train and trainer.get(length) == 0 and not trainer.get("fast_dev_run"):
            raise ConfigError(f"trainer.{length}=0 trains nothing, and the test would measure "
                              f"untrained weights: set trainer.{length}>=1, or evaluate a "
                              "checkpoint with train=false ckpt_path=<file.ckpt>")
    if (cfg.train and trainer.get("max_epochs") == -1 and trainer.get("max_steps", -1) in (-1, None)
            and not trainer.get("fast_dev_run")):
        steps = "trainer.max_steps" if "max_steps" in trainer else "+trainer.max_steps"  # Hydra's +
        raise ConfigError("trainer.max_epochs=-1 without trainer.max_steps trains without end, but "
                          f"the lr schedule is laid out over the run's length: set {steps}="
                          "<optimizer steps> or trainer.max_epochs=<epochs>")


def _check_model(cfg: DictConfig) -> None:
    from .models import preset_config  # imports torch: keep the module light for run.py
    from .models.config import architecture_overrides

    knobs = architecture_overrides(OmegaConf.to_container(cfg.model, resolve=True))

    def build(**changes: Any):
        try:
            # the class count (null for folders until the data is read) does not shape the body
            return preset_config(cfg.model.name, num_classes=cfg.data.num_classes or 1,
                                 **{**knobs, **changes})
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"model: {err.args[0] if err.args else err}") from err

    # model.img_size follows data.image_size: the body is first built at a size past any
    # geometry's minimum, so that a too small image size is named by its data key below
    model = build(img_size=1 << 30)
    size, minimum = cfg.data.image_size, model.min_input_size
    if size < minimum:
        raise ConfigError(
            f"data.image_size={size} is below the minimum {minimum} px of model {cfg.model.name} "
            f"(total stride {model.total_stride}, patch strides {list(model.patch_stride)}). "
            f"Use data.image_size>={minimum} or a smaller-stride model (cvt_tiny)")
    build()  # model.img_size, where it is set apart from data.image_size
    native = preset_config(cfg.model.name).img_size  # the model's img_size follows the data's
    warp = bool(cfg.data.get("eval_warp"))  # (crop_pct=1.0 would still crop a non-square image)
    if native > 224 and (size != native or not warp):
        log.warning("model=%s is the %d px preset (its weights were fine-tuned at %d px and are "
                    "evaluated on images resized to %d x %d, no crop) but data.image_size=%d, "
                    "data.eval_warp=%s: set data.image_size=%d data.eval_warp=true (as "
                    "finetune_cifar100 does), unless the change is deliberate",
                    cfg.model.name, native, native, native, native, size, str(warp).lower(), native)


# ---------------------------------------------------------------------- unknown keys


def config_dir() -> Path:
    """The primary config directory of the running Hydra app (the repo's conf/ otherwise)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    return CONF_DIR


def group_options(conf: Path, group: str) -> list[str]:
    """The options of a config group: its yaml files, less the shared ``_*`` base files."""
    return sorted(str(p.relative_to(conf / group).with_suffix(""))
                  for p in (conf / group).rglob("*.yaml") if not p.name.startswith("_"))


def _check_group_choices() -> None:
    """A group's shared base file (data=_common, model=_knobs) is not an option: chosen, it
    composed without the values the options set and failed later on a missing value."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    conf = config_dir()
    for group, choice in HydraConfig.get().runtime.choices.items():
        if choice and Path(str(choice)).name.startswith("_") and (conf / group).is_dir():
            raise ConfigError(f"{group}={choice} is the base file the {group} options share, "
                              f"not an option: choose one of {', '.join(group_options(conf, group))}")


@lru_cache(maxsize=None)
def group_keys(conf: Path, group: str) -> frozenset[str]:
    """Keys any option file of ``group`` defines (``defaults`` aside)."""
    keys: set[str] = set()
    for path in (conf / group).rglob("*.yaml"):
        node = OmegaConf.load(path)
        if isinstance(node, DictConfig):
            keys.update(k for k in node.keys() if k != "defaults")
    return frozenset(keys)


@lru_cache(maxsize=None)
def top_level_keys(conf: Path) -> frozenset[str]:
    """config.yaml's keys, its groups, and top-level keys of `# @package _global_` files."""
    keys = {k for k in OmegaConf.load(conf / "config.yaml").keys() if k != "defaults"}
    keys |= {p.name for p in conf.iterdir() if p.is_dir()}
    for path in conf.rglob("*.yaml"):
        if path.read_text().lstrip().startswith("# @package _global_"):
            keys.update(k for k in OmegaConf.load(path).keys() if k != "defaults")
    return frozenset(keys)


def trainer_keys() -> frozenset[str]:
    from lightning.pytorch import Trainer

    return frozenset(inspect.signature(Trainer.__init__).parameters) - {"self"} | {"_target_"}


def randaugment_keys() -> frozenset[str]:
    from .data.randaugment import RandAugment  # imports torch: keep the module light

    return frozenset(inspect.signature(RandAugment.__init__).parameters) - {"self", "fill"}


def _unknown(key: str, valid: frozenset[str] | set[str], where: str) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    close = [f"{parent}.{c}" if parent else c
             for c in difflib.get_close_matches(leaf, sorted(valid), n=3)]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return ConfigError(f"unknown config key '{key}': {hint}valid keys of {where}: "
                       f"{', '.join(sorted(valid))}")


def _check_unknown_keys(cfg: DictConfig, conf: Path) -> None:
    known = top_level_keys(conf)
    for key in cfg.keys():
        if key not in known:
            raise _unknown(str(key), known, "the top level")
    for group in KEYED_GROUPS:
        valid = group_keys(conf, group)
        for key in cfg.get(group) or {}:
            if key not in valid:
                raise _unknown(f"{group}.{key}", valid, f"'{group}' (defined in conf/{group}/*.yaml)")
    randaugment = (cfg.get("augment") or {}).get("randaugment")
    if randaugment:  # (passed to RandAugment as keyword arguments)
        valid = randaugment_keys()
        for key in randaugment:
            if key not in valid:
                raise _unknown(f"augment.randaugment.{key}", valid,
                               "'augment.randaugment' (RandAugment's options)")
    if cfg.get("trainer"):
        valid = trainer_keys()
        for key in cfg.trainer:
            if key not in valid:
                raise _unknown(f"trainer.{key}", valid, "'trainer' (lightning.Trainer arguments)")


# ------------------------------------------------------------------------ checkpoints


def read_checkpoint(path: str | Path) -> Any:
    """A checkpoint opened the way training opens it: tensors and plain values only
    (``weights_only=True``: a pickle carrying code is refused unrun), memory-mapped when it
    is a zip, so a multi-GB file is paged in only where it is read."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def check_checkpoint(path: str | None) -> None:
    """Fail fast, before anything is written, on a ckpt_path that cannot be used.

    The file is opened the way training will open it (``weights_only=True``): a pickle that
    carries code is refused here, without running it.
    """
    if path is None:
        return
    import pickle

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ckpt_path={path}: no such file (give the path to a .ckpt file, "
                          f"e.g. logs/<task_name>/runs/<time>/checkpoints/last.ckpt)")
    try:
        ckpt = read_checkpoint(p)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise ConfigError(f"ckpt_path={path}: not a PyTorch checkpoint ({err})") from err
        raise ConfigError(
            f"ckpt_path={path}: refused: the file holds Python objects or code, not just tensors "
            "(torch.load weights_only=True rejected it). Only use checkpoints you trust; re-save "
            "it as plain tensors (a state dict) to use it") from err
    except Exception as err:  # truncated zip, another format: torch raises many types
        raise ConfigError(f"ckpt_path={path}: not a PyTorch checkpoint or truncated "
                          f"({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt_path={path}: a tensor file but not a Lightning checkpoint (no "
                          "'state_dict'); to start from pretrained weights use "
                          "model.pretrained=<file> instead")


def check_checkpoint_fits(ckpt: dict[str, Any] | None, path: str | None, module: Any) -> None:
    """Refuse a checkpoint of another model, class count or EMA setting by what differs,
    before training or testing starts, instead of Lightning's strict load listing every key."""
    if ckpt is None:
        return
    from .models.checkpoint import state_misfits  # imports torch: keep the module light

    missing, unexpected, mismatched = state_misfits(module.state_dict(), ckpt["state_dict"])
    misfits = [f"{k} missing" for k in missing] + [f"{k} unexpected" for k in unexpected] + mismatched
    if not misfits:
        _check_same_network(ckpt, path, module.net.config)
        return
    saved, now = ckpt.get("hyper_parameters") or {}, module.hparams
    diffs = [f"model.{k}={v!r} (this config: {now['model'].get(k)!r})"
             for k, v in (saved.get("model") or {}).items()
             if k != "pretrained" and v != now["model"].get(k)]
    diffs += [f"{k}={saved[k]!r} (this config: {now.get(k)!r})" for k in ("num_classes", "ema_decay")
              if k in saved and saved[k] != now.get(k)]
    raise ConfigError(
        f"ckpt_path={path} holds another model than this config builds ({len(misfits)} "
        f"weights differ, e.g. {'; '.join(misfits[:3])}). "
        + (f"It was trained with {', '.join(diffs)}. " if diffs else "")
        + "Give the same model/data overrides as its training run (its run dir's "
          ".hydra/overrides.yaml); to start from its weights instead use model.pretrained=<file>")


def check_pretrained_head(module: Any, num_classes: int) -> None:
    """Evaluating published weights as they are (train=false, no ckpt_path) needs their own
    classifier: a head reset for another class count is untrained, its accuracy chance."""
    report = getattr(module.net, "load_report", None)
    if report is not None and report.head_reset:
        if report.checkpoint_classes == 0:  # a backbone (transformers' CvtModel)
            why, fix = "it is a backbone without a classifier", "Fine-tune it first (train=true)"
        else:
            why = (f"its classifier has {report.checkpoint_classes} classes but the data "
                   f"{num_classes}")
            fix = ("Evaluate on data of its label set (e.g. data=imagenet for ImageNet-1k "
                   "weights), or fine-tune first (train=true)")
        raise ConfigError(f"train=false model.pretrained={report.source}: {why}, so the test "
                          f"would run a new, untrained head. {fix}")


def _check_same_network(ckpt: dict[str, Any], path: str | None, config: Any) -> None:
    """Refuse weights that fit but were trained in another network: the activation, strides,
    paddings and head counts leave no trace in the weights (a run fine-tuned from transformers
    weights computes exact GELU because its model.pretrained said so, not its config)."""
    from .models.checkpoint import CONFIG_KEY, function_diffs
    from .models.config import CvTConfig

    if not ckpt.get(CONFIG_KEY):
        return
    trained = CvTConfig.build(**ckpt[CONFIG_KEY])
    diffs = [f"model.{f}={_listed(getattr(trained, f))!r} (this config: "
             f"{_listed(getattr(config, f))!r})" for f in function_diffs(config, trained)]
    if diffs:
        raise ConfigError(
            f"ckpt_path={path} was trained as another network than this config builds: "
            f"{'; '.join(diffs)}. Its weights fit, but the outputs would differ: set these "
            "values, or give the model overrides of its training run (its run dir's "
            ".hydra/overrides.yaml; a run from transformers weights takes model.activation=gelu "
            "from its model.pretrained)")


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ------------------------------------------------------------------------ CLI hints


def override_hint(overrides: list[str], config_name: str = "config",
                  conf: Path = CONF_DIR) -> str | None:
    """Why Hydra refused these command-line overrides, with close matches (None: it did not).

    Re-composes growing prefixes of the overrides to find the first bad one.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    candidates = []
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:
            return None  # a syntax error: Hydra's own message says where
        if override.is_hydra_override():
            continue
        if override.is_sweep_override():
            if not override.is_discrete_sweep() or override.value_type.name.startswith("GLOB"):
                continue  # intervals and globs are for the sweeper to expand
            prefix = arg.split("=", 1)[0]
            candidates += [f"{prefix}={v}" for v in override.sweep_string_iterator()]
        else:
            candidates.append(arg)

    def composes(args: list[str]) -> DictConfig | None:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                return compose(config_name, overrides=args)
        except Exception:
            return None
        finally:
            GlobalHydra.instance().clear()

    if composes([]) is None:
        return None  # the config itself is broken: Hydra's message is the useful one
    for i, arg in enumerate(candidates):
        if composes(candidates[: i + 1]) is not None:
            continue
        base = composes(candidates[:i])
        return _hint_for(parser.parse_override(arg), base, conf) if base is not None else None
    return None


def _hint_for(override: Any, base: DictConfig, conf: Path) -> str:
    key = override.key_or_group
    value = override.value() if not override.is_sweep_override() else None
    group = key.split("@")[0]
    if (conf / group).is_dir():
        options = group_options(conf, group)
        close = difflib.get_close_matches(str(value), options, n=3)
        did = f" Did you mean {group}={close[0]}?" if close else ""
        return f"Hint: '{value}' is not an option of '{group}'.{did} Options: {', '.join(options)}"
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(base, parent_key, default="<absent>") if parent_key else base
    if parent is None:  # e.g. augment.randaugment (off) under augment=basic: Hydra wants the +
        return (f"Hint: '{parent_key}' is null in this config, so '{key}' does not exist yet: "
                f"add it with a +, as +{override.input_line}")
    if not isinstance(parent, DictConfig):
        flat = _flat_keys(base)
        close = difflib.get_close_matches(key, flat, n=3)
        return f"Hint: '{key}' is not a config key." + (f" Did you mean {', '.join(close)}?" if close else "")
    if parent_key == "trainer" and leaf in trainer_keys():  # right name, but needs the +
        return (f"Hint: '{key}' is a lightning.Trainer argument this trainer config does not "
                f"set: add it with a +, as +{override.input_line}")
    keys = sorted(str(k) for k in parent.keys())
    close = difflib.get_close_matches(leaf, keys, n=3)
    where = f"'{parent_key}'" if parent_key else "the top level"
    did = f" Did you mean {', '.join(f'{parent_key}.{c}' if parent_key else c for c in close)}?" if close else ""
    if parent_key == "trainer" and not close:  # any Trainer argument may be added with +
        extra = difflib.get_close_matches(leaf, sorted(trainer_keys()), n=3)
        did = f" Did you mean {', '.join(f'+trainer.{c}' for c in extra)}?" if extra else ""
    return f"Hint: '{key}' is not a key of {where}.{did} Keys there: {', '.join(keys)}"


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of every key (values unresolved: Hydra's ${hydra:...} needs a live job)."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    out = []
    for k, v in node.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, dict):
            out += _flat_keys(v, f"{prefix}{k}.")
    return out


def print_override_hint(argv: list[str], conf: Path = CONF_DIR) -> None:
    """Called by run.py after Hydra refused the command line: print our hint, if any."""
    name = "config"
    for i, arg in enumerate(argv):
        if arg in ("-cn", "--config-name") and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
    try:
        hint = override_hint(argv, name, conf)
    except Exception:  # never let the hint hide Hydra's own error
        return
    if hint:
        print(hint, file=sys.stderr)
