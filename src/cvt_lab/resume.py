"""Continue an interrupted run exactly where it stopped.

* ``resume=auto`` finds the newest checkpoint of the same ``task_name``
  (``<log_dir>/<task_name>/runs/*/checkpoints/last.ckpt``, or a SLURM ``hpc_ckpt_*.ckpt``).
* :class:`ResumableLoader` + :class:`ResumableSampler`: the training order depends only on
  (seed, epoch), and Lightning saves the loader's position in every checkpoint, so a run
  resumed mid-epoch skips exactly the batches it had trained on, with the global RNG states
  of that moment (dropout, drop-path, batch augmentation continue the same stream).
* The W&B run id travels in the checkpoint, so the resumed run logs to the same W&B run.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, DistributedSampler

from .validate import ConfigError, check_checkpoint, read_checkpoint

WANDB_ID_KEY = "wandb_run_id"  # top-level key of our checkpoints
BATCH_KEY = "batch_split"  # top-level key: what one optimizer step trained on
LENGTH_KEY = "run_length"  # top-level key: the length the lr schedule was computed for


# ------------------------------------------------------------------ finding the checkpoint


def find_resume_checkpoint(log_dir: str | Path, task_name: str, exclude: str | Path | None = None
                           ) -> str | None:
    """Newest usable checkpoint of this task's single runs (by modification time); None when
    there is none. Refuses when there are some but none can be read: starting afresh then
    would throw the run's progress away."""
    runs = Path(log_dir) / task_name / "runs"
    found = [*runs.glob("*/checkpoints/last.ckpt"), *runs.glob("*/hpc_ckpt_*.ckpt")]
    skip = Path(exclude).resolve() if exclude else None
    unreadable = []
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if skip is not None and skip in path.resolve().parents:
            continue
        try:
            check_checkpoint(str(path))
        except ConfigError as err:
            rank_zero_warn(f"resume=auto: skipping {path}: {err}")
            unreadable.append(str(path))
            continue
        return str(path)
    if unreadable:
        listed = ", ".join(unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
        raise ConfigError(
            f"resume=auto: no usable checkpoint under {runs}: {len(unreadable)} found, none "
            f"readable ({listed}; the warnings above say why). Resume from another file with "
            "ckpt_path=<file>, or start a fresh run without resume=auto (or with another task_name)")
    return None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """The checkpoint this run starts from: ckpt_path, or with resume=auto the newest one."""
    if cfg.get("resume") != "auto":
        check_checkpoint(cfg.get("ckpt_path"))
        return cfg.get("ckpt_path")
    path = find_resume_checkpoint(cfg.paths.log_dir, cfg.task_name, exclude=cfg.paths.output_dir)
    where = Path(cfg.paths.log_dir) / cfg.task_name / "runs"
    rank_zero_info(f"resume=auto: continuing from {path}" if path else
                   f"resume=auto: no checkpoint under {where}/*/ yet: starting a fresh run")
    return path


def read_resume_state(ckpt_path: str | None) -> dict[str, Any] | None:
    """The checkpoint a run continues or evaluates, read once (memory-mapped) for the checks
    and the W&B id that come before training; Lightning reads it again for the weights."""
    if not ckpt_path:
        return None
    return read_checkpoint(ckpt_path)


def batch_split(cfg: DictConfig) -> dict[str, int]:
    """The settings that fix the images per optimizer step, hence the steps per epoch."""
    return {"data.batch_size": int(cfg.data.batch_size),
            "trainer.accumulate_grad_batches": int(cfg.trainer.get("accumulate_grad_batches") or 1)}


def run_length(cfg: DictConfig) -> dict[str, float]:
    """The settings the lr schedule's length comes from."""
    limit = cfg.trainer.get("limit_train_batches")  # a fraction or a count of batches
    return {"trainer.max_epochs": int(cfg.trainer.get("max_epochs") or -1),
            "trainer.max_steps": int(cfg.trainer.get("max_steps") or -1),
            "trainer.limit_train_batches": 1.0 if limit is None else limit}


def run_shape(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """What every checkpoint records for the checks of a later resume."""
    return {BATCH_KEY: batch_split(cfg), LENGTH_KEY: run_length(cfg)}


def _changed(ckpt: dict[str, Any] | None, key: str, now: dict[str, float], this: str) -> str:
    """The settings recorded under ``key`` that differ now, as 'k=saved (<this>: now)'; empty
    when none do (or the checkpoint predates the record)."""
    saved = (ckpt or {}).get(key) or {}
    return ", ".join(f"{k}={v} ({this}: {now[k]})" for k, v in saved.items() if now.get(k) != v)


# optimizer keys a resume takes from the checkpoint: the optimizer's param groups (lr, decay,
# betas, ...) and the lr schedule's base lr (lr x batch / ref_batch) are restored over this
# config's; model.pretrained: the weights come from the checkpoint
RESTORED_KEYS = frozenset(f"optimizer.{k}" for k in ("lr", "ref_batch", "weight_decay", "betas",
                                                      "eps", "momentum", "nesterov", "layer_decay")
                          ) | {"model.pretrained"}
HPARAM_GROUPS = ("model", "optimizer", "scheduler")
HPARAM_KEYS = {"label_smoothing": "augment.label_smoothing", "num_classes": "data.num_classes"}


def config_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """A CvTModule's hyper-parameters under their config keys ('optimizer.lr': 0.002, ...)."""
    flat = {f"{g}.{k}": v for g in HPARAM_GROUPS for k, v in (hparams.get(g) or {}).items()}
    # (net_config is what the model.* keys built: those are compared, and say it in config terms)
    flat.update({HPARAM_KEYS.get(k, k): v for k, v in hparams.items()
                 if k not in (*HPARAM_GROUPS, "net_config")})
    return flat


def check_resumed_settings(ckpt: dict[str, Any] | None, ckpt_path: str | None, module: Any) -> None:
    """Before a resume: refuse an optimizer state this config cannot take (another optimizer,
    another grouping of the parameters: Lightning would fail after the loggers started), and
    say which changed settings have no effect (the checkpoint's optimizer state wins) and
    which take effect. Another model is refused before (``check_checkpoint_fits``)."""
    saved = (ckpt or {}).get("hyper_parameters")
    if not saved:
        return
    before, now = config_hparams(saved), config_hparams(module.hparams)
    changed = {k: f"{k}={v!r} (this config: {now.get(k)!r})" for k, v in before.items()
               if now.get(k) != v}
    fix = "start a new run from its weights with model.pretrained=<file>"
    if "optimizer.name" in changed:
        raise ConfigError(
            f"ckpt_path={ckpt_path} was trained with {changed['optimizer.name']}: its optimizer "
            f"state cannot be resumed by another optimizer. Resume with optimizer.name="
            f"{before['optimizer.name']} (its optimizer=... option), or {fix}")
    states = ckpt.get("optimizer_states") or []
    if states:  # weight_decay 0 or not, layer_decay: the parameter groups Lightning restores
        from .optim import param_groups

        opt = module.hparams.optimizer
        sizes = [len(g["params"]) for g in param_groups(module.net, opt.get("weight_decay", 0.0),
                                                        opt.get("layer_decay"))]
        saved_sizes = [len(g["params"]) for g in states[0]["param_groups"]]
        if sizes != saved_sizes:
            which = [changed[k] for k in ("optimizer.weight_decay", "optimizer.layer_decay")
                     if k in changed]
            raise ConfigError(
                f"ckpt_path={ckpt_path} was trained with {', '.join(which) or 'other settings'}: "
                f"the parameters fall into {len(sizes)} optimizer groups of sizes {sizes}, its "
                f"optimizer state has {len(saved_sizes)} of sizes {saved_sizes}, so it cannot be "
                f"restored. Resume with its values, or {fix}")
    no_effect = [c for k, c in changed.items() if k in RESTORED_KEYS]
    effect = [c for k, c in changed.items() if k not in RESTORED_KEYS]
    if changed:
        rank_zero_warn(
            f"ckpt_path={ckpt_path} was trained with other settings than this config."
            + (" No effect on this resume, as the weights, the optimizer's state and the lr "
               f"schedule's base lr come from the checkpoint: {', '.join(no_effect)}; to train "
               f"with them, {fix}." if no_effect else "")
            + (f" Taking effect from the resumed step on: {', '.join(effect)}" if effect else ""))


def warn_length_change(ckpt: dict[str, Any] | None, ckpt_path: str | None,
                       length: dict[str, float]) -> None:
    """Say so when a resumed run is longer or shorter than the one it continues: a legitimate
    way to train on, but the lr schedule is re-computed for the new length, so the lr jumps
    (extending a finished cosine starts it again from mid-height)."""
    if diffs := _changed(ckpt, LENGTH_KEY, length, "this run"):
        rank_zero_warn(
            f"ckpt_path={ckpt_path} was trained with {diffs}: the lr schedule is "
            "re-computed for this run's length, so the lr continues from another point of it "
            "(a finished cosine starts again part-way up). To continue the original schedule, "
            "resume with its values.")


def check_batch_split(ckpt: dict[str, Any] | None, ckpt_path: str | None,
                      split: dict[str, int]) -> None:
    """Refuse to resume with another batch split: the loader would skip the wrong samples
    (its position is in batches) and the restored lr schedule would sit at another point of
    a schedule re-computed for other steps per epoch, all without a word."""
    if diffs := _changed(ckpt, BATCH_KEY, split, "this config"):
        raise ConfigError(
            f"ckpt_path={ckpt_path} was trained with {diffs}: resuming would change the "
            "images per optimizer step, the samples skipped in the interrupted epoch and the lr "
            "schedule. Resume with its values, or start a new run from its weights with "
            "model.pretrained=<file>")


# ---------------------------------------------------------------------------- W&B run id


def wandb_run_id(ckpt: dict[str, Any] | None) -> str | None:
    """The W&B run id stored in a checkpoint by :class:`cvt_lab.safeguards.RunGuard`."""
    return ckpt.get(WANDB_ID_KEY) if ckpt else None


def resume_wandb(loggers: DictConfig | None, run_id: str | None) -> None:
    """Point every W&B logger of the config at the interrupted run (``resume="allow"``)."""
    if not run_id or not loggers:
        return
    for node in loggers.values():
        if node and "wandb" in str(node.get("_target_", "")).lower():
            with open_dict(node):
                node.id, node.resume = run_id, "allow"


# ---------------------------------------------------------------------- resumable order


class ResumableSampler(DistributedSampler):
    """Shuffles by (seed, epoch) only, shards over ``num_replicas`` ranks, and can start
    part-way into an epoch.

    A ``DistributedSampler`` so Lightning keeps it under DDP instead of wrapping it (and
    calls :meth:`set_epoch` every epoch). ``num_replicas=1, rank=0`` on one device.
    ``keyed=True`` yields ``(epoch, index)`` so the dataset can draw each sample's random
    crop from that key: a resumed epoch then replays the same augmentation too.
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, keyed: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.keyed = keyed
        self._skip: tuple[int, int] | None = None  # (epoch, samples of it already consumed)

    def skip(self, epoch: int, samples: int) -> None:
        """Start the next pass over ``epoch`` after its first ``samples`` samples."""
        self.set_epoch(epoch)
        self._skip = (epoch, samples)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1]:]
        self._skip = None
        return iter([(self.epoch, i) for i in indices] if self.keyed else indices)


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (it has ``state_dict``/``load_state_dict``).

    The state is the epoch and number of batches handed out so far, plus the global RNG
    states; on resume the sampler skips those batches and the RNG states are restored at
    the first fetch, where the interrupted run stood. Give it its own ``generator`` so
    creating an iterator does not draw from the global RNG.
    """

    _position: tuple[int, int] = (0, 0)  # (epoch, batches of it handed out)
    _rng_to_restore: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        # a generator: runs at the first fetch, after Lightning's set_epoch and state loading
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        if not self._resumable():  # the sampler was replaced (e.g. by overfit_batches)
            yield from super().__iter__()
            return
        epoch, done = self._start_pass()
        for served, batch in enumerate(self._batches(done), start=done + 1):
            self._position = (epoch, served)
            yield batch

    def _resumable(self) -> bool:
        return isinstance(self.sampler, ResumableSampler)

    def _start_pass(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) of the pass that starts now."""
        pending, epoch = self.sampler._skip, self.sampler.epoch
        return epoch, pending[1] // self.batch_size if pending and pending[0] == epoch else 0

    def _batches(self, done: int) -> Iterator[Any]:
        return DataLoader.__iter__(self)  # the sampler already leaves out the first ``done``

    def _seek(self, epoch: int, batches: int) -> None:
        self.sampler.skip(epoch, batches * self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        if not self._resumable():
            return {}
        epoch, served = self._position
        return {"epoch": epoch, "batches": served, "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or not self._resumable():
            return
        self._seek(state["epoch"], state["batches"])
        self._rng_to_restore = state["rng"]


# ------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@contextmanager
def rank_stream(rank: int, device: torch.device) -> Iterator[None]:
    """Inside the block, torch draws this rank's own random numbers.

    Under DDP every rank holds the same global RNG state (one seed; rank 0's state comes back
    on resume), so drawing from it gives every rank the same numbers. Take one seed from it
    (advancing it alike on every rank, so a checkpoint's RNG state resumes every rank
    exactly) and draw from a stream of that seed plus the rank; the global state is left as
    it was after taking the seed.
    """
    seed = int(torch.randint(2**62, ()))
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed + rank)
        yield


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
