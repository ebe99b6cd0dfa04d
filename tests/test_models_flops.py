"""The MAC counter: the paper's numbers, and agreement with the network it describes."""

from __future__ import annotations

import pytest
import torch

from cvt_lab.models import count_macs, create_model, macs_breakdown, preset_config

# Tables 2 and 7 of the paper, in G multiply-adds
PAPER = [
    ("cvt13", {}, 224, 4.53), ("cvt13", {}, 384, 16.3),
    ("cvt21", {}, 224, 7.13), ("cvt21", {}, 384, 24.9),
    ("cvt_w24", {}, 224, 60.86), ("cvt_w24", {}, 384, 193.2),
    ("cvt13", {"stride_kv": 1}, 224, 6.55),
]


@pytest.mark.parametrize("name, overrides, size, gmacs", PAPER)
def test_macs_match_the_paper_within_2_percent(name, overrides, size, gmacs):
    macs = count_macs(preset_config(name, **overrides), img_size=size)
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_attention_matmuls_are_counted():
    parts = macs_breakdown(preset_config("cvt13"), 224)
    without = sum(v for k, v in parts.items() if not k.endswith(".attn"))
    assert without / 1e9 == pytest.approx(4.06, abs=0.01)  # the repo's known under-count
    assert count_macs(create_model("cvt_tiny")) == count_macs(preset_config("cvt_tiny"), 32)


def test_a_compiled_model_counts_as_its_model():
    # the compile wrapper is no CvT, so it was read as a config and failed with
    # "'CvT' object has no attribute 'img_size'"
    model = create_model("cvt_tiny")
    assert macs_breakdown(torch.compile(model), (32, 48)) == macs_breakdown(model, (32, 48))
    assert count_macs(torch.compile(model)) == count_macs(model)


def _hooked_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Independent count: Conv2d/Linear MACs from hooks, attention from the attention maps."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.weight[0].numel()  # in_channels / groups * kh * kw
            total += output[0].numel() * k
        else:
            total += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        _, maps = model.attention_maps(x)
    for h in handles:
        h.remove()
    for m in maps:
        dim = model.config.embed_dims[m["stage"]]
        total += 2 * m["attn"][0].shape[-1] * m["attn"][0].shape[-2] * dim
    return total


@pytest.mark.parametrize("overrides, size", [
    ({}, (32, 32)), ({}, (40, 56)), ({"stride_kv": 1, "cls_token": True}, (32, 48)),
    ({"projection": "avg"}, (40, 40)), ({"projection": "linear", "token_embed": "patch"}, (32, 40)),
    ({"projection": "avg", "stride_kv": 3}, (40, 44)),  # a pooling window past the edge is dropped
    ({"mlp_ratio": 2.5, "stride_q": (1, 1, 1)}, (48, 32)),
])
def test_analytic_count_equals_a_hooked_count(overrides, size):
    model = create_model("cvt_tiny", num_classes=7, **overrides).eval()
    assert count_macs(model, size) == _hooked_macs(model, torch.randn(1, 3, *size))


def test_breakdown_names_every_part():
    parts = macs_breakdown(preset_config("cvt13"), (224, 224))
    assert parts["head"] == 384 * 1000
    for i in range(3):
        assert {f"stage{i}.{p}" for p in ("embed", "conv_proj", "qkv", "attn", "proj", "mlp")} <= set(parts)
    assert "stage0.conv_proj" not in macs_breakdown(preset_config("cvt13", projection="linear"))


def test_a_size_the_model_refuses_has_no_cost():
    # count_macs(cvt_tiny, 4) gave 1.1 M MACs (and 0 px gave 0.6 M) for inputs the model refuses
    for size in (4, (32, 7), 0):
        with pytest.raises(ValueError, match="too small for this model .* minimum size is 8x8 px"):
            count_macs(preset_config("cvt_tiny"), size)
    assert count_macs(preset_config("cvt_tiny"), 8) > 0
