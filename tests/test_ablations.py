"""The ablation experiments: every variant composes to the model the paper's table describes.

Each check measures the built network (parameter counts, FLOPs counted by torch while it runs
a forward pass), so a variant that silently kept the preset's value fails.
"""

from __future__ import annotations

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from conftest import CONF, compose_config
from cvt_lab.module import build_network

ABLATIONS = sorted(p.stem for p in (CONF / "experiment" / "ablation").glob("*.yaml"))


def variant_cfg(ablation: str, variant: str | None, tmp_path):
    overrides = [f"experiment=ablation/{ablation}"] + ([f"variant={variant}"] if variant else [])
    return compose_config(overrides, tmp_path)


def build(ablation: str, variant: str, tmp_path) -> torch.nn.Module:
    cfg = variant_cfg(ablation, variant, tmp_path)
    return build_network(OmegaConf.to_container(cfg.model, resolve=True), cfg.data.num_classes)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def measured_flops(net: torch.nn.Module, size: int = 32) -> int:
    with FlopCounterMode(display=False) as counter:
        net.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def test_the_four_tables_are_there():
    assert ABLATIONS == ["kv_stride", "pos_embed", "projection", "token_embed"]


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_sweep_covers_every_variant_and_paper_numbers_name_real_variants(ablation, tmp_path):
    cfg = variant_cfg(ablation, None, tmp_path)
    variants = list(cfg.ablation.variants)
    hydra = HydraConfig.get()  # Hydra's own node, as the launcher sees it
    assert hydra.sweeper.params.variant.split(",") == variants
    assert hydra.mode.name == "MULTIRUN"
    assert cfg.variant in variants  # the default (paper's CvT) row, for a single run
    assert set(cfg.ablation.paper_top1) <= set(variants)
    assert cfg.task_name == f"ablation_{ablation}"


def test_unknown_variant_names_the_key(tmp_path):
    cfg = variant_cfg("kv_stride", "stride3", tmp_path)
    with pytest.raises(Exception, match="stride3"):
        OmegaConf.to_container(cfg.model, resolve=True)


def test_pos_embed_adds_exactly_one_embedding_per_chosen_stage(tmp_path):
    nets = {v: build("pos_embed", v, tmp_path)
            for v in ("none", "every_stage", "first_stage", "last_stage")}
    base = nets["none"]
    sizes = [s.grid[0] * s.grid[1] * s.patch_embed.proj.out_channels
             for s in (base.stage0, base.stage1, base.stage2)]
    assert sizes == [16 * 16 * 32, 8 * 8 * 64, 4 * 4 * 128]  # cvt_tiny at 32 px
    assert n_params(nets["every_stage"]) - n_params(base) == sum(sizes)
    assert n_params(nets["first_stage"]) - n_params(base) == sizes[0]
    assert n_params(nets["last_stage"]) - n_params(base) == sizes[2]
    first = nets["first_stage"]
    assert first.stage0.pos_embed is not None and first.stage2.pos_embed is None


def test_token_embed_patch_is_non_overlapping_and_pe_adds_params(tmp_path):
    nets = {v: build("token_embed", v, tmp_path) for v in ("patch", "patch_pe", "conv", "conv_pe")}
    patch, conv = nets["patch"].stage0.patch_embed.proj, nets["conv"].stage0.patch_embed.proj
    assert patch.kernel_size == patch.stride == (2, 2) and patch.padding == (0, 0)
    assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.padding == (1, 1)
    assert n_params(nets["patch"]) < n_params(nets["conv"])
    pe = n_params(nets["conv_pe"]) - n_params(nets["conv"])
    assert pe > 0 and n_params(nets["patch_pe"]) - n_params(nets["patch"]) == pe


def test_kv_stride_1_costs_more_compute_with_the_same_params(tmp_path):
    s1, s2 = build("kv_stride", "stride1", tmp_path), build("kv_stride", "stride2", tmp_path)
    assert s1.stage0.blocks[0].attn.conv_proj_k.conv.stride == (1, 1)
    assert s2.stage0.blocks[0].attn.conv_proj_k.conv.stride == (2, 2)
    assert n_params(s1) == n_params(s2)
    assert measured_flops(s1) > measured_flops(s2) * 1.1  # paper: 6.55 vs 4.53 GMACs


def test_projection_dw_bn_adds_conv_and_bn_per_stage_and_linear_avg_have_none(tmp_path):
    names = ("none", "stage1", "stages1_2", "all", "avg")
    nets = {v: build("projection", v, tmp_path) for v in names}
    base = nets["none"]

    def conv_proj_params(stage) -> int:  # q, k, v: depthwise 3x3 weight + BN weight and bias
        dim = stage.patch_embed.proj.out_channels
        return len(stage.blocks) * 3 * (dim * 9 + 2 * dim)

    stages = [base.stage0, base.stage1, base.stage2]
    assert n_params(nets["avg"]) == n_params(base)  # pooling and identity have no weights
    for name, k in (("stage1", 1), ("stages1_2", 2), ("all", 3)):
        assert n_params(nets[name]) - n_params(base) == sum(map(conv_proj_params, stages[:k]))
    assert not any("bn" in n for n, _ in base.named_parameters())
    # linear keeps every k/v token, the strided conv or pooling keep a quarter of them
    assert measured_flops(base) > measured_flops(nets["all"])
    assert measured_flops(base) > measured_flops(nets["avg"])


def test_ablation_overrides_model_and_data_from_the_command_line(tmp_path):
    cfg = compose_config(["experiment=ablation/kv_stride", "variant=stride1", "model=cvt13",
                          "data=cifar100"], tmp_path)
    assert cfg.model.name == "cvt13" and cfg.data.num_classes == 100
    assert OmegaConf.to_container(cfg.model, resolve=True)["stride_kv"] == [1, 1, 1]
