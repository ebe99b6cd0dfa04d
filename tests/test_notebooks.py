"""The notebooks: committed clean, and each runs top to bottom (tiny settings) in a kernel on
this interpreter with this checkout's package. A failing cell fails the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"
STRIP = ROOT / "scripts" / "strip_notebooks.py"
# shrink every training run: one epoch of two batches
TINY = ["data.batch_size=16", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0"]


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_there_are_four_numbered_notebooks():
    names = [p.name for p in notebook_paths()]
    assert names == ["01_inference.ipynb", "02_finetune_custom_folder.ipynb",
                     "03_ablation_analysis.ipynb", "04_attention_maps.ipynb"]


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_committed_notebook_is_clean_and_has_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; run scripts/strip_notebooks.py"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nb.cells[tagged[0]].cell_type == "code", tagged
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_strip_script_checks_and_cleans(tmp_path):
    nb = nbformat.read(NOTEBOOKS / "01_inference.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    dirty = tmp_path / "dirty.ipynb"
    nbformat.write(nb, dirty)
    check = subprocess.run([sys.executable, str(STRIP), "--check", str(dirty)],
                           capture_output=True, text=True)
    assert check.returncode == 1 and "dirty.ipynb" in check.stdout
    fix = subprocess.run([sys.executable, str(STRIP), str(dirty)], capture_output=True, text=True)
    assert fix.returncode == 0, fix.stderr
    cleaned = nbformat.read(dirty, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in cleaned.cells if c.cell_type == "code")
    assert [c.source for c in cleaned.cells] == [c.source for c in nb.cells]  # nothing else changed
    again = subprocess.run([sys.executable, str(STRIP), "--check", str(dirty)], capture_output=True)
    assert again.returncode == 0


def execute(name: str, parameters: dict, checks: str, tmp_path: Path) -> nbformat.NotebookNode:
    """Run a notebook with ``parameters`` injected after its parameters cell and ``checks``
    appended as a last cell; returns the executed notebook (raises on any failing cell)."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected, metadata={"tags": ["injected-parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys, cvt_lab\nprint('KERNEL', sys.executable, cvt_lab.__file__)\n" + checks))
    # the kernel imports this checkout's package (not an installed copy) and stays offline
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    kernel_python, package = last.split("KERNEL ", 1)[1].split()[:2]
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve()
    assert Path(package).resolve() == (ROOT / "src" / "cvt_lab" / "__init__.py").resolve()
    (tmp_path / f"executed_{name}").write_text(json.dumps(nb))  # for a look after a failure
    return nb


def images_shown(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)


def warnings_of_ours(nb: nbformat.NotebookNode) -> list[str]:
    """The warnings cvt_lab itself printed while the notebook ran: each names a setting that
    is wrong for the run (e.g. a warmup as long as the training)."""
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
    return [line for line in text.splitlines() if "cvt_lab" in line and "Warning: " in line]


# a check that a notebook's model holds the weights its run tested: with ema_decay, those of
# the EMA (ema.module.*), which differ from the trained ones (net.*)
TESTED_WEIGHTS = ("import torch\n"
                  "state = torch.load({ckpt}, weights_only=True)['state_dict']\n"
                  "assert not torch.equal(state['net.head.weight'], state['ema.module.head.weight'])\n"
                  "for k, v in {model}.state_dict().items():\n"
                  "    assert torch.equal(v, state['ema.module.' + k]), k\n")


# Per notebook: tiny parameters, checks run in its kernel at the end, texts its outputs must
# show, and how many figures it draws. WORK_DIR and EXTRA_OVERRIDES=TINY are added to all
# (a case that sets its own EXTRA_OVERRIDES starts them with TINY).
# Two epochs (of two batches): a notebook's one warmup epoch then leaves steps to decay in.
CASES = {
    "01_inference": dict(
        # with an EMA, what the run tested (and the notebook exports) is the EMA's weights
        params={"EPOCHS": 2, "NUM_DIGITS": 3, "EXTRA_OVERRIDES": TINY + ["ema_decay=0.5"]},
        checks="from pathlib import Path\n"
               f"{TESTED_WEIGHTS.format(model='trained', ckpt='best')}"
               "assert Path(MODEL).is_relative_to(WORK_DIR), MODEL\n"
               "assert (Path(MODEL) / 'config.json').is_file() and (Path(MODEL) / 'model.safetensors').is_file()\n"
               "assert class_names == [str(i) for i in range(10)] and logits.shape == (5, 10)\n",
        texts=["NOTE: 'microsoft/cvt-13' cannot be loaded here",  # offline: the fallback ran
               "the exported and reloaded model gives the trained model's logits"],
        figures=4),  # top-5 panel, three preprocessing figures
    "02_finetune_custom_folder": dict(
        params={"EPOCHS": 2, "PRETRAIN_EPOCHS": 2, "IMAGES_PER_CLASS": 8},
        checks="assert datamodule.class_names == ['circle', 'cross', 'square', 'triangle']\n"
               "assert model.head.out_features == 4 and run_dir.is_relative_to(WORK_DIR)\n"
               "assert 'test/acc1' in metrics and hf_logits.shape == logits.shape\n",
        texts=["python run.py model=cvt_tiny", "data=folder",
               "transformers' CvtForImageClassification: same logits"],
        # the new head is made once, for fine-tuning: reloading the fine-tuned checkpoint
        # neither reads the pretrained weights again nor says it resets the head
        once=["classifier reset: the checkpoint has 10 classes, the model a new head with 4"],
        figures=3),  # folder examples, learning curves, top-k
    "03_ablation_analysis": dict(
        params={"EPOCHS": 1},
        checks="assert [job.variant for job in result['jobs']] == ['stride1', 'stride2']\n"
               "assert all(job.status == 'ok' for job in result['jobs'])\n"
               "assert all((SWEEP_DIR / f).is_file() for f in ('report.md', 'report.csv', 'report.png'))\n"
               "assert SWEEP_DIR.is_relative_to(WORK_DIR)\n",
        texts=["python run.py -m experiment=ablation/kv_stride", "CvT Table 7: k/v projection stride",
               "(paper, CvT-13 at 224 px: 1.45x)"],
        figures=3),  # the report's chart, val/acc1 and val/loss per variant
    "04_attention_maps": dict(
        # NUM_IMAGES past the batch (2): the notebook draws the batch (it raised IndexError)
        params={"EPOCHS": 2, "NUM_IMAGES": 3,
                "EXTRA_OVERRIDES": TINY + ["ema_decay=0.5", "data.batch_size=2"]},
        checks=f"{TESTED_WEIGHTS.format(model='model', ckpt='CHECKPOINT')}"
               "assert [(m['stage'], m['q_hw'], m['kv_hw']) for m in maps] == [(0, (16, 16), (8, 8)), "
               "(1, (8, 8), (4, 4)), (2, (4, 4), (2, 2)), (2, (4, 4), (2, 2))]\n"
               "assert str(CHECKPOINT).startswith(WORK_DIR)\n",
        texts=["queries (4, 4), keys (2, 2) + cls token"],
        figures=4),  # two images' stage grids, the heads, the block-by-block row
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs_top_to_bottom(name, tmp_path):
    case = CASES[name]
    if name.startswith("02"):
        pytest.importorskip("transformers")  # its last cell loads the export with transformers
    params = {"WORK_DIR": str(tmp_path), "EXTRA_OVERRIDES": TINY, **case["params"]}
    nb = execute(f"{name}.ipynb", params, case["checks"], tmp_path)
    outputs = json.dumps([c.outputs for c in nb.cells if c.cell_type == "code"])
    for text in case["texts"]:
        assert text in outputs
    for text in case.get("once", []):
        assert outputs.count(text) == 1, text
    assert not warnings_of_ours(nb)
    assert images_shown(nb) == case["figures"]


@pytest.mark.slow
def test_notebook_03_draws_every_job_of_a_sweep_with_seeds(tmp_path):
    # SWEEP_DIR of `-m experiment=ablation/kv_stride seed=1,2`: the learning curves were keyed
    # by variant alone, so each variant's second seed replaced its first, unsaid
    from test_report import job_started_but_never_logged

    sweep = tmp_path / "sweep"
    for job, (variant, seed) in enumerate([("stride1", 1), ("stride1", 2), ("stride2", 1), ("stride2", 2)]):
        job_dir = sweep / str(job)
        job_started_but_never_logged(job_dir, "experiment=ablation/kv_stride",
                                     f"variant={variant}", f"seed={seed}")
        acc = 0.5 + job / 10
        (job_dir / "metrics.json").write_text(json.dumps({"val/acc1_best": acc}))
        (job_dir / "csv").mkdir()
        (job_dir / "csv" / "metrics.csv").write_text(f"step,val/acc1,val/loss\n9,{acc},1.0\n")
    # a job that failed before it logged anything (its metrics.csv never written): the report
    # lists it as failed, and the curves, which have nothing of it to draw, leave it out
    job_started_but_never_logged(sweep / "4", "experiment=ablation/kv_stride", "variant=stride1", "seed=3")
    (sweep / "4" / "failed.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))
    checks = ("assert {label: path.name for label, path in runs.items()} == {'stride1 seed=1': '0', "
              "'stride1 seed=2': '1', 'stride2 seed=1': '2', 'stride2 seed=2': '3'}, runs\n"
              "assert [job.status for job in result['jobs']] == ['ok'] * 4 + ['failed']\n")
    nb = execute("03_ablation_analysis.ipynb", {"WORK_DIR": str(tmp_path), "SWEEP_DIR": str(sweep)},
                 checks, tmp_path)
    outputs = json.dumps([c.outputs for c in nb.cells if c.cell_type == "code"])
    assert "not drawn (nothing logged): 4 (stride1 seed=3)" in outputs
