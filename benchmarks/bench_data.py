"""Data-pipeline benchmark: can the loader keep up with the model?

Makes synthetic data (CIFAR-style 32 px PNGs; ImageNet-style ~500x375 JPEGs cropped to 224),
measures images/s of the training loader (decode + RandomResizedCrop + flip in workers,
uint8 collate) at 0/1/2 workers, the cost of the DeiT batch augmentation on this CPU, and
CvT-13 fwd+bwd at 224 for the ratio. Prints a table and writes JSON.

Wall-clock rates depend on what else runs on the machine; the in-process runs (0 workers,
augmentation, model) also report CPU time, which does not: "per CPU-second" rates are
per-core rates, the basis for sizing workers on another machine.

    PYTHONPATH=src python benchmarks/bench_data.py [--out bench_data.json] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import time

import numpy as np
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage
from torch.utils.data import DataLoader

from cvt_lab.data.datamodule import ImageDataset, SampleDecoder, collate
from cvt_lab.data.device_augment import DeviceAugment
from cvt_lab.data.transforms import TrainTransform

DEIT = {"randaugment": {"num_ops": 2, "magnitude": 9, "magnitude_std": 0.5, "prob": 0.5},
        "erase_prob": 0.25, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
H100_ASSUMED = (2000, 3000)  # CvT-13 @224 bf16 training img/s on one H100: an assumption, not measured


def synthetic(n: int, size: tuple[int, int], fmt: str, seed: int = 0) -> Dataset:
    """Photo-like images: smooth colour fields (upsampled noise) plus mild grain, encoded."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        small = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        img = PILImage.fromarray(small).resize(size, PILImage.Resampling.BICUBIC)
        grain = rng.integers(-12, 13, (size[1], size[0], 3))
        img = PILImage.fromarray(np.clip(np.asarray(img, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        rows.append({"bytes": buf.getvalue(), "path": None})
    return Dataset.from_dict({"image": rows, "label": [0] * n},
                             features=Features({"image": Image(decode=False), "label": Value("int64")}))


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(*args)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def loader_rate(ds: Dataset, size: int, workers: int, batch: int, epochs: int) -> dict[str, float]:
    """Images/s of the training loader (decode + crop + flip + collate), after a warm-up epoch;
    with 0 workers also images per CPU-second (a per-core rate).

    The warm-up is a whole epoch: after a single batch the workers still decode the batches
    they prefetched, inside the timed window, and the next epoch throws them away."""
    data = ImageDataset(ds, SampleDecoder(TrainTransform(size, True, (0.08, 1.0), (3 / 4, 4 / 3), 0.5)))
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, drop_last=True)
    for _ in loader:  # start the workers; nothing left in flight when the clock starts
        pass
    count = len(loader) * batch * epochs
    wall, cpu = timed(lambda: [None for _ in range(epochs) for _ in loader])
    return {"img_per_s": count / wall, **({"img_per_cpu_s": count / cpu} if workers == 0 else {})}


def augment_cost(size: int, batch: int, reps: int) -> dict[str, float]:
    """Wall and CPU ms per batch of the DeiT device augmentation (RandAugment, erasing, mixing)."""
    aug = DeviceAugment(MEAN, STD, DEIT, num_classes=1000)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (batch,))
    aug(images, labels, True)
    wall, cpu = timed(lambda: [aug(images, labels, True) for _ in range(reps)])
    return {"ms_per_batch": 1000 * wall / reps, "cpu_ms_per_batch": 1000 * cpu / reps,
            "img_per_s": batch * reps / wall}


def model_rate(batch: int = 8, reps: int = 2) -> dict[str, float]:
    """CvT-13 @224 forward + backward images/s on this CPU (fp32), and per CPU-second."""
    from cvt_lab.models import create_model

    net = create_model("cvt13", num_classes=1000).train()
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    def step():
        torch.nn.functional.cross_entropy(net(x), y).backward()

    step()
    wall, cpu = timed(lambda: [step() for _ in range(reps)])
    return {"img_per_s": batch * reps / wall, "img_per_cpu_s": batch * reps / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_data.json")
    parser.add_argument("--quick", action="store_true", help="fewer images and repetitions")
    args = parser.parse_args()
    n_cifar, n_inet, epochs = (256, 64, 1) if args.quick else (1024, 256, 2)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"torch {torch.__version__}, threads {torch.get_num_threads()}",
                     "loader": {}, "augment": {}}
    for name, ds, size, batch in (("cifar 32px PNG -> 32", synthetic(n_cifar, (32, 32), "PNG"), 32, 64),
                                  ("imagenet 500x375 JPEG -> 224", synthetic(n_inet, (500, 375), "JPEG"), 224, 32)):
        for workers in (0, 1, 2):
            results["loader"][f"{name}, {workers} workers"] = loader_rate(ds, size, workers, batch, epochs)
    for size, batch in ((32, 64), (224, 32)):
        results["augment"][f"deit @{size}, batch {batch}"] = augment_cost(size, batch, reps=3 if args.quick else 10)
    results["cvt13"] = model_rate(reps=1 if args.quick else 2)

    cores = os.cpu_count() or 1
    per_core = results["loader"]["imagenet 500x375 JPEG -> 224, 0 workers"]["img_per_cpu_s"]
    model_idle = results["cvt13"]["img_per_cpu_s"] * min(cores, torch.get_num_threads())
    results["per_core_decode_img_per_s"] = per_core
    results["ratio_loader_over_model_idle"] = per_core * cores / model_idle
    results["gpu_workers_needed"] = {f"{r} img/s": math.ceil(r / per_core * 1.25) for r in H100_ASSUMED}

    print(f"\nMachine: {results['machine']}")
    print(f"{'train loader':<44} {'img/s':>9} {'img/CPU-s':>10}")
    for key, v in results["loader"].items():
        print(f"  {key:<42} {v['img_per_s']:>9.0f} {v.get('img_per_cpu_s', float('nan')):>10.0f}")
    print(f"{'DeiT batch augmentation (CPU)':<44} {'ms/batch':>9} {'CPU-ms':>10}")
    for key, v in results["augment"].items():
        print(f"  {key:<42} {v['ms_per_batch']:>9.0f} {v['cpu_ms_per_batch']:>10.0f}")
    print(f"CvT-13 @224 fwd+bwd, batch 8, fp32: {results['cvt13']['img_per_s']:.2f} img/s wall, "
          f"{results['cvt13']['img_per_cpu_s']:.2f} img/CPU-s (~{model_idle:.1f} img/s on {cores} idle cores)")
    print(f"ImageNet-style decode+crop: {per_core:.0f} img/s per core; on {cores} idle cores the loader "
          f"outpaces CvT-13 by {results['ratio_loader_over_model_idle']:.0f}x")
    for target, n in results["gpu_workers_needed"].items():
        print(f"  assumed H100 training at {target}: {n} decode cores per GPU (25% headroom)")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
