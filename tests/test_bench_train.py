"""benchmarks/bench_train.py measures what its rows say (tiny settings; rates not checked)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
bench_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_train)


def test_each_batch_size_compiles_with_static_shapes(monkeypatch, tmp_path):
    """With --batch 128 256 --compile, dynamo's cache from the first batch size made the
    second one's batch dimension dynamic: its compiled rows timed a dynamic-shape graph,
    not the static one a run at that batch compiles."""
    graphs = []

    def backend(gm, inputs):  # records whether a graph has symbolic (dynamic) sizes
        graphs.append(any(isinstance(a, torch.SymInt) for a in inputs))
        return gm.forward

    compile_module = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda net, **kw: compile_module(net, backend=backend))
    monkeypatch.setattr(sys, "argv", [
        "bench_train.py", "--device", "cpu", "--model", "cvt_tiny", "--img-size", "32",
        "--batch", "2", "4", "--compile", "on", "--warmup", "1", "--steps", "1", "--threads", "1",
        "--json", str(tmp_path / "rows.json")])
    bench_train.main()
    assert len(graphs) == 2 and not any(graphs)  # one static graph per batch size


def test_a_device_index_is_refused(monkeypatch, capsys):
    """--device cuda:0 passed every check: the bare row ran on the GPU with no synchronize
    around its clock (it timed kernel launches) and the Lightning rows ran on the CPU."""
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--device", "cuda:0"])
    with pytest.raises(SystemExit) as exit_:
        bench_train.main()
    assert exit_.value.code == 2
    assert "argument --device: invalid choice: 'cuda:0'" in capsys.readouterr().err


def test_warmup_of_zero_is_refused(monkeypatch, capsys):
    """--warmup 0 ran, but the Lightning rows' clock starts at the end of the last warm-up
    batch: it never started, and their rates came out near zero (seconds since boot)."""
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--device", "cpu", "--warmup", "0"])
    with pytest.raises(SystemExit) as exit_:
        bench_train.main()
    assert exit_.value.code == 2
    assert ("--warmup 0: at least 1 (the Lightning rows' clock starts when the last warm-up "
            "batch ends)") in capsys.readouterr().err
