"""Hardware and recipe checks that must fail before any work starts.

Lightning catches some of these late (after data loading) or silently changes the request
(``16-mixed`` on a CPU becomes ``bf16-mixed``); here each one stops the run at once with a
message naming the key and the fix. :func:`validate_hardware` is called first in
``cvt_lab.train.run``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any, get_args

import torch
from omegaconf import DictConfig, OmegaConf

from .validate import ConfigError

# Lightning's precision flags; "32"/"16"/"bf16" are its short spellings.
FP16_MIXED = ("16-mixed", "16")
BF16 = ("bf16-mixed", "bf16", "bf16-true")
# Precisions that hold the weights themselves in 16 bits: dtype, mantissa bits, mixed alternative
HALF_TRUE = {"bf16-true": ("bfloat16", 8, "bf16-mixed"), "16-true": ("float16", 11, "16-mixed")}
# Strategies whose processes Lightning starts by re-running sys.argv (breaks Hydra multirun).
SUBPROCESS_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")
# Strategies that start new processes for each of fit and test (and return to this one between)
SPAWN_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


class HardwareError(ConfigError):
    """A hardware/recipe setting this machine or config cannot run; says which and the fix
    (a ConfigError, so run.py prints it without a traceback)."""


def uses_gpu(trainer: dict[str, Any]) -> bool:
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def on_cpu(trainer: dict[str, Any]) -> bool:
    """Whether Lightning runs on the CPU (``auto`` picks MPS, then CUDA, then the CPU)."""
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not uses_gpu(trainer)
                                    and not torch.backends.mps.is_available())


def devices_per_node(trainer: dict[str, Any]) -> int:
    """How many processes Lightning starts per node for ``trainer.devices``."""
    devices = trainer.get("devices", "auto")
    gpu = uses_gpu(trainer)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in ("auto", -1, "-1"):
        return torch.cuda.device_count() if gpu else 1
    return int(devices)


def world_size(trainer: dict[str, Any]) -> int:
    return devices_per_node(trainer) * int(trainer.get("num_nodes", 1) or 1)


def validate_hardware(cfg: DictConfig) -> None:
    """Raise :class:`HardwareError` for a setting that cannot run here (before training)."""
    trainer = cfg.trainer
    _check_devices(trainer)
    _check_precision(trainer)
    _check_batch_split(cfg)
    _check_ema_precision(cfg)
    if cfg.get("compile"):
        _check_compile(trainer, cfg.compile)
    if trainer.get("sync_batchnorm") and not uses_gpu(trainer):
        raise HardwareError(
            "trainer.sync_batchnorm=true needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
            "set trainer.sync_batchnorm=false (trainer=ddp_cpu does)")
    _check_hydra_under_ddp(trainer)
    _check_nodes_launched(trainer)
    _check_slurm_tasks(trainer)
    _check_csv_under_spawn(cfg)


def _check_devices(trainer: dict[str, Any]) -> None:
    if str(trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise HardwareError(
            f"trainer.accelerator={trainer.get('accelerator')} but no CUDA GPU is visible "
            "(torch.cuda.is_available() is False); use trainer=cpu (or trainer=ddp_cpu), or "
            "install a CUDA build of PyTorch")
    devices = trainer.get("devices", "auto")
    if on_cpu(trainer) and not (devices == "auto" or str(devices).strip().isdigit()):
        raise HardwareError(  # Lightning's TypeError came at Trainer(...), after data and model
            f"trainer.devices={devices}: on the CPU trainer.devices is the number of processes "
            "(an integer >= 1, or auto = 1), not -1 or device indices; use e.g. "
            "trainer.devices=2 (trainer=ddp_cpu) or trainer.devices=1")
    if uses_gpu(trainer) and devices_per_node(trainer) > torch.cuda.device_count():
        raise HardwareError(
            f"trainer.devices={trainer.get('devices')} asks for more GPUs than the "
            f"{torch.cuda.device_count()} visible; lower trainer.devices or use devices=auto")


def _check_precision(trainer: dict[str, Any]) -> None:
    precision = trainer.get("precision")
    precision = "32-true" if precision is None else str(precision)  # (None: Lightning's default)
    if precision not in {str(p) for p in _lightning_precisions()}:
        raise HardwareError(
            f"trainer.precision={precision} is not a precision Lightning knows; use one of "
            "32-true, bf16-mixed, 16-mixed (GPU), bf16-true, 16-true, 64-true")
    if precision in FP16_MIXED and not uses_gpu(trainer):
        raise HardwareError(
            f"trainer.precision={precision} (float16 autocast with a gradient scaler) needs a "
            "CUDA GPU; on the CPU use trainer.precision=bf16-mixed or 32-true")
    # (without including_emulation=False a pre-Ampere GPU passes: it can hold bf16 tensors)
    if precision in BF16 and uses_gpu(trainer) and not torch.cuda.is_bf16_supported(
            including_emulation=False):
        raise HardwareError(
            f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name()}) has no "
            "bfloat16 support (it needs compute capability 8.0+, e.g. A100/H100); use "
            "trainer.precision=16-mixed")


def _check_ema_precision(cfg: DictConfig) -> None:
    """An EMA moves by (1 - ema_decay) x the change per step: far below what 16-bit weights,
    which Lightning's *-true precisions make of the whole module (the EMA copy too), resolve."""
    decay, precision = cfg.get("ema_decay"), str(cfg.trainer.get("precision"))
    if decay is None or precision not in HALF_TRUE:
        return
    dtype, bits, mixed = HALF_TRUE[precision]
    raise HardwareError(
        f"ema_decay={decay} with trainer.precision={precision}: the EMA weights would be held in "
        f"{dtype}, whose {bits}-bit mantissa rounds away most updates of {1 - decay:.4g} x the "
        f"change, so they stay near the first weights; use trainer.precision={mixed} (fp32 "
        "weights) or ema_decay=null")


def _lightning_precisions() -> tuple[Any, ...]:
    """Every value ``lightning.Trainer(precision=...)`` accepts (its own Literal types)."""
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    return tuple(value for literal in get_args(_PRECISION_INPUT) for value in get_args(literal))


def _check_batch_split(cfg: DictConfig) -> None:
    """The global batch must split evenly over devices x accumulation steps."""
    trainer = cfg.trainer
    batch = int(cfg.data.batch_size)
    world = world_size(trainer)
    accumulate = int(trainer.get("accumulate_grad_batches", 1) or 1)
    if batch % (world * accumulate):
        per_step = world * accumulate
        lower = max(per_step, batch // per_step * per_step)
        raise HardwareError(
            f"data.batch_size={batch} (the global batch per optimizer step) does not split "
            f"evenly over {world} device(s) x trainer.accumulate_grad_batches={accumulate}; "
            f"use a multiple of {per_step}, e.g. data.batch_size={lower}")


def _check_compile(trainer: dict[str, Any], options: Any) -> None:
    if not torch._dynamo.is_dynamo_supported():
        raise HardwareError(
            f"compile=true: torch.compile does not support this Python/PyTorch "
            f"({torch.__version__}); set compile=false")
    if options is not True and options.get("backend", "inductor") != "inductor":
        return  # other backends (aot_eager, ...) generate no C++/Triton code
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        raise HardwareError(
            "compile=true needs a C++ compiler for torch.compile's generated kernels and none "
            "was found (g++/c++/clang++ or $CXX); install one (e.g. apt install g++) or set "
            "compile=false")
    if uses_gpu(trainer) and importlib.util.find_spec("triton") is None:
        raise HardwareError(
            "compile=true on a GPU needs Triton (it ships with CUDA builds of PyTorch); "
            "install the CUDA build of torch or set compile=false")


def _check_hydra_under_ddp(trainer: dict[str, Any]) -> None:
    """Two known ways Hydra and multi-process training write into the wrong directories."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or world_size(trainer) < 2:
        return
    hydra_cfg = HydraConfig.get()
    strategy = str(trainer.get("strategy", "auto"))
    shown = strategy
    if strategy == "auto":  # what Lightning picks for several processes outside a notebook
        strategy, shown = "ddp", f"auto (ddp for {world_size(trainer)} processes)"
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if (hydra_cfg.mode == RunMode.MULTIRUN and strategy in SUBPROCESS_STRATEGIES
            and not launcher.endswith("SlurmLauncher")):
        raise HardwareError(
            f"trainer.strategy={shown} inside a multirun (-m) re-runs the command line in "
            "each child process, which re-launches the whole sweep (a known Lightning+Hydra "
            "limitation); use trainer.strategy=ddp_spawn with ~logger.csv for local sweeps "
            "(Lightning's CSVLogger loses its header between a spawned fit and test), or "
            "hydra/launcher=slurm (SLURM starts the processes, one job per sweep point)")
    launched_outside = bool(os.environ.get("TORCHELASTIC_RUN_ID")) or int(
        os.environ.get("SLURM_NTASKS", "1")) > 1
    run_dir_given = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
    if hydra_cfg.mode != RunMode.MULTIRUN and launched_outside and not run_dir_given:
        raise HardwareError(
            "processes started by torchrun/srun each pick their own time-stamped run dir; give "
            "them one: add hydra.run.dir=logs/<name>/runs/<id> to the command (e.g. "
            "hydra.run.dir=logs/train/runs/$SLURM_JOB_ID)")


def _check_nodes_launched(trainer: dict[str, Any]) -> None:
    """Lightning starts the processes of this node only: with no cluster environment to join,
    the first process waits for the other nodes' ranks until torch's timeout (30 min)."""
    from lightning.fabric.plugins.environments import (LSFEnvironment, MPIEnvironment,
                                                       SLURMEnvironment, TorchElasticEnvironment)

    nodes = int(trainer.get("num_nodes", 1) or 1)
    environments = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
    by_hand = any(os.environ.get(v) for v in ("NODE_RANK", "GROUP_RANK", "MASTER_ADDR"))
    if nodes < 2 or by_hand or any(env.detect() for env in environments):
        return
    raise HardwareError(
        f"trainer.num_nodes={nodes} but no launcher started this run on the nodes (SLURM: srun "
        "or hydra/launcher=slurm; torchrun; LSF; MPI; or NODE_RANK and MASTER_ADDR set by "
        "hand): it would wait for the other nodes' processes until the timeout; start it on "
        f"every node, e.g. torchrun --nnodes {nodes} --nproc-per-node <GPUs> run.py ... (README), "
        "or set trainer.num_nodes=1")


def _check_csv_under_spawn(cfg: DictConfig) -> None:
    """Lightning's CSVLogger fails in the second group of spawned processes: the test's
    writer starts without the header that fit's processes wrote, and rewriting metrics.csv
    under its own header raises ValueError ("dict contains fields not in fieldnames")."""
    strategy = str(cfg.trainer.get("strategy", "auto"))
    loggers = (cfg.get("logger") or {}).values()
    csv = any(str((node or {}).get("_target_", "")).endswith("CSVLogger") for node in loggers)
    if csv and strategy.startswith(SPAWN_STRATEGIES) and cfg.get("train") and cfg.get("test"):
        raise HardwareError(
            f"trainer.strategy={strategy} with the CSV logger fails when the test starts after "
            "training (Lightning's CSVLogger loses the header of the metrics.csv that fit's "
            "processes wrote); use trainer.strategy=ddp for a single run, or drop the CSV logger "
            "with ~logger.csv (W&B still logs), or set test=false")


def _check_slurm_tasks(trainer: dict[str, Any]) -> None:
    """Under srun (or hydra/launcher=slurm) every SLURM task runs this script: each task must
    be one of the trainer's processes, or the extra ones train the same model again (one-device
    strategies do not read the SLURM ranks), into the same run dir and onto the same GPU."""
    from lightning.fabric.plugins.environments.slurm import _is_slurm_interactive_mode

    # srun's step size: a batch script's own shell (SLURM_NTASKS only) runs one process
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    world = world_size(trainer)
    if tasks == 1 or tasks == world or _is_slurm_interactive_mode():
        return
    per_node, nodes = devices_per_node(trainer), int(trainer.get("num_nodes", 1) or 1)
    raise HardwareError(
        f"SLURM started {tasks} tasks for this run but the trainer runs {world} process(es) "
        f"(trainer.devices x trainer.num_nodes): every extra task would train the same model "
        f"again into the same run dir. Start one task per process: with hydra/launcher=slurm "
        f"add hydra.launcher.tasks_per_node={per_node} hydra.launcher.nodes={nodes} (and "
        f"hydra.launcher.gpus_per_node to match), with srun --ntasks-per-node={per_node}; or set "
        f"trainer.devices to the tasks per node")


__all__ = ["HardwareError", "validate_hardware", "world_size", "devices_per_node"]
