"""Where a CPU training step's time goes, ours against transformers' CvT (same weights).

Every aten op of a step is timed on its own wall clock through a ``TorchDispatchMode`` and
summed into categories, per training phase (forward, backward, optimizer). Why not
``torch.profiler``: on this project's 2-core VM it inflated single ops up to ~10x (GELU
backward read 0.34 s per step, timed directly 0.03 s), which made its attribution useless.

    PYTHONPATH=src python benchmarks/op_breakdown.py              # CvT-13, batch 8, 2 threads
    PYTHONPATH=src python benchmarks/op_breakdown.py --json out.json
    PYTHONPATH=src python benchmarks/op_breakdown.py --top 15      # + the slowest single ops

``--top`` lists the ops that take the most time (by phase, op and operand shapes) with
their multiply-add rate where it is defined: how close each GEMM-class op runs to the
machine's peak says whether there is any speed left in it.
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


def macs(op: str, shapes: tuple[tuple[int, ...], ...]) -> int | None:
    """Multiply-adds of a GEMM-class op from its operand shapes (None for other ops).
    Fused attention: Q K^T and A V forward; backward recomputes Q K^T and forms dV, dP, dQ
    and dK (5 products). Shapes are those of the op's first two tensor operands."""
    if op in ("mm", "bmm") and len(shapes) == 2:
        *batch, m, k = shapes[0]
        return int(torch.Size(batch).numel()) * m * k * shapes[1][-1]
    if op == "addmm" and len(shapes) == 3:
        (m, k), n = shapes[1], shapes[2][-1]
        return m * k * n
    if op.startswith("_scaled_dot_product") and len(shapes) >= 2:
        b, h, nq, d = shapes[0]
        nk = shapes[1][-2] if not op.endswith("_backward") else shapes[2][-2]
        return (5 if op.endswith("_backward") else 2) * b * h * nq * nk * d
    return None


class OpTimer(TorchDispatchMode):
    """Sums each op's wall time under the current ``phase``; keeps each matmul's call
    signature so it can be re-timed alone (:func:`isolated_ms`)."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.seconds: collections.Counter = collections.Counter()
        self.matmuls: collections.Counter = collections.Counter()
        self.ops: collections.Counter = collections.Counter()  # (phase, op, shapes) -> s
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - t0
        name = func.overloadpacket.__name__
        kind = category(name)
        self.seconds[(self.phase, kind)] += seconds
        key = (self.phase, name, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)))
        self.ops[key] += seconds
        self.calls[key] += 1
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
    ops = []
    for (phase, name, shapes), s in timer.ops.most_common():
        mac = macs(name, shapes)
        ops.append({"phase": phase, "op": name, "shapes": [list(x) for x in shapes[:3]],
                    "calls": timer.calls[(phase, name, shapes)] // steps, "ms": s / steps * 1e3,
                    "gmac_per_s": None if mac is None else
                    mac * timer.calls[(phase, name, shapes)] / s / 1e9})
    return {"plain_step_ms": plain * 1e3, "op_ms": ms, "ops_total_ms": sum(ms.values()),
            "matmul_isolated_ms": isolated_ms(timer.matmuls, steps), "ops": ops}


def top_table(result: dict, n: int) -> str:
    """The ``n`` ops that take the most time per step, with their GEMM rate."""
    rows = ["| phase | op | operand shapes | calls | ms per step | G multiply-adds/s |",
            "|---|---|---|---|---|---|"]
    for op in result["ops"][:n]:
        rate = "-" if op["gmac_per_s"] is None else f"{op['gmac_per_s']:.0f}"
        shapes = " ".join("x".join(map(str, s)) for s in op["shapes"][:3])
        rows.append(f"| {op['phase']} | {op['op']} | {shapes} | {op['calls']} | {op['ms']:.1f} | {rate} |")
    return "\n".join(rows)


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
    p.add_argument("--top", type=int, default=0, help="also list the N slowest ops of each")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        save_reference(Path(tmp), args.smoke)
        results = {impl: breakdown(impl, Path(tmp), args.batch, args.steps, args.img,
                                   not args.loop_optimizer) for impl in IMPLS}
    print(table(results))
    for impl in IMPLS if args.top else ():
        print(f"\n{impl}: the {args.top} slowest ops\n{top_table(results[impl], args.top)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
