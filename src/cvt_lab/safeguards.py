"""Keep a run's outputs safe: checkpoints written atomically, a checkpoint on SIGTERM
before exit, and a clear stop (keeping the last good checkpoint) on a non-finite loss."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .callbacks import resumable_step_end
from .resume import WANDB_ID_KEY

FIXES = ("Usual fixes: lower optimizer.lr or lengthen the warmup (scheduler.warmup_epochs), "
         "clip gradients (trainer.gradient_clip_val=1.0), train in full precision "
         "(trainer.precision=32-true) if you use 16-mixed, and check the data for broken values.")
# float16 weights: the likely cause comes first (seen here: cvt_tiny + AdamW diverged at step 65)
FP16_WEIGHTS_CAUSE = (
    "trainer.precision=16-true holds the weights and the optimizer's state in float16, where "
    "values below 6e-8 flush to zero: AdamW's second moment (squared gradients) is lost and "
    "its steps grow until the loss overflows. Use trainer.precision=bf16-mixed (or 16-mixed "
    "on a GPU), which keeps them in float32. ")


def fixes(trainer: L.Trainer) -> str:
    """What to try after a non-finite loss or weights, for this run's precision."""
    return (FP16_WEIGHTS_CAUSE if str(trainer.precision) == "16-true" else "") + FIXES


class NonFiniteError(RuntimeError):
    """The loss or the weights became NaN/inf; the message names the step and the fixes."""


TEMP_MARK = ".tmp-"


def _temp_path(target: Path) -> Path:
    """Where a checkpoint is written before it is renamed into place: hidden, and named by
    host and process, so a crashed writer's leftover can be told from a live one's."""
    return target.with_name(f".{target.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the partial checkpoints of writers on this host that died mid-write (kill -9,
    OOM kill): each can be gigabytes. Files of live processes and other hosts stay."""
    prefix = f"{TEMP_MARK}{socket.gethostname()}-"
    removed = []
    for path in Path(folder).glob(f".*{prefix}*"):
        pid = path.name.rpartition(prefix)[2]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        rank_zero_info(f"removed {len(removed)} partial checkpoint(s) left by a killed run: "
                       + ", ".join(str(p) for p in removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place.

    A crash or a full disk during the write leaves the previous ``last.ckpt`` intact (the
    stock writer truncates the target first). Remote paths use Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target.parent)
        tmp = _temp_path(target)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _slurm_requeue_signal(trainer: L.Trainer) -> int | None:
    """The signal on which Lightning checkpoints and requeues a SLURM job, if it does."""
    env = trainer._accelerator_connector.cluster_environment
    return env.requeue_signal if isinstance(env, SLURMEnvironment) and env.auto_requeue else None


class RunGuard(L.Callback):
    """Saves ``<dirpath>/last.ckpt`` when SIGTERM stops training; stops with a clear message
    when the loss is NaN/inf (before the bad update) and never writes non-finite weights;
    records the W&B run id in every checkpoint so a resumed run continues it; restores the
    train loader's position on resume. Always on (added by ``cvt_lab.train.run``).

    Under DDP, a signal must be acted on by every rank at the same step, or the ranks meet
    different collectives (one saving a checkpoint, another in the next step) and hang.
    Lightning's handlers run collectives inside the signal handler (SIGTERM: a broadcast;
    SLURM's requeue signal: the checkpoint's barrier), which hangs when the signal lands
    during another collective or reaches the ranks at different moments (both seen here).
    So during fit the handlers only note the signal (SIGTERM is also forwarded to the local
    ranks this process started, as Lightning does); in each training step the ranks agree on
    what was noted (in the all-reduce that already checks the loss) and act at that same
    step: SIGTERM stops them after it, the requeue signal runs Lightning's requeue
    (checkpoint, ``scontrol requeue``) at its end.

    Args:
        dirpath: the run's checkpoint directory (where ``last.ckpt`` lives).
        records: top-level entries written into every checkpoint, for the checks of a later
            resume (:func:`cvt_lab.resume.run_shape`).
    """

    def __init__(self, dirpath: str, records: dict[str, Any] | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.records = records or {}
        self._sigterm_pending = False
        self._requeue_pending = False  # noted by this rank's handler
        self._requeue_agreed = False  # agreed by all ranks at this step
        self._requeued = False  # once per job: a rank signalled a moment late must not repeat it

    @property
    def last(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _kept(self, trainer: L.Trainer) -> str:
        if self.last.exists():
            return f"the last good checkpoint {self.last} is kept"
        if trainer.ckpt_path:  # resumed into a new run dir, nothing saved here yet
            return f"the checkpoint this run resumed from, {trainer.ckpt_path}, is unchanged"
        return "no checkpoint had been written yet"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning loads the loader's saved state (position, RNG states) only when it builds
        # the loader after restoring the checkpoint (configure_optimizers asking for
        # estimated_stepping_batches builds it before), and only for a checkpoint from within an
        # epoch: from one at an epoch's end, such as every epoch's last.ckpt, the resumed run
        # drew other dropout, drop-path and augmentation than the uninterrupted one. Load it now
        # (a no-op when Lightning already did); the loader is lazy, so nothing has been fetched
        loop = trainer.fit_loop
        if loop._combined_loader_states_to_load and loop._combined_loader is not None:
            loop._combined_loader._load_state_dicts(loop._combined_loader_states_to_load)
            loop._combined_loader_states_to_load = []
        if sys.platform == "win32":  # (Lightning installs no signal handlers there either)
            return
        # Lightning installed its handlers before this hook runs; replace them for the fit
        self._sigterm_pending = self._requeue_pending = self._requeue_agreed = False
        self._requeued = False
        signal.signal(signal.SIGTERM, lambda signum, frame: self._note_sigterm(trainer, signum))
        # Lightning's own requeue handler checkpoints inside the handler: at any batch of an
        # accumulation group, and under DDP with a barrier a rank signalled late can hang on
        requeue = _slurm_requeue_signal(trainer)
        if requeue is not None:
            signal.signal(requeue, lambda signum, frame: setattr(self, "_requeue_pending", True))

    def _note_sigterm(self, trainer: L.Trainer, signum: int) -> None:
        """No collectives here: a signal handler can run in the middle of one."""
        if not self._sigterm_pending and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)  # the local ranks this process started
        self._sigterm_pending = True
        if trainer.world_size == 1:
            trainer._signal_connector.received_sigterm = True  # Lightning stops after the step

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        # one all-reduce a step carries the loss check and the signals noted on any rank
        noted = [not bool(torch.isfinite(loss).all()), self._sigterm_pending, self._requeue_pending]
        if trainer.world_size > 1:
            summed = trainer.strategy.reduce(
                torch.tensor(noted, dtype=torch.float32, device=trainer.strategy.root_device),
                reduce_op="sum")
            noted = (summed > 0).tolist()
        bad, sigterm, self._requeue_agreed = noted
        if bad:
            batch = trainer.fit_loop.epoch_loop.batch_idx
            raise NonFiniteError(
                f"the training loss is {loss.item()} at step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}, batch {batch}): training stopped before this update; "
                f"{self._kept(trainer)}. {fixes(trainer)}")
        if sigterm and not trainer.fit_loop.epoch_loop._should_accumulate():
            # set on every rank at this same step; Lightning raises SIGTERMException on each
            # once the step is done (after validation, if one is due, which checks it too).
            # Inside an accumulation group it waits for the group's step: a checkpoint taken
            # there would count the group's first batches as trained yet lose their gradients
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop._should_accumulate():  # (one process: set by the handler)
            trainer._signal_connector.received_sigterm = False  # stop after the group's step
        # acted on after the optimizer step, so the checkpoint holds a whole step; at an epoch's
        # last batch after the epoch's validation (on_train_epoch_end)
        if resumable_step_end(trainer):
            self._requeue_if_agreed(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._requeue_if_agreed(trainer)

    def _requeue_if_agreed(self, trainer: L.Trainer) -> None:
        # under DDP once all ranks agreed (at on_before_backward): every rank checkpoints,
        # rank 0 requeues
        requeue = self._requeue_agreed if trainer.world_size > 1 else self._requeue_pending
        if requeue and not self._requeued:
            self._requeued = True
            trainer._signal_connector._slurm_sigusr_handler_fn(_slurm_requeue_signal(trainer), None)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # weights can diverge with no NaN training loss (finite but huge after the run's last
        # update): validation's loss is then NaN. Fail the run (a sweep must not count it)
        # before ModelCheckpoint, which Lightning runs after the other callbacks, saves them
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None or bool(torch.isfinite(loss).all()):
            return
        raise NonFiniteError(
            f"the validation loss is {float(loss)} after step {trainer.global_step} (epoch "
            f"{trainer.current_epoch}): the weights give non-finite outputs; no checkpoint of "
            f"them is written; {self._kept(trainer)}. {fixes(trainer)}")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        for name, value in checkpoint.get("state_dict", {}).items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NonFiniteError(
                    f"weight '{name}' is NaN/inf at step {trainer.global_step}: refusing to write "
                    f"a checkpoint; {self._kept(trainer)}. {fixes(trainer)}")
        run_id = next((lg.version for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if run_id:
            checkpoint[WANDB_ID_KEY] = run_id
        checkpoint.update(self.records)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return  # after fit (testing) the model holds the best weights, not the last ones
        trainer.save_checkpoint(self.last, weights_only=False)  # the full state, to resume
        rank_zero_info(
            f"Stopped by SIGTERM at step {trainer.global_step} (epoch {trainer.current_epoch}). "
            f"Checkpoint saved to {self.last}\nResume with the same command plus resume=auto "
            f"(same task_name), or ckpt_path={self.last}")
