"""End-to-end training throughput: a bare PyTorch step vs the Lightning path, same run.

Three rows per setting, same model, batch, optimizer (AdamW) and precision:
  bare        plain loop: forward, loss, backward, AdamW step on a batch already on the device
  lightning   Trainer.fit on in-memory float tensors: Lightning's hooks, logging, metrics,
              host->device copy
  datamodule  Trainer.fit through our ImageDataModule: the embedded digits (PNG) decoded,
              resized to --img-size and collated as uint8 in DataLoader workers, normalised
              on the device -- the whole production path on synthetic-size images
Overhead = (bare rate / row rate - 1): the extra time per image, in %. Two clocks: wall
time (img/s) and, on the CPU, this process's CPU time (img per CPU-second, `--threads 1`
recommended) -- the CPU clock stays meaningful on a machine shared with other jobs, where
wall time mostly measures the neighbours.

    python benchmarks/bench_train.py                                   # CPU, CvT-13 @ 224
    python benchmarks/bench_train.py --device cuda --precision bf16-mixed \\
        --compile both --batch 128 256 --workers 8                    # GPU: eager vs compile
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from cvt_lab.data import ImageDataModule
from cvt_lab.models import create_model
from cvt_lab.module import CvTModule
from cvt_lab.optim import build_optimizer

CONF = Path(__file__).resolve().parents[1] / "conf"
NUM_CLASSES = 10  # the embedded digits; every row uses the same head


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def optimizer_cfg(batch: int) -> dict:
    return {"name": "adamw", "lr": 2.5e-4, "ref_batch": 256, "batch_size": batch,
            "weight_decay": 0.05}


class Clock:
    """Wall and process-CPU time between start() and stop() (CUDA work synchronised)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        sync(self.device)
        self.wall, self.cpu = -time.perf_counter(), -time.process_time()

    def stop(self) -> None:
        sync(self.device)
        self.wall += time.perf_counter()
        self.cpu += time.process_time()


def bare_step_rate(args: argparse.Namespace, batch: int, compiled: bool) -> Clock:
    """The plain PyTorch loop (the floor the other rows are compared with)."""
    torch.manual_seed(0)
    net = create_model(args.model, num_classes=NUM_CLASSES).to(args.device).train()
    if compiled:
        net.compile()
    opt = build_optimizer(net, optimizer_cfg(batch))
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=args.device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=args.device)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16,
                              enabled=args.precision == "bf16-mixed")

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    clock = Clock(args.device)
    clock.start()
    for _ in range(args.steps):
        step()
    clock.stop()
    return clock


class StepTimer(L.Callback):
    """Wall time from the end of the last warm-up batch to the end of the last batch: covers
    data fetching, transfer, augmentation, the step and Lightning's own work in between."""

    def __init__(self, warmup: int, steps: int, device: str) -> None:
        self.warmup, self.steps = warmup, steps
        self.clock = Clock(device)
        self.batches = 0  # across epochs: the small embedded set may end an epoch early

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches == self.warmup:
            self.clock.start()
        elif self.batches == self.warmup + self.steps:
            self.clock.stop()


def lightning_rate(args: argparse.Namespace, batch: int, compiled: bool, datamodule: bool) -> Clock:
    torch.manual_seed(0)
    module = CvTModule(model={"name": args.model}, optimizer=optimizer_cfg(batch),
                       scheduler={"name": "constant"}, num_classes=NUM_CLASSES, compile=compiled)
    timer = StepTimer(args.warmup, args.steps, args.device)
    batches = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
            precision=args.precision, max_steps=batches, max_epochs=-1,
            limit_val_batches=0, logger=CSVLogger(tmp), callbacks=[timer],
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        if datamodule:
            data = real_datamodule(args, batch)
            trainer.fit(module, datamodule=data)
        else:
            n = batch * batches
            images = torch.randn(n, 3, args.img_size, args.img_size)
            labels = torch.randint(0, NUM_CLASSES, (n,))
            loader = DataLoader(TensorDataset(images, labels, labels), batch_size=batch,
                                pin_memory=args.device == "cuda")
            trainer.fit(module, loader)
    return timer.clock


def real_datamodule(args: argparse.Namespace, batch: int) -> ImageDataModule:
    """Our DataModule exactly as `python run.py` builds it, on the embedded digits."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "data=embedded", f"data.image_size={args.img_size}", f"data.batch_size={batch}",
            f"data.num_workers={args.workers}", "paths.root_dir=.", "paths.output_dir=."])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    return ImageDataModule(data, augment, seed=0)


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cvt13")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--device", choices=("cpu", "cuda"),  # one GPU: CUDA_VISIBLE_DEVICES picks it
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--compile", default="off", choices=["off", "on", "both"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compile happens here)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (datamodule row)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error(f"--warmup {args.warmup}: at least 1 (the Lightning rows' clock starts when "
                     "the last warm-up batch ends)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_clock = args.device == "cpu"  # on a GPU the host CPU time says little

    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows = []
    for batch in args.batch:
        for compiled in compiles:
            if compiled:  # compile as a run at this batch would: dynamo's cache from the last
                torch._dynamo.reset()  # batch size would make the batch dimension dynamic
            bare = bare_step_rate(args, batch, compiled)
            for path, clock in (("bare", bare),
                                ("lightning", lightning_rate(args, batch, compiled, False)),
                                ("datamodule", lightning_rate(args, batch, compiled, True))):
                images = batch * args.steps
                row = {"model": args.model, "img_size": args.img_size, "batch": batch,
                       "precision": args.precision, "compile": compiled, "path": path,
                       "img_per_s": round(images / clock.wall, 3),
                       "overhead_wall_pct": round(100 * (clock.wall / bare.wall - 1), 1)}
                if cpu_clock:
                    row["img_per_cpu_s"] = round(images / clock.cpu, 3)
                    row["overhead_cpu_pct"] = round(100 * (clock.cpu / bare.cpu - 1), 1)
                rows.append(row)

    print(f"\n{machine(args.device)} | torch {torch.__version__} | lightning {L.__version__} | "
          f"{date.today()}")
    print("| batch | precision | compile | path | img/s (wall) | overhead (wall) "
          "| img per CPU-s | overhead (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = (f"{r['img_per_cpu_s']} | {r['overhead_cpu_pct']:+.1f}%" if cpu_clock else "- | -")
        print(f"| {r['batch']} | {r['precision']} | {r['compile']} | {r['path']} | "
              f"{r['img_per_s']} | {r['overhead_wall_pct']:+.1f}% | {cpu} |")
    if args.json:
        meta = {"machine": machine(args.device), "torch": torch.__version__, "date": str(date.today()),
                "device": args.device, "threads": torch.get_num_threads(),
                "warmup": args.warmup, "steps": args.steps}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
