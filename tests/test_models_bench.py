"""The model benchmark script stays runnable (tiny settings; the numbers are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~25 s on a quiet machine: nine fresh interpreters import transformers
def test_bench_model_runs_and_writes_its_table(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Model\n\nintro\n\n<!-- bench_model:cpu-1t:begin -->\nold\n"
                   "<!-- bench_model:cpu-1t:end -->\n\n## Data\n\nkept\n")
    out = tmp_path / "model_cpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_model.py"), "--device", "cpu",
           "--smoke", "--img", "32", "--batch", "2", "--reps", "2", "--iters", "1", "--threads", "1", "--own-process", "1",
           "--own-steps", "1", "--keep-freed-memory", "--json", str(out),
           "--doc", str(doc)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    for mode in ("forward", "train"):
        r = report["result"][mode]
        assert r["ours_img_s"] > 0 and r["transformers_img_s"] > 0 and r["ours_peak_mib"] >= 0
        own = r["own_process"]  # each implementation alone in a fresh process
        assert own["rounds"] == 1 and own["ours_img_s"] > 0 and own["transformers_img_s"] > 0
        assert own["allocator"] == "default" and own["ours_faults_per_step"] >= 0
        kept = r["own_process_keep_freed"]  # again, with glibc keeping what it frees
        assert kept["allocator"] == "keep_freed" and kept["transformers_img_s"] > 0
    text = doc.read_text()
    assert "old" not in text and "## Data\n\nkept" in text
    assert "| train, interleaved |" in text and "| train, own process |" in text
    assert "| train, own process, glibc keeps freed memory |" in text
    assert report["settings"]["train_step"].startswith("zero_grad")


def test_op_breakdown_attributes_each_implementations_own_attention_ops(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_model import save_reference
    from op_breakdown import OTHER, breakdown, category, macs, table, top_table

    assert category("addmm") == category("mm") == "matmul (Linear and explicit attention)"
    assert category("_scaled_dot_product_flash_attention_for_cpu_backward") == "fused attention (SDPA)"
    assert category("gelu_backward") == "GELU" and category("add") == OTHER
    save_reference(tmp_path, smoke=True)
    results = {impl: breakdown(impl, tmp_path, batch=2, steps=1, img=32)
               for impl in ("ours", "transformers")}
    ours, theirs = results["ours"]["op_ms"], results["transformers"]["op_ms"]
    # ours runs SDPA and no softmax; transformers' CvT computes attention explicitly
    assert ours["forward/fused attention (SDPA)"] > 0 and ours["backward/fused attention (SDPA)"] > 0
    assert not any("softmax" in k for k in ours) and theirs["forward/softmax"] > 0
    for r in results.values():  # each phase is seen, and the parts add up to the total
        assert {k.split("/")[0] for k in r["op_ms"]} == {"forward", "backward", "optimizer"}
        assert r["ops_total_ms"] == pytest.approx(sum(r["op_ms"].values()))
        assert r["matmul_isolated_ms"] > 0  # the step's matmuls, re-run alone
    assert "| **all ops** |" in table(results) and "each run alone" in table(results)
    # the per-op listing: sorted by time, its parts add up, GEMM rates where defined
    ops = results["ours"]["ops"]
    assert [o["ms"] for o in ops] == sorted((o["ms"] for o in ops), reverse=True)
    assert sum(o["ms"] for o in ops) == pytest.approx(results["ours"]["ops_total_ms"])
    assert all(o["gmac_per_s"] > 0 for o in ops if o["op"] in ("addmm", "mm"))
    assert "| forward | addmm |" in top_table(results["ours"], len(ops))  # (its rank is timing)
    assert macs("addmm", ((5,), (4, 3), (3, 5))) == 4 * 3 * 5
    assert macs("bmm", ((2, 4, 3), (2, 3, 5))) == 2 * 4 * 3 * 5
    assert macs("_scaled_dot_product_flash_attention_for_cpu", ((2, 3, 10, 8), (2, 3, 4, 8))) == 2 * 2 * 3 * 10 * 4 * 8
    assert macs("gelu", ((4, 3),)) is None


def _bench_model():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_model

    return bench_model


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100-PCIE-40GB", 312), ("NVIDIA L4", 121), ("NVIDIA L40S", None)])
def test_mfu_peak_is_the_devices_own_dense_bf16_figure(name, tflops):
    """'NVIDIA H100 PCIe' took the SXM part's 989 TFLOP/s (MFU 24% too low) and 'NVIDIA L40S'
    the L4's 121: the table was matched by substring, first entry first."""
    peak = _bench_model().peak_bf16_flops(name)
    assert peak == (None if tflops is None else tflops * 1e12)
    assert _bench_model().peak_bf16_flops(name, peak_tflops=500) == 500e12


def test_cuda_peak_memory_is_what_one_step_adds(monkeypatch):
    """On a GPU the peak column counted everything allocated at the step's peak: both
    implementations' weights, gradients and AdamW state and the batch, not what the step
    itself adds (the CPU column's and the docs' meaning), so the memory ratio drifted to 1."""
    bench_model = _bench_model()
    memory = {"now": 900 * 2**20, "peak": 0}  # a fake allocator: 900 MiB held before the step

    def allocate(mib):
        memory["now"] += mib * 2**20
        memory["peak"] = max(memory["peak"], memory["now"])

    def step():  # frees its 100 MiB of old gradients, peaks 300 MiB up, keeps new gradients
        allocate(-100), allocate(400), allocate(-300)

    fake = {"empty_cache": lambda: None, "synchronize": lambda: None,
            "memory_allocated": lambda: memory["now"],
            "max_memory_allocated": lambda: memory["peak"],
            "reset_peak_memory_stats": lambda: memory.update(peak=memory["now"])}
    for name, fn in fake.items():
        monkeypatch.setattr(bench_model.torch.cuda, name, fn)
    assert bench_model.cuda_step_peak_mib(step) == 300


def test_mfu_counts_the_benchmarked_models_flops_at_its_size():
    """MFU used CvT-13's 27.2 GFLOP at 224 px whatever ran: --img 384 (3.6x the work) came
    out 3.6x too low, --smoke absurdly high."""
    from cvt_lab.models import create_model

    flops = _bench_model().train_flops_per_img
    assert flops(create_model("cvt13"), 224) == pytest.approx(3 * 2 * 4.53e9, rel=0.01)
    assert flops(create_model("cvt13"), 384) == pytest.approx(3 * 2 * 16.3e9, rel=0.01)
    assert flops(create_model("cvt_tiny", num_classes=10), 32) == pytest.approx(3 * 2 * 15.43e6, rel=0.01)


def test_gpu_table_goes_into_the_model_section_of_the_docs(tmp_path):
    """The cuda block had no markers in docs/benchmarks.md, so the first GPU run appended
    its table at the end of the file, under "Training (Lightning end to end)"."""
    bench_model = _bench_model()
    doc = tmp_path / "benchmarks.md"
    doc.write_text((ROOT / "docs" / "benchmarks.md").read_text())
    rep = {"img_s": [2000.0], "cpu_img_s": [2000.0], "others_busy": [0.0]}
    train = {**bench_model.summarise({"ours": rep, "transformers": rep}),
             "ours_mfu": 0.55, "transformers_mfu": 0.55}
    report = {"date": "2026-12-01T10:00", "command": "PYTHONPATH=src python benchmarks/bench_model.py",
              "machine": {"cpu": "x", "cores": 16, "gpu": "NVIDIA H100 80GB HBM3",
                          "torch": "2.13.0", "transformers": "5", "load_average": (0.1, 0.1, 0.1)},
              "settings": {"device": "cuda", "dtype": "bf16 autocast", "batch": 128, "img": 224,
                           "threads": 2, "reps": 5, "iters": 2},
              "result": {"max_logit_diff": 1e-5, "train": train}}
    bench_model.write_doc(doc, report)
    text = doc.read_text()
    model, data = text.index("## Model"), text.index("## Data pipeline")
    assert model < text.index("<!-- bench_model:cuda:begin -->") < text.index(
        "| train, interleaved | 2000.00 | 2000.00 | 1.00x (MFU 55.0% vs 55.0%) |") < data
    bench_model.write_doc(doc, report)  # a re-run replaces its block
    assert doc.read_text() == text


def test_load_average_is_taken_before_the_benchmark_runs(monkeypatch, tmp_path):
    """The report says "load average at start", but it was read after the run, when the
    benchmark's own threads had raised it (a 1-thread run on an idle machine read ~1)."""
    bench_model = _bench_model()
    load = {"now": (0.1, 0.1, 0.1)}
    monkeypatch.setattr(bench_model.os, "getloadavg", lambda: load["now"])

    def run(args, path):  # the benchmark itself loads the machine
        load["now"] = (2.0, 1.0, 0.5)
        return {"max_logit_diff": 0.0}

    monkeypatch.setattr(bench_model, "run", run)
    out = tmp_path / "model.json"
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--device", "cpu", "--smoke", "--no-doc",
                                      "--json", str(out)])
    bench_model.main()
    assert json.loads(out.read_text())["machine"]["load_average"] == [0.1, 0.1, 0.1]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error without CUDA")
def test_device_cuda_without_cuda_is_refused_naming_the_fix(monkeypatch, capsys):
    """--device cuda with a CPU build of torch built the reference model, then failed
    inside torch.randn ("Torch not compiled with CUDA enabled") without saying what to do."""
    monkeypatch.setattr(sys, "argv", ["bench_model.py", "--device", "cuda", "--smoke", "--no-doc"])
    with pytest.raises(SystemExit) as exit_:
        _bench_model().main()
    assert exit_.value.code == 2
    assert ("--device cuda, but torch.cuda.is_available() is False (torch "
            in capsys.readouterr().err)


def test_keep_freed_memory_setting_stops_glibcs_page_faults():
    """The --keep-freed-memory rows rest on these glibc variables: with them, a loop that
    allocates and frees 64 MiB tensors settles and reuses its pages; without them each
    tensor is fresh memory from the kernel, every page a fault."""
    code = ("import resource, torch\n"
            "def step():\n"
            "    a = torch.ones(2**24); b = a * 2; del a; c = b + 1; del b, c\n"
            "for _ in range(10): step()  # warm-up: the heap settles\n"
            "f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(5): step()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)\n")

    def faults(env):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                             capture_output=True, text=True, check=True)
        return int(out.stdout)

    pages = 5 * 3 * 2**26 // 4096  # five steps of three 64 MiB tensors
    assert faults({}) > pages // 2
    assert faults(_bench_model().KEEP_FREED_MEMORY) < pages // 20
