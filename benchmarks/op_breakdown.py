"""Where a CPU training step's time goes, ours against transformers' CvT (same weights).

Every aten op of a step is timed on its own wall clock through a ``TorchDispatchMode`` and
summed into categories, per training phase (forward, backward, optimizer). Why not
``torch.profiler``: on this project's 2-core VM it inflated single ops up to ~10x (GELU
backward read 0.34 s per step, timed directly 0.03 s), which made its attribution useless.

    PYTHONPATH=src python benchmarks/op_breakdown.py              # CvT-13, batch 8, 2 threads
    PYTHONPATH=src python benchmarks/op_breakdown.py --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import IMPLS, load, logits, save_reference  # noqa: E402

# aten op name prefixes -> category (a prefix also takes the op's backward); the first match
# wins, the rest is OTHER
CATEGORIES = (
    ("matmul (Linear and explicit attention)", ("mm", "addmm", "bmm", "baddbmm")),
    ("fused attention (SDPA)", ("_scaled_dot_product",)),
    ("softmax", ("_softmax",)),
    ("convolution", ("convolution",)),
    ("LayerNorm and BatchNorm", ("native_layer_norm", "native_batch_norm", "_native_batch_norm")),
    ("GELU", ("gelu",)),
    ("copies and layout", ("copy_", "clone", "cat", "_to_copy", "slice_backward",
                           "select_backward")),
)
OTHER = "elementwise and other"


def category(op: str) -> str:
    for name, prefixes in CATEGORIES:
        if op.startswith(prefixes):
            return name
    return OTHER


MATMUL = CATEGORIES[0][0]


class OpTimer(TorchDispatchMode):
    """Sums each op's wall time under the current ``phase``; keeps each matmul's call
    signature so it can be re-timed alone (:func:`isolated_ms`)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.seconds: collections.Counter = collections.Counter()
        self.matmuls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        kind = category(func.overloadpacket.__name__)
        self.seconds[(self.phase, kind)] += time.perf_counter() - t0
        if kind == MATMUL and not kwargs:
            self.matmuls[(func, tuple((a.shape, a.stride()) if isinstance(a, torch.Tensor) else a
                                      for a in args))] += 1
        return out


def isolated_ms(calls: collections.Counter, steps: int) -> float:
    """ms per step the recorded matmuls take alone (fresh random operands of the same shapes
    and strides, best of 3): the floor their in-step time is compared against."""
    total = 0.0
    for (func, sig), count in calls.items():
        args = [torch.empty_strided(*a).normal_() if isinstance(a, tuple) and len(a) == 2
                and isinstance(a[0], torch.Size) else a for a in sig]
        func(*args)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            func(*args)
            best = min(best, time.perf_counter() - t0)
        total += best * count
    return total / steps * 1e3


def breakdown(impl: str, path: Path, batch: int, steps: int, img: int = 224,
              fused: bool = True) -> dict:
    """ms per training step by (phase, category), and the plain step time without the timer."""
    torch.manual_seed(1)
    x, y = torch.randn(batch, 3, img, img), torch.randint(0, 1000, (batch,))
    model = load(impl, path).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=fused)  # fused: as bench_model.py
    timer = OpTimer()

    def step() -> None:
        timer.phase = "forward"
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(logits(model, x), y)
        timer.phase = "backward"
        loss.backward()
        timer.phase = "optimizer"
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    plain = (time.perf_counter() - t0) / steps
    with timer:
        for _ in range(steps):
            step()
    ms = {f"{phase}/{cat}": s / steps * 1e3 for (phase, cat), s in timer.seconds.items()}
    return {"plain_step_ms": plain * 1e3, "op_ms": ms, "ops_total_ms": sum(ms.values()),
            "matmul_isolated_ms": isolated_ms(timer.matmuls, steps)}


def table(results: dict[str, dict]) -> str:
    ours, theirs = results["ours"]["op_ms"], results["transformers"]["op_ms"]
    rows = ["| phase / category | ours ms | transformers ms | difference ms |", "|---|---|---|---|"]
    for key in sorted(set(ours) | set(theirs), key=lambda k: -max(ours.get(k, 0), theirs.get(k, 0))):
        a, b = ours.get(key, 0.0), theirs.get(key, 0.0)
        if max(a, b) >= 1.0:
            rows.append(f"| {key} | {a:.0f} | {b:.0f} | {a - b:+.0f} |")
    for label, key in (("the matmuls above, each run alone", "matmul_isolated_ms"),
                       ("all ops", "ops_total_ms"), ("step without the timer", "plain_step_ms")):
        a, b = results["ours"][key], results["transformers"][key]
        rows.append(f"| **{label}** | {a:.0f} | {b:.0f} | {a - b:+.0f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--loop-optimizer", action="store_true",
                   help="AdamW's per-tensor loop instead of the fused kernel (to compare)")
    p.add_argument("--smoke", action="store_true", help="a tiny CvT instead of CvT-13 (tests)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        save_reference(Path(tmp), args.smoke)
        results = {impl: breakdown(impl, Path(tmp), args.batch, args.steps, args.img,
                                   not args.loop_optimizer) for impl in IMPLS}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
