"""Our CvT against transformers' CvtForImageClassification, with the same weights.

CPU (the default without CUDA): fp32, eager, CvT-13 at 224 px, batch 8, 2 threads.
  - forward: eval mode under no_grad;
  - train step: zero_grad + forward + cross-entropy + backward + AdamW step (fused, as
    cvt-lab's optimizer config runs it; the same optimizer for both).
  The two implementations alternate rep by rep (the order flips each rep) and the ratio is
  the median of per-rep ratios, so machine noise hits both alike. Peak memory is measured
  in a fresh subprocess per (implementation, mode): the RSS high-water mark during two steps
  above the RSS before them (Linux ``/proc/self/clear_refs``; glibc is told to return large
  blocks to the OS so RSS follows live tensors). "own process" rows time each implementation
  alone in fresh processes (alternating, ``--own-process`` rounds): the steady state a
  training loop sees, without the allocator churn that interleaving two models causes.
  They count the minor page faults per step too: glibc hands large freed blocks back to the
  kernel, and every fresh page costs a fault (~2-3 us here) when it is next written.
  ``--keep-freed-memory`` repeats them with glibc keeping freed memory, so neither model
  faults and the ratio is compute against compute.
  ``--compile`` adds compiled-vs-compiled rows (inductor; over a minute per model here).
GPU (when CUDA is present): bf16 autocast, batch 128, eager and ``torch.compile``; peak memory
  from ``torch.cuda.max_memory_allocated`` above the memory allocated before the step;
  MFU = train img/s x FLOP per training image / peak bf16 FLOP/s, where a training image
  costs 3 passes x 2 FLOP/MAC x the model's ``count_macs`` at ``--img`` (CvT-13 at 224 px:
  27.4 G; the paper's 4.53 GMACs would give 27.2).

Outputs match before anything is timed (logits and training loss to 1e-4).

    PYTHONPATH=src python benchmarks/bench_model.py            # writes JSON + docs table
    PYTHONPATH=src python benchmarks/bench_model.py --threads 1  # robust on a shared machine
    PYTHONPATH=src python benchmarks/bench_model.py --reps 3 --no-doc
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from cvt_lab.models import count_macs, create_model

ROOT = Path(__file__).resolve().parents[1]
# dense bf16 tensor-core peaks (FLOP/s, no sparsity), searched for in torch.cuda.get_device_name()
# in this order: the PCIe and NVL parts of a chip come before its SXM figure, and "L4" must
# not match "NVIDIA L40S"
PEAK_BF16_FLOPS = ((r"H100.*PCIe", 756e12), (r"H[12]00.*NVL", 835e12), (r"H[12]00\b", 989e12),
                   (r"A100\b", 312e12), (r"L4\b", 121e12))
IMPLS = ("ours", "transformers")
DOC_MARK = "<!-- bench_model:{tag}:{end} -->"  # one block per setting, e.g. cpu-2t, cuda


# ---------------------------------------------------------------- models with equal weights
SMOKE = dict(embed_dim=[16, 32, 48], depth=[1, 2, 3], num_heads=[1, 2, 3])  # tests the script


def save_reference(path: Path, smoke: bool = False, seed: int = 0) -> None:
    """A random transformers CvT-13 (non-trivial BatchNorm statistics, no drop path)."""
    torch.manual_seed(seed)
    config = transformers.CvtConfig(num_labels=1000, drop_path_rate=[0.0, 0.0, 0.0],
                                    **(SMOKE if smoke else {}))
    model = transformers.CvtForImageClassification(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(path)


def load(impl: str, path: Path) -> torch.nn.Module:
    if impl == "ours":
        return create_model(pretrained=path, drop_path=0.0)  # config.json: CvT-13, exact GELU
    return transformers.CvtForImageClassification.from_pretrained(path)


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool, amp: bool):
    """One forward (eval, no_grad) or one full training step, as a closure."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True) if train else None
    model.train(train)

    def step() -> torch.Tensor:
        with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            if not train:
                with torch.no_grad():
                    return logits(model, x)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(logits(model, x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def check_equal(models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest logit difference in eval mode; also the train-mode loss must agree. On GPU in
    full fp32: cuDNN's default TF32 convolutions alone would move logits past 1e-4."""
    outs, losses = {}, {}
    tf32_matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():
            for name, m in models.items():
                outs[name] = logits(m.eval(), x).float()
                losses[name] = F.cross_entropy(logits(m.train(), x).float(), y).item()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_matmul
    diff = (outs["ours"] - outs["transformers"]).abs().max().item()
    if diff > 1e-4 or abs(losses["ours"] - losses["transformers"]) > 1e-4:
        raise SystemExit(f"outputs differ: logits by {diff:.2e}, losses {losses}")
    return diff


# ---------------------------------------------------------------- throughput
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (Linux /proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def interleaved_throughput(steps: dict[str, object], batch: int, reps: int, iters: int,
                           device: torch.device) -> dict[str, dict[str, list[float]]]:
    """img/s per rep for each implementation, alternating which goes first, and the share
    of the machine's cores that other processes used meanwhile (noise we cannot remove)."""
    for step in steps.values():  # warm-up: allocator, oneDNN primitives, compilation
        step()
        step()
    sync(device)
    runs = {name: {"img_s": [], "cpu_img_s": [], "others_busy": []} for name in steps}
    for rep in range(reps):
        order = list(steps) if rep % 2 == 0 else list(reversed(steps))
        for name in order:
            sync(device)
            busy0, own0, t0 = _machine_busy_s(), time.process_time(), time.perf_counter()
            for _ in range(iters):
                steps[name]()
            sync(device)
            wall, own = time.perf_counter() - t0, time.process_time() - own0
            others = _machine_busy_s() - busy0 - own
            runs[name]["img_s"].append(batch * iters / wall)
            runs[name]["cpu_img_s"].append(batch * iters / own)  # per CPU-second, all threads
            runs[name]["others_busy"].append(max(0.0, others) / (wall * os.cpu_count()))
    return runs


def summarise(runs: dict[str, dict[str, list[float]]], quiet: float = 0.1) -> dict:
    """Medians over the reps where other processes used < ``quiet`` of the machine (all reps
    if none was that quiet, flagged ``contended``)."""
    reps = range(len(runs["ours"]["img_s"]))
    clean = [r for r in reps if max(runs[n]["others_busy"][r] for n in runs) < quiet]
    use = clean or list(reps)
    out: dict = {"reps_used": len(use), "contended": not clean, "per_rep": runs}
    for metric, ratio in (("img_s", "speedup"), ("cpu_img_s", "cpu_speedup")):
        ours = [runs["ours"][metric][r] for r in use]
        theirs = [runs["transformers"][metric][r] for r in use]
        out[f"ours_{metric}"] = statistics.median(ours)
        out[f"transformers_{metric}"] = statistics.median(theirs)
        out[ratio] = statistics.median(a / b for a, b in zip(ours, theirs))
    return out


# ---------------------------------------------------------------- CPU peak memory
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _worker_step(impl: str, mode: str, path: Path, args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    x, y = torch.randn(args.batch, 3, args.img, args.img), torch.randint(0, 1000, (args.batch,))
    return make_step(load(impl, path), x, y, train=mode == "train", amp=False)


def memory_worker(impl: str, mode: str, path: Path, args: argparse.Namespace) -> None:
    """Runs in a fresh process: prints the RSS peak above the pre-step RSS, in MiB."""
    step = _worker_step(impl, mode, path, args)
    step()  # optimizer state and one-off caches are not part of a step's peak
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to now
    for _ in range(2):
        step()
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024, "rss_before_mib": before / 1024}))


def own_process_worker(impl: str, mode: str, path: Path, args: argparse.Namespace) -> None:
    """Runs in a fresh process: img/s of one implementation alone, after two warm-up steps,
    and the minor page faults per timed step (fresh pages the kernel had to hand out).
    This is what a user's training loop sees: no other model's tensors come and go between
    steps, so the allocator settles (interleaving in one process favours the model that
    allocates less, since each switch hands memory back and forth)."""
    step = _worker_step(impl, mode, path, args)
    step()
    step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for _ in range(args.own_steps):
        step()
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"img_s": args.batch * args.own_steps / seconds,
                      "faults_per_step": faults / args.own_steps}))


def _subprocess(kind: str, impl: str, mode: str, path: Path, args: argparse.Namespace,
                env: dict[str, str] | None = None) -> dict:
    cmd = [sys.executable, __file__, f"--_{kind}", impl, mode, str(path), "--batch",
           str(args.batch), "--img", str(args.img), "--threads", str(args.threads),
           "--own-steps", str(args.own_steps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_memory(impl: str, mode: str, path: Path, args: argparse.Namespace) -> dict:
    return _subprocess("memory", impl, mode, path, args, {"MALLOC_MMAP_THRESHOLD_": "65536"})


# glibc keeps what it frees, so a step reuses warm pages: the heap grows 1 GiB at a time, so
# large tensors come from it rather than from an mmap each (TOP_PAD), and freed memory is
# never handed back (TRIM). glibc ignores an MMAP_THRESHOLD above 32 MiB; it is kept because
# the published runs set it (a test checks that this set stops the faults).
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2**32), "MALLOC_TRIM_THRESHOLD_": str(2**36),
                     "MALLOC_TOP_PAD_": str(2**30)}
ALLOCATORS = {"default": None, "keep_freed": KEEP_FREED_MEMORY}


def measure_own_process(mode: str, path: Path, args: argparse.Namespace,
                        allocator: str = "default") -> dict:
    """Each implementation alone in fresh processes, alternating which goes first; the
    speed-up is the median of per-round ratios. ``keep_freed``: glibc told to keep freed
    memory, so neither implementation pays page faults; what is left is compute."""
    rates: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    faults: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for r in range(args.own_process):
        for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
            out = _subprocess("own", impl, mode, path, args, ALLOCATORS[allocator])
            rates[impl].append(out["img_s"])
            faults[impl].append(out["faults_per_step"])
    return {"rounds": args.own_process, "steps": args.own_steps, "allocator": allocator,
            "per_round": rates, "faults_per_step": faults,
            "ours_img_s": statistics.median(rates["ours"]),
            "transformers_img_s": statistics.median(rates["transformers"]),
            "ours_faults_per_step": statistics.median(faults["ours"]),
            "transformers_faults_per_step": statistics.median(faults["transformers"]),
            "speedup": statistics.median(a / b for a, b in zip(rates["ours"], rates["transformers"]))}


def cuda_step_peak_mib(step) -> float:
    """GPU: what one step adds to the allocated memory at its peak, in MiB (as on the CPU: the
    weights, AdamW state and gradients of both implementations and the batch, all allocated
    before the step, are not part of it)."""
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ---------------------------------------------------------------- runs
def peak_bf16_flops(device_name: str, peak_tflops: float | None = None) -> float | None:
    """The GPU's dense bf16 peak in FLOP/s, for MFU: ``peak_tflops`` if given, else the table's
    figure for this device name (None: unknown)."""
    if peak_tflops:
        return peak_tflops * 1e12
    return next((v for pattern, v in PEAK_BF16_FLOPS if re.search(pattern, device_name)), None)


def train_flops_per_img(model: torch.nn.Module, img: int) -> float:
    """FLOP of one training image: forward + backward (twice the forward) = 3 passes, 2 FLOP
    per multiply-add, of the benchmarked model at the benchmarked size."""
    return 3 * 2 * count_macs(model, img)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average": os.getloadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run(args: argparse.Namespace, path: Path) -> dict:
    """Eager rows always; compiled rows on GPU, and on CPU with --compile (each compile takes
    over a minute on 2 cores). Peak memory, what one step adds: RSS in a fresh process on CPU
    (eager only), ``max_memory_allocated`` on GPU."""
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    if cpu:
        torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    result: dict = {}
    peak = None
    if not cpu:
        name = torch.cuda.get_device_name()
        peak = peak_bf16_flops(name, args.peak_tflops)
        if peak is None:
            print(f"no MFU: the bf16 peak of {name!r} is not in PEAK_BF16_FLOPS; pass it "
                  f"with --peak-tflops (dense, without sparsity)")
        result["peak_bf16_flops"] = peak
    for compiled in (False, True) if (args.compile or not cpu) else (False,):
        models = {impl: load(impl, path).to(device) for impl in IMPLS}
        result["max_logit_diff"] = check_equal(models, x[:8], y[:8])
        result["train_flops_per_img"] = train_flops_per_img(models["ours"], args.img)
        if compiled:
            models = {n: torch.compile(m) for n, m in models.items()}
        for mode in ("forward", "train"):
            steps = {n: make_step(m, x, y, train=mode == "train", amp=not cpu) for n, m in models.items()}
            summary = summarise(interleaved_throughput(steps, args.batch, args.reps, args.iters, device))
            for impl in IMPLS:
                if cpu and not compiled:
                    summary[f"{impl}_peak_mib"] = measure_memory(impl, mode, path, args)["peak_mib"]
                elif not cpu:
                    summary[f"{impl}_peak_mib"] = cuda_step_peak_mib(steps[impl])
                if mode == "train" and peak:
                    summary[f"{impl}_mfu"] = summary[f"{impl}_img_s"] * result["train_flops_per_img"] / peak
            if cpu and not compiled and args.own_process:
                summary["own_process"] = measure_own_process(mode, path, args)
                if args.keep_freed_memory:
                    summary["own_process_keep_freed"] = measure_own_process(mode, path, args, "keep_freed")
            result[f"{mode}{'_compiled' if compiled else ''}"] = summary
    return result


OWN_PROCESS_ROWS = (("own_process", "own process"),
                    ("own_process_keep_freed", "own process, glibc keeps freed memory"))


def table(result: dict) -> str:
    rows = ["| mode | ours img/s | transformers img/s | speed-up | per CPU-second | ours peak MiB | "
            "transformers peak MiB | memory ratio | quiet reps | page faults per step, ours / transformers |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, r in result.items():
        if not isinstance(r, dict) or "speedup" not in r:
            continue
        mfu = f" (MFU {r['ours_mfu']:.1%} vs {r['transformers_mfu']:.1%})" if "ours_mfu" in r else ""
        memory = ["-", "-", "-"]
        if "ours_peak_mib" in r:
            memory = [f"{r['ours_peak_mib']:.0f}", f"{r['transformers_peak_mib']:.0f}",
                      f"{r['ours_peak_mib'] / r['transformers_peak_mib']:.2f}"]
        quiet = f"{0 if r['contended'] else r['reps_used']}/{len(r['per_rep']['ours']['img_s'])}"
        rows.append(f"| {mode}, interleaved | {r['ours_img_s']:.2f} | {r['transformers_img_s']:.2f} | "
                    f"{r['speedup']:.2f}x{mfu} | {r['cpu_speedup']:.2f}x | {' | '.join(memory)} | {quiet} | - |")
        for key, label in OWN_PROCESS_ROWS:
            if key in r:
                o = r[key]
                rows.append(f"| {mode}, {label} | {o['ours_img_s']:.2f} | {o['transformers_img_s']:.2f} | "
                            f"{o['speedup']:.2f}x | - | - | - | - | {o['rounds']} rounds | "
                            f"{o['ours_faults_per_step']:,.0f} / {o['transformers_faults_per_step']:,.0f} |")
    return "\n".join(rows)


def write_doc(doc: Path, report: dict) -> None:
    m, settings = report["machine"], report["settings"]
    tag = "cuda" if settings["device"] == "cuda" else f"cpu-{settings['threads']}t"
    begin, end = DOC_MARK.format(tag=tag, end="begin"), DOC_MARK.format(tag=tag, end="end")
    block = "\n".join([
        begin,
        f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores{', ' + m['gpu'] if 'gpu' in m else ''}), "
        f"torch {m['torch']}, transformers {m['transformers']}, "
        f"{report['settings']['device']} {report['settings']['dtype']}, batch {report['settings']['batch']}, "
        f"{report['settings']['img']} px, {report['settings']['threads']} threads, "
        f"{report['settings']['reps']} interleaved reps x {report['settings']['iters']} iterations; "
        f"load average at start {m['load_average'][0]:.2f}. Largest logit difference "
        f"{report['result'].get('max_logit_diff', 0):.1e}.",
        "",
        f"Command: `{report['command']}`",
        "",
        table(report["result"]),
        end,
    ])
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n## Model\n\n"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 128 on GPU")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--iters", type=int, default=2, help="steps per rep")
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak, for MFU")
    p.add_argument("--json", type=Path, default=None, help="default benchmarks/results/model_<device>.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a tiny CvT instead of CvT-13 (tests)")
    p.add_argument("--compile", action="store_true",
                   help="CPU: also time torch.compile'd models (always on with CUDA)")
    p.add_argument("--own-process", type=int, default=3, metavar="ROUNDS",
                   help="CPU: also time each implementation alone in fresh processes, "
                        "alternating, this many rounds (0: skip)")
    p.add_argument("--own-steps", type=int, default=6, help="timed steps per own-process run")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="CPU: repeat the own-process rounds with glibc keeping freed memory "
                        "(no page faults for either implementation: compute against compute)")
    p.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_own", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda, but torch.cuda.is_available() is False (torch {torch.__version__}): "
                "install a CUDA build of torch (README: TORCH_SPEC) or use --device cpu")
    if args.batch is None:
        args.batch = 128 if args.device == "cuda" else 8
    if args._memory or args._own:
        impl, mode, path = args._memory or args._own
        worker = memory_worker if args._memory else own_process_worker
        return worker(impl, mode, Path(path), args)
    transformers.logging.set_verbosity_error()
    host = machine()  # before the run: its load average is the neighbours', not ours
    with tempfile.TemporaryDirectory() as tmp:
        save_reference(Path(tmp), args.smoke)
        result = run(args, Path(tmp))
    report = {
        "date": dt.datetime.now().isoformat(timespec="minutes"),
        "command": "PYTHONPATH=src python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "machine": host,
        "settings": {"model": "smoke" if args.smoke else "cvt13", "device": args.device, "dtype": "bf16 autocast" if args.device == "cuda" else "fp32",
                     "batch": args.batch, "img": args.img, "threads": args.threads,
                     "reps": args.reps, "iters": args.iters,
                     "train_step": "zero_grad + forward + cross-entropy + backward + fused AdamW step"},
        "result": result,
    }
    suffix = "cuda" if args.device == "cuda" else f"cpu_{args.threads}t"
    out = args.json or ROOT / "benchmarks" / "results" / f"model_{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(table(result))
    print(f"wrote {out}")
    if not args.no_doc:
        write_doc(args.doc, report)
        print(f"updated {args.doc}")


if __name__ == "__main__":
    main()
