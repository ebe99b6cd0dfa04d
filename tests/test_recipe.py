"""The training recipe: lr scaling, weight-decay groups, schedules, layer decay, gradient
accumulation, EMA, bf16, channels_last, compile, and the experiment files running."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cvt_lab.models import create_model
from cvt_lab.module import CvTModule
from cvt_lab.optim import build_optimizer, build_scheduler, effective_lr, layer_id
from cvt_lab.train import run
from data_helpers import make_folder

TINY = {"name": "cvt_tiny", "projection": "linear"}  # no BatchNorm: batch splits are exact
SGD = {"name": "sgd", "lr": 0.05, "ref_batch": None, "batch_size": 16, "momentum": 0.9}
CONSTANT = {"name": "constant", "warmup_epochs": 0}


def tiny_module(**kwargs) -> CvTModule:
    torch.manual_seed(0)
    args = {"model": TINY, "optimizer": SGD, "scheduler": CONSTANT, "num_classes": 10, **kwargs}
    return CvTModule(**args)


def loader(n: int = 16, batch: int = 16, seed: int = 1) -> DataLoader:
    """Fixed (images, targets, labels) batches, the shape the DataModule hands the module."""
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(images, labels, labels), batch_size=batch)


def trainer(**kwargs) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    return L.Trainer(**{**args, **kwargs})


# ---------------------------------------------------------------- optimizer

def test_lr_scales_linearly_with_the_global_batch_or_is_absolute():
    cfg = {"lr": 2.5e-4, "ref_batch": 256, "batch_size": 2048}
    assert effective_lr(cfg) == pytest.approx(2e-3)  # the paper's CvT-13 at batch 2048
    assert effective_lr({**cfg, "ref_batch": None}) == 2.5e-4


def test_no_weight_decay_on_norms_biases_cls_token_and_position_embeddings():
    net = create_model("cvt_tiny", pos_embed=[True, True, True])
    opt = build_optimizer(net, {"name": "adamw", "lr": 1e-3, "ref_batch": None, "batch_size": 8,
                                "weight_decay": 0.05})
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(net.named_parameters())
    assert len(decay_of) == len(names)  # every trainable parameter is optimised exactly once
    for name, p in names.items():
        exempt = p.ndim <= 1 or name.endswith(("cls_token", "pos_embed"))
        assert decay_of[id(p)] == (0.0 if exempt else 0.05), name
    assert decay_of[id(names["stage2.cls_token"])] == 0.0
    assert decay_of[id(names["stage0.pos_embed"])] == 0.0
    assert decay_of[id(names["head.weight"])] == 0.05


def test_layer_decay_scales_lr_by_depth_from_the_head():
    net = create_model("cvt_tiny")  # depths (1, 1, 2): 4 blocks, head at depth 5
    depths = net.config.depths
    assert layer_id("stage0.patch_embed.proj.weight", depths) == 0
    assert layer_id("stage1.blocks.0.mlp.fc1.weight", depths) == 2
    assert layer_id("stage2.cls_token", depths) == 2
    assert layer_id("stage2.blocks.1.attn.proj.weight", depths) == 4
    assert layer_id("head.weight", depths) == 5
    opt = build_optimizer(net, {"name": "sgd", "lr": 0.1, "ref_batch": None, "batch_size": 8,
                                "layer_decay": 0.5})
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    params = dict(net.named_parameters())
    assert lr_of[id(params["head.weight"])] == pytest.approx(0.1)
    assert lr_of[id(params["stage2.blocks.1.attn.proj.weight"])] == pytest.approx(0.05)
    assert lr_of[id(params["stage0.patch_embed.proj.weight"])] == pytest.approx(0.1 * 0.5 ** 5)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_configured_optimizers_are_fused_and_step_like_the_per_tensor_loop(make_cfg, optimizer):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(make_cfg(f"optimizer={optimizer}").optimizer, resolve=True)
    assert cfg["fused"] is True
    nets = [create_model("cvt_tiny") for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [build_optimizer(nets[0], cfg), build_optimizer(nets[1], {**cfg, "fused": None})]
    assert opts[0].defaults["fused"] and not opts[1].defaults["fused"]
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for net, opt in zip(nets, opts):  # one step: equal gradients, so equal updates
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(nets[0].head.weight, create_model("cvt_tiny").head.weight)


# ---------------------------------------------------------------- schedules

def lrs(sched_cfg: dict, total: int, per_epoch: int, peak: float = 1e-3) -> list[float]:
    opt_cfg = {"name": "adamw", "lr": peak, "ref_batch": None, "batch_size": 8}
    optimizer = build_optimizer(nn.Linear(2, 2), opt_cfg)
    scheduler = build_scheduler(optimizer, sched_cfg, opt_cfg, total, per_epoch)
    values = []
    for _ in range(total + 1):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_cosine_at_start_warmup_end_midpoint_and_end():
    # 121 steps: 2 warmup epochs of 10 steps from 1e-6, then cosine over 100 steps to 1e-5
    v = lrs({"name": "cosine", "warmup_epochs": 2, "warmup_lr": 1e-6, "min_lr": 1e-5}, 121, 10)
    assert v[0] == pytest.approx(1e-6)
    assert v[10] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)  # linear half-way
    assert v[20] == pytest.approx(1e-3)                     # warmup end = peak
    assert v[70] == pytest.approx((1e-3 + 1e-5) / 2)        # cosine midpoint
    assert v[120] == pytest.approx(1e-5)                    # min lr at the last step (0-based 120)
    assert all(a >= b for a, b in zip(v[20:], v[21:]))      # decays monotonically


def test_a_min_lr_above_the_peak_is_named_with_the_fix():
    """A small batch scales the peak under min_lr: the "decay" rises instead (allowed, as a
    quick small-batch run is a normal thing to do, but said)."""
    with pytest.warns(UserWarning, match=r"scheduler.min_lr=0.01 is above the peak lr 0.001 "
                                          r"\(optimizer.lr=0.001 .*rises instead of decaying. Lower scheduler.min_lr"):
        lrs({"name": "cosine", "warmup_epochs": 0, "min_lr": 1e-2}, 10, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrs({"name": "constant", "warmup_epochs": 0, "min_lr": 1e-2}, 10, 5)  # min_lr unused there


def test_a_warmup_as_long_as_the_run_is_named_with_the_fix():
    # a recipe shortened on the command line (cvt13_imagenet trainer.max_epochs=5) kept its 5
    # warmup epochs: the lr rose over the whole run and never decayed, silently
    with pytest.warns(UserWarning, match=r"scheduler.warmup_epochs=5 = 50 steps covers the whole "
                                          r"run \(50 optimizer steps\): the lr only rises"):
        lrs({"name": "cosine", "warmup_epochs": 5}, 50, 10)
    with pytest.warns(UserWarning, match=r"scheduler.warmup_steps=60 covers the whole run"):
        lrs({"name": "constant", "warmup_epochs": 0, "warmup_steps": 60}, 50, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrs({"name": "cosine", "warmup_epochs": 4}, 50, 10)


def test_warmup_steps_win_over_epochs_and_constant_and_step_schedules():
    v = lrs({"name": "constant", "warmup_epochs": 5, "warmup_steps": 4, "warmup_lr": 0.0}, 20, 10)
    assert v[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert v[19] == pytest.approx(1e-3)
    v = lrs({"name": "step", "warmup_epochs": 0, "milestones": [1, 3], "gamma": 0.1}, 40, 10)
    assert (v[9], v[10], v[29], v[30]) == pytest.approx((1e-3, 1e-4, 1e-4, 1e-5))


class RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_schedule_steps_per_optimizer_step_under_gradient_accumulation():
    # 6 batches x 2 epochs with accumulation 2 = 6 optimizer steps; warmup = 1 epoch = 3 steps,
    # then cosine from the peak to min_lr at the last step
    sched = {"name": "cosine", "warmup_epochs": 1, "warmup_lr": 1e-4, "min_lr": 1e-3}
    module = tiny_module(scheduler=sched, optimizer={**SGD, "lr": 0.1})
    record = RecordLR()
    trainer(max_epochs=2, accumulate_grad_batches=2, callbacks=[record]).fit(
        module, loader(n=48, batch=8))
    warm = [1e-4 + (0.1 - 1e-4) * s / 3 for s in range(3)]
    assert record.lrs == pytest.approx([*warm, 0.1, (0.1 + 1e-3) / 2, 1e-3])


def test_warmup_epochs_count_real_epochs_when_max_steps_ends_the_run():
    # max_epochs=-1 (the fine-tuning recipes' setting): Lightning then skips loading the data
    # to estimate the steps, yet warmup_epochs=1 is still one pass over the 4 batches
    sched = {"name": "cosine", "warmup_epochs": 1, "warmup_lr": 0.0, "min_lr": 0.0}
    module = tiny_module(scheduler=sched, optimizer={**SGD, "lr": 0.1})
    record = RecordLR()
    trainer(max_epochs=-1, max_steps=8, callbacks=[record]).fit(module, loader(n=32, batch=8))
    assert record.lrs[:5] == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])


def test_a_run_that_max_steps_ends_mid_epoch_validates_its_final_weights():
    # the step-based recipes (finetune_cifar100: 10k steps of ~88 per epoch) end mid-epoch;
    # Lightning validates only at epoch ends, so the final weights were never validated and the
    # tested "best" checkpoint could only be one from before the last partial epoch
    steps = []
    record = L.Callback()
    record.on_validation_end = lambda trn, module: steps.append(trn.global_step)
    module = tiny_module()
    trn = trainer(max_epochs=-1, max_steps=6, limit_val_batches=1.0, num_sanity_val_steps=0,
                  callbacks=[record])
    trn.fit(module, loader(n=32, batch=8), loader(n=8, batch=8))  # 4 steps per epoch
    assert steps == [4, 6]
    assert trn.current_epoch == 2 and trn.global_step == 6  # still stops at max_steps


# ---------------------------------------------------------------- accumulation

def test_two_accumulated_half_batches_equal_one_full_batch_step():
    base = tiny_module(label_smoothing=0.1)
    full, accumulated = copy.deepcopy(base), copy.deepcopy(base)
    trainer(max_steps=1).fit(full, loader(n=16, batch=16))
    trainer(max_steps=1, accumulate_grad_batches=2).fit(accumulated, loader(n=16, batch=8))
    moved = 0
    for (name, a), b, start in zip(full.net.named_parameters(), accumulated.net.parameters(),
                                   base.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
        moved += not torch.equal(a, start)
    assert moved > 10  # the step really changed the weights


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradient_clipping_works_with_the_default_fused_optimizer(precision):
    # SGD's first step moves the weights by lr x the clipped gradient, whose norm is the clip
    module = tiny_module(optimizer={**SGD, "lr": 1.0, "momentum": 0.0, "fused": True})
    start = [p.detach().clone() for p in module.net.parameters()]
    trn = trainer(max_steps=1, precision=precision, gradient_clip_val=1e-3)
    trn.fit(module, loader())
    assert bool(trn.optimizers[0].defaults["fused"]) == (precision == "32-true")  # loop only if needed
    moved = [p.detach() - s for p, s in zip(module.net.parameters(), start)]
    assert float(torch.linalg.vector_norm(torch.cat([m.flatten() for m in moved]))) == pytest.approx(
        1e-3, rel=1e-3)


def test_a_resumed_optimizer_keeps_this_runs_kernel_choice(tmp_path):
    # the checkpoint's param groups say fused=True; resumed with clipping under autocast, the
    # fused kernel would fail at the first step, so the run's own choice must win
    module = tiny_module(optimizer={**SGD, "fused": True})
    trn = trainer(max_steps=1)
    trn.fit(module, loader())
    assert trn.optimizers[0].param_groups[0]["fused"]
    trn.save_checkpoint(tmp_path / "fused.ckpt")
    resumed = trainer(max_steps=2, precision="bf16-mixed", gradient_clip_val=1.0)
    resumed.fit(tiny_module(optimizer={**SGD, "fused": True}), loader(),
                ckpt_path=tmp_path / "fused.ckpt")
    assert resumed.global_step == 2 and not resumed.optimizers[0].param_groups[0]["fused"]


# ---------------------------------------------------------------- metrics

def test_train_acc1_counts_each_mixed_image_against_its_own_label():
    module = tiny_module()
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        labels = module.net(images).argmax(1)  # the one batch's logits predict every own label
    partners = (labels + 1) % 10
    # soft targets whose argmax is another class, as Mixup with lambda 0.3 gives
    targets = 0.3 * F.one_hot(labels, 10) + 0.7 * F.one_hot(partners, 10)
    trn = trainer(max_epochs=1)
    trn.fit(module, DataLoader(TensorDataset(images, targets.float(), labels), batch_size=8))
    assert float(trn.callback_metrics["train/acc1"]) == 1.0


def test_soft_target_loss_is_computed_in_fp32_under_bf16_mixed_on_cpu():
    # CPU autocast runs log_softmax in bf16 (CUDA's in fp32), cross_entropy in fp32: one-hot
    # soft targets must give the hard labels' loss, not a bf16-rounded one
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(16) % 10
    losses = []
    for targets in (labels, F.one_hot(labels, 10).float()):
        trn = trainer(max_steps=1, precision="bf16-mixed")
        trn.fit(tiny_module(), DataLoader(TensorDataset(images, targets, labels), batch_size=16))
        losses.append(float(trn.callback_metrics["train/loss"]))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


# ---------------------------------------------------------------- EMA

def test_ema_tracks_each_optimizer_step_and_is_what_eval_and_checkpoints_use(tmp_path):
    module = tiny_module(ema_decay=0.5, optimizer={**SGD, "lr": 0.5})
    data = loader(n=32, batch=8)
    trn = trainer(max_epochs=1, accumulate_grad_batches=2)
    trn.fit(module, data)
    assert int(module.ema.n_averaged) == 2  # one update per optimizer step, not per batch
    raw, ema = dict(module.net.named_parameters()), dict(module.ema.module.named_parameters())
    assert not all(torch.equal(raw[k], ema[k]) for k in raw)
    assert not any(p.requires_grad for p in ema.values())

    images, _, labels = next(iter(loader(n=16, batch=16, seed=7)))
    module.eval()
    with torch.no_grad():
        ema_loss = F.cross_entropy(module.ema.module(images), labels).item()
        raw_loss = F.cross_entropy(module.net(images), labels).item()
    assert ema_loss != pytest.approx(raw_loss)
    evaluator = trainer(limit_val_batches=1.0)
    logged = evaluator.validate(module, loader(n=16, batch=16, seed=7), verbose=False)[0]["val/loss"]
    assert logged == pytest.approx(ema_loss, rel=1e-5)

    path = tmp_path / "ema.ckpt"
    trn.save_checkpoint(path)
    restored = CvTModule.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(images), module.ema.module(images))


def test_ema_in_a_mid_epoch_checkpoint_holds_every_step_and_resumes_exactly(tmp_path):
    # step checkpoints are written in a callback's on_train_batch_end: the EMA must already
    # hold that step, or the checkpoint lags one update and the resumed run never makes it up
    def fit(ckpt_path=None, callbacks=()):
        module = tiny_module(ema_decay=0.5, optimizer={**SGD, "lr": 0.5})
        trainer(max_steps=4, enable_checkpointing=True, callbacks=list(callbacks)).fit(
            module, loader(n=16, batch=8), ckpt_path=ckpt_path)
        return module

    saver = L.pytorch.callbacks.ModelCheckpoint(tmp_path, filename="{step}", save_top_k=-1,
                                                every_n_train_steps=2)
    whole = fit(callbacks=[saver])
    path = tmp_path / "step=2.ckpt"
    assert int(torch.load(path, weights_only=True)["state_dict"]["ema.n_averaged"]) == 2
    resumed = fit(ckpt_path=path)
    assert int(resumed.ema.n_averaged) == int(whole.ema.n_averaged) == 4
    for (name, a), b in zip(whole.ema.module.state_dict().items(),
                            resumed.ema.module.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


# ---------------------------------------------------------------- DDP

class RankRecord(L.Callback):
    """Saves this rank's training losses and its final global RNG state to <out>/rank<r>.pt
    (ddp_spawn's children cannot hand objects back)."""

    def __init__(self, out: Path) -> None:
        self.out, self.losses = out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"losses": self.losses, "rng": torch.get_rng_state()},
                   self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_draw_their_own_drop_path_yet_keep_the_global_rng_alike(tmp_path):
    # every sample is one image, so both ranks train on the same batches with the same
    # weights: their losses can differ only through their stochastic-depth masks
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(16, dtype=torch.long)
    data = DataLoader(TensorDataset(image.expand(16, -1, -1, -1).clone(), labels, labels),
                      batch_size=4)
    module = tiny_module(model={**TINY, "drop_path": 0.5})
    trainer(max_steps=2, devices=2, strategy="ddp_spawn",
            callbacks=[RankRecord(tmp_path)]).fit(module, data)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(first["losses"]) == len(second["losses"]) == 2
    for a, b in zip(first["losses"], second["losses"]):
        assert a != pytest.approx(b, rel=1e-6)
    # checkpoints hold rank 0's RNG state: it resumes every rank exactly only if the ranks'
    # global RNGs stayed alike
    assert torch.equal(first["rng"], second["rng"])


# ---------------------------------------------------------------- precision and layout

def test_bf16_mixed_trains_on_cpu_with_channels_last():
    module = tiny_module(channels_last=True)
    head_dtypes, input_layouts = [], []
    module.net.head.register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
    module.net.stage0.patch_embed.proj.register_forward_hook(
        lambda m, i, o: input_layouts.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    start = copy.deepcopy(module.net.state_dict())
    trn = trainer(max_steps=3, precision="bf16-mixed")
    trn.fit(module, loader(n=48, batch=16))
    assert head_dtypes and set(head_dtypes) == {torch.bfloat16}  # autocast was on
    assert all(input_layouts)
    assert module.net.stage0.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(float(trn.callback_metrics["train/loss"]))
    assert not torch.equal(start["head.weight"], module.net.head.weight)  # fp32 master weights moved
    assert module.net.head.weight.dtype == torch.float32


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-true", torch.bfloat16),
                                                  ("64-true", torch.float64)])
def test_true_precisions_that_validation_accepts_train_and_test(make_cfg, precision, dtype):
    # Lightning casts a batch to the network's dtype before on_after_batch_transfer, where the
    # device augmentation turns the uint8 images into float32: conv2d refused the mix at once
    cfg = make_cfg(f"trainer.precision={precision}", "trainer.max_epochs=1", "data.num_workers=0",
                   "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                   "+trainer.limit_test_batches=1")
    metrics = run(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["test/loss"])
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["state_dict"]["net.head.weight"].dtype == dtype


def test_compile_trains_and_checkpoint_loads_into_an_uncompiled_module(tmp_path):
    # aot_eager: Dynamo capture + AOTAutograd (fwd/bwd graphs) in seconds; the default
    # inductor backend adds C++ codegen (~90 s here) and is covered by benchmarks/bench_train.py
    module = tiny_module(compile={"backend": "aot_eager"})
    trn = trainer(max_steps=2)
    trn.fit(module, loader(n=32, batch=16))
    assert module.net._compiled_call_impl is not None  # really compiled (nn.Module.compile)
    path = tmp_path / "compiled.ckpt"
    trn.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]
    plain = tiny_module()
    plain.load_state_dict(state)  # strict: same keys as an uncompiled module
    for name, tensor in module.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[name], tensor, msg=name)


@pytest.mark.slow
def test_compile_options_from_the_command_line_reach_torch_compile(make_cfg, tmp_path, monkeypatch):
    # compile={...} arrives as an OmegaConf node: it was passed to torch.compile as no options
    # at all (not a dict), and pickled into the checkpoints, which weights_only then refused
    calls = []
    compile_module = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile",
                        lambda net, **kw: (calls.append(kw), compile_module(net, **kw)))
    cfg = make_cfg("compile={backend:aot_eager}", "trainer.max_epochs=1", "data.num_workers=0",
                   "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                   "+trainer.limit_test_batches=1")
    assert math.isfinite(run(cfg)["test/acc1"])  # the test loaded the best checkpoint
    assert calls == [{"backend": "aot_eager"}]
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["compile"] == {"backend": "aot_eager"}


# ---------------------------------------------------------------- experiment files

SMALL = ["model=cvt_tiny", "model.pretrained=null", "trainer=cpu",
         "data.image_size=32", "data.num_workers=0", "+trainer.limit_val_batches=2",
         "+trainer.limit_test_batches=2"]


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "overrides", "steps", "expect"), [
    ("finetune_cifar100",  # SGD, warmup steps, clipping, 4-way accumulation: 12 batches = 3 steps
     ["data.batch_size=32", "trainer.max_steps=3", "+trainer.limit_train_batches=12"], 3,
     {"momentum": 0.9, "weight_decay": 0.0}),
    ("cvt13_imagenet",     # AdamW with the paper's decay and lr per 256 scaled to the batch
     ["data.batch_size=32", "trainer.max_epochs=1", "+trainer.limit_train_batches=2"], 2,
     {"betas": (0.9, 0.999), "weight_decay": 0.05, "initial_lr": 2.5e-4 * 32 / 256}),
    ("finetune_folder",    # the same recipe on a user's folder (3 classes of PNGs)
     ["data.batch_size=8", "trainer.max_steps=2", "+trainer.limit_train_batches=8"], 2,
     {"momentum": 0.9, "initial_lr": 0.01 * 8 / 512}),  # 0.01 per 512, scaled to 8
])
def test_experiment_recipe_runs_a_few_steps(make_cfg, tmp_path, experiment, overrides, steps, expect):
    if experiment == "finetune_folder":
        root = make_folder(tmp_path / "images", {"train": 8, "val": 2, "test": 2})
        overrides = [*overrides, f"data.root={root}"]
    else:
        overrides = [*overrides, "data=embedded"]
    cfg = make_cfg(f"experiment={experiment}", *SMALL, *overrides)
    metrics = run(cfg)
    assert math.isfinite(metrics["test/acc1"])
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == steps
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    for key, value in expect.items():
        assert group[key] == pytest.approx(value), key
