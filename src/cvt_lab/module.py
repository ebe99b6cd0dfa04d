"""The LightningModule: a CvT, its loss, torchmetrics and the optimizer wiring."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .models import CvT, CvTConfig, create_model
from .models.checkpoint import CONFIG_KEY
from .models.config import architecture_overrides
from .optim import build_optimizer, build_scheduler
from .resume import rank_stream
from .utils import rank_zero_logs

BEST_KEY = "val_acc1_best"  # top-level key of our checkpoints: the best val/acc1 so far


def build_network(model_cfg: dict[str, Any], num_classes: int,
                  net_config: dict[str, Any] | None = None,
                  replaced_by: dict[str, Any] | None = None) -> CvT:
    """``model`` config -> CvT. Null knobs keep the preset's value. ``net_config`` (what a
    checkpoint of ours records) builds that exact network instead, without reading
    ``model.pretrained``: the checkpoint's weights replace those anyway.

    ``replaced_by``: the ``net_config`` of the checkpoint whose weights will be loaded over
    these (``ckpt_path``): the config's network is built, but ``model.pretrained`` is not read
    (it may be gone, or a Hub id offline); the activation it would set comes from that record."""
    if net_config is not None:
        net = CvT(CvTConfig.build(**net_config))
    else:
        knobs = architecture_overrides(model_cfg)
        if model_cfg.get("pretrained"):
            if replaced_by is None:
                knobs["pretrained"] = model_cfg["pretrained"]
            else:  # not read: only the activation those weights imply is taken, from the record
                knobs.setdefault("activation", replaced_by["activation"])
        with rank_zero_logs("cvt_lab.models"):  # what loading the weights did: once per run
            net = create_model(model_cfg["name"], num_classes=num_classes, **knobs)
    if model_cfg.get("grad_checkpointing"):
        net.set_grad_checkpointing(True)
    return net


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Top-1 and top-5 accuracy (micro: the fraction of samples right)."""
    metrics = {"acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes >= 5:
        metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics, prefix=prefix)


def ema_copy(net: nn.Module, decay: float) -> AveragedModel:
    """A frozen copy of ``net`` that tracks ``decay * ema + (1 - decay) * weights`` (and the
    BatchNorm buffers) after each optimizer step."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay={decay} must lie in (0, 1), e.g. 0.9998; null turns EMA off")
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    return ema.requires_grad_(False)


def steps_per_epoch(trainer: L.Trainer, total: int) -> int:
    """Optimizer steps per epoch (after ``estimated_stepping_batches``, which sets up the data
    unless max_epochs=-1 lets max_steps alone give the total: set it up then)."""
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if batches != float("inf"):
        return max(1, -(-int(batches) // trainer.accumulate_grad_batches))
    return max(1, total // max(1, trainer.max_epochs or 1))


class CvTModule(L.LightningModule):
    """Trains a CvT. Hyper-parameters are plain dicts so checkpoints load with weights_only.

    ``ema_decay``: keep an exponential moving average of the weights; validation, test and
    ``forward`` then use it, and checkpoints hold both (``net.*`` and ``ema.module.*``).
    ``compile``: ``torch.compile`` the network in :meth:`configure_model` (in place, so
    checkpoint keys have no ``_orig_mod.`` and load into an uncompiled module).
    ``channels_last``: NHWC memory format for weights and inputs (faster convs on GPUs).
    ``net_config``: the exact network (a :class:`CvTConfig` dict), set by checkpoints.
    ``replaced_by``: see :func:`build_network` (not a hyper-parameter: it names no setting).
    """

    def __init__(self, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any],
                 num_classes: int, label_smoothing: float = 0.0, ema_decay: float | None = None,
                 compile: bool | dict[str, Any] = False, channels_last: bool = False,
                 net_config: dict[str, Any] | None = None,
                 replaced_by: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["replaced_by"])
        self.net = build_network(model, num_classes, net_config, replaced_by)
        self.ema = ema_copy(self.net, ema_decay) if ema_decay is not None else None
        self.label_smoothing = label_smoothing
        self.train_metrics = accuracy_metrics(num_classes, "train/")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")
        # the eval loss per sample over all ranks: Lightning's sync_dist mean of a logged value
        # averages the per-rank sample counts as integers, which truncates when the ranks see
        # unequal counts (the unpadded eval sampler), e.g. 7 -> 6 over 2 ranks. It is fed
        # per-sample losses: with nan_strategy="disable" (a NaN loss stays NaN; the default
        # drops it with a warning) MeanMetric ignores its weight argument
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        # the epoch's mean training loss over every rank's batches (train/loss is each step's
        # value on rank 0 alone, as Lightning logs it without a collective per step)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_acc1_best = MaxMetric()
        self._configured = False

    @property
    def eval_net(self) -> nn.Module:
        """The weights to evaluate and deploy: the EMA when enabled, else the trained ones."""
        return self.ema.module if self.ema is not None else self.net

    def configure_model(self) -> None:
        if self._configured:  # Lightning calls this for fit and again for test
            return
        self._configured = True
        options = self.hparams.compile  # true or torch.compile kwargs, e.g. {mode: max-autotune}
        for net in {self.net, self.eval_net}:
            if self.hparams.channels_last:
                net.to(memory_format=torch.channels_last)
            if options:
                net.compile(**(options if isinstance(options, dict) else {}))

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.eval_net(self._inputs(images))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, targets, labels = batch
        # under DDP each rank its own dropout and drop-path masks (one process keeps drawing
        # from the global RNG, as it always has)
        ddp = self.trainer.world_size > 1
        with rank_stream(self.global_rank, images.device) if ddp else nullcontext():
            logits = self.net(self._inputs(images))
        # soft targets (Mixup/CutMix: class probabilities) carry the smoothing already;
        # cross_entropy runs in fp32 under CPU autocast, where a bare log_softmax stays bf16
        smoothing = 0.0 if targets.ndim == 2 else self.label_smoothing
        loss = F.cross_entropy(logits, targets, label_smoothing=smoothing)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True)
        self.train_loss.update(loss.detach())
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # called once per optimizer step (not per accumulated batch), and before the callbacks'
        # on_train_batch_end, where step checkpoints are written: they hold this step's EMA
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update_parameters(self.net)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # a run that trainer.max_steps ends mid-epoch (the step-based fine-tuning recipes) would
        # stop without validating its final weights: Lightning validates at epoch ends only, so
        # val/acc1_best and the tested best checkpoint would miss the last partial epoch. A stop
        # request makes Lightning validate after this batch, as at an epoch end
        max_steps = self.trainer.max_steps
        if max_steps is not None and 0 <= max_steps <= self.trainer.global_step:
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:  # (sync_dist: see on_validation_epoch_end)
        self.log_dict({**self.train_metrics.compute(), "train/loss_epoch": self.train_loss.compute()},
                      sync_dist=True)
        self.train_metrics.reset()
        self.train_loss.reset()

    def _eval_step(self, batch: Any, metrics: MetricCollection, loss_mean: MeanMetric) -> None:
        images, _, labels = batch
        logits = self(images)
        metrics.update(logits, labels)
        loss_mean.update(F.cross_entropy(logits, labels, reduction="none"))

    @staticmethod
    def _eval_values(metrics: MetricCollection, loss_mean: MeanMetric, stage: str
                     ) -> dict[str, torch.Tensor]:
        values = {**metrics.compute(), f"{stage}/loss": loss_mean.compute()}
        metrics.reset()
        loss_mean.reset()
        return values

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_loss)

    # compute() already gathers over all ranks; sync_dist on the (equal) values only tells
    # Lightning so, which silences its "use sync_dist" warning under DDP
    def on_validation_epoch_end(self) -> None:
        values = self._eval_values(self.val_metrics, self.val_loss, "val")
        self.log_dict(values, prog_bar=True, sync_dist=True)
        if not self.trainer.sanity_checking:
            self.val_acc1_best.update(values["val/acc1"])
            self.log("val/acc1_best", self.val_acc1_best.compute(), prog_bar=False, sync_dist=True)

    # MaxMetric's state is not in the state dict: without these a resumed run's val/acc1_best
    # (the sweep objective) would forget the epochs before the interruption. The net's config
    # goes along so create_model(pretrained=<ckpt>) builds it exactly (shapes record no strides),
    # and, as the hparam net_config, so load_from_checkpoint rebuilds it without the pretrained
    # weights it started from (which may be gone, or a Hub id offline)
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BEST_KEY] = self.val_acc1_best.max_value.detach().cpu()
        config = self.net.config.to_dict()
        checkpoint[CONFIG_KEY] = config
        checkpoint.setdefault(self.CHECKPOINT_HYPER_PARAMS_KEY, {})["net_config"] = config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if BEST_KEY in checkpoint:
            self.val_acc1_best.max_value = checkpoint[BEST_KEY].to(self.val_acc1_best.max_value)
        # a resumed optimizer takes its settings from the checkpoint's param groups: keep this
        # run's choice of kernel instead (a fused one under clipping + autocast would fail)
        if self._trainer is None:  # load_from_checkpoint: no optimizer to restore
            return
        fused = self._fused()
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group["fused"] = fused

    def _fused(self) -> bool | None:
        """optimizer.fused, unless gradients are clipped under mixed precision: Lightning
        refuses to clip a fused optimizer's gradients under autocast (it expects the fused
        step to unscale them itself), so the first step would fail."""
        fused = self.hparams.optimizer.get("fused")
        clipped = self.trainer.gradient_clip_val
        return None if clipped and isinstance(self.trainer.precision_plugin, MixedPrecision) else fused

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, self.test_loss)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self._eval_values(self.test_metrics, self.test_loss, "test"), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = {**self.hparams.optimizer, "fused": self._fused()}
        if self.hparams.optimizer.get("fused") and not opt_cfg["fused"]:
            rank_zero_info("optimizer.fused: off (PyTorch's per-tensor loop): Lightning cannot "
                           "clip a fused optimizer's gradients under mixed precision")
        optimizer = build_optimizer(self.net, opt_cfg)
        total = int(self.trainer.estimated_stepping_batches)
        with warnings.catch_warnings():
            if self.trainer.fast_dev_run:  # a smoke test of a batch or two: no word on its lr
                warnings.simplefilter("ignore")
            scheduler = build_scheduler(optimizer, self.hparams.scheduler, opt_cfg, total,
                                        steps_per_epoch(self.trainer, total))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
