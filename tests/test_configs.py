"""Every option of every config group composes and resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_config

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(str(p.relative_to(CONF / group).with_suffix("")) for p in (CONF / group).rglob("*.yaml")
                  if not p.name.startswith("_"))


CASES = [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_group_option_composes(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in ("model", "data", "optimizer", "scheduler", "trainer"):
        assert resolved[key], f"{group}={option} left '{key}' empty"


def test_main_job_composes_cvt13_on_cifar100(tmp_path):
    cfg = compose_config(["model=cvt13", "data=cifar100"], tmp_path)
    assert cfg.model.name == "cvt13"
    assert cfg.data.hub_id == "uoft-cs/cifar100"
    assert cfg.data.num_classes == 100
    assert cfg.augment.random_crop  # cifar keeps the generic default augmentation


def test_embedded_default_picks_its_own_augment_and_lr_but_cli_wins(tmp_path):
    cfg = compose_config([], tmp_path)
    assert cfg.model.name == "cvt_tiny" and cfg.data.name == "embedded"
    assert not cfg.augment.random_crop and cfg.optimizer.lr == 2e-3
    cfg = compose_config(["augment=basic", "optimizer=sgd"], tmp_path)
    assert cfg.augment.random_crop and cfg.optimizer.name == "sgd"


def test_runs_started_in_the_same_second_get_their_own_run_dir():
    # a job array or `for s in 1 2; do python run.py seed=$s & done`: a shared run dir mixed
    # their checkpoints, last.ckpt, metrics.json and CSV logs
    run_dirs = {compose_config([]).paths.output_dir for _ in range(3)}
    assert len(run_dirs) == 3


@pytest.mark.parametrize("experiment", ["finetune_cifar100", "finetune_folder"])
def test_finetuning_recipes_normalise_as_their_pretrained_weights(experiment, tmp_path):
    # microsoft/cvt-* were trained on ImageNet-normalised inputs; CIFAR-100's own mean/std
    # would shift every input the pretrained network sees
    cfg = compose_config([f"experiment={experiment}", "data.root=/tmp"], tmp_path)
    assert cfg.model.pretrained.startswith("microsoft/cvt-")
    assert list(cfg.data.mean) == [0.485, 0.456, 0.406]
    assert list(cfg.data.std) == [0.229, 0.224, 0.225]


def test_compose_without_an_output_dir_gives_run_py_s_absolute_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path(compose_config([]).paths.output_dir)
    assert out.is_absolute() and out.parent == tmp_path / "logs" / "train" / "runs", out


def test_readme_config_tour_names_every_group_its_options_and_the_top_level_keys():
    # the README's table is the user's map of conf/: a group or key missing from it is one
    # they cannot find; an option it names must exist
    text = (CONF.parent / "README.md").read_text().split("## Config tour", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in text.splitlines() if line.startswith("| `")
            or line.startswith("| top-level keys")]
    named = {group.strip(" `"): re.findall(r"`([^`]+)`", cell) for group, cell in rows}
    groups = sorted(str(p.relative_to(CONF)) for p in CONF.rglob("*") if p.is_dir()
                    and any(f.suffix == ".yaml" and not f.name.startswith("_") for f in p.iterdir())
                    and p.name != "ablation" and p != CONF / "hydra")
    assert sorted(g for g in named if g != "top-level keys") == groups
    for group in groups:
        listed = [o.removesuffix("/*") for o in named[group]]
        assert all((CONF / group / f"{o}.yaml").is_file() or (CONF / group / o).is_dir() for o in listed), group
        if group != "experiment":  # (its options are summed up: paper recipes, fine-tuning, ablation/*)
            assert sorted(listed) == options(group), group
    top = OmegaConf.load(CONF / "config.yaml")
    assert sorted(named["top-level keys"]) == sorted(k for k in top if k != "defaults")
